//! The spawner: a small helper process that clones every process instance.
//!
//! A clone copies the caller's page tables and descriptor table, and the exec that follows
//! closes every inherited descriptor: from a daemon holding one socket per function that
//! is O(functions) work on every cold start (2.2 ms among one function, 6.8 ms among
//! 4,000 here). The spawner is this executable re-run at the daemon's start, with little
//! memory and three descriptors, so a clone costs the same among any number of functions.
//! It clones with `CLONE_PARENT`: the instance is the daemon's child, which reaps it and
//! gets its exit status as before.
//!
//! One request per datagram over a private socket pair: the launch as JSON, with the
//! descriptors it needs attached; the answer carries the pid, and the instance's pidfd and
//! the read end of its exec-error pipe (EOF once it has exec'd).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixDatagram,
    },
    sync::Mutex,
};

use sendfd::{RecvWithFd, SendWithFd};
use serde::{Deserialize, Serialize};

/// Where the spawner finds its end of the socket pair.
const SOCKET_FD: RawFd = 3;
/// Where an instance's secrets are mounted.
pub(super) const SECRETS_MOUNT: &std::ffi::CStr = c"/var/openfaas/secrets";
/// The hidden argument that makes `faasd` the spawner.
pub const ARG: &str = "__spawner";
/// Descriptors a request may carry: stdio, the cgroup, the network namespace, and up to
/// `MAX_PORTS` sockets.
const MAX_FDS: usize = 8 + faasd_core::spec::MAX_PORTS;

/// One instance to clone. Descriptors travel beside it in this order: stdin, stdout,
/// stderr, the cgroup directory (when `cgroup`), the network namespace (when `netns`), the
/// `joins` v1 `cgroup.procs` files, the instance's end of its hand-over socket (when
/// `prepared`), then the sockets (placed at fd 3, 4, …; none when `prepared`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Request {
    pub argv: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup: bool,
    /// Directories made empty and inaccessible in the instance's mount namespace (those
    /// that do not exist are skipped).
    pub hide: Vec<String>,
    /// A fresh tmpfs on `/tmp`, the instance's own.
    pub private_tmp: bool,
    /// Join this network namespace instead of a new one with only `lo`.
    pub netns: bool,
    /// v1 `cgroup.procs` files to join (the limits of a hybrid host), at most 3.
    pub joins: usize,
    /// The host's root is read-only inside (all of it: `/proc`, `/dev` stay writable).
    pub read_only: bool,
    /// A directory mounted read-only at `/var/openfaas/secrets`.
    pub secrets: Option<String>,
    /// Directories that stay writable (bound over themselves after the root goes
    /// read-only).
    pub writable: Vec<String>,
    /// Files bound read-only over others (source, target); a missing target is skipped.
    pub binds: Vec<(String, String)>,
    /// Set the instance up, then wait on the hand-over socket: it says it is ready with
    /// one byte, and execs once the sockets arrive there (a closed socket ends it).
    pub prepared: bool,
}

/// The spawner's answer: a pid (with the pidfd and the error pipe attached), or what failed.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Started { pid: i32 },
    Failed { op: String, errno: i32 },
}

/// A clone the spawner made.
pub(super) struct Cloned {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// Reads EOF once the instance has exec'd, or 8 bytes (step, errno) if it failed.
    pub errors: OwnedFd,
}

/// The daemon's side: the running spawner and the socket to it.
#[derive(Debug)]
pub struct Spawner {
    link: Mutex<Link>,
}

#[derive(Debug)]
struct Link {
    socket: UnixDatagram,
    child: std::process::Child,
}

