//! The hosts' registry: each host claims a number once (it owns `fd00:faa5:N::/48` for
//! good), registers what others need to reach it under a lease it keeps alive, and watches
//! the others' registrations.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Etcd, EtcdError};

const NEXT: &str = "/faasd/v1/hosts/next";
const NAMES: &str = "/faasd/v1/hosts/names/";
const NUMBERS: &str = "/faasd/v1/hosts/numbers/";
const LIVE: &str = "/faasd/v1/hosts/live/";
/// The last host number: host N's own network is `fd00:faa5:0:(0x100 + N − 1)::/64`,
/// which must stay below `fd00:faa5:0:ffff::`.
const MAX_HOST_NUMBER: u16 = 0xfeff;

/// What a host tells the others, under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostInfo {
    /// Its number: it owns `fd00:faa5:N::/48`.
    pub number: u16,
    /// Its name (unique in the cluster).
    pub name: String,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// Where its WireGuard listens, `host:port`, for the others to reach it.
    pub endpoint: Option<String>,
    /// Its API addresses.
    pub api: Vec<String>,
    /// Its labels, for placement.
    pub labels: BTreeMap<String, String>,
    /// The most functions it takes.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
}

/// A host's capacity when its registration names none.
fn default_capacity() -> u32 {
    faasd_core::config::DEFAULT_CAPACITY
}

