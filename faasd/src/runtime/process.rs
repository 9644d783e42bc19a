//! The `process` runtime: `clone3(2)` straight into fresh mount, pid, network, ipc and uts
//! namespaces and the function's cgroup, then `execve`. The clone is made by the spawner
//! (see [`super::spawner`]), so its cost does not grow with the daemon's functions.
//!
//! The instance's pid 1 is faasd's own small init (see [`super::spawner`]), and the function
//! its child, pid 2 (so LISTEN_PID=2): as under systemd, SIGTERM stops a program that
//! installs no handler, where pid 1 would ignore it until the grace period ends in SIGKILL.
//! Its network namespace is one the daemon prepared for calls out (see [`crate::egress`]),
//! or holds only `lo` (`faasd.dev/egress=none`: its sockets live in the host's namespace,
//! so it needs nothing else to serve); it sees its own `/proc`, runs with no new privileges, no
//! capabilities and the containers' system call filter ([`super::seccomp`]) as an
//! unprivileged user, in its function's cgroup.

use std::{
    io::{self, Read},
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    Instance, Launch, Runtime, RuntimeError, cstring,
    preload::Preload,
    prepared::Prepared,
    spawner::{Request, Spawner},
};

/// The process runtime, cloning through the spawner.
#[derive(Debug)]
pub struct ProcessRuntime {
    sandbox: Arc<Sandbox>,
    /// Per-instance copies of secrets, readable by the instance's user alone.
    secrets_dir: PathBuf,
}

/// What every clone shares: the spawner, how instances are confined, and the library that
/// holds prepared programs before `main` (`None` where it cannot be made).
#[derive(Debug)]
struct Sandbox {
    spawner: Spawner,
    hidden: Vec<PathBuf>,
    private_tmp: bool,
    preload: Option<Preload>,
}

/// Where secrets appear in an instance, as in an OpenFaaS container. The directory must
/// exist on the host to be mounted over; faasd makes it when it starts.
pub const SECRETS_MOUNT: &str = match super::spawner::SECRETS_MOUNT.to_str() {
    Ok(s) => s,
    Err(_) => panic!("the secrets' mount point is UTF-8"),
};

/// Out of every instance's reach, as with systemd's `ProtectHome=yes`; the daemon adds its
/// state directory (records, logs, secrets).
pub const HIDDEN: [&str; 2] = ["/home", "/root"];

impl ProcessRuntime {
    /// Starts the runtime and its spawner. `hidden`: directories instances may not see
    /// (empty and inaccessible in their mount namespace), except one holding the
    /// instance's own program. `private_tmp`: each instance gets a `/tmp` of its own.
    /// `secrets_dir`: where instances' copies of their secrets are kept while they run.
    /// `data_dir`: where functions' own directories are (users may pass through it, not
    /// list it; systemd's StateDirectory= makes it 0700 at every start).
    pub fn new(
        hidden: Vec<PathBuf>,
        private_tmp: bool,
        secrets_dir: PathBuf,
        data_dir: &Path,
    ) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(data_dir)?;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o711))?;
        if let Err(e) = std::fs::create_dir_all(SECRETS_MOUNT) {
            tracing::warn!(
                "creating {SECRETS_MOUNT} (where process functions see their secrets): {e}; \
                 process functions with secrets will not start until it exists"
            );
        }
        let preload = Preload::new()
            .inspect_err(|e| {
                tracing::warn!(
                    "making the memfd that holds prepared programs before main: {e}; \
                     prepared process instances wait before their exec instead (allow \
                     executable memfds, vm.memfd_noexec = 0 or 1, for the faster way)"
                )
            })
            .ok();
        Ok(Self {
            sandbox: Arc::new(Sandbox {
                spawner: Spawner::start()?,
                hidden,
                private_tmp,
                preload,
            }),
            secrets_dir,
        })
    }
}

/// Steps the child reports when one fails, by index.
const STEPS: &[&str] = &[
    "setsid",
    "making mounts private",
    "mounting /proc",
    "bringing up lo",
    "placing file descriptors",
    "dropping privileges",
    "execve",
    "forking the function from its init",
    "hiding /home, /root and the state directory",
    "mounting a private /tmp",
    "binding resolv.conf and hosts",
    "joining the instance's network namespace",
    "joining the cgroups of its limits",
    "loading the system call filter",
    "making the root read-only",
    "mounting the secrets at /var/openfaas/secrets",
    "binding the function's own directory",
];

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

/// A start or a prepare: the sandbox, the instance's secrets directory, the launch.
type CloneStep<T> = fn(&Sandbox, &Path, &Launch) -> Result<T, RuntimeError>;

