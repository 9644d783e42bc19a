//! Functions' names across the cluster: each host puts its functions' addresses under its
//! lease (so a dead host's names go with it), and every host follows them all for its
//! `.faas` zone.

use std::{collections::BTreeMap, net::Ipv6Addr, sync::Arc};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Etcd, EtcdError};

const NAMES: &str = "/faasd/v1/names/";

/// Where a function's name points, and who said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NameRecord {
    /// The function's address.
    pub address: Ipv6Addr,
    /// The number of the host that runs it.
    pub host: u16,
    /// The port `/function/<name>` calls it on (its first TCP port), if it has one.
    #[serde(default)]
    pub port: Option<u16>,
}

/// A function, as `(namespace, name)`.
pub type FunctionName = (String, String);

/// `<namespace>/<name>`, the rest of a key under a prefix of functions (or secrets).
pub(crate) fn function_name(k: &str) -> Option<FunctionName> {
    let (namespace, name) = k.split_once('/')?;
    Some((namespace.to_owned(), name.to_owned()))
}

fn key((namespace, name): &FunctionName) -> String {
    format!("{NAMES}{namespace}/{name}")
}

/// Puts a function's name under `lease`.
pub async fn put_name(
    etcd: &Etcd,
    function: &FunctionName,
    record: &NameRecord,
    lease: i64,
) -> Result<(), EtcdError> {
    let (k, v) = (
        key(function),
        serde_json::to_string(record).expect("a name record serializes"),
    );
    etcd.call("publishing a function's name", |mut c| {
        let (k, v) = (k.clone(), v.clone());
        async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
    })
    .await
    .map(drop)
}

/// Takes a function's name out, if it still is `record` (a host withdrawing a name must
/// not take out the one the host that runs the function now put).
pub async fn delete_name(
    etcd: &Etcd,
    function: &FunctionName,
    record: &NameRecord,
) -> Result<(), EtcdError> {
    let k = key(function);
    let v = serde_json::to_string(record).expect("a name record serializes");
    let txn = Txn::new()
        .when([Compare::value(k.as_str(), CompareOp::Equal, v)])
        .and_then([TxnOp::delete(k.as_str(), None)]);
    etcd.txn("withdrawing a function's name", txn)
        .await
        .map(drop)
}

/// Keeps `names` every function's name in the cluster, until it has no receiver left.
pub async fn watch_names(
    etcd: Arc<Etcd>,
    names: watch::Sender<BTreeMap<FunctionName, NameRecord>>,
) {
    crate::watch::follow(etcd, NAMES, "the functions' names", function_name, names).await
}
