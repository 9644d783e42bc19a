//! The steering program's own cost as the kernel measures it: `BPF_PROG_TEST_RUN` runs the
//! attached `sk_lookup` program `repeat` times on a lookup we describe and reports the mean
//! time per run. Unlike `BPF_STATS_RUN_TIME` there is no clock read around each run, so
//! what is left is the program (and the loop that calls it).

use std::net::SocketAddrV6;

use anyhow::{Context, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const AF_INET6: u32 = 10;
const SK_PASS: u32 = 1;

/// `struct bpf_sk_lookup` as a test run takes it (the uapi layout, 72 bytes).
#[repr(C)]
#[derive(Default)]
struct SkLookup {
    cookie: u64,
    family: u32,
    protocol: u32,
    remote_ip4: u32,
    remote_ip6: [u32; 4],
    /// Network order.
    remote_port: u16,
    _pad: u16,
    local_ip4: u32,
    local_ip6: [u32; 4],
    local_port: u32,
    ingress_ifindex: u32,
    _tail: u32,
}

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The `BPF_*_GET_FD_BY_ID` member of `union bpf_attr`.
#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// An sk_lookup program that does nothing (`r0 = SK_PASS; exit`), loaded for as long as
/// this lives: what a test run costs around any program.
pub struct EmptyProgram(std::os::fd::OwnedFd);

impl EmptyProgram {
    /// Loads it.
    pub fn load() -> Result<Self> {
        // mov64 r0, 1; exit
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type: BPF_PROG_TYPE_SK_LOOKUP,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type: BPF_SK_LOOKUP,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty sk_lookup program")?;
        // SAFETY: a new descriptor nothing else owns.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<i32> {
    // SAFETY: `attr` is a live, initialised bpf_attr member of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *mut T).cast::<libc::c_void>(),
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Mean nanoseconds per run of program `id` for a TCP connection from `[fd00:beef::2]:40000`
/// to `to`, over `repeat` runs. With `steered`, fails unless the program steered it (SK_PASS
/// with a socket chosen), so the measured path is the one connections to a function take;
/// without, unless it let it pass untouched (an address no binding holds).
pub fn mean_ns(id: u32, to: SocketAddrV6, repeat: u32, steered: bool) -> Result<u32> {
    let mut get = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut get).with_context(|| format!("program {id}"))?;
    // SAFETY: a new descriptor nothing else owns.
    let fd: std::os::fd::OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
    let (verdict, cookie, ns) = test_run(&fd, to, repeat)?;
    if verdict != SK_PASS || (cookie != 0) != steered {
        bail!(
            "the test run of {to} took another path (verdict {verdict}, socket cookie \
             {cookie}) than the one measured"
        );
    }
    Ok(ns)
}

impl EmptyProgram {
    /// Mean nanoseconds per test run of the empty program, as [`mean_ns`] runs it.
    pub fn mean_ns(&self, to: SocketAddrV6, repeat: u32) -> Result<u32> {
        Ok(test_run(&self.0, to, repeat)?.2)
    }
}

/// Runs program `fd` `repeat` times on a lookup for `to`: (verdict, chosen socket's cookie,
/// mean ns per run).
fn test_run(fd: &std::os::fd::OwnedFd, to: SocketAddrV6, repeat: u32) -> Result<(u32, u64, u32)> {
    use std::os::fd::AsRawFd;
    let words = |a: std::net::Ipv6Addr| {
        let o = a.octets();
        std::array::from_fn(|i| {
            u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
        })
    };
    let ctx = SkLookup {
        family: AF_INET6,
        protocol: libc::IPPROTO_TCP as u32,
        remote_ip6: words("fd00:beef::2".parse().expect("an address")),
        remote_port: 40000u16.to_be(),
        local_ip6: words(*to.ip()),
        local_port: u32::from(to.port()),
        ..Default::default()
    };
    let mut out = SkLookup::default();
    let mut attr = TestRun {
        prog_fd: fd.as_raw_fd() as u32,
        repeat,
        ctx_size_in: std::mem::size_of::<SkLookup>() as u32,
        ctx_size_out: std::mem::size_of::<SkLookup>() as u32,
        ctx_in: (&raw const ctx) as u64,
        ctx_out: (&raw mut out) as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)
        .context("BPF_PROG_TEST_RUN of an sk_lookup program (Linux 5.15 or later)")?;
    Ok((attr.retval, out.cookie, attr.duration))
}
