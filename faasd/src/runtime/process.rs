//! The `process` runtime: `clone3(2)` straight into fresh mount, pid, network, ipc and uts
//! namespaces and the function's cgroup, then `execve`. No helper process, no daemon: this is the floor for
//! activation latency.
//!
//! The instance is pid 1 of its pid namespace (so LISTEN_PID=1), its network namespace holds
//! only `lo` (its sockets live in the host's namespace, so it needs nothing else), it sees
//! its own `/proc`, runs with no new privileges as an unprivileged user, in its function's
//! cgroup. As pid 1 it receives SIGTERM only if it installs a handler; otherwise the stop
//! grace period ends with SIGKILL, as for a container without an init.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

use super::{Instance, Launch, Runtime, RuntimeError, cstring};

/// The process runtime.
#[derive(Debug, Default)]
pub struct ProcessRuntime;

/// Steps the child reports when one fails, by index.
const STEPS: &[&str] = &[
    "setsid",
    "making mounts private",
    "mounting /proc",
    "bringing up lo",
    "placing file descriptors",
    "dropping privileges",
    "execve",
];

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`); libc defines it only for musl.
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Create the child directly in the cgroup named by `clone_args.cgroup` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

struct User {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

fn lookup_user(name: &str) -> Result<User, RuntimeError> {
    let c = cstring(name)?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data; getpwnam_r writes into it and buf, both ours.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as above; the sizes given are the real ones.
    let r = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 || out.is_null() {
        return Err(RuntimeError::NoSuchUser(name.into()));
    }
    Ok(User {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    })
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { op, source }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into p.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) })
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    async fn reap(&self, instance: &Instance) -> String {
        let mut status = 0;
        // SAFETY: waitpid, non-blocking, on the instance's pid; an adopted instance is not
        // our child and yields no status.
        let r = unsafe { libc::waitpid(instance.pid, &mut status, libc::WNOHANG) };
        if r == instance.pid {
            super::describe_exit(status)
        } else {
            "exited".into()
        }
    }

    async fn start(&self, launch: Launch) -> Result<Instance, RuntimeError> {
        // clone3 and the wait for exec take about 2 ms: a blocking thread's work.
        tokio::task::spawn_blocking(move || start(&launch))
            .await
            .map_err(|e| RuntimeError::Io {
                op: "waiting for the start",
                source: io::Error::other(e),
            })?
    }
}

/// Clones the instance into its namespaces and waits until it has exec'd.
fn start(launch: &Launch) -> Result<Instance, RuntimeError> {
    use std::os::fd::AsRawFd;

    let user = lookup_user(&launch.user)?;
    // Everything the child touches is prepared here: after clone it may not allocate.
    let argv: Vec<CString> = launch
        .argv
        .iter()
        .map(|a| cstring(a))
        .collect::<Result<_, _>>()?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env: Vec<CString> = launch
        .env
        .iter()
        .map(|(k, v)| cstring(&format!("{k}={v}")))
        .chain(std::iter::once(cstring("LISTEN_PID=1")))
        .collect::<Result<_, _>>()?;
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // The child is created inside its cgroup (CLONE_INTO_CGROUP): joining it afterwards
    // through cgroup.procs takes the cgroup rwsem for writing, which waits out an RCU
    // grace period when the host has been idle, up to 15 ms here.
    let cgroup = launch
        .cgroup
        .as_ref()
        .map(|d| std::fs::File::open(d).map_err(io_err("opening the function's cgroup")))
        .transpose()?;
    let devnull = std::fs::File::open("/dev/null").map_err(io_err("open /dev/null"))?;
    let stdio = [
        launch.stdin.unwrap_or(devnull.as_raw_fd()),
        launch.stdout,
        launch.stderr,
    ];
    let (err_r, err_w) = pipe().map_err(io_err("pipe"))?;

    let child = Child {
        argv0: argv[0].as_ptr(),
        argv: argv_ptrs.as_ptr(),
        env: env_ptrs.as_ptr(),
        stdio,
        fds: &launch.fds,
        user,
        err: err_w.as_raw_fd(),
    };

    let mut pidfd: libc::c_int = -1;
    let namespaces = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    let args = CloneArgs {
        flags: (namespaces | libc::CLONE_PIDFD) as u64
            | if cgroup.is_some() {
                CLONE_INTO_CGROUP
            } else {
                0
            },
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_ref().map_or(0, |c| c.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a stack behaves like fork; the kernel writes the pidfd
    // through `args.pidfd`. The child only calls async-signal-safe functions.
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    if pid < 0 {
        return Err(io_err("clone3")(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; `child` points into memory the parent
        // prepared and the copy-on-write image keeps valid.
        unsafe { child.run() }
    }
    let pid = pid as i32;
    // SAFETY: the kernel handed us a new pidfd.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    drop(err_w);
    let mut report = [0u8; 8];
    // EOF (0) means exec succeeded: the pipe is CLOEXEC.
    let n = loop {
        // SAFETY: reads at most 8 bytes into our 8-byte buffer.
        let n = unsafe { libc::read(err_r.as_raw_fd(), report.as_mut_ptr().cast(), 8) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    if n == 8 {
        let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes")) as usize;
        let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
        let mut status = 0;
        // SAFETY: reaps our own failed child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(RuntimeError::Child {
            program: launch.argv[0].clone(),
            step: STEPS.get(step).copied().unwrap_or("setup"),
            source: io::Error::from_raw_os_error(errno),
        });
    }
    Ok(Instance {
        pid,
        pidfd,
        id: launch.instance.clone(),
        milestones: super::Milestones::default(),
    })
}

/// What the child needs, as raw pointers into the parent's prepared memory.
struct Child<'a> {
    argv0: *const libc::c_char,
    argv: *const *const libc::c_char,
    env: *const *const libc::c_char,
    stdio: [RawFd; 3],
    fds: &'a [RawFd],
    user: User,
    err: RawFd,
}

impl Child<'_> {
    /// Runs in the child between clone and exec: async-signal-safe calls only.
    unsafe fn run(&self) -> ! {
        // SAFETY: raw syscalls on memory the parent prepared before clone; nothing here
        // allocates or takes a lock another thread could hold (so no glibc function that
        // does, such as setuid, malloc or printf).
        unsafe {
            let fail = |step: u32| -> ! {
                let errno = *libc::__errno_location();
                let mut msg = [0u8; 8];
                msg[..4].copy_from_slice(&step.to_ne_bytes());
                msg[4..].copy_from_slice(&errno.to_ne_bytes());
                libc::write(self.err, msg.as_ptr().cast(), 8);
                libc::_exit(127)
            };
            if libc::setsid() < 0 {
                fail(0);
            }
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) < 0
            {
                fail(1);
            }
            if libc::mount(
                c"proc".as_ptr(),
                c"/proc".as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) < 0
            {
                fail(2);
            }
            if !loopback_up() {
                fail(3);
            }
            // Move every source fd above the target range first, so no dup2 clobbers a
            // source that is still to be placed.
            let n = self.fds.len() as libc::c_int;
            let high = 3 + n;
            let mut tmp_stdio = [0; 3];
            for (i, fd) in self.stdio.iter().enumerate() {
                tmp_stdio[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, high);
                if tmp_stdio[i] < 0 {
                    fail(4);
                }
            }
            let mut tmp = [0 as RawFd; crate::spec::MAX_PORTS];
            if self.fds.len() > tmp.len() {
                *libc::__errno_location() = libc::EMFILE;
                fail(4);
            }
            for (i, fd) in self.fds.iter().enumerate() {
                tmp[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, high);
                if tmp[i] < 0 {
                    fail(4);
                }
            }
            for (i, fd) in tmp_stdio.iter().enumerate() {
                if libc::dup2(*fd, i as libc::c_int) < 0 {
                    fail(4);
                }
            }
            for (i, fd) in tmp[..self.fds.len()].iter().enumerate() {
                if libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    fail(4);
                }
            }
            // Everything above the passed sockets closes at exec (the error pipe included,
            // which is exactly when the parent should see EOF).
            if libc::syscall(
                libc::SYS_close_range,
                high as u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                fail(4);
            }
            // Raw syscalls, not glibc's wrappers: in a multi-threaded process those broadcast
            // the change to every thread under a glibc lock, which another thread of the
            // parent may have held at the moment of the clone, and the child would wait on
            // it forever. The raw calls change this thread, the child's only one.
            let (uid, gid) = (self.user.uid as libc::c_long, self.user.gid as libc::c_long);
            if libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            ) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            {
                fail(5);
            }
            // Undo what the daemon changed for itself: ignored SIGPIPE and blocked signals
            // would otherwise be inherited across exec.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            libc::execve(self.argv0, self.argv, self.env);
            fail(6)
        }
    }
}

/// `ip link set lo up` with an ioctl (no allocation, no netlink).
unsafe fn loopback_up() -> bool {
    // SAFETY: plain syscalls on a zeroed ifreq we own.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return false;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            libc::close(s);
            return false;
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let ok = libc::ioctl(s, libc::SIOCSIFFLAGS, &mut ifr) >= 0;
        libc::close(s);
        ok
    }
}
