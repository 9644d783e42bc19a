//! The cluster's functions: deployed through any host's API into etcd, placed on one host
//! by the scheduler (one at a time: the host whose lease holds the scheduler key), run by
//! the host they are placed on. A function's address is given with its first placement,
//! from that host's range, and kept wherever it moves.

use std::{collections::BTreeMap, net::Ipv6Addr, sync::Arc};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use faasd_core::spec::Deployment;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Etcd, EtcdError, FunctionName, Synced};

const FUNCTIONS: &str = "/faasd/v1/functions/";
const ADDRESSES: &str = "/faasd/v1/addresses/";
const SCHEDULER: &str = "/faasd/v1/scheduler";
const DRAIN: &str = "/faasd/v1/drain/";

/// A function of the cluster's, as etcd keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placed {
    /// What was deployed (validated by the host that took it).
    pub deployment: Deployment,
    /// Its address, from its first placement on.
    #[serde(default)]
    pub address: Option<Ipv6Addr>,
    /// The host that runs it, once placed: the one the other hosts route its address to
    /// and that publishes its name.
    #[serde(default)]
    pub host: Option<u16>,
    /// The other hosts that run it too (a function spread over hosts), each serving its
    /// address to its own clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<u16>,
    /// Why the scheduler found no host for it, while it found none.
    #[serde(default)]
    pub unplaced: Option<String>,
    /// When it was first deployed, seconds since the epoch.
    #[serde(default)]
    pub created_at: u64,
}

fn key((namespace, name): &FunctionName) -> String {
    format!("{FUNCTIONS}{namespace}/{name}")
}

