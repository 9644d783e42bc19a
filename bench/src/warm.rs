//! What separates the function's instance from the same server run by hand on the warm
//! path, one suspect at a time. The same `hello` program serves every arm, in blocks of 100
//! consecutive connect+request rounds (each server stays warm), the arms taking turns:
//!
//! 1. its own socket on `[::1]` (the bench's limit);
//! 2. a socket made as faasd makes them (`IPV6_V6ONLY`, `IPV6_FREEBIND`, `SO_REUSEPORT`,
//!    backlog 1024) on `[::1]`, passed with LISTEN_FDS;
//! 3. the same on an unbound address of the function prefix (the route, the program's miss);
//! 4. the same, the server in new mount, pid, ipc, uts and network namespaces (`unshare`);
//! 5. the same, also in a cgroup of its own under faasd's `cgroup-parent`, beside the
//!    function's;
//! 6. the same, also as an instance runs: an unprivileged user, no capabilities;
//! 7. the same, also under faasd's own system call filter (loaded by this program, re-run
//!    as a wrapper);
//! 8. the function itself, through its address (steered).

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Summary, Unit, monotonic_ns, request, stats, wait_listening};

/// The cgroup the fifth to seventh arms' servers run in (under the bench daemon's
/// `cgroup-parent`).
const CGROUP: &str = "faasd-bench/warm-anatomy";

/// `faasd-bench __with-filter CMD ARGS…` loads faasd's system call filter and execs CMD.
pub const WITH_FILTER: &str = "__with-filter";

/// The wrapper behind [`WITH_FILTER`]: the filter faasd loads into every process instance
/// (it needs `no_new_privs`, set here), then the command in place of this process.
pub fn exec_with_filter(command: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let [program, args @ ..] = command else {
        bail!("usage: faasd-bench {WITH_FILTER} COMMAND [ARGS…]")
    };
    let filter = faasd::runtime::seccomp::deny_filter(faasd_containerd::oci::DENIED_SYSCALLS);
    let fprog = libc::sock_fprog {
        len: u16::try_from(filter.len())?,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with a filter that outlives the call (the kernel copies it).
    let loaded = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const fprog,
            ) == 0
    };
    if !loaded {
        bail!(
            "loading the system call filter: {}",
            std::io::Error::last_os_error()
        );
    }
    Err(Command::new(program).args(args).exec()).with_context(|| format!("exec {program}"))
}

