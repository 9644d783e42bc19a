//! How faasd configures its WireGuard interface, whichever implementation runs it: its
//! embedded boringtun over the control protocol (see [`super::uapi`]), or a kernel interface
//! (or one an operator runs, such as wireguard-go) through the `wireguard-control` library:
//! generic netlink to the kernel, the control socket to userspace implementations.
//!
//! The embedded device keeps faasd's own control protocol code: the library talks to a
//! userspace device only through `/var/run/wireguard/<name>.sock`, while faasd holds its
//! boringtun's end of a socket pair in-process, and against boringtun the library's reading
//! has no private key and takes `last_handshake_time` (an elapsed time there) for a
//! timestamp.

use std::{collections::HashMap, net::Ipv6Addr, sync::Arc, time::SystemTime};

use wireguard_control::{DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};

use super::{WireGuardError, b64, hex, uapi};
use faasd_core::config::Ipv6Net;

/// What a peer's counters say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Live {
    /// Seconds since its last handshake, if there was one.
    pub handshake_secs_ago: Option<u64>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
}

/// The way to the interface's configuration.
#[derive(Debug)]
pub enum Control {
    /// faasd's embedded boringtun.
    Embedded(Arc<uapi::Device>),
    /// Through `wireguard-control`.
    Library {
        /// The interface.
        interface: InterfaceName,
        /// Netlink (a kernel interface) or the control socket (a userspace one).
        backend: wireguard_control::Backend,
    },
}

/// Seconds between keep-alives to another host.
const HOST_KEEPALIVE: u16 = 25;

