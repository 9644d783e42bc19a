//! faasd's init: pid 1 of an instance's pid namespace, as systemd would be, in the process
//! runtime's instances and in containers started through the shim.
//!
//! Pid 1 gets no signal it has no handler for, so a program that installs none (Python's
//! `http.server`, most small servers) would ignore SIGTERM until its grace period ended in
//! SIGKILL. The init forwards every signal to the function, which as pid 2 gets the default
//! actions, reaps whatever is orphaned to it, and exits with the function's status (128 +
//! the signal when a signal ended it).

/// Runs as the init of `function` until it ends; returns never. Every signal must be
/// blocked in `all` (and was before the fork, so none sent meanwhile is lost). Closes
/// every descriptor first: the init holds none of the function's.
///
/// # Safety
/// Only in a single-threaded process (a freshly forked or cloned child): it makes raw
/// calls only, and ends the process.
pub unsafe fn run(function: libc::pid_t, all: &libc::sigset_t) -> ! {
    // SAFETY: plain syscalls on values we own.
    unsafe {
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        loop {
            let mut info: libc::siginfo_t = core::mem::zeroed();
            let sig = libc::sigwaitinfo(all, &mut info);
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(function, sig);
                continue;
            }
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if pid <= 0 {
                    break;
                }
                if pid == function {
                    let code = if libc::WIFSIGNALED(status) {
                        128 + libc::WTERMSIG(status)
                    } else {
                        libc::WEXITSTATUS(status)
                    };
                    libc::_exit(code);
                }
            }
        }
    }
}
