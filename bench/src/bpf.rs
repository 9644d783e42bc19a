//! The bench's own bpf(2) calls, for measuring programs and the hooks they run at.
//!
//! A program's own cost as the kernel measures it: `BPF_PROG_TEST_RUN` runs a loaded
//! program `repeat` times on an input we describe (a lookup for the `sk_lookup` program, a
//! frame for the XDP guard) and reports the mean time per run. Unlike `BPF_STATS_RUN_TIME`
//! there is no clock read around each run, so what is left is the program and the loop
//! that calls it; an empty program of the same type, run the same way, measures the loop.
//! The same empty programs, attached to an interface, measure what a hook costs a packet
//! with no program work in it.

use std::{
    net::SocketAddrV6,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_XDP: u32 = 37;
const BPF_TCX_INGRESS: u32 = 46;
/// XDP_FLAGS_SKB_MODE: generic XDP, as faasd attaches its guard.
const XDP_FLAGS_SKB_MODE: u32 = 2;
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

/// The program types measured here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sk_lookup`, run on a described lookup.
    SkLookup,
    /// XDP, run on a frame.
    Xdp,
    /// tc (a `tcx` ingress program).
    Tc,
}

/// A program that does nothing but return one verdict (SK_PASS for `sk_lookup`, XDP_DROP
/// for XDP, TC_ACT_SHOT for tc), loaded for as long as this lives: what a test run costs
/// around any program, or attached, what its hook costs.
pub struct EmptyProgram {
    fd: OwnedFd,
    kind: Kind,
}

impl EmptyProgram {
    /// Loads one of type `kind`.
    pub fn load(kind: Kind) -> Result<Self> {
        let (prog_type, expected_attach_type, verdict) = match kind {
            Kind::SkLookup => (BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP, 1),
            Kind::Xdp => (BPF_PROG_TYPE_XDP, BPF_XDP, 1),
            Kind::Tc => (BPF_PROG_TYPE_SCHED_CLS, BPF_TCX_INGRESS, 2),
        };
        // mov64 r0, verdict; exit
        let insns: [u64; 2] = [
            u64::from_le_bytes([0xb7, 0, 0, 0, verdict, 0, 0, 0]),
            u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let license = c"GPL";
        let mut attr = ProgLoad {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            expected_attach_type,
            ..Default::default()
        };
        let fd = bpf(BPF_PROG_LOAD, &mut attr).context("loading an empty BPF program")?;
        // SAFETY: a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, kind })
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
    let (verdict, cookie, ns) = lookup_run(&program(id)?, to, repeat)?;
    if verdict != SK_PASS || (cookie != 0) != steered {
        bail!(
            "the test run of {to} took another path (verdict {verdict}, socket cookie \
             {cookie}) than the one measured"
        );
    }
    Ok(ns)
}

/// Mean nanoseconds per run of XDP program `id` on `frame`, over `repeat` runs; fails
/// unless it returned `verdict`, so the measured path is the one the flood takes.
pub fn xdp_mean_ns(id: u32, frame: &[u8], repeat: u32, verdict: u32) -> Result<u32> {
    let (returned, ns) = frame_run(&program(id)?, frame, repeat)?;
    if returned != verdict {
        bail!("the test run returned {returned}, not the verdict {verdict} measured");
    }
    Ok(ns)
}

impl EmptyProgram {
    /// Mean nanoseconds per test run of an empty `sk_lookup` program, as [`mean_ns`] runs it.
    pub fn mean_ns(&self, to: SocketAddrV6, repeat: u32) -> Result<u32> {
        Ok(lookup_run(&self.fd, to, repeat)?.2)
    }

    /// Mean nanoseconds per test run of an empty XDP program, as [`xdp_mean_ns`] runs it.
    pub fn frame_ns(&self, frame: &[u8], repeat: u32) -> Result<u32> {
        Ok(frame_run(&self.fd, frame, repeat)?.1)
    }

    /// Attaches it to `interface` in `netns` (an XDP program in generic mode, a tc one at
    /// tcx ingress) until the returned link is dropped.
    pub fn attach(&self, netns: &str, interface: &str) -> Result<OwnedFd> {
        let (attach_type, flags) = match self.kind {
            Kind::Xdp => (BPF_XDP, XDP_FLAGS_SKB_MODE),
            Kind::Tc => (BPF_TCX_INGRESS, 0),
            Kind::SkLookup => bail!("an sk_lookup program attaches to a namespace"),
        };
        let prog_fd = self.fd.as_raw_fd() as u32;
        // The interface index means something only in its namespace: attach from a thread
        // that joined it.
        std::thread::scope(|s| {
            s.spawn(|| {
                let target_ifindex = crate::enter_netns(netns, interface)?;
                let mut attr = LinkCreate {
                    prog_fd,
                    target_ifindex,
                    attach_type,
                    flags,
                    ..Default::default()
                };
                let fd = bpf(BPF_LINK_CREATE, &mut attr)
                    .with_context(|| format!("attaching an empty program to {interface}"))?;
                // SAFETY: a new descriptor nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
        })
    }
}

/// The `BPF_LINK_CREATE` member of `union bpf_attr`, its per-type tail zeroed.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    tail: [u64; 4],
}

/// The median of `n` runs of `run`, each a mean in ns.
pub fn median(n: usize, run: impl Fn() -> Result<u32>) -> Result<f64> {
    let mut runs = (0..n).map(|_| run()).collect::<Result<Vec<u32>>>()?;
    runs.sort_unstable();
    Ok(f64::from(runs[runs.len() / 2]))
}

/// A descriptor for loaded program `id`.
fn program(id: u32) -> Result<OwnedFd> {
    let mut get = GetFdById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut get).with_context(|| format!("program {id}"))?;
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs program `fd` `repeat` times on `frame`: (verdict, mean ns per run).
fn frame_run(fd: &OwnedFd, frame: &[u8], repeat: u32) -> Result<(u32, u32)> {
    let mut attr = TestRun {
        prog_fd: fd.as_raw_fd() as u32,
        repeat,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_TEST_RUN of an XDP program")?;
    Ok((attr.retval, attr.duration))
}

/// Runs program `fd` `repeat` times on a lookup for `to`: (verdict, chosen socket's cookie,
/// mean ns per run).
fn lookup_run(fd: &OwnedFd, to: SocketAddrV6, repeat: u32) -> Result<(u32, u64, u32)> {
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
