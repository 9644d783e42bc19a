//! The daemon's errors: what failed, with the typed error of the part that failed, and
//! what to do. [`DaemonError::kind`] sorts them for callers; the HTTP status each kind maps
//! to is decided in the API layer alone.

use faasd_containerd::ContainerdError;
use faasd_core::{spec::SpecError, store::StoreError};
use faasd_dataplane::DataplaneError;

use crate::{asynccall::AsyncError, secrets::SecretError, wireguard::WireGuardError};

/// Errors of daemon operations.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request is invalid.
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No function of that id.
    #[error("function {0} not found")]
    NoFunction(String),
    /// No namespace of that name.
    #[error("namespace {0} not found: it holds no function or secret")]
    NoNamespace(String),
    /// A function of that id exists already.
    #[error("function {0} already exists; update it with PUT")]
    FunctionExists(String),
    /// A secret the function mounts does not exist.
    #[error("{source} in namespace {namespace}; create it first (faasd secret create {secret})")]
    MissingSecret {
        /// The function's namespace.
        namespace: String,
        /// The secret.
        secret: String,
        /// The secrets store's answer.
        source: SecretError,
    },
    /// WireGuard is off, so there are no peers to manage.
    #[error("WireGuard is off on this host (--no-wireguard): there are no peers")]
    NoWireGuard,
    /// This host is alone.
    #[error("this host is not in a cluster: its config has no [cluster] section")]
    NoCluster,
    /// This host cannot reach etcd, so the other hosts could not learn of a change.
    #[error(
        "etcd is unreachable from this host (its registration lapsed): functions keep \
         serving, but deploys and removals wait until etcd answers; see faasd cluster status"
    )]
    ClusterUnavailable,
    /// The cluster refused or could not take a change.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The host that runs the function did not answer a relayed request.
    #[error("host {host}, which runs the function, did not answer: {source}")]
    Relay {
        /// The host's number.
        host: u16,
        /// Why.
        source: crate::client::ClientError,
    },
    /// A local route for a function's address.
    #[error(transparent)]
    Route(#[from] crate::net::NetError),
    /// The daemon's open-file budget has no room for the function's sockets.
    #[error(
        "no room for {wanted} more socket(s): about {used} of this daemon's {limit} open files \
         are in use and {reserve} are kept free; raise the limit (LimitNOFILE= in \
         faasd.service, or ulimit -n) and restart faasd, or remove functions"
    )]
    NoFiles {
        /// Sockets asked for.
        wanted: u64,
        /// Descriptors in use.
        used: u64,
        /// The soft limit.
        limit: u64,
        /// Descriptors kept free for everything else.
        reserve: u64,
    },
    /// A function socket could not be made.
    #[error("creating socket {socket}: {source}{}", if no_files(source) {
        "; raise the open-file limit (LimitNOFILE= in faasd.service, or ulimit -n)"
    } else {
        ""
    })]
    Socket {
        /// `[address]:port/protocol`.
        socket: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something on the host failed: what was being done, and why.
    #[error("{what}: {source}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The function's supervisor ended while it was asked something (the daemon is
    /// shutting down, or the function is being removed).
    #[error("function {0} is shutting down")]
    ShuttingDown(String),
    /// A task of the daemon's failed.
    #[error("a daemon task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The data plane.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// containerd or an image registry.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// WireGuard and its peers.
    #[error(transparent)]
    WireGuard(#[from] WireGuardError),
    /// Secrets.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The async queue.
    #[error(transparent)]
    Async(#[from] AsyncError),
}

/// What an error means for whoever asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is wrong; the caller can fix it.
    Invalid,
    /// What it names does not exist.
    NotFound,
    /// It exists already.
    Exists,
    /// A resource is exhausted: the bindings map, the address prefix, open files.
    Full,
    /// A service faasd needs is down: containerd.
    Unavailable,
    /// A server faasd relies on failed or cannot be reached: an image registry.
    Upstream,
    /// Something on the host failed.
    Internal,
}

fn no_files(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl DaemonError {
    /// Sorts the error by what the caller can do about it.
    pub fn kind(&self) -> ErrorKind {
        use crate::wireguard::peers::PeerError as P;
        use ErrorKind as K;
        match self {
            Self::Invalid(_) | Self::MissingSecret { .. } | Self::NoWireGuard => K::Invalid,
            Self::NoFunction(_) | Self::NoNamespace(_) | Self::NoCluster => K::NotFound,
            Self::FunctionExists(_) => K::Exists,
            Self::Cluster(e) => {
                use crate::cluster::ClusterError as C;
                match e {
                    C::Exists { .. } => K::Exists,
                    C::NoFunction(_) | C::NoHost(_) | C::NoSecret(_) => K::NotFound,
                    C::SecretExists(_) => K::Exists,
                    C::NoKey => K::Invalid,
                    C::Unplaceable { .. } => K::Invalid,
                    C::Etcd(faasd_cluster::EtcdError::Unreachable { .. }) => K::Unavailable,
                    _ => K::Internal,
                }
            }
            Self::Route(_) => K::Internal,
            Self::Relay { .. } => K::Upstream,
            Self::ClusterUnavailable => K::Unavailable,
            Self::NoFiles { .. } => K::Full,
            Self::Socket { source, .. } if no_files(source) => K::Full,
            Self::Socket { .. } | Self::Host { .. } | Self::ShuttingDown(_) | Self::Task(_) => {
                K::Internal
            }
            Self::Store(StoreError::PrefixExhausted(_)) => K::Full,
            Self::Store(_) => K::Internal,
            Self::Dataplane(DataplaneError::Full { .. }) => K::Full,
            Self::Dataplane(_) => K::Internal,
            Self::Containerd(ContainerdError::Unreachable { .. }) => K::Unavailable,
            Self::Containerd(ContainerdError::Registry { .. }) => K::Upstream,
            Self::Containerd(ContainerdError::Image { .. }) => K::Invalid,
            Self::Containerd(_) => K::Internal,
            Self::WireGuard(WireGuardError::Peer(P::Invalid(_)) | WireGuardError::Invalid(_)) => {
                K::Invalid
            }
            Self::WireGuard(WireGuardError::Peer(P::NotFound(_))) => K::NotFound,
            Self::WireGuard(WireGuardError::Peer(P::Exists(_))) => K::Exists,
            Self::WireGuard(_) => K::Internal,
            Self::Secret(SecretError::Invalid(_)) => K::Invalid,
            Self::Secret(SecretError::NotFound(_)) => K::NotFound,
            Self::Secret(SecretError::Exists(_)) => K::Exists,
            Self::Secret(SecretError::Io { .. }) => K::Internal,
            Self::Async(AsyncError::Full { .. }) => K::Full,
            Self::Async(AsyncError::HeaderNotText { .. } | AsyncError::BadCallback { .. }) => {
                K::Invalid
            }
            Self::Async(_) => K::Internal,
        }
    }
}
