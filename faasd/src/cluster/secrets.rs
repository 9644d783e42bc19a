//! Secrets in a cluster. Each host keeps its secrets in its own store, as a single host
//! does (instances get their copies from there); the cluster's copy is in etcd, sealed
//! with the cluster key (ChaCha20-Poly1305, the secret's namespace and name bound in as
//! associated data, so a sealed value cannot be replayed under another name). Every host
//! follows etcd into its store; only hosts hold the key, so etcd never sees a value.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use base64::Engine;
use chacha20poly1305::{
    ChaCha20Poly1305, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use faasd_cluster::{Etcd, FunctionName, SealedSecret, Synced};
use tokio::sync::watch;

use super::ClusterError;
use crate::secrets::Secrets;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The cluster key, read from `[cluster] key-file`.
pub struct ClusterKey {
    cipher: ChaCha20Poly1305,
    token: String,
}

impl std::fmt::Debug for ClusterKey {
    /// Leaves the key out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Reads the key: 32 bytes, base64 (`head -c 32 /dev/urandom | base64`).
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::KeyFile {
            path: path.to_owned(),
            source,
        })?;
        let bytes = B64
            .decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| ClusterError::BadKey(path.to_owned()))?;
        let cipher = ChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| ClusterError::BadKey(path.to_owned()))?;
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(b"faasd cluster api\0");
        h.update(&bytes);
        let token = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { cipher, token })
    }

    /// What one host shows another's API to be one of the cluster (a hash of the key:
    /// only hosts hold it; it travels inside the WireGuard mesh only).
    pub fn api_token(&self) -> &str {
        &self.token
    }

    fn seal(&self, secret: &FunctionName, value: &[u8]) -> Result<SealedSecret, ClusterError> {
        let nonce = crate::random::bytes::<12>().map_err(ClusterError::Random)?;
        let aad = format!("{}/{}", secret.0, secret.1);
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| ClusterError::Unseal(aad.clone()))?;
        Ok(SealedSecret {
            nonce: B64.encode(nonce),
            sealed: B64.encode(sealed),
        })
    }

    fn open(&self, secret: &FunctionName, s: &SealedSecret) -> Result<Vec<u8>, ClusterError> {
        let aad = format!("{}/{}", secret.0, secret.1);
        let bad = || ClusterError::Unseal(aad.clone());
        let nonce = B64
            .decode(&s.nonce)
            .ok()
            .filter(|n| n.len() == 12)
            .ok_or_else(bad)?;
        let sealed = B64.decode(&s.sealed).map_err(|_| bad())?;
        self.cipher
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| bad())
    }
}

/// Creates or replaces a secret of the cluster's.
pub(super) async fn put(
    etcd: &Etcd,
    key: Option<&ClusterKey>,
    secret: FunctionName,
    value: &[u8],
    update: bool,
) -> Result<(), ClusterError> {
    let sealed = key.ok_or(ClusterError::NoKey)?.seal(&secret, value)?;
    if faasd_cluster::put_secret(etcd, &secret, &sealed, update).await? {
        Ok(())
    } else if update {
        Err(ClusterError::NoSecret(secret))
    } else {
        Err(ClusterError::SecretExists(secret))
    }
}

/// Keeps `store` what etcd holds, opened with `key`; on the first join, the host's own
/// secrets become the cluster's first.
pub(super) async fn follow(
    etcd: Arc<Etcd>,
    key: Arc<ClusterKey>,
    store: Secrets,
    first_join: bool,
    mut sealed: watch::Receiver<Synced<BTreeMap<FunctionName, SealedSecret>>>,
) {
    if first_join {
        for (ns, name, value) in local(&store) {
            match key.seal(&(ns.clone(), name.clone()), &value) {
                Ok(s) => {
                    if let Err(e) = faasd_cluster::put_secret(&etcd, &(ns, name), &s, false).await {
                        tracing::error!("cluster: adopting a secret: {e}");
                    }
                }
                Err(e) => tracing::error!("cluster: {e}"),
            }
        }
    }
    loop {
        let now = sealed.borrow_and_update().clone();
        if now.synced {
            for (secret, s) in &now.items {
                let value = match key.open(secret, s) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("cluster: {e}");
                        continue;
                    }
                };
                let here = store
                    .file(&secret.0, &secret.1)
                    .ok()
                    .and_then(|p| std::fs::read(p).ok());
                if here.as_deref() != Some(value.as_slice())
                    && let Err(e) = store.put(&secret.0, &secret.1, &value, here.is_some())
                {
                    tracing::error!("cluster: keeping secret {}/{}: {e}", secret.0, secret.1);
                }
            }
            for (ns, name, _) in local(&store) {
                if !now.items.contains_key(&(ns.clone(), name.clone()))
                    && let Err(e) = store.remove(&ns, &name)
                {
                    tracing::error!("cluster: removing secret {ns}/{name}: {e}");
                }
            }
        }
        if sealed.changed().await.is_err() {
            return;
        }
    }
}

/// This host's secrets with their values.
fn local(store: &Secrets) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for ns in store.namespaces().unwrap_or_default() {
        for name in store.list(&ns).unwrap_or_default() {
            if let Some(v) = store
                .file(&ns, &name)
                .ok()
                .and_then(|p| std::fs::read(p).ok())
            {
                out.push((ns.clone(), name, v));
            }
        }
    }
    out
}
