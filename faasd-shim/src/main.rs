//! The activation shim: the entrypoint of every container faasd starts with socket passing.
//!
//! `shim -- COMMAND [ARGS...]`: connects to the handoff socket faasd mounted into the
//! container, receives the function's sockets and their names in one SCM_RIGHTS message,
//! places them at fd 3, 4, …, sets LISTEN_FDS and LISTEN_FDNAMES, and forks COMMAND (with
//! LISTEN_PID, its own pid, 2): the shim stays as the container's pid 1, faasd's init
//! (`faasd_common::init`), so that SIGTERM stops a program that installs no handler. faasd
//! sets NOTIFY_SOCKET and the rest of the environment in the container's spec.
//!
//! `shim --init -- COMMAND [ARGS...]`: only the init, for an image that binds its own port
//! (faasd forwards to it and passes no sockets).
//!
//! `--prepared` (with either): the container is prepared ahead of its first connection.
//! The shim connects at once and waits, without a time limit, for faasd's message (the
//! sockets, or with `--init` a message of its own) before it runs COMMAND; faasd holds the
//! other end, so the wait ends with faasd too.
//!
//! It is built as a static binary, so it runs in an image that has nothing else: no shell,
//! no libc, no /etc.

use std::{
    ffi::{CString, OsString},
    os::{
        fd::RawFd,
        unix::{ffi::OsStringExt, net::UnixStream},
    },
    time::Duration,
};

use faasd_common::handoff;
use sendfd::RecvWithFd;

/// faasd sends right after the task starts; a shim that waits longer than this was
/// forgotten (faasd died during the start) and should not hang forever.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let (mut sockets, mut prepared, mut rest) = (true, false, &args[..]);
    while let Some((flag, tail)) = rest.split_first() {
        match flag.to_str() {
            Some("--init") => sockets = false,
            Some("--prepared") => prepared = true,
            _ => break,
        }
        rest = tail;
    }
    let command = match rest.split_first() {
        Some((sep, rest)) if sep == "--" && !rest.is_empty() => rest,
        _ => fail(
            "usage: shim [--init] [--prepared] -- COMMAND [ARGS...] (started by faasd as a \
             container's entrypoint)",
        ),
    };
    if prepared && !sockets {
        // The go-ahead: faasd sends no sockets to an image that binds its own port.
        receive(None).unwrap_or_else(|e| fail(&format!("waiting for faasd: {e}")));
    }
    if sockets {
        let timeout = (!prepared).then_some(RECEIVE_TIMEOUT);
        let (fds, names) =
            receive(timeout).unwrap_or_else(|e| fail(&format!("receiving sockets: {e}")));
        if fds.is_empty() {
            fail("receiving sockets: faasd sent none");
        }
        place(&fds).unwrap_or_else(|e| fail(&format!("placing sockets at fd 3..: {e}")));
        // SAFETY: single-threaded; nothing else reads the environment concurrently.
        unsafe {
            std::env::set_var("LISTEN_FDS", fds.len().to_string());
            std::env::set_var("LISTEN_FDNAMES", names);
        }
    }
    // SAFETY: single-threaded, so fork is safe; signals are blocked across it so that none
    // sent to the container meanwhile is lost, and the child restores its mask.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut before: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut before);
        match libc::fork() {
            -1 => fail(&format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            }
            function => faasd_common::init::run(function, &all),
        }
        if sockets {
            std::env::set_var("LISTEN_PID", std::process::id().to_string());
        }
    }
    let err = exec(command);
    fail(&format!("exec {:?}: {err}", command[0]));
}

fn fail(msg: &str) -> ! {
    eprintln!("faasd-shim: {msg}");
    std::process::exit(127);
}

/// Connects to faasd and takes its one message: descriptors and their names. `timeout`:
/// how long to wait (none for a prepared container).
fn receive(timeout: Option<Duration>) -> std::io::Result<(Vec<RawFd>, String)> {
    let stream = UnixStream::connect(handoff::SOCKET)?;
    stream.set_read_timeout(timeout)?;
    let mut payload = vec![0u8; handoff::MAX_PAYLOAD];
    let mut fds = [-1; handoff::MAX_FDS];
    let (n, nfds) = stream.recv_with_fd(&mut payload, &mut fds)?;
    if n == 0 {
        return Err(std::io::Error::other("faasd closed the connection"));
    }
    payload.truncate(n);
    let names = String::from_utf8(payload)
        .map_err(|_| std::io::Error::other("socket names are not UTF-8"))?;
    Ok((fds[..nfds].to_vec(), names))
}

/// Moves the received descriptors to 3, 4, … without clobbering one another: first above
/// the target range, then into it (dup2 leaves the copies inheritable).
fn place(fds: &[RawFd]) -> std::io::Result<()> {
    let floor = 3 + fds.len() as RawFd;
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: fcntl on a descriptor we just received.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the original is ours and no longer needed.
        unsafe { libc::close(fd) };
        high.push(h);
    }
    for (i, &h) in high.iter().enumerate() {
        // SAFETY: dup2 onto the slot the protocol assigns; `h` is ours.
        if unsafe { libc::dup2(h, 3 + i as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        unsafe { libc::close(h) };
    }
    Ok(())
}

/// execvp: the image's command may be a bare name to find on its PATH.
fn exec(command: &[OsString]) -> std::io::Error {
    let args: Vec<CString> = match command
        .iter()
        .map(|a| CString::new(a.clone().into_vec()))
        .collect()
    {
        Ok(a) => a,
        Err(_) => return std::io::Error::other("argument contains a NUL byte"),
    };
    let mut ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: both arrays are NUL-terminated and outlive the call.
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    std::io::Error::last_os_error()
}
