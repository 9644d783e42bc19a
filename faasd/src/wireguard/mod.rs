//! The `wg-faas` interface: how peers reach the functions and faasd's DNS.
//!
//! On start faasd loads (or makes, once) the host's key, brings the interface up with
//! `fd00:faa5:0:100::1/64`, routes the platform prefix `fd00:faa5::/32` through it (the
//! function prefix stays delivered locally: the `local` table is consulted first), turns
//! IPv6 forwarding on, and configures the stored peers. Which implementation runs it:
//! - an interface that already exists (made by the operator, say by a `wg-faas.service`
//!   with wg-quick or wireguard-go) is adopted and configured with the `wg` tool;
//! - otherwise faasd creates a kernel WireGuard interface (rtnetlink), also configured with
//!   `wg`, and it outlives faasd like any kernel interface;
//! - where the kernel has no WireGuard (the module is missing), faasd runs boringtun,
//!   embedded, in userspace.

pub mod control;
pub mod peers;
pub mod uapi;

use std::{
    net::Ipv6Addr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use serde::{Deserialize, Serialize};

use self::{
    control::Control,
    peers::{ClientConfig, Peer, PeerError, Peers},
    uapi::UapiError,
};
use faasd_core::config::Ipv6Net;

/// The WireGuard network: hosts and peers.
/// Errors of the WireGuard interface.
#[derive(Debug, thiserror::Error)]
pub enum WireGuardError {
    /// The key file.
    #[error("WireGuard key {path}: {source}")]
    Key {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded implementation could not create the interface.
    #[error("creating {interface} (embedded boringtun): {reason}")]
    Create {
        /// The interface.
        interface: String,
        /// Why.
        reason: String,
    },
    /// Configuring an interface through `wireguard-control` failed.
    #[error("WireGuard interface {interface} ({backend}): {what}: {source}")]
    Control {
        /// The interface.
        interface: String,
        /// `kernel` or `userspace`.
        backend: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// Configuring the device.
    #[error(transparent)]
    Uapi(#[from] UapiError),
    /// Configuring addresses and routes.
    #[error(transparent)]
    Net(#[from] crate::net::InterfaceError),
    /// Looking up the link.
    #[error(transparent)]
    Link(#[from] crate::net::NetError),
    /// The peer store.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

/// Which implementation runs the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// boringtun inside faasd.
    Embedded,
    /// A kernel interface faasd created.
    Kernel,
    /// An interface that existed (kernel or userspace).
    Adopted,
}

/// Settings of the interface.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interface name.
    pub interface: String,
    /// UDP port.
    pub port: u16,
    /// `host:port` peers connect to; found from the host's addresses when unset.
    pub endpoint: Option<String>,
    /// The host's own address, first of its /64 of peers ([`faasd_common::plan`]).
    pub address: Ipv6Addr,
}

impl Settings {
    /// The /64 the host's peers get their addresses from.
    pub fn network(&self) -> Ipv6Addr {
        let s = self.address.segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0)
    }
}

/// Another host of the cluster, as a WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPeer {
    /// Its public key (base64).
    pub public_key: String,
    /// What it routes: its function prefix and its own network.
    pub allowed: Vec<Ipv6Net>,
    /// Where it listens.
    pub endpoint: Option<std::net::SocketAddr>,
}

/// A peer and its live counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    /// The stored peer.
    #[serde(flatten)]
    pub peer: Peer,
    /// Seconds since the last handshake, if there was one.
    pub last_handshake_secs_ago: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// The answer to adding a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddedPeer {
    /// The stored peer.
    #[serde(flatten)]
    pub peer: Peer,
    /// The client's wg-quick file; holds its private key when faasd generated it (shown
    /// in this answer only, never stored).
    pub config: String,
}

/// The interface, up and configured.
pub struct WireGuard {
    settings: Settings,
    backend: Backend,
    control: Control,
    public_key: String,
    peers: Peers,
    /// Serialises peer changes (store and device must agree).
    lock: Mutex<()>,
    /// The other hosts made peers by [`WireGuard::mesh`], by public key.
    meshed: Mutex<std::collections::BTreeMap<String, HostPeer>>,
    _device: Option<boringtun::device::DeviceHandle>,
}

impl std::fmt::Debug for WireGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireGuard")
            .field("interface", &self.settings.interface)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key pair, (private, public), both base64.
pub fn generate_keypair() -> std::io::Result<(String, String)> {
    let secret = StaticSecret::from(crate::random::bytes::<32>()?);
    let public = PublicKey::from(&secret);
    Ok((b64(secret.as_bytes()), b64(public.as_bytes())))
}

/// Decodes a base64 WireGuard key.
pub fn decode_key(key: &str) -> Result<[u8; 32], WireGuardError> {
    base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| {
            WireGuardError::Invalid(format!(
                "{key:?} is not a WireGuard key (32 bytes, base64, as `wg genkey | wg pubkey` prints)"
            ))
        })
}

/// The host's private key: read, or made on first start (mode 0600, never printed).
fn host_key(path: &Path) -> Result<StaticSecret, WireGuardError> {
    let err = |source| WireGuardError::Key {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let k = decode_key(&text).map_err(|e| err(std::io::Error::other(e.to_string())))?;
            Ok(StaticSecret::from(k))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d).map_err(err)?;
            }
            let k = crate::random::bytes::<32>().map_err(err)?;
            faasd_core::durable::write_private(path, b64(&k).as_bytes()).map_err(err)?;
            Ok(StaticSecret::from(k))
        }
        Err(e) => Err(err(e)),
    }
}