impl Link {
    fn start() -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let (ours, theirs) = UnixDatagram::pair()?;
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg(ARG)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(theirs);
        Ok(Self {
            socket: ours,
            child,
        })
    }

    fn ask(&self, req: &[u8], fds: &[RawFd]) -> io::Result<Cloned> {
        self.socket.send_with_fd(req, fds)?;
        let mut buf = [0u8; 512];
        let mut got = [-1; 2];
        let (n, nfds) = self.socket.recv_with_fd(&mut buf, &mut got)?;
        // SAFETY: descriptors the kernel just installed for us; each is owned once.
        let owned: Vec<OwnedFd> = got[..nfds]
            .iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
            .collect();
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the spawner has exited",
            ));
        }
        match serde_json::from_slice::<Reply>(&buf[..n]).map_err(io::Error::other)? {
            Reply::Started { pid } => {
                let mut fds = owned.into_iter();
                match (fds.next(), fds.next()) {
                    (Some(pidfd), Some(errors)) => Ok(Cloned { pid, pidfd, errors }),
                    _ => Err(io::Error::other("the spawner's answer lacks descriptors")),
                }
            }
            Reply::Failed { op, errno } => Err(io::Error::new(
                io::Error::from_raw_os_error(errno).kind(),
                format!("{op}: {}", io::Error::from_raw_os_error(errno)),
            )),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spawner {
    /// Starts the spawner. Call it early: the spawner is a fresh exec, so what it costs does
    /// not depend on when, but a failure is best reported before anything else is set up.
    pub fn start() -> io::Result<Self> {
        Ok(Self {
            link: Mutex::new(Link::start()?),
        })
    }

    /// Has the spawner clone `req` with `fds`; a spawner that died is started again once.
    pub(super) fn clone_instance(&self, req: &Request, fds: &[RawFd]) -> io::Result<Cloned> {
        let bytes = serde_json::to_vec(req).map_err(io::Error::other)?;
        let mut link = self.link.lock().expect("spawner lock");
        match link.ask(&bytes, fds) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe
                        | io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionReset
                ) =>
            {
                tracing::warn!("the spawner is gone ({e}); starting it again");
                *link = Link::start()?;
                link.ask(&bytes, fds)
            }
            other => other,
        }
    }
}

/// The spawner's main loop (`faasd __spawner`): serves requests until the daemon's end of
/// the socket closes. Never returns.
pub fn serve() -> ! {
    // SAFETY: prctl and close_range on our own process; the socket fd is ours from here.
    let socket = unsafe {
        // Gone with the daemon, even if it is killed with -9.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::syscall(libc::SYS_close_range, (SOCKET_FD + 1) as u32, u32::MAX, 0);
        UnixDatagram::from_raw_fd(SOCKET_FD)
    };
    let mut buf = vec![0u8; 1 << 20];
    let filter = super::seccomp::deny_filter(faasd_containerd::oci::DENIED_SYSCALLS);
    // The highest capability this kernel knows: the instances drop every one up to it.
    let last_cap: libc::c_ulong = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(40);
    loop {
        let mut fds = [-1; MAX_FDS];
        let (n, nfds) = match socket.recv_with_fd(&mut buf, &mut fds) {
            Ok((0, _)) | Err(_) => std::process::exit(0),
            Ok(got) => got,
        };
        // SAFETY: descriptors the kernel just installed for us; each is owned once.
        let fds: Vec<OwnedFd> = fds[..nfds]
            .iter()
            .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
            .collect();
        let reply = match serde_json::from_slice::<Request>(&buf[..n]) {
            Ok(req) => clone(&req, &fds, &filter, last_cap),
            Err(e) => Err(("parsing the request", io::Error::other(e))),
        };
        let sent = match reply {
            Ok(c) => {
                let msg = serde_json::to_vec(&Reply::Started { pid: c.pid }).expect("serializes");
                socket.send_with_fd(&msg, &[c.pidfd.as_raw_fd(), c.errors.as_raw_fd()])
            }
            Err((op, e)) => {
                let msg = serde_json::to_vec(&Reply::Failed {
                    op: op.into(),
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                })
                .expect("serializes");
                socket.send_with_fd(&msg, &[])
            }
        };
        if sent.is_err() {
            std::process::exit(0);
        }
    }
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

fn cstrings(v: &[String]) -> io::Result<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_str()).map_err(io::Error::other))
        .collect()
}

