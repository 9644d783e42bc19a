//! What faasd takes from systemd when it runs as a service: sockets passed with the socket
//! activation protocol (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), so a `faasd.socket` unit can
//! hold the privileged DNS port instead of faasd binding it.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// The sockets passed to this process, with their names (`unknown` when unnamed), taken
/// once: the variables are removed so no child inherits them.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: the process is single-threaded here (called first thing in the daemon).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !ours || n <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..n)
        .map(|i| {
            let fd = LISTEN_FDS_START + i;
            // SAFETY: systemd passed these descriptors to us; each is owned once, here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // Ours from now on: not inherited by function instances.
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            let name = names.next().filter(|n| !n.is_empty()).unwrap_or("unknown");
            (name.to_owned(), owned)
        })
        .collect()
}