impl ProcessRuntime {
    /// Runs `f` (a clone and its wait) on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        launch: Launch,
        f: CloneStep<T>,
    ) -> Result<T, RuntimeError> {
        let sandbox = self.sandbox.clone();
        let secrets = self.secrets_dir.join(&launch.instance);
        tokio::task::spawn_blocking(move || f(&sandbox, &secrets, &launch))
            .await
            .map_err(|e| RuntimeError::Io {
                op: "waiting for the start",
                source: io::Error::other(e),
            })?
    }
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> RuntimeError {
    move |source| RuntimeError::Io { op, source }
}

#[async_trait::async_trait]
impl Runtime for ProcessRuntime {
    async fn reap(&self, instance: &Instance) -> String {
        let _ = std::fs::remove_dir_all(self.secrets_dir.join(&instance.id));
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
        // The clone and the wait for exec take about 2 ms: a blocking thread's work.
        self.blocking(launch, start).await
    }

    async fn prepare(&self, launch: Launch) -> Result<Prepared, RuntimeError> {
        self.blocking(launch, prepare).await
    }
}

/// The function's own directory (`<data-dir>/<namespace>/<name>`), made at its first start:
/// its user's alone; the directories above it let users through but not list them.
fn own_directory(dir: &Path, user: &User) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))?;
    }
    std::fs::DirBuilder::new().mode(0o700).create(dir)?;
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
}

/// Copies the secrets into `dir`, readable by the instance's user alone (the originals are
/// root's, in the state directory, which instances cannot see).
fn copy_secrets(dir: &Path, secrets: &[(String, PathBuf)], user: &User) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let _ = std::fs::remove_dir_all(dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o500)
        .create(dir)?;
    for (name, file) in secrets {
        let to = dir.join(name);
        std::fs::copy(file, &to)?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o400))?;
        std::os::unix::fs::chown(&to, Some(user.uid), Some(user.gid))?;
    }
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
}

/// Has the spawner clone the instance into its namespaces and waits until it has exec'd.
fn start(sandbox: &Sandbox, secrets_dir: &Path, launch: &Launch) -> Result<Instance, RuntimeError> {
    let (instance, exec) = clone(sandbox, secrets_dir, launch, None)?;
    exec.wait()?;
    Ok(instance)
}

/// How long a held program may take from its exec to the library's constructor (its
/// loader's and libc's start, well under 10 ms on an idle host).
const HOLD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Has the spawner clone the instance, set up and waiting on a hand-over socket of its
/// own; returns once it says it is ready. A dynamically linked program is exec'd now, its
/// sockets in place, and held before `main` ([`super::preload`]); any other waits in the
/// instance before its exec, for the sockets.
fn prepare(
    sandbox: &Sandbox,
    secrets_dir: &Path,
    launch: &Launch,
) -> Result<Prepared, RuntimeError> {
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(io_err("making the hand-over socket"))?;
    let held = sandbox
        .preload
        .as_ref()
        .and_then(|p| p.hold(launch, theirs.as_raw_fd()));
    if held.is_some() {
        ours.set_read_timeout(Some(HOLD_TIMEOUT))
            .map_err(io_err("setting the hand-over socket's timeout"))?;
    }
    let (instance, exec) = match &held {
        Some(held) => clone(sandbox, secrets_dir, held, None)?,
        None => clone(sandbox, secrets_dir, launch, Some(theirs.as_raw_fd()))?,
    };
    drop(theirs);
    let mut ready = [0u8; 1];
    let read = loop {
        match (&ours).read(&mut ready) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match read {
        Ok(1) => {
            let _ = ours.set_read_timeout(None);
            Ok(Prepared::new(instance, ours, Some(exec), held.is_some()))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            // Running on past the library (which its loader refused), it would serve
            // nothing: it goes, and the function is prepared again only after its next
            // activation.
            kill_and_reap(&instance);
            Err(RuntimeError::NotHeld {
                program: launch.argv[0].clone(),
            })
        }
        // The instance ended in its setup: its report says where.
        _ => {
            exec.wait()?;
            Err(io_err("preparing the instance")(io::Error::other(
                "it ended before it was ready",
            )))
        }
    }
}

/// Kills an instance that has not become one and reaps it (the daemon is its parent).
fn kill_and_reap(instance: &Instance) {
    // SAFETY: pidfd_send_signal on the instance's own pidfd, then waitpid on its pid.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            instance.pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
        libc::waitpid(instance.pid, std::ptr::null_mut(), 0);
    }
}

/// The read end of a clone's exec-error pipe: EOF once the command has been exec'd.
#[derive(Debug)]
pub(crate) struct ExecReport {
    errors: std::os::fd::OwnedFd,
    pid: i32,
    program: String,
}