/// Clones one instance into fresh mount, pid, network, ipc and uts namespaces and its
/// cgroup; the child sets itself up and execs.
fn clone(
    req: &Request,
    fds: &[OwnedFd],
    filter: &[super::seccomp::Instruction],
    last_cap: libc::c_ulong,
) -> Result<Cloned, (&'static str, io::Error)> {
    let fixed = 3
        + usize::from(req.cgroup)
        + usize::from(req.netns)
        + req.joins.min(3)
        + usize::from(req.prepared);
    if fds.len() < fixed || req.argv.is_empty() {
        return Err((
            "reading the request",
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    // Everything the child touches is prepared here: after clone it may not allocate.
    let argv = cstrings(&req.argv).map_err(|e| ("argv", e))?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let env = cstrings(&req.env).map_err(|e| ("env", e))?;
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let hide = cstrings(&req.hide).map_err(|e| ("hide", e))?;
    let hide_ptrs: Vec<*const libc::c_char> = hide.iter().map(|h| h.as_ptr()).collect();
    let bind_sources = cstrings(&req.binds.iter().map(|b| b.0.clone()).collect::<Vec<_>>())
        .map_err(|e| ("binds", e))?;
    let bind_targets = cstrings(&req.binds.iter().map(|b| b.1.clone()).collect::<Vec<_>>())
        .map_err(|e| ("binds", e))?;
    let writable = cstrings(&req.writable).map_err(|e| ("writable", e))?;
    let writable_ptrs: Vec<*const libc::c_char> = writable.iter().map(|w| w.as_ptr()).collect();
    let secrets = req
        .secrets
        .as_deref()
        .map(CString::new)
        .transpose()
        .map_err(|e| ("secrets", io::Error::other(e)))?;
    let binds: Vec<(*const libc::c_char, *const libc::c_char)> = bind_sources
        .iter()
        .zip(&bind_targets)
        .map(|(s, t)| (s.as_ptr(), t.as_ptr()))
        .collect();
    let sockets: Vec<RawFd> = fds[fixed..].iter().map(AsRawFd::as_raw_fd).collect();
    let joined = fixed - usize::from(req.prepared);
    let joins: Vec<RawFd> = fds[joined - req.joins.min(3)..joined]
        .iter()
        .map(AsRawFd::as_raw_fd)
        .collect();
    let (err_r, err_w) = pipe().map_err(|e| ("pipe", e))?;
    let child = Child {
        argv0: argv[0].as_ptr(),
        argv: argv_ptrs.as_ptr(),
        env: env_ptrs.as_ptr(),
        stdio: [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()],
        fds: &sockets,
        hide: &hide_ptrs,
        binds: &binds,
        netns: req
            .netns
            .then(|| fds[3 + usize::from(req.cgroup)].as_raw_fd()),
        joins: &joins,
        filter,
        last_cap,
        read_only: req.read_only,
        secrets: secrets.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
        writable: &writable_ptrs,
        private_tmp: req.private_tmp,
        uid: req.uid,
        gid: req.gid,
        err: err_w.as_raw_fd(),
        handover: if req.prepared {
            fds[joined].as_raw_fd()
        } else {
            -1
        },
    };
    let mut pidfd: libc::c_int = -1;
    let namespaces = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | if req.netns { 0 } else { libc::CLONE_NEWNET }
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    let args = CloneArgs {
        // CLONE_PARENT: the daemon, not the spawner, is the instance's parent.
        flags: (namespaces | libc::CLONE_PIDFD | libc::CLONE_PARENT) as u64
            | if req.cgroup { CLONE_INTO_CGROUP } else { 0 },
        pidfd: (&raw mut pidfd) as u64,
        // Ignored with CLONE_PARENT: the instance signals the daemon as the spawner would.
        exit_signal: 0,
        // The child is created inside its cgroup (CLONE_INTO_CGROUP): joining it afterwards
        // through cgroup.procs takes the cgroup rwsem for writing, which waits out an RCU
        // grace period when the host has been idle, up to 15 ms here.
        cgroup: if req.cgroup {
            fds[3].as_raw_fd() as u64
        } else {
            0
        },
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a stack behaves like fork; the kernel writes the pidfd
    // through `args.pidfd`. The child only calls async-signal-safe functions (and this
    // process has one thread).
    let pid = unsafe { libc::syscall(libc::SYS_clone3, &raw const args, size_of::<CloneArgs>()) };
    if pid < 0 {
        return Err(("clone3", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: we are the freshly cloned child; `child` points into memory prepared
        // before the clone, which the copy-on-write image keeps valid.
        unsafe { child.run() }
    }
    drop(err_w);
    Ok(Cloned {
        pid: pid as i32,
        // SAFETY: the kernel handed us a new pidfd.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        errors: err_r,
    })
}

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

/// What the child needs, as raw pointers into the parent's prepared memory.
struct Child<'a> {
    argv0: *const libc::c_char,
    argv: *const *const libc::c_char,
    env: *const *const libc::c_char,
    stdio: [RawFd; 3],
    fds: &'a [RawFd],
    hide: &'a [*const libc::c_char],
    binds: &'a [(*const libc::c_char, *const libc::c_char)],
    netns: Option<RawFd>,
    joins: &'a [RawFd],
    filter: &'a [super::seccomp::Instruction],
    last_cap: libc::c_ulong,
    read_only: bool,
    /// The secrets' directory, or null.
    secrets: *const libc::c_char,
    writable: &'a [*const libc::c_char],
    private_tmp: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    err: RawFd,
    /// A prepared instance's hand-over socket, or -1.
    handover: RawFd,
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
            // As systemd's ProtectHome= and InaccessiblePaths=: an empty, read-only
            // directory nobody may enter over each. One tmpfs, bound over the others: a bind
            // costs less than a new superblock, and the read-only superblock stays so.
            let mut empty: *const libc::c_char = std::ptr::null();
            for dir in self.hide {
                let r = if empty.is_null() {
                    libc::mount(
                        c"tmpfs".as_ptr(),
                        *dir,
                        c"tmpfs".as_ptr(),
                        libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        c"mode=000,size=4k".as_ptr().cast(),
                    )
                } else {
                    libc::mount(
                        empty,
                        *dir,
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if r == 0 {
                    if empty.is_null() {
                        empty = *dir;
                    }
                } else if !matches!(*libc::__errno_location(), libc::ENOENT | libc::ENOTDIR) {
                    fail(8);
                }
            }
            if !self.secrets.is_null()
                && (libc::mount(
                    self.secrets,
                    SECRETS_MOUNT.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) < 0
                    || libc::mount(
                        std::ptr::null(),
                        SECRETS_MOUNT.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ) < 0)
            {
                fail(15);
            }
            // As systemd's ProtectSystem=strict: every mount read-only at once, but for the
            // API filesystems a program expects to write (its /proc, devices).
            if self.read_only
                && (set_read_only(c"/".as_ptr(), true, true) < 0
                    || set_read_only(c"/proc".as_ptr(), false, false) < 0
                    || set_read_only(c"/dev".as_ptr(), false, true) < 0)
            {
                fail(14);
            }
            // As systemd's PrivateTmp=: what one instance leaves there, no other sees.
            if self.private_tmp
                && libc::mount(
                    c"tmpfs".as_ptr(),
                    c"/tmp".as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"mode=1777".as_ptr().cast(),
                ) < 0
            {
                fail(9);
            }
            // The function's own directory stays writable: bound over itself, then (a
            // bind keeps the read-only flag it came from) made writable.
            for dir in self.writable {
                if libc::mount(
                    *dir,
                    *dir,
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) < 0
                    || set_read_only(*dir, false, false) < 0
                {
                    fail(16);
                }
            }
            // Read-only binds over the host's files (resolv.conf, hosts).
            for (source, target) in self.binds {
                if libc::mount(
                    *source,
                    *target,
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) < 0
                {
                    if matches!(*libc::__errno_location(), libc::ENOENT | libc::ENOTDIR) {
                        continue;
                    }
                    fail(10);
                }
                if libc::mount(
                    std::ptr::null(),
                    *target,
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ) < 0
                {
                    fail(10);
                }
            }
            // A prepared namespace (it may call out) has lo up already; a new one has not.
            if let Some(ns) = self.netns {
                if libc::setns(ns, libc::CLONE_NEWNET) < 0 {
                    fail(11);
                }
            } else if !loopback_up() {
                fail(3);
            }
            // "0": this process; the function, forked below, inherits them.
            for fd in self.joins {
                if libc::write(*fd, c"0".as_ptr().cast(), 1) < 0 {
                    fail(12);
                }
            }
            // Raw syscalls, not glibc's wrappers: in a multi-threaded process those broadcast
            // the change to every thread under a glibc lock, which another thread of the
            // parent may have held at the moment of the clone, and the child would wait on
            // it forever. The raw calls change this thread, the child's only one.
            let (uid, gid) = (self.uid as libc::c_long, self.gid as libc::c_long);
            // No capabilities, whoever it runs as: out of the bounding set first (which
            // needs CAP_SETPCAP, so before the uid changes), then out of the sets the
            // process has (a function run as root keeps them across setresuid).
            for cap in 0..=self.last_cap {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                    fail(5);
                }
            }
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let none = [CapData::default(); 2];
            if libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            ) < 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) < 0
                || libc::syscall(libc::SYS_setresuid, uid, uid, uid) < 0
                || libc::syscall(libc::SYS_capset, &raw const header, none.as_ptr()) < 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            {
                fail(5);
            }
            let program = libc::sock_fprog {
                len: self.filter.len() as u16,
                filter: self.filter.as_ptr().cast_mut(),
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const program,
            ) < 0
            {
                fail(13);
            }
            // This process stays as the namespace's pid 1 (faasd_common::init); the function
            // is its child, pid 2, forked now: a prepared instance's function waits for its
            // sockets itself, so the first connection pays no fork. Signals are blocked
            // first, so that none sent meanwhile is lost (one sent to a function still
            // waiting takes effect as it execs).
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
            let function = libc::syscall(
                libc::SYS_clone,
                libc::SIGCHLD as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
            );
            if function < 0 {
                fail(7);
            }
            if function > 0 {
                // It holds no descriptor: the error pipe closes when the function execs.
                libc::close(self.err);
                faasd_common::init::run(function as libc::pid_t, &all);
            }
            // A prepared instance is as set up as it gets without its sockets, and as
            // confined: its function says so, and waits for them.
            let mut received = [-1 as RawFd; faasd_core::spec::MAX_PORTS];
            let sockets: &[RawFd] = if self.handover >= 0 {
                let n = self.receive(&mut received);
                &received[..n]
            } else {
                self.fds
            };
            // Move every source fd above the target range first, so no dup2 clobbers a
            // source that is still to be placed.
            let n = sockets.len() as libc::c_int;
            let high = 3 + n;
            let mut tmp_stdio = [0; 3];
            for (i, fd) in self.stdio.iter().enumerate() {
                tmp_stdio[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, high);
                if tmp_stdio[i] < 0 {
                    fail(4);
                }
            }
            let mut tmp = [0 as RawFd; faasd_core::spec::MAX_PORTS];
            if sockets.len() > tmp.len() {
                *libc::__errno_location() = libc::EMFILE;
                fail(4);
            }
            for (i, fd) in sockets.iter().enumerate() {
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
            for (i, fd) in tmp[..sockets.len()].iter().enumerate() {
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

impl Child<'_> {
    /// A prepared instance's wait: one byte on the hand-over socket says it is ready; the
    /// sockets come back in one message, placed into `into`. Returns how many arrived. A
    /// socket closed by the daemon (the instance is not needed, or the daemon is gone) ends
    /// the process quietly.
    ///
    /// # Safety
    /// As [`Child::run`]: the freshly cloned child only.
    unsafe fn receive(&self, into: &mut [RawFd; faasd_core::spec::MAX_PORTS]) -> usize {
        // SAFETY: raw syscalls on the child's own descriptors and stack buffers.
        unsafe {
            if libc::write(self.handover, [1u8].as_ptr().cast(), 1) != 1 {
                libc::_exit(0);
            }
            let mut payload = [0u8; 256];
            let mut iov = libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: payload.len(),
            };
            // Room for MAX_PORTS descriptors: CMSG_SPACE(4 * 32) is 144 bytes.
            let mut control = [0u64; 24];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control);
            let n = loop {
                let n = libc::recvmsg(self.handover, &mut msg, libc::MSG_CMSG_CLOEXEC);
                if n >= 0 || *libc::__errno_location() != libc::EINTR {
                    break n;
                }
            };
            if n <= 0 {
                libc::_exit(0);
            }
            let mut count = 0;
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / size_of::<RawFd>() {
                        if count < into.len() {
                            into[count] = data.add(i).read_unaligned();
                            count += 1;
                        }
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            libc::close(self.handover);
            count
        }
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Sets (`on`) or clears the read-only flag of the mount at `path`, and of every mount
/// below it when `recursive`: one system call, no allocation.
unsafe fn set_read_only(path: *const libc::c_char, on: bool, recursive: bool) -> libc::c_long {
    let attr = MountAttr {
        attr_set: if on { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if on { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is NUL-terminated and the attribute ours; the size is its own.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path,
            if recursive { AT_RECURSIVE } else { 0 },
            &raw const attr,
            size_of::<MountAttr>(),
        )
    }
}

/// `struct __user_cap_header_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of capset(2); version 3 takes two.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

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
