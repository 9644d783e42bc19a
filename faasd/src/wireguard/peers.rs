//! WireGuard peers: one JSON file each under `<state>/peers/`, written atomically, and the
//! wg-quick configuration a peer needs. A peer's address `fd00:faa5:0:100::N/128` comes from
//! a counter that only grows, so an address is never handed to a second peer.

use std::{
    net::Ipv6Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use faasd_core::durable::write_atomic;

/// A peer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Name (a DNS label).
    pub name: String,
    /// Its public key, base64.
    pub public_key: String,
    /// Its address on the WireGuard network.
    pub address: Ipv6Addr,
    /// When it was added, seconds since the epoch.
    pub created_at: u64,
}

/// Errors of the peer store.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Bad name or key.
    #[error("{0}")]
    Invalid(String),
    /// No such peer.
    #[error("peer {0} not found")]
    NotFound(String),
    /// The name is taken.
    #[error("peer {0} already exists")]
    Exists(String),
    /// The disk failed.
    #[error("peer store {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The peer store.
#[derive(Debug, Clone)]
pub struct Peers {
    dir: PathBuf,
}

/// Host numbers below this are the host's own (`::1`).
const FIRST_PEER: u128 = 2;

impl Peers {
    /// The store under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("peers"),
        }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> PeerError + '_ {
        |source| PeerError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// Every stored peer, by name.
    pub fn list(&self) -> Result<Vec<Peer>, PeerError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io()(e)),
        };
        let mut peers = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read(&path).map_err(self.io())?;
                let p: Peer = serde_json::from_slice(&text).map_err(|e| {
                    PeerError::Invalid(format!("{} is corrupt: {e}", path.display()))
                })?;
                peers.push(p);
            }
        }
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(peers)
    }

    /// Stores a new peer with the next address of `network` (a /64); the counter is made
    /// durable before the address is handed out.
    pub fn add(&self, name: &str, public_key: &str, network: Ipv6Addr) -> Result<Peer, PeerError> {
        faasd_core::spec::validate_label("peer name", name).map_err(|e| PeerError::Invalid(e.0))?;
        std::fs::create_dir_all(&self.dir).map_err(self.io())?;
        let path = self.dir.join(format!("{name}.json"));
        if path.exists() {
            return Err(PeerError::Exists(name.into()));
        }
        if self.list()?.iter().any(|p| p.public_key == public_key) {
            return Err(PeerError::Invalid(
                "a peer with this public key exists already".into(),
            ));
        }
        let counter = self.dir.join("next");
        let n: u128 = std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(FIRST_PEER);
        if n >= 1 << 64 {
            return Err(PeerError::Invalid("the peer network is exhausted".into()));
        }
        write_atomic(&counter, (n + 1).to_string().as_bytes()).map_err(self.io())?;
        let peer = Peer {
            name: name.into(),
            public_key: public_key.into(),
            address: Ipv6Addr::from(u128::from(network) | n),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let json = serde_json::to_vec_pretty(&peer).expect("peers serialize");
        write_atomic(&path, &json).map_err(self.io())?;
        Ok(peer)
    }

    /// Deletes a peer; returns it.
    pub fn remove(&self, name: &str) -> Result<Peer, PeerError> {
        faasd_core::spec::validate_label("peer name", name).map_err(|e| PeerError::Invalid(e.0))?;
        let peer = self
            .list()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| PeerError::NotFound(name.into()))?;
        std::fs::remove_file(self.dir.join(format!("{name}.json"))).map_err(self.io())?;
        Ok(peer)
    }
}

/// What a client needs to reach this host, as a wg-quick file.
#[derive(Debug)]
pub struct ClientConfig<'a> {
    /// The client's private key, when faasd generated it; otherwise a placeholder.
    pub private_key: Option<&'a str>,
    /// The client's address.
    pub address: Ipv6Addr,
    /// The host's DNS server (its WireGuard address).
    pub dns: Ipv6Addr,
    /// The host's public key, base64.
    pub host_public_key: &'a str,
    /// Where the host listens (`host:port`).
    pub endpoint: &'a str,
}

impl ClientConfig<'_> {
    /// The wg-quick text.
    pub fn render(&self) -> String {
        let (pk, plen) = faasd_common::plan::PLATFORM_PREFIX;
        format!(
            "[Interface]\nPrivateKey = {}\nAddress = {}/128\nDNS = {}\n\n[Peer]\nPublicKey = {}\n\
             AllowedIPs = {pk}/{plen}\nEndpoint = {}\nPersistentKeepalive = 25\n",
            self.private_key
                .unwrap_or("<the private key of the public key you gave>"),
            self.address,
            self.dns,
            self.host_public_key,
            self.endpoint,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_never_reused_and_names_are_unique() {
        let dir = std::env::temp_dir().join(format!("faasd-peers-{}", std::process::id()));
        let peers = Peers::new(&dir);
        let net: Ipv6Addr = "fd00:faa5:0:100::".parse().unwrap();
        let a = peers.add("laptop", "a=", net).unwrap();
        assert_eq!(a.address, "fd00:faa5:0:100::2".parse::<Ipv6Addr>().unwrap());
        assert!(matches!(
            peers.add("laptop", "b=", net),
            Err(PeerError::Exists(_))
        ));
        assert!(matches!(
            peers.add("other", "a=", net),
            Err(PeerError::Invalid(_))
        ));
        peers.remove("laptop").unwrap();
        let b = peers.add("phone", "c=", net).unwrap();
        assert_eq!(b.address, "fd00:faa5:0:100::3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(peers.list().unwrap(), vec![b]);
        assert!(matches!(
            peers.add("Bad Name", "d=", net),
            Err(PeerError::Invalid(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