impl ExecReport {
    /// Waits for the exec, or for the report of the step that failed (the instance is then
    /// reaped).
    pub(super) fn wait(self) -> Result<(), RuntimeError> {
        let mut report = [0u8; 8];
        // EOF (0) means exec succeeded: the pipe is CLOEXEC.
        let n = loop {
            // SAFETY: reads at most 8 bytes into our 8-byte buffer.
            let n = unsafe { libc::read(self.errors.as_raw_fd(), report.as_mut_ptr().cast(), 8) };
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n != 8 {
            return Ok(());
        }
        let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes")) as usize;
        let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
        let mut status = 0;
        // SAFETY: reaps our own failed child (CLONE_PARENT made it ours).
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        Err(RuntimeError::Child {
            program: self.program,
            step: STEPS.get(step).copied().unwrap_or("setup"),
            source: io::Error::from_raw_os_error(errno),
        })
    }
}

/// The clone itself: everything a start and a prepared start share. `handover`: the
/// instance's end of its hand-over socket, for a prepared one.
fn clone(
    sandbox: &Sandbox,
    secrets_dir: &Path,
    launch: &Launch,
    handover: Option<RawFd>,
) -> Result<(Instance, ExecReport), RuntimeError> {
    let user = match &launch.user {
        super::RunAs::User(name) => lookup_user(name)?,
        super::RunAs::Dynamic(uid) => User {
            uid: *uid,
            gid: *uid,
        },
    };
    if let Some(d) = &launch.data_dir {
        own_directory(d, &user).map_err(io_err("making the function's own directory"))?;
    }
    let secrets = if launch.secrets.is_empty() {
        None
    } else {
        copy_secrets(secrets_dir, &launch.secrets, &user)
            .map_err(io_err("copying the function's secrets"))?;
        Some(secrets_dir.to_string_lossy().into_owned())
    };
    let devnull = std::fs::File::open("/dev/null").map_err(io_err("open /dev/null"))?;
    let cgroup = launch
        .cgroup
        .as_ref()
        .map(|d| {
            super::cgroup::create(d).map_err(io_err("creating the function's cgroup"))?;
            std::fs::File::open(d).map_err(io_err("opening the function's cgroup"))
        })
        .transpose()?;
    // Limits need the function's cgroup; on a hybrid host the instance also joins their
    // v1 cgroups itself (which costs a write each, with the cgroup lock).
    let joins = match (&launch.cgroup, launch.limits.is_empty()) {
        (_, true) => Vec::new(),
        (Some(dir), false) => {
            let root = super::cgroup::root().ok_or(RuntimeError::Io {
                op: "limits",
                source: io::Error::new(io::ErrorKind::Unsupported, "no cgroup hierarchy"),
            })?;
            super::cgroup::apply(&root, dir, &launch.limits)
                .map_err(io_err("putting the function's limits in its cgroup"))?
        }
        (None, false) => {
            return Err(RuntimeError::Io {
                op: "limits",
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this host has no cgroup v2 hierarchy to hold them",
                ),
            });
        }
    };
    let mut fds = vec![
        launch.stdin.unwrap_or(devnull.as_raw_fd()),
        launch.stdout,
        launch.stderr,
    ];
    fds.extend(cgroup.as_ref().map(AsRawFd::as_raw_fd));
    fds.extend(launch.netns);
    fds.extend(joins.iter().map(AsRawFd::as_raw_fd));
    fds.extend(handover);
    fds.extend(&launch.fds);
    let req = Request {
        argv: launch.argv.clone(),
        env: launch
            .env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(std::iter::once("LISTEN_PID=2".into()))
            .collect(),
        uid: user.uid,
        gid: user.gid,
        cgroup: cgroup.is_some(),
        // A program that lives below one of them (a developer's build under /root) keeps
        // that one visible: it could not be executed otherwise.
        hide: sandbox
            .hidden
            .iter()
            .filter(|d| {
                !launch
                    .argv
                    .first()
                    .is_some_and(|p| Path::new(p).starts_with(d))
            })
            .map(|d| d.to_string_lossy().into_owned())
            .collect(),
        private_tmp: sandbox.private_tmp,
        netns: launch.netns.is_some(),
        joins: joins.len(),
        read_only: launch.read_only,
        secrets,
        writable: launch
            .data_dir
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect(),
        binds: launch
            .binds
            .iter()
            .map(|(s, t)| {
                (
                    s.to_string_lossy().into_owned(),
                    t.to_string_lossy().into_owned(),
                )
            })
            .collect(),
        prepared: handover.is_some(),
    };
    // Caught here, as the runtime's own error, rather than as the spawner's.
    if req.argv.iter().chain(&req.env).any(|a| a.contains('\0')) {
        return Err(RuntimeError::Nul);
    }
    let cloned = sandbox
        .spawner
        .clone_instance(&req, &fds)
        .map_err(io_err("clone3 (through the spawner)"))?;
    let exec = ExecReport {
        errors: cloned.errors,
        pid: cloned.pid,
        program: launch.argv[0].clone(),
    };
    let instance = Instance {
        pid: cloned.pid,
        pidfd: cloned.pidfd,
        id: launch.instance.clone(),
        milestones: super::Milestones::default(),
    };
    Ok((instance, exec))
}
