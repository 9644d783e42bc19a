//! The cluster's secrets, sealed by the hosts with the cluster key before they reach etcd
//! (etcd 3.4 keeps its data in clear): etcd holds only each value's nonce and ciphertext.

use std::{collections::BTreeMap, sync::Arc};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{Etcd, EtcdError, FunctionName, Synced};

const SECRETS: &str = "/faasd/v1/secrets/";

/// A secret's value as etcd keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The nonce, base64.
    pub nonce: String,
    /// The value sealed (ciphertext and tag), base64.
    pub sealed: String,
}

fn key((namespace, name): &FunctionName) -> String {
    format!("{SECRETS}{namespace}/{name}")
}

/// Puts a secret: a new one (`update == false`) only if the name is free, else only if
/// it exists. Whether that held.
pub async fn put_secret(
    etcd: &Etcd,
    secret: &FunctionName,
    value: &SealedSecret,
    update: bool,
) -> Result<bool, EtcdError> {
    let k = key(secret);
    let v = serde_json::to_string(value).expect("a sealed secret serializes");
    let op = if update {
        CompareOp::Greater
    } else {
        CompareOp::Equal
    };
    let txn = Txn::new()
        .when([Compare::create_revision(k.as_str(), op, 0)])
        .and_then([TxnOp::put(k.as_str(), v, None)]);
    Ok(etcd.txn("storing a secret", txn).await?.succeeded())
}

/// Deletes a secret; whether there was one.
pub async fn delete_secret(etcd: &Etcd, secret: &FunctionName) -> Result<bool, EtcdError> {
    etcd.delete("removing a secret", &key(secret)).await
}

/// Keeps `secrets` every sealed secret of the cluster's, until it has no receiver left.
pub async fn watch_secrets(
    etcd: Arc<Etcd>,
    secrets: watch::Sender<Synced<BTreeMap<FunctionName, SealedSecret>>>,
) {
    crate::watch::follow(
        etcd,
        SECRETS,
        "the cluster's secrets",
        crate::names::function_name,
        secrets,
    )
    .await
}