/// The first global address of this host, for peers' `Endpoint` when none is configured.
fn guess_endpoint(port: u16) -> String {
    let mut found: Option<std::net::IpAddr> = None;
    // SAFETY: getifaddrs fills a list we free with freeifaddrs; we only read it.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) == 0 {
            let mut cur = list;
            while !cur.is_null() && found.is_none() {
                let a = (*cur).ifa_addr;
                if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                    let sin = &*(a as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                    if !ip.is_loopback() && !ip.is_link_local() {
                        found = Some(ip.into());
                    }
                }
                cur = (*cur).ifa_next;
            }
            libc::freeifaddrs(list);
        }
    }
    match found {
        Some(ip) => format!("{ip}:{port}"),
        None => format!("<this host's address>:{port}"),
    }
}

impl WireGuard {
    /// Brings the interface up as described in the module documentation.
    pub async fn up(settings: Settings, state_dir: &Path) -> Result<Self, WireGuardError> {
        let secret = host_key(&state_dir.join("wireguard/private.key"))?;
        let public_key = b64(PublicKey::from(&secret).as_bytes());
        let name = settings.interface.clone();
        let (backend, device, control) = if crate::net::link(&name).await?.is_some() {
            (Backend::Adopted, None, Control::library(&name)?)
        } else {
            match crate::net::create_wireguard_link(&name).await {
                Ok(()) => (Backend::Kernel, None, Control::library(&name)?),
                Err(e) => {
                    tracing::info!("no kernel WireGuard ({e}): running boringtun in faasd");
                    let (handle, device) = embedded(&name)?;
                    (Backend::Embedded, Some(handle), Control::Embedded(device))
                }
            }
        };
        control.configure(secret.as_bytes(), settings.port)?;
        let index = crate::net::link(&name)
            .await?
            .ok_or_else(|| WireGuardError::Create {
                interface: name.clone(),
                reason: "the interface vanished".into(),
            })?
            .index;
        let (platform, plen) = faasd_common::plan::PLATFORM_PREFIX;
        crate::net::configure_interface(
            &name,
            index,
            settings.address,
            64,
            Ipv6Net {
                addr: platform,
                len: plen,
            },
        )
        .await?;
        // Peers reach each other through this host, too.
        if let Err(e) = std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1") {
            tracing::warn!("turning IPv6 forwarding on: {e}");
        }
        let wg = Self {
            settings,
            backend,
            control,
            public_key,
            peers: Peers::new(state_dir),
            lock: Mutex::new(()),
            meshed: Mutex::default(),
            _device: device,
        };
        let stored = wg.peers.list()?;
        for p in &stored {
            wg.configure_peer(p)?;
        }
        tracing::info!(
            "WireGuard {} up ({:?}), port {}, {} peer(s)",
            wg.settings.interface,
            wg.backend,
            wg.settings.port,
            stored.len()
        );
        Ok(wg)
    }

    fn configure_peer(&self, p: &Peer) -> Result<(), WireGuardError> {
        self.control
            .set_peer(&decode_key(&p.public_key)?, p.address)
    }

    /// Removes the control socket faasd served for its embedded device (at exit: the
    /// device goes with the process).
    pub fn close(&self) {
        if let Control::Embedded(device) = &self.control {
            let _ = std::fs::remove_file(device.path());
        }
    }

    /// The host's public key, base64.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Which implementation runs the interface.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The interface's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds a peer; generates its key pair when `public_key` is `None`.
    pub fn add_peer(
        &self,
        name: &str,
        public_key: Option<&str>,
    ) -> Result<AddedPeer, WireGuardError> {
        let _g = self.lock.lock().expect("peer lock");
        let (private, public) = match public_key {
            Some(k) => {
                decode_key(k)?;
                (None, k.trim().to_owned())
            }
            None => {
                let (private, public) = generate_keypair()
                    .map_err(|e| WireGuardError::Invalid(format!("generating a key pair: {e}")))?;
                (Some(private), public)
            }
        };
        let peer = self.peers.add(name, &public, self.settings.network())?;
        if let Err(e) = self.configure_peer(&peer) {
            let _ = self.peers.remove(name);
            return Err(e);
        }
        let endpoint = self
            .settings
            .endpoint
            .clone()
            .unwrap_or_else(|| guess_endpoint(self.settings.port));
        let config = ClientConfig {
            private_key: private.as_deref(),
            address: peer.address,
            dns: self.settings.address,
            host_public_key: &self.public_key,
            endpoint: &endpoint,
        }
        .render();
        Ok(AddedPeer { peer, config })
    }

    /// Makes the other hosts of the cluster this interface's host peers: new ones added,
    /// changed ones removed and added again (the embedded device cannot change a peer),
    /// unchanged ones left alone (their sessions with them), gone ones removed. Whether
    /// anything changed.
    pub fn mesh(&self, hosts: &[HostPeer]) -> Result<bool, WireGuardError> {
        let _g = self.lock.lock().expect("peer lock");
        let mut meshed = self.meshed.lock().expect("mesh lock");
        let now: std::collections::BTreeMap<String, HostPeer> = hosts
            .iter()
            .map(|h| (h.public_key.clone(), h.clone()))
            .collect();
        if now == *meshed {
            return Ok(false);
        }
        for (key, old) in meshed.iter() {
            if now.get(key) != Some(old) {
                self.control.remove_peer(&decode_key(key)?)?;
            }
        }
        for (key, h) in &now {
            if meshed.get(key) != Some(h) {
                self.control
                    .set_host(&decode_key(key)?, &h.allowed, h.endpoint)?;
            }
        }
        *meshed = now;
        Ok(true)
    }

    /// The other hosts with their last handshake and byte counts, by public key.
    pub fn host_status(&self) -> Result<Vec<(String, control::Live)>, WireGuardError> {
        let live = self.control.live()?;
        let meshed = self.meshed.lock().expect("mesh lock");
        Ok(meshed
            .keys()
            .map(|k| (k.clone(), live.get(k).copied().unwrap_or_default()))
            .collect())
    }

    /// Removes a peer from the store and the device.
    pub fn remove_peer(&self, name: &str) -> Result<Peer, WireGuardError> {
        let _g = self.lock.lock().expect("peer lock");
        let peer = self.peers.remove(name)?;
        self.control.remove_peer(&decode_key(&peer.public_key)?)?;
        Ok(peer)
    }

    /// Every peer with its last handshake and byte counts.
    pub fn peer_status(&self) -> Result<Vec<PeerStatus>, WireGuardError> {
        let live = self.control.live()?;
        Ok(self
            .peers
            .list()?
            .into_iter()
            .map(|peer| {
                let l = live.get(&peer.public_key).copied().unwrap_or_default();
                PeerStatus {
                    peer,
                    last_handshake_secs_ago: l.handshake_secs_ago,
                    rx_bytes: l.rx_bytes,
                    tx_bytes: l.tx_bytes,
                }
            })
            .collect())
    }
}