/// A listening socket made as faasd makes a function's (see faasd's `sockets.rs`).
pub(super) fn faasd_like_socket(addr: SocketAddr) -> Result<OwnedFd> {
    let SocketAddr::V6(v6) = addr else {
        bail!("IPv6 only")
    };
    // SAFETY: plain socket calls on a descriptor this function owns from the start.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM, 0);
        if fd < 0 {
            bail!("socket: {}", std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        for (level, opt) in [
            (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
            (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND),
            (libc::SOL_SOCKET, libc::SO_REUSEPORT),
        ] {
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd.as_raw_fd(),
                level,
                opt,
                (&raw const one).cast(),
                size_of::<libc::c_int>() as u32,
            ) < 0
            {
                bail!("setsockopt: {}", std::io::Error::last_os_error());
            }
        }
        let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
        sa.sin6_family = libc::AF_INET6 as u16;
        sa.sin6_port = v6.port().to_be();
        sa.sin6_addr.s6_addr = v6.ip().octets();
        if libc::bind(
            fd.as_raw_fd(),
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as u32,
        ) < 0
            || libc::listen(fd.as_raw_fd(), 1024) < 0
        {
            bail!("bind/listen {addr}: {}", std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Starts `hello` on a faasd-like socket at `addr`, under `wrapper` (a command line run
/// before it: `unshare …`, or nothing), with `setup` (shell) first.
fn spawn_on_socket(
    b: &mut Bench,
    hello: &Path,
    addr: SocketAddr,
    setup: &str,
    wrapper: &[&str],
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let socket = faasd_like_socket(addr)?;
    let raw = socket.as_raw_fd();
    // LISTEN_PID is the server's own pid, which only the shell that execs it knows.
    let script = format!(
        "{setup}exec {} sh -c 'LISTEN_PID=$$ exec \"$0\"' {:?}",
        wrapper.join(" "),
        hello.to_string_lossy()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "http");
    // SAFETY: only dup2 between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    b.spawn(&mut cmd)?;
    drop(socket);
    wait_listening(addr)
}

/// The cgroup v2 root (unified, on a hybrid host).
fn cgroup_root() -> Option<&'static str> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .find(|r| Path::new(&format!("{r}/cgroup.procs")).exists())
}

/// The arms, measured; `function` is the warm function's address (one instance running).
pub fn anatomy(b: &mut Bench, hello: &Path, function: SocketAddr, rounds: usize) -> Result<Value> {
    let own: SocketAddr = "[::1]:9031".parse()?;
    b.spawn(Command::new(hello).env("PORT", own.port().to_string()))?;
    wait_listening(own)?;
    let loopback: SocketAddr = "[::1]:9032".parse()?;
    spawn_on_socket(b, hello, loopback, "", &[])?;
    let prefix: SocketAddr = "[fd00:faa5:1::fffe]:9033".parse()?;
    spawn_on_socket(b, hello, prefix, "", &[])?;
    let unshare = [
        "unshare", "--mount", "--pid", "--fork", "--ipc", "--uts", "--net",
    ];
    let namespaced: SocketAddr = "[fd00:faa5:1::fffe]:9034".parse()?;
    spawn_on_socket(b, hello, namespaced, "", &unshare)?;
    let root = cgroup_root().context("no cgroup v2 hierarchy")?;
    let dir = format!("{root}/{CGROUP}");
    std::fs::create_dir_all(&dir).with_context(|| dir.clone())?;
    let join = format!("echo $$ > {dir}/cgroup.procs && ");
    let cgrouped: SocketAddr = "[fd00:faa5:1::fffe]:9035".parse()?;
    spawn_on_socket(b, hello, cgrouped, &join, &unshare)?;
    // faasd gives each function a user of its own; for the kernel's work per system call
    // any unprivileged user is the same (`nobody` here).
    let unprivileged = [
        &unshare[..],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
        ],
    ]
    .concat();
    let me = std::env::current_exe()?;
    let filtered = [
        &unprivileged[..],
        &[me.to_str().context("the bench's path")?, WITH_FILTER],
    ]
    .concat();
    let user: SocketAddr = "[fd00:faa5:1::fffe]:9036".parse()?;
    spawn_on_socket(b, hello, user, &join, &unprivileged)?;
    let confined: SocketAddr = "[fd00:faa5:1::fffe]:9037".parse()?;
    spawn_on_socket(b, hello, confined, &join, &filtered)?;
    let arms = [
        ("hello, its own socket on [::1] (the limit)", own),
        ("hello, a socket made as faasd does, on [::1]", loopback),
        ("the same, on an unbound function-prefix address", prefix),
        ("the same, in new namespaces (unshare)", namespaced),
        (
            "the same, namespaces and a cgroup beside the function's",
            cgrouped,
        ),
        ("the same, also an unprivileged user", user),
        ("the same, also faasd's system call filter", confined),
        ("the function's instance, steered", function),
    ];
    let mut samples = vec![Vec::new(); arms.len()];
    for block in 0..rounds.div_ceil(100) * arms.len() {
        let arm = block % arms.len();
        for _ in 0..100 {
            let (t0, _, _) = request(arms[arm].1)?;
            samples[arm].push(monotonic_ns() - t0);
        }
    }
    let rows: Vec<Summary> = arms
        .iter()
        .zip(&samples)
        .map(|((n, _), s)| Summary::of(n, s))
        .collect();
    stats::print_table(
        "warm path, one suspect at a time, blocks of 100 (µs)",
        Unit::Us,
        &rows,
        Some(rows[0].p50),
    );
    Ok(json!(
        rows.iter()
            .map(|s| {
                let mut j = s.to_json();
                j["ratio_to_limit"] = json!(s.p50 as f64 / rows[0].p50 as f64);
                j
            })
            .collect::<Vec<_>>()
    ))
}

/// Removes the arms' cgroup once their servers are gone.
pub fn cleanup() {
    if let Some(root) = cgroup_root() {
        let _ = std::fs::write(format!("{root}/{CGROUP}/cgroup.kill"), "1");
        for _ in 0..40 {
            if std::fs::remove_dir(format!("{root}/{CGROUP}")).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