/// The number `name` claimed, claiming the next free one if it has none. Numbers start at
/// 1 (0 is the platform's own services) and are never handed out twice, even after the
/// host that had one left: an address made from it may still be known somewhere.
pub async fn claim_host_number(etcd: &Etcd, name: &str) -> Result<u16, EtcdError> {
    let name_key = format!("{NAMES}{name}");
    loop {
        // Already claimed (this host restarted, or a lost answer to our own claim).
        let claimed = etcd
            .call("reading this host's number", |mut c| {
                let k = name_key.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        if let Some(kv) = claimed.kvs().first() {
            return parse_number(&name_key, kv.value());
        }
        let next = etcd
            .call("reading the next host number", |mut c| async move {
                c.get(NEXT, None).await
            })
            .await?;
        let (number, revision) = match next.kvs().first() {
            Some(kv) => (parse_number(NEXT, kv.value())?, kv.mod_revision()),
            None => (1, 0),
        };
        if number > MAX_HOST_NUMBER {
            return Err(EtcdError::NoHostNumbers(MAX_HOST_NUMBER));
        }
        let after = number + 1;
        let guard = if revision == 0 {
            Compare::create_revision(NEXT, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(NEXT, CompareOp::Equal, revision)
        };
        let txn = Txn::new()
            .when([
                guard,
                Compare::create_revision(name_key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(NEXT, after.to_string(), None),
                TxnOp::put(name_key.as_str(), number.to_string(), None),
                TxnOp::put(format!("{NUMBERS}{number}"), name, None),
            ]);
        let done = etcd.txn("claiming a host number", txn).await?;
        if done.succeeded() {
            return Ok(number);
        }
        // Another host took that number first (or this name was claimed meanwhile): read
        // again.
    }
}

fn parse_number(key: &str, value: &[u8]) -> Result<u16, EtcdError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EtcdError::Invalid {
            what: "host number",
            key: key.to_owned(),
            why: format!("{:?} is not a number", String::from_utf8_lossy(value)),
        })
}

/// A host's registration, kept alive by a task of its own while this value lives.
#[derive(Debug)]
pub struct Registration {
    lease: watch::Receiver<Option<i64>>,
    kept: watch::Receiver<tokio::time::Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// The lease the registration holds under, while it was kept alive within its TTL;
    /// what else the host puts under it lives and dies with the host.
    pub fn lease(&self) -> watch::Receiver<Option<i64>> {
        self.lease.clone()
    }

    /// When etcd last took a keep-alive (its sending, as the host saw it).
    pub fn kept(&self) -> watch::Receiver<tokio::time::Instant> {
        self.kept.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Registers `info` under a lease of `ttl` and keeps it alive (a third of the TTL apart).
/// A lease that expired (etcd unreachable for longer than the TTL) is replaced by a new
/// one, with the registration put again, once etcd answers.
pub async fn register(
    etcd: Arc<Etcd>,
    info: HostInfo,
    ttl: Duration,
) -> Result<Registration, EtcdError> {
    let value = serde_json::to_string(&info).expect("a host's registration serializes");
    let key = format!("{LIVE}{}", info.number);
    let mut lease = put_under_lease(&etcd, &key, &value, ttl).await?;
    let (tx, state) = watch::channel(Some(lease));
    let (kept_tx, kept) = watch::channel(tokio::time::Instant::now());
    let task = tokio::spawn(async move {
        let mut last_kept = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(ttl / 3).await;
            // The lease is gone once its TTL has passed since the last keep-alive etcd
            // took, whether or not the call trying now has given up yet; once gone, each
            // try gets a third of the TTL.
            let deadline = (last_kept + ttl).max(tokio::time::Instant::now() + ttl / 3);
            // etcd counts the TTL from when it takes the keep-alive, after it was sent:
            // counting from the sending, the host never thinks its lease lives longer
            // than etcd does.
            let sent = tokio::time::Instant::now();
            // Each member gets a short try: one that lost its leader (or is cut off) must
            // not hold the keep-alive past the TTL while another could take it.
            let per_try = (ttl / 6).clamp(Duration::from_millis(200), Duration::from_secs(2));
            let kept = tokio::time::timeout_at(
                deadline,
                etcd.call_within(
                    "keeping this host's lease alive",
                    per_try,
                    |mut c| async move {
                        let (mut keeper, mut answers) = c.lease_keep_alive(lease).await?;
                        keeper.keep_alive().await?;
                        Ok(answers.message().await?.map_or(0, |a| a.ttl()))
                    },
                ),
            )
            .await;
            let kept = match kept {
                Ok(k) => k,
                Err(_) => {
                    tx.send_if_modified(|l| l.take().is_some());
                    continue;
                }
            };
            match kept {
                Ok(left) if left > 0 => {
                    last_kept = sent;
                    kept_tx.send_replace(sent);
                    tx.send_if_modified(|l| l.replace(lease) != Some(lease));
                }
                // Expired (TTL 0, or etcd no longer knows it): a new lease and the
                // registration again.
                Ok(_) | Err(EtcdError::Refused { .. }) => {
                    tx.send_if_modified(|l| l.take().is_some());
                    match put_under_lease(&etcd, &key, &value, ttl).await {
                        Ok(l) => {
                            tracing::warn!("this host's lease expired; registered again");
                            lease = l;
                            last_kept = tokio::time::Instant::now();
                            kept_tx.send_replace(last_kept);
                            tx.send_replace(Some(lease));
                        }
                        Err(e) => tracing::warn!("registering this host again: {e}"),
                    }
                }
                Err(e) => {
                    if last_kept.elapsed() >= ttl {
                        tx.send_if_modified(|l| l.take().is_some());
                    }
                    tracing::warn!("{e}");
                }
            }
        }
    });
    Ok(Registration {
        lease: state,
        kept,
        task,
    })
}

async fn put_under_lease(
    etcd: &Etcd,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<i64, EtcdError> {
    let secs = ttl.as_secs().max(1) as i64;
    let lease = etcd
        .call("granting this host's lease", |mut c| async move {
            c.lease_grant(secs, None).await
        })
        .await?
        .id();
    etcd.call("registering this host", |mut c| {
        let (k, v) = (key.to_owned(), value.to_owned());
        async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
    })
    .await?;
    Ok(lease)
}

/// Keeps `hosts` up to date with the registrations in etcd, by number, until `hosts` has
/// no receiver left.
pub async fn watch_hosts(etcd: Arc<Etcd>, hosts: watch::Sender<BTreeMap<u16, HostInfo>>) {
    crate::watch::follow(
        etcd,
        LIVE,
        "the hosts' registrations",
        |k| k.parse().ok(),
        hosts,
    )
    .await
}
