//! Basic auth for the API over TCP, as OpenFaaS does it: user `admin` and a password faasd
//! generates on first start and keeps readable by root only
//! (`<state>/auth/basic-auth-password`, the user beside it). Every `/system/*` route needs
//! it; `/function/*`, `/async-function/*`, `/healthz` and `/metrics` stay open. The unix
//! socket needs none: its permissions are the guard.

use std::path::{Path, PathBuf};

use axum::{
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;

use faasd_core::durable::write_private;

use crate::random;

/// The user OpenFaaS names its administrator.
pub const USER: &str = "admin";

/// Errors reading or making the credentials.
#[derive(Debug, thiserror::Error)]
#[error("API credentials in {path}: {source}")]
pub struct AuthError {
    /// Where.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The expected `Authorization` header value.
#[derive(Debug, Clone)]
pub struct Credentials {
    expected: String,
    /// The cluster's hosts' `Authorization`, in a cluster with a key.
    peer: Option<String>,
}

impl Credentials {
    /// Reads the password, or makes one (24 characters from 144 random bits).
    pub fn load_or_create(state_dir: &Path) -> Result<Self, AuthError> {
        let dir = state_dir.join("auth");
        let path = dir.join("basic-auth-password");
        let err = |source| AuthError {
            path: path.clone(),
            source,
        };
        let password = match std::fs::read_to_string(&path) {
            Ok(p) => p.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir).map_err(err)?;
                // Never starting with `-`, which a command line would take for a flag
                // (`faas-cli login -p -U…`).
                let p = loop {
                    let raw = random::bytes::<18>().map_err(err)?;
                    let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
                    if !p.starts_with('-') {
                        break p;
                    }
                };
                write_private(&dir.join("basic-auth-user"), USER.as_bytes()).map_err(err)?;
                write_private(&path, p.as_bytes()).map_err(err)?;
                tracing::info!("generated the API password: {}", path.display());
                p
            }
            Err(e) => return Err(err(e)),
        };
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
        Ok(Self {
            expected: format!("Basic {token}"),
            peer: None,
        })
    }

    /// Whether an `Authorization` header value carries the credentials (compared in
    /// constant time).
    pub fn accepts(&self, header: Option<&str>) -> bool {
        if let (Some(h), Some(peer)) = (header, &self.peer)
            && same(h.as_bytes(), peer.as_bytes())
        {
            return true;
        }
        let Some(h) = header.map(str::trim) else {
            return false;
        };
        same(h.as_bytes(), self.expected.as_bytes())
    }

    /// Also accepts `Bearer <token>`: the other hosts of the cluster relaying a request
    /// for a function this host runs.
    pub fn with_peer_token(mut self, token: Option<&str>) -> Self {
        self.peer = token.map(|t| format!("Bearer {t}"));
        self
    }
}

/// `a == b`, in time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a path is one of the routes that stay open: not `/system/*`, nor the web UI,
/// which manages the same things.
pub fn is_open(path: &str) -> bool {
    !path.starts_with("/system") && path != "/ui" && !path.starts_with("/ui/")
}

/// The middleware: 401 with a Basic challenge for a protected route without the
/// credentials (an empty `Bearer ` header from a client that never logged in included).
pub async fn require(State(creds): State<Credentials>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if is_open(req.uri().path()) || creds.accepts(header) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"faasd\"")],
        "authentication required: user admin, the password in <state-dir>/auth/basic-auth-password\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_made_once_kept_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("faasd-auth-{}", std::process::id()));
        let a = Credentials::load_or_create(&dir).unwrap();
        let b = Credentials::load_or_create(&dir).unwrap();
        assert_eq!(a.expected, b.expected);
        let file = dir.join("auth/basic-auth-password");
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let pw = std::fs::read_to_string(&file).unwrap();
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("admin:{pw}"))
        );
        assert!(a.accepts(Some(&good)));
        assert!(!a.accepts(Some("Bearer ")));
        assert!(!a.accepts(None));
        assert!(!a.accepts(Some("Basic YWRtaW46d3Jvbmc=")));
        assert!(is_open("/function/x") && is_open("/healthz") && !is_open("/system/functions"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// One password in 64 would start with `-` otherwise; 500 of them all miss it by chance
    /// one time in 2,600.
    #[test]
    fn no_generated_password_reads_as_a_flag() {
        let dir = std::env::temp_dir().join(format!("faasd-auth-dash-{}", std::process::id()));
        for _ in 0..500 {
            let _ = std::fs::remove_dir_all(&dir);
            Credentials::load_or_create(&dir).unwrap();
            let pw = std::fs::read_to_string(dir.join("auth/basic-auth-password")).unwrap();
            assert!(!pw.starts_with('-'), "{pw}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
