//! What faasd presents to a registry, kept where Docker keeps it: credentials in a
//! `config.json` as `docker login` and `faas-cli registry-login` write it (`auths` → registry
//! host → `auth`, base64 of `user:password`), and CA certificates in
//! `<certs-dir>/<host[:port]>/*.crt` (Docker's `/etc/docker/certs.d`). Both are read at every
//! pull, so a login or a new CA needs no restart.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use base64::Engine;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde::Deserialize;

/// Where a host's credentials and CAs are looked up.
#[derive(Debug, Clone)]
pub struct Registries {
    config: PathBuf,
    certs_dir: PathBuf,
}

/// One registry's credentials, and where they came from (for messages: never the secret).
#[derive(Clone)]
pub(crate) struct Credential {
    pub user: String,
    secret: String,
    /// `<config.json> (auths."<key>")`.
    pub source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "user {} from {}", self.user, self.source)
    }
}

impl Credential {
    /// The value of a Basic `Authorization` header.
    pub fn basic(&self) -> String {
        let pair = format!("{}:{}", self.user, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The names `auths` may key Docker Hub by.
const DOCKER_HUB: &[&str] = &[
    "registry-1.docker.io",
    "docker.io",
    "index.docker.io",
    "https://index.docker.io/v1/",
];

/// The host (with port) an `auths` key stands for: `https://host:5000/v2/` → `host:5000`.
fn key_host(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

impl Registries {
    /// Credentials from `config` (a Docker `config.json`), CAs from `certs_dir`.
    pub fn new(config: PathBuf, certs_dir: PathBuf) -> Self {
        Self { config, certs_dir }
    }

    /// The credentials file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The credentials for `host` (as in the image reference, with its port), if the file
    /// has any. A file that is missing is no credentials; one that cannot be read or parsed
    /// is an error, so a typo is not taken for "pull anonymously".
    pub(crate) fn credential(&self, host: &str) -> Result<Option<Credential>, String> {
        let text = match std::fs::read(&self.config) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", self.config.display())),
        };
        let parsed: DockerConfig = serde_json::from_slice(&text)
            .map_err(|e| format!("{} is not a Docker config.json: {e}", self.config.display()))?;
        let hub = DOCKER_HUB.contains(&host);
        let Some((key, entry)) = parsed.auths.iter().find(|(k, _)| {
            let h = key_host(k);
            h == host || (hub && DOCKER_HUB.iter().any(|d| key_host(d) == h))
        }) else {
            return Ok(None);
        };
        let source = format!("{} (auths.{key:?})", self.config.display());
        let (user, secret) = match (&entry.auth, &entry.username, &entry.password) {
            (Some(a), _, _) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| format!("{source}: auth is not base64 of user:password"))?;
                let (u, p) = decoded
                    .split_once(':')
                    .ok_or_else(|| format!("{source}: auth is not base64 of user:password"))?;
                (u.to_owned(), p.to_owned())
            }
            (None, Some(u), Some(p)) => (u.clone(), p.clone()),
            _ => {
                return Err(format!(
                    "{source} has neither auth nor username and password"
                ));
            }
        };
        Ok(Some(Credential {
            user,
            secret,
            source,
        }))
    }

    /// The CAs `host` is trusted by besides the Mozilla roots: the certificates in its
    /// directory below the certificates directory; `Ok(None)` when it has no directory.
    pub(crate) fn extra_roots(
        &self,
        host: &str,
    ) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
        let dir = self.certs_dir.join(host);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", dir.display())),
        };
        let mut certs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "crt") {
                continue;
            }
            for cert in CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?
            {
                certs.push(cert.map_err(|e| format!("{}: {e}", path.display()))?);
            }
        }
        if certs.is_empty() {
            return Err(format!(
                "{} holds no CA certificate (*.crt, PEM)",
                dir.display()
            ));
        }
        Ok(Some(certs))
    }
}

/// A TLS client trusting the Mozilla roots and `extra`.
pub(crate) fn tls_config(
    extra: Option<Vec<CertificateDer<'static>>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra.into_iter().flatten() {
        roots
            .add(cert)
            .map_err(|e| format!("a CA certificate: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registries(name: &str, config: &str) -> (Registries, PathBuf) {
        let dir = std::env::temp_dir().join(format!("faasd-creds-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        (
            Registries::new(dir.join("config.json"), dir.join("certs.d")),
            dir,
        )
    }

    #[test]
    fn credentials_are_found_by_host_as_docker_login_writes_them() {
        // "alice:s3cret:x" (a password may hold a colon), and Docker Hub's legacy key.
        let (r, dir) = registries(
            "found",
            r#"{"auths":{"https://reg.example:5000/v2/":{"auth":"YWxpY2U6czNjcmV0Ong="},
                "https://index.docker.io/v1/":{"username":"bob","password":"pw"}}}"#,
        );
        let c = r.credential("reg.example:5000").unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.secret.as_str()), ("alice", "s3cret:x"));
        assert_eq!(c.basic(), "Basic YWxpY2U6czNjcmV0Ong=");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert!(c.source.contains("https://reg.example:5000/v2/"), "{c:?}");
        assert_eq!(
            r.credential("registry-1.docker.io").unwrap().unwrap().user,
            "bob"
        );
        assert!(r.credential("reg.example").unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_broken_file_is_an_error_and_a_missing_one_is_none() {
        let (r, dir) = registries("broken", r#"{"auths":{"h":{"auth":"!!"}}}"#);
        assert!(r.credential("h").unwrap_err().contains("not base64"));
        std::fs::write(dir.join("config.json"), "{").unwrap();
        assert!(
            r.credential("h")
                .unwrap_err()
                .contains("not a Docker config.json")
        );
        std::fs::remove_file(dir.join("config.json")).unwrap();
        assert!(r.credential("h").unwrap().is_none());
        assert!(r.extra_roots("h").unwrap().is_none());
        std::fs::create_dir_all(dir.join("certs.d/h")).unwrap();
        assert!(
            r.extra_roots("h")
                .unwrap_err()
                .contains("no CA certificate")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
