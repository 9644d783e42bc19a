//! How a function instance is started and stopped. One trait, two runtimes: `process`
//! (clone3/exec into fresh namespaces, no extra daemon) and `container` (OCI images through
//! containerd).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::PathBuf,
};

pub mod cgroup;
pub mod container;
pub mod preload;
pub mod prepared;
pub mod process;
pub mod seccomp;
pub mod spawner;

/// Errors starting an instance.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configured user does not exist.
    #[error("user {0:?} does not exist on this host")]
    NoSuchUser(String),
    /// A step before exec failed in the new process.
    #[error("starting {program}: {step} failed: {source}")]
    Child {
        /// The program.
        program: String,
        /// Which step.
        step: &'static str,
        /// The error.
        source: io::Error,
    },
    /// A syscall in the daemon failed.
    #[error("{op}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Why.
        source: io::Error,
    },
    /// A prepared program ran on past the library that was to hold it before `main`.
    #[error(
        "preparing {program}: it did not stop before main as a dynamically linked program \
         with faasd's library preloaded does; its loader may have refused the library (see \
         the function's log); remove faasd.dev/prepare to start it from stopped"
    )]
    NotHeld {
        /// The program.
        program: String,
    },
    /// An argument or environment string holds a NUL byte.
    #[error(
        "the command line or an environment variable contains a NUL byte; remove it from \
         envProcess or envVars"
    )]
    Nul,
    /// containerd refused or failed a step.
    #[error("{0}")]
    Container(String),
}

/// Everything needed to start one instance. The descriptors are borrowed: whoever asks for
/// the start keeps them open until it has finished.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The instance's id (unique on the host; a container takes it as its id).
    pub instance: String,
    /// Program (absolute path) and arguments.
    pub argv: Vec<String>,
    /// Environment, including the LISTEN_* variables (LISTEN_PID is the runtime's to set).
    pub env: Vec<(String, String)>,
    /// Sockets placed at fd 3, 4, ….
    pub fds: Vec<RawFd>,
    /// fd 0; `/dev/null` when `None`.
    pub stdin: Option<RawFd>,
    /// fd 1.
    pub stdout: RawFd,
    /// fd 2.
    pub stderr: RawFd,
    /// The file `stdout` and `stderr` write to, for runtimes that open it themselves.
    pub output: PathBuf,
    /// Who the instance runs as.
    pub user: RunAs,
    /// cgroup directory to place the instance in, if cgroups are available.
    pub cgroup: Option<PathBuf>,
    /// The network namespace to join (one that can call out); a new one with only `lo`
    /// when `None`.
    pub netns: Option<RawFd>,
    /// Files bound read-only over the host's in the instance (source, target).
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// Resource limits (process instances; a container's are in its spec).
    pub limits: cgroup::Limits,
    /// The function's own writable directory (process instances: its `STATE_DIRECTORY`).
    pub data_dir: Option<PathBuf>,
    /// The host's root is read-only inside (process instances; a container's is in its
    /// spec).
    pub read_only: bool,
    /// Secrets for `/var/openfaas/secrets` (process instances): name and host file.
    pub secrets: Vec<(String, PathBuf)>,
}

/// Who an instance runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// A user of the host's, by name.
    User(String),
    /// A uid (and the gid of the same number) of the function's own.
    Dynamic(u32),
}

/// A started instance.
#[derive(Debug)]
pub struct Instance {
    /// Host pid.
    pub pid: i32,
    /// pidfd: readable when the instance exits; used to signal it without pid reuse races.
    pub pidfd: OwnedFd,
    /// The instance's id.
    pub id: String,
    /// When the runtime passed its own steps, for the activation's timing.
    pub milestones: Milestones,
}

/// Steps of a container start (CLOCK_MONOTONIC ns; zero for runtimes without them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Milestones {
    /// The task (the container's process, not yet running the command) exists.
    pub created_ns: u64,
    /// The task was started.
    pub started_ns: u64,
}

impl Instance {
    /// Sends `sig` to the instance.
    pub fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                sig,
                0usize,
                0u32,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// Starts function instances. Both calls are async and never block a worker thread: a
/// function's supervisor runs each start as a task of its own and goes on meanwhile.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + std::fmt::Debug {
    /// Starts one instance; returns once the program has been exec'd.
    async fn start(&self, launch: Launch) -> Result<Instance, RuntimeError>;

    /// Sets one instance up to the moment its command would run, and leaves it waiting
    /// for its sockets ([`prepared::Prepared::go`]). `launch.fds` are not used.
    async fn prepare(&self, launch: Launch) -> Result<prepared::Prepared, RuntimeError>;

    /// Releases what the runtime holds for an instance whose pidfd reported its end, and
    /// says how it ended.
    async fn reap(&self, instance: &Instance) -> String;

    /// The cgroup of an instance of its own, where the runtime makes one (a container's);
    /// `None` where instances share their function's.
    fn instance_cgroup(&self, _id: &str) -> Option<PathBuf> {
        None
    }

    /// Where inside the instance's network namespace faasd forwards connections, for
    /// images that bind their own port instead of taking sockets.
    fn upstream(&self) -> Option<crate::forward::Upstream> {
        None
    }
}

pub(crate) fn cstring(s: &str) -> Result<CString, RuntimeError> {
    CString::new(s).map_err(|_| RuntimeError::Nul)
}

/// Describes a wait status for logs and status lines.
pub fn describe_exit(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended (wait status {status})")
    }
}