/// Starts boringtun on a new TUN device `name`, reached over a socket pair, and serves its
/// control socket.
fn embedded(
    name: &str,
) -> Result<
    (
        boringtun::device::DeviceHandle,
        std::sync::Arc<uapi::Device>,
    ),
    WireGuardError,
> {
    let create = |reason: String| WireGuardError::Create {
        interface: name.to_owned(),
        reason,
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| create(format!("control socket pair: {e}")))?;
    let config = boringtun::device::DeviceConfig {
        n_threads: 2,
        // The device owns this end from now on.
        uapi_fd: std::os::fd::IntoRawFd::into_raw_fd(theirs),
        ..Default::default()
    };
    let handle =
        boringtun::device::DeviceHandle::new(name, config).map_err(|e| create(format!("{e:?}")))?;
    let device = std::sync::Arc::new(uapi::Device::new(ours, uapi::socket_path(name)));
    uapi::serve(device.clone())
        .map_err(|e| create(format!("serving {}: {e}", device.path().display())))?;
    Ok((handle, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_and_bad_keys_are_refused() {
        let (private, public) = generate_keypair().unwrap();
        let secret = StaticSecret::from(decode_key(&private).unwrap());
        assert_eq!(b64(PublicKey::from(&secret).as_bytes()), public);
        assert!(decode_key("not a key").is_err());
        assert!(decode_key(&b64(&[0u8; 16])).is_err());
    }
}
