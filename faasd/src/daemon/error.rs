//! The daemon's errors. Each says what failed and what to do; the HTTP status each kind
//! maps to is decided in the API layer alone.

use faasd_containerd::ContainerdError;
use faasd_core::spec::SpecError;

use crate::secrets::SecretError;

/// Errors of daemon operations, each mapping to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request is invalid (400).
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No such function, secret or peer (404).
    #[error("{0}")]
    NotFound(String),
    /// It exists already (409).
    #[error("{0}")]
    Exists(String),
    /// A resource is exhausted: the bindings map or the address prefix (507).
    #[error("{0}")]
    Full(String),
    /// A service faasd needs is down: containerd (503).
    #[error("{0}")]
    Unavailable(String),
    /// A server faasd relies on failed or cannot be reached: an image registry (502).
    #[error("{0}")]
    Upstream(String),
    /// Something on the host failed (500).
    #[error("{0}")]
    Internal(String),
}

impl DaemonError {
    pub(super) fn no_function(id: &str) -> Self {
        Self::NotFound(format!("function {id} not found"))
    }

    pub(super) fn function_exists(id: &str) -> Self {
        Self::Exists(format!("function {id} already exists; update it with PUT"))
    }
}

impl From<faasd_dataplane::DataplaneError> for DaemonError {
    fn from(e: faasd_dataplane::DataplaneError) -> Self {
        match e {
            faasd_dataplane::DataplaneError::Full { .. } => Self::Full(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

/// An exhausted prefix is the operator's to resolve (507); a failing disk is the host's (500).
impl From<faasd_core::store::StoreError> for DaemonError {
    fn from(e: faasd_core::store::StoreError) -> Self {
        match e {
            faasd_core::store::StoreError::PrefixExhausted(_) => Self::Full(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

/// An unreachable containerd is a 503, a failing registry a 502, a missing or unusable
/// image the caller's 400.
impl From<ContainerdError> for DaemonError {
    fn from(e: ContainerdError) -> Self {
        match e {
            ContainerdError::Unreachable { .. } => Self::Unavailable(e.to_string()),
            ContainerdError::Registry { .. } => Self::Upstream(e.to_string()),
            ContainerdError::Image { .. } => Self::Invalid(SpecError(e.to_string())),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<crate::wireguard::WireGuardError> for DaemonError {
    fn from(e: crate::wireguard::WireGuardError) -> Self {
        use crate::wireguard::{WireGuardError as W, peers::PeerError as P};
        match e {
            W::Peer(P::Invalid(m)) | W::Invalid(m) => Self::Invalid(SpecError(m)),
            W::Peer(P::NotFound(_)) => Self::NotFound(e.to_string()),
            W::Peer(P::Exists(_)) => Self::Exists(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<SecretError> for DaemonError {
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::Invalid(m) => Self::Invalid(SpecError(m)),
            SecretError::NotFound(_) => Self::NotFound(e.to_string()),
            SecretError::Exists(_) => Self::Exists(e.to_string()),
            SecretError::Io { .. } => Self::Internal(e.to_string()),
        }
    }
}

pub(super) fn internal(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Internal(e.to_string())
}