impl Placed {
    /// A function just deployed, not placed yet.
    pub fn new(deployment: Deployment) -> Self {
        Self {
            deployment,
            address: None,
            host: None,
            replicas: Vec::new(),
            unplaced: None,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// Whether host `h` runs it.
    pub fn runs_on(&self, h: u16) -> bool {
        self.host == Some(h) || self.replicas.contains(&h)
    }
}

fn json(p: &Placed) -> String {
    serde_json::to_string(p).expect("a function's record serializes")
}

/// A function's record and its revision (for a write that must not overtake another).
async fn read(etcd: &Etcd, f: &FunctionName) -> Result<Option<(Placed, i64)>, EtcdError> {
    let k = key(f);
    let r = etcd
        .call("reading a function", |mut c| {
            let k = k.clone();
            async move { c.get(k, None).await }
        })
        .await?;
    r.kvs()
        .first()
        .map(|kv| {
            let p = crate::watch::parse("function", kv.key(), kv.value())?;
            Ok((p, kv.mod_revision()))
        })
        .transpose()
}

/// Writes `new` if the record is still at `revision`; whether it was.
async fn swap(
    etcd: &Etcd,
    f: &FunctionName,
    revision: i64,
    new: &Placed,
) -> Result<bool, EtcdError> {
    let (k, v) = (key(f), json(new));
    let txn = Txn::new()
        .when([Compare::mod_revision(
            k.as_str(),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::put(k.as_str(), v, None)]);
    Ok(etcd.txn("changing a function", txn).await?.succeeded())
}

/// Creates a function (not yet placed); `Err(existing)` when the name is taken. A retried
/// call whose first try went through finds its own record and counts as created.
pub async fn create_function(
    etcd: &Etcd,
    f: &FunctionName,
    deployment: &Deployment,
) -> Result<Result<(), Placed>, EtcdError> {
    let (k, v) = (key(f), json(&Placed::new(deployment.clone())));
    if etcd.put_if_absent("deploying a function", &k, v).await? {
        return Ok(Ok(()));
    }
    match read(etcd, f).await? {
        Some((p, _)) if p.deployment == *deployment && p.host.is_none() => Ok(Ok(())),
        Some((p, _)) => Ok(Err(p)),
        // Removed in between: try again.
        None => Box::pin(create_function(etcd, f, deployment)).await,
    }
}

/// Creates a function already placed (a host's own, when it joins); whether it was new.
pub async fn adopt_function(etcd: &Etcd, f: &FunctionName, p: &Placed) -> Result<bool, EtcdError> {
    etcd.put_if_absent("adopting a host's function", &key(f), json(p))
        .await
}

/// Replaces a function's deployment, keeping where it runs and its address; the record
/// as it is now, or `None` when there is no such function.
pub async fn update_function(
    etcd: &Etcd,
    f: &FunctionName,
    deployment: &Deployment,
) -> Result<Option<Placed>, EtcdError> {
    loop {
        let Some((mut p, revision)) = read(etcd, f).await? else {
            return Ok(None);
        };
        p.deployment = deployment.clone();
        if swap(etcd, f, revision, &p).await? {
            return Ok(Some(p));
        }
    }
}

/// Removes a function; whether there was one.
pub async fn delete_function(etcd: &Etcd, f: &FunctionName) -> Result<bool, EtcdError> {
    etcd.delete("removing a function", &key(f)).await
}

/// What the scheduler decided for one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run it on this host, and on these too.
    On(u16, Vec<u16>),
    /// No host fits, for this reason.
    Nowhere(String),
}

/// Writes the scheduler's decision, provided `scheduler` still holds the scheduler key and
/// the record is unchanged since `revision`. A function placed for the first time gets
/// the next address of its host's range, counted in etcd in the same transaction, so no
/// address is ever given twice. The record as written, or `None` when the function
/// changed meanwhile (or this host is no longer the scheduler).
pub async fn place(
    etcd: &Etcd,
    scheduler: u16,
    f: &FunctionName,
    mut p: Placed,
    revision: i64,
    decision: Decision,
) -> Result<Option<Placed>, EtcdError> {
    let k = key(f);
    let mut when = vec![
        Compare::mod_revision(k.as_str(), CompareOp::Equal, revision),
        Compare::value(SCHEDULER, CompareOp::Equal, scheduler.to_string()),
    ];
    let mut then = Vec::new();
    match decision {
        Decision::On(host, replicas) => {
            p.replicas = replicas;
            if p.address.is_none() {
                let counter = format!("{ADDRESSES}{host}");
                let r = etcd
                    .call("reading a host's next address", |mut c| {
                        let k = counter.clone();
                        async move { c.get(k, None).await }
                    })
                    .await?;
                let (next, guard) = match r.kvs().first() {
                    Some(kv) => (
                        std::str::from_utf8(kv.value())
                            .ok()
                            .and_then(|v| v.parse::<u64>().ok())
                            .ok_or_else(|| EtcdError::Invalid {
                                what: "address counter",
                                key: counter.clone(),
                                why: "not a number".into(),
                            })?,
                        Compare::mod_revision(
                            counter.as_str(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        ),
                    ),
                    None => (
                        1,
                        Compare::create_revision(counter.as_str(), CompareOp::Equal, 0),
                    ),
                };
                p.address = Some(faasd_common::plan::placed_address(host, next));
                when.push(guard);
                then.push(TxnOp::put(counter.as_str(), (next + 1).to_string(), None));
            }
            p.host = Some(host);
            p.unplaced = None;
        }
        Decision::Nowhere(why) => {
            p.host = None;
            p.replicas.clear();
            p.unplaced = Some(why);
        }
    }
    then.push(TxnOp::put(k.as_str(), json(&p), None));
    let txn = Txn::new().when(when).and_then(then);
    let done = etcd.txn("placing a function", txn).await?;
    Ok(done.succeeded().then_some(p))
}

/// A function's record as etcd has it now, with its revision, for [`place`].
pub async fn function(etcd: &Etcd, f: &FunctionName) -> Result<Option<(Placed, i64)>, EtcdError> {
    read(etcd, f).await
}

/// Takes the scheduler key for `host` under `lease` unless another host holds it; the
/// host that holds it. A held key is only read (a transaction with a put would be a raft
/// write even when it fails).
pub async fn campaign(etcd: &Etcd, host: u16, lease: i64) -> Result<u16, EtcdError> {
    let held = etcd
        .call("reading the scheduler", |mut c| async move {
            c.get(SCHEDULER, None).await
        })
        .await?;
    if let Some(kv) = held.kvs().first() {
        return holder(kv.value());
    }
    let txn = Txn::new()
        .when([Compare::create_revision(SCHEDULER, CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            SCHEDULER,
            host.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(SCHEDULER, None::<GetOptions>)]);
    let done = etcd.txn("choosing the scheduler", txn).await?;
    if done.succeeded() {
        return Ok(host);
    }
    let value = done
        .op_responses()
        .into_iter()
        .find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .unwrap_or_default();
    holder(&value)
}

fn holder(value: &[u8]) -> Result<u16, EtcdError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| EtcdError::Invalid {
            what: "scheduler",
            key: SCHEDULER.into(),
            why: format!("{:?} is not a host number", String::from_utf8_lossy(value)),
        })
}

/// Marks host `host` as drained (the scheduler moves its functions off it and places
/// none there) or, with `drain == false`, as taking functions again.
pub async fn set_draining(etcd: &Etcd, host: u16, drain: bool) -> Result<(), EtcdError> {
    let k = format!("{DRAIN}{host}");
    etcd.call("draining a host", |mut c| {
        let k = k.clone();
        async move {
            if drain {
                c.put(k, "true", None).await.map(drop)
            } else {
                c.delete(k, None).await.map(drop)
            }
        }
    })
    .await
}

/// Keeps `drained` the hosts being drained, until it has no receiver left.
pub async fn watch_draining(etcd: Arc<Etcd>, drained: watch::Sender<BTreeMap<u16, bool>>) {
    crate::watch::follow(
        etcd,
        DRAIN,
        "the drained hosts",
        |k| k.parse().ok(),
        drained,
    )
    .await
}

/// Keeps `functions` every function of the cluster's, until it has no receiver left.
pub async fn watch_functions(
    etcd: Arc<Etcd>,
    functions: watch::Sender<Synced<BTreeMap<FunctionName, Placed>>>,
) {
    crate::watch::follow(
        etcd,
        FUNCTIONS,
        "the cluster's functions",
        crate::names::function_name,
        functions,
    )
    .await
}

/// One `constraints` entry of a deployment: `key == value` or `key != value` over a
/// host's labels (and `faasd.host`, its name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    label: String,
    value: String,
    equal: bool,
}

impl Constraint {
    /// Reads one entry, saying what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (op, equal) = if s.contains("!=") {
            ("!=", false)
        } else {
            ("==", true)
        };
        let (label, value) = s.split_once(op).ok_or_else(|| {
            format!("constraint {s:?}: expected `label == value` or `label != value`")
        })?;
        let (label, value) = (label.trim(), value.trim());
        if label.is_empty() || value.is_empty() {
            return Err(format!(
                "constraint {s:?}: a label and a value are both needed"
            ));
        }
        Ok(Self {
            label: label.to_owned(),
            value: value.to_owned(),
            equal,
        })
    }

    /// Whether a host with these labels and this name satisfies it.
    pub fn admits(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let has = if self.label == "faasd.host" {
            Some(name)
        } else {
            labels.get(&self.label).map(String::as_str)
        };
        (has == Some(self.value.as_str())) == self.equal
    }
}
