//! How faasd configures its WireGuard interface, whichever implementation runs it: its
//! embedded boringtun over the control protocol (see [`super::uapi`]), or a kernel interface
//! (or one an operator runs, such as wireguard-go) through the `wg` tool, which speaks
//! netlink to the kernel and the control protocol to userspace implementations.

use std::{
    collections::HashMap,
    io::Write,
    net::Ipv6Addr,
    process::{Command, Stdio},
    sync::Arc,
};

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
    /// Through the `wg` tool.
    Tool {
        /// The interface.
        interface: String,
    },
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `wg ARGS`, feeding `stdin`; stdout, or an error with what `wg` said.
/// Seconds between keep-alives to another host.
const HOST_KEEPALIVE: u16 = 25;

fn wg(args: &[&str], stdin: Option<&str>) -> Result<String, WireGuardError> {
    let what = format!("wg {}", args.join(" "));
    let mut child = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| WireGuardError::Tool {
            command: what.clone(),
            message: format!("{e} (install wireguard-tools)"),
        })?;
    if let Some(input) = stdin
        && let Some(mut pipe) = child.stdin.take()
    {
        let _ = pipe.write_all(input.as_bytes());
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().map_err(|e| WireGuardError::Tool {
        command: what.clone(),
        message: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(WireGuardError::Tool {
            command: what,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Control {
    /// Sets the interface's private key and port.
    pub fn configure(&self, private_key: &[u8; 32], port: u16) -> Result<(), WireGuardError> {
        match self {
            Self::Embedded(d) => Ok(d.set(&[
                format!("private_key={}", hex(private_key)),
                format!("listen_port={port}"),
            ])?),
            Self::Tool { interface } => {
                let port = port.to_string();
                // The key goes through a pipe, never through the command line.
                wg(
                    &[
                        "set",
                        interface,
                        "listen-port",
                        &port,
                        "private-key",
                        "/dev/stdin",
                    ],
                    Some(&format!("{}\n", b64(private_key))),
                )
                .map(drop)
            }
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
            Self::Tool { interface } => wg(
                &[
                    "set",
                    interface,
                    "peer",
                    &b64(public_key),
                    "allowed-ips",
                    &format!("{addr}/128"),
                ],
                None,
            )
            .map(drop),
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
            Self::Tool { interface } => {
                let allowed: Vec<String> = allowed.iter().map(ToString::to_string).collect();
                let key = b64(public_key);
                let keepalive = HOST_KEEPALIVE.to_string();
                let allowed = allowed.join(",");
                let endpoint = endpoint.map(|e| e.to_string());
                let mut args = vec![
                    "set",
                    interface.as_str(),
                    "peer",
                    &key,
                    "persistent-keepalive",
                    &keepalive,
                    "allowed-ips",
                    &allowed,
                ];
                if let Some(e) = &endpoint {
                    args.extend(["endpoint", e.as_str()]);
                }
                wg(&args, None).map(drop)
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
            Self::Tool { interface } => wg(
                &["set", interface, "peer", &b64(public_key), "remove"],
                None,
            )
            .map(drop),
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
            Self::Tool { interface } => {
                // `wg show IF dump`: the interface, then one line per peer: public key,
                // preshared key, endpoint, allowed ips, latest handshake (epoch seconds,
                // 0 = never), rx, tx, keepalive.
                let text = wg(&["show", interface, "dump"], None)?;
                Ok(text
                    .lines()
                    .skip(1)
                    .filter_map(|l| {
                        let f: Vec<&str> = l.split('\t').collect();
                        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
                        let hs = n(4)?;
                        Some((
                            f[0].to_owned(),
                            Live {
                                handshake_secs_ago: (hs > 0).then(|| now().saturating_sub(hs)),
                                rx_bytes: n(5)?,
                                tx_bytes: n(6)?,
                            },
                        ))
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