/// The error of a library call on `interface`.
fn failed(
    interface: &InterfaceName,
    backend: wireguard_control::Backend,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> WireGuardError {
    let interface = interface.to_string();
    move |source| WireGuardError::Control {
        interface,
        backend: backend.to_string(),
        what,
        source,
    }
}

impl Control {
    /// The library's way to `interface`: the control socket when a userspace
    /// implementation serves one for it (as `wg` decides), else netlink.
    pub fn library(interface: &str) -> Result<Self, WireGuardError> {
        let backend = if uapi::socket_path(interface).exists() {
            wireguard_control::Backend::Userspace
        } else {
            wireguard_control::Backend::Kernel
        };
        let interface = interface
            .parse()
            .map_err(|e| WireGuardError::Invalid(format!("interface {interface}: {e}")))?;
        Ok(Self::Library { interface, backend })
    }

    /// Applies `update` through the library.
    fn apply(
        interface: &InterfaceName,
        backend: wireguard_control::Backend,
        what: &'static str,
        update: DeviceUpdate,
    ) -> Result<(), WireGuardError> {
        update
            .apply(interface, backend)
            .map_err(failed(interface, backend, what))
    }

    /// Sets the interface's private key and port.
    pub fn configure(&self, private_key: &[u8; 32], port: u16) -> Result<(), WireGuardError> {
        match self {
            Self::Embedded(d) => Ok(d.set(&[
                format!("private_key={}", hex(private_key)),
                format!("listen_port={port}"),
            ])?),
            Self::Library { interface, backend } => Self::apply(
                interface,
                *backend,
                "setting its key and port",
                DeviceUpdate::new()
                    .set_private_key(Key(*private_key))
                    .set_listen_port(port),
            ),
        }
    }

    /// Adds a peer, or sets its one allowed address.
    pub fn set_peer(&self, public_key: &[u8; 32], addr: Ipv6Addr) -> Result<(), WireGuardError> {
        match self {
            Self::Embedded(d) => Ok(d.set(&[
                format!("public_key={}", hex(public_key)),
                "replace_allowed_ips=true".into(),
                format!("allowed_ip={addr}/128"),
            ])?),
            Self::Library { interface, backend } => Self::apply(
                interface,
                *backend,
                "setting a peer",
                DeviceUpdate::new().add_peer(
                    PeerConfigBuilder::new(&Key(*public_key))
                        .replace_allowed_ips()
                        .add_allowed_ip(addr.into(), 128),
                ),
            ),
        }
    }

    /// Adds another host of the cluster, or sets what it routes and where it is: its
    /// prefixes, its endpoint, and a keep-alive so a host behind NAT stays reachable.
    pub fn set_host(
        &self,
        public_key: &[u8; 32],
        allowed: &[Ipv6Net],
        endpoint: Option<std::net::SocketAddr>,
    ) -> Result<(), WireGuardError> {
        match self {
            Self::Embedded(d) => {
                let mut lines = vec![
                    format!("public_key={}", hex(public_key)),
                    "replace_allowed_ips=true".into(),
                    format!("persistent_keepalive_interval={HOST_KEEPALIVE}"),
                ];
                lines.extend(endpoint.map(|e| format!("endpoint={e}")));
                lines.extend(allowed.iter().map(|a| format!("allowed_ip={a}")));
                Ok(d.set(&lines)?)
            }
            Self::Library { interface, backend } => {
                let mut peer = PeerConfigBuilder::new(&Key(*public_key))
                    .replace_allowed_ips()
                    .set_persistent_keepalive_interval(HOST_KEEPALIVE);
                if let Some(e) = endpoint {
                    peer = peer.set_endpoint(e);
                }
                for a in allowed {
                    peer = peer.add_allowed_ip(a.addr.into(), a.len);
                }
                Self::apply(
                    interface,
                    *backend,
                    "setting another host",
                    DeviceUpdate::new().add_peer(peer),
                )
            }
        }
    }

    /// Removes a peer.
    pub fn remove_peer(&self, public_key: &[u8; 32]) -> Result<(), WireGuardError> {
        match self {
            Self::Embedded(d) => Ok(d.set(&[
                format!("public_key={}", hex(public_key)),
                "remove=true".into(),
            ])?),
            Self::Library { interface, backend } => Self::apply(
                interface,
                *backend,
                "removing a peer",
                DeviceUpdate::new().remove_peer_by_key(&Key(*public_key)),
            ),
        }
    }

    /// Every configured peer's counters, by public key (base64).
    pub fn live(&self) -> Result<HashMap<String, Live>, WireGuardError> {
        match self {
            Self::Embedded(d) => {
                let mut out = HashMap::new();
                let mut current: Option<(String, [u64; 4])> = None;
                let mut finish = |c: Option<(String, [u64; 4])>| {
                    if let Some((key, [sec, nsec, rx, tx])) = c {
                        out.insert(
                            key,
                            Live {
                                handshake_secs_ago: boringtun_age(sec, nsec),
                                rx_bytes: rx,
                                tx_bytes: tx,
                            },
                        );
                    }
                };
                for (k, v) in d.get()? {
                    let slot = match k.as_str() {
                        "public_key" => {
                            finish(current.take());
                            let key = (0..v.len() / 2)
                                .filter_map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16).ok())
                                .collect::<Vec<u8>>();
                            current = Some((b64(&key), [0; 4]));
                            continue;
                        }
                        "last_handshake_time_sec" => 0,
                        "last_handshake_time_nsec" => 1,
                        "rx_bytes" => 2,
                        "tx_bytes" => 3,
                        _ => continue,
                    };
                    if let Some((_, vals)) = current.as_mut() {
                        vals[slot] = v.parse().unwrap_or(0);
                    }
                }
                finish(current.take());
                Ok(out)
            }
            Self::Library { interface, backend } => {
                let device = wireguard_control::Device::get(interface, *backend)
                    .map_err(failed(interface, *backend, "reading its peers"))?;
                let now = SystemTime::now();
                Ok(device
                    .peers
                    .into_iter()
                    .map(|p| {
                        let age = p
                            .stats
                            .last_handshake_time
                            .map(|t| now.duration_since(t).map_or(0, |d| d.as_secs()));
                        (
                            b64(&p.config.public_key.0),
                            Live {
                                handshake_secs_ago: age,
                                rx_bytes: p.stats.rx_bytes,
                                tx_bytes: p.stats.tx_bytes,
                            },
                        )
                    })
                    .collect())
            }
        }
    }
}

/// boringtun reports the time elapsed since the last handshake; zero means never.
fn boringtun_age(sec: u64, nsec: u64) -> Option<u64> {
    (sec != 0 || nsec != 0).then_some(sec)
}
