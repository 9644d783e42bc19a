//! OpenFaaS secrets: one file per secret under `<state>/secrets/<namespace>/<name>`,
//! readable by root only, written atomically. Container functions get copies mounted
//! read-only at `/var/openfaas/secrets/<name>`. Values never appear in logs, errors or
//! `describe`.

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use faasd_core::spec::validate_label;

/// Largest secret (Kubernetes' limit).
pub const MAX_SECRET: usize = 1 << 20;

/// Errors of the secret store.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Bad name or value.
    #[error("{0}")]
    Invalid(String),
    /// No such secret.
    #[error("secret {0} not found")]
    NotFound(String),
    /// The secret exists already (create) .
    #[error("secret {0} already exists; update it with PUT")]
    Exists(String),
    /// The disk failed.
    #[error("secret store {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The secret store.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    /// The store under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("secrets"),
        }
    }

    fn path(&self, namespace: &str, name: &str) -> Result<PathBuf, SecretError> {
        let invalid = |e: faasd_core::spec::SpecError| SecretError::Invalid(e.0);
        validate_label("namespace", namespace).map_err(invalid)?;
        validate_label("secret name", name).map_err(invalid)?;
        Ok(self.dir.join(namespace).join(name))
    }

    /// Checks a secret's namespace, name and size.
    pub fn validate(&self, namespace: &str, name: &str, value: &[u8]) -> Result<(), SecretError> {
        if value.len() > MAX_SECRET {
            return Err(SecretError::Invalid(format!(
                "secret {name} is larger than {MAX_SECRET} bytes"
            )));
        }
        self.path(namespace, name).map(drop)
    }

    /// Creates (`update == false`) or replaces (`update == true`) a secret.
    pub fn put(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        update: bool,
    ) -> Result<(), SecretError> {
        self.validate(namespace, name, value)?;
        let path = self.path(namespace, name)?;
        let io = |source| SecretError::Io {
            path: path.clone(),
            source,
        };
        match (path.exists(), update) {
            (true, false) => return Err(SecretError::Exists(format!("{namespace}/{name}"))),
            (false, true) => return Err(SecretError::NotFound(format!("{namespace}/{name}"))),
            _ => {}
        }
        let dir = path.parent().expect("a secret path has a parent");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        faasd_core::durable::write_private(&path, value).map_err(io)
    }

    /// The file of an existing secret.
    pub fn file(&self, namespace: &str, name: &str) -> Result<PathBuf, SecretError> {
        let path = self.path(namespace, name)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(SecretError::NotFound(format!("{namespace}/{name}")))
        }
    }

    /// The names of a namespace's secrets, sorted.
    pub fn list(&self, namespace: &str) -> Result<Vec<String>, SecretError> {
        labels_in(&self.dir.join(namespace))
    }

    /// The namespaces that hold at least one secret, sorted.
    pub fn namespaces(&self) -> Result<Vec<String>, SecretError> {
        let mut out = Vec::new();
        for ns in labels_in(&self.dir)? {
            if !self.list(&ns)?.is_empty() {
                out.push(ns);
            }
        }
        Ok(out)
    }

    /// Deletes a secret.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<(), SecretError> {
        let path = self.file(namespace, name)?;
        std::fs::remove_file(&path).map_err(|source| SecretError::Io { path, source })
    }
}

/// The entries of `dir` named like DNS labels (none when it does not exist), sorted.
fn labels_in(dir: &Path) -> Result<Vec<String>, SecretError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(SecretError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| validate_label("entry", n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secrets_are_private_and_create_update_remove_behave() {
        let dir = std::env::temp_dir().join(format!("faasd-secrets-{}", std::process::id()));
        let s = Secrets::new(&dir);
        s.put("ns", "api-key", b"one", false).unwrap();
        assert!(matches!(
            s.put("ns", "api-key", b"x", false),
            Err(SecretError::Exists(_))
        ));
        assert!(matches!(
            s.put("ns", "other", b"x", true),
            Err(SecretError::NotFound(_))
        ));
        s.put("ns", "api-key", b"two", true).unwrap();
        let f = s.file("ns", "api-key").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(s.list("ns").unwrap(), ["api-key"]);
        assert!(matches!(
            s.put("ns", "../x", b"x", false),
            Err(SecretError::Invalid(_))
        ));
        s.remove("ns", "api-key").unwrap();
        assert!(s.list("ns").unwrap().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
