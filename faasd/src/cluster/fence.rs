//! Whether a host whose registration lapsed may go on serving its functions. etcd cannot
//! tell a host that lost it whether the others lost it too, so the host asks them: while
//! most of the hosts it knows (itself included) say their registrations lapsed as well,
//! etcd is down for everyone and nothing can be placed elsewhere, so it keeps serving.
//! Otherwise it is the one cut off: its functions are about to move (`move-after` after
//! its lease expired) and it must stop serving them first.

use std::{collections::BTreeMap, time::Duration};

use faasd_cluster::HostInfo;
use serde::{Deserialize, Serialize};

/// How long another host may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /cluster/lease`: what a host tells the others of its registration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseAnswer {
    /// The host's number.
    pub number: u16,
    /// Whether its registration holds.
    pub registered: bool,
}

/// Whether most of `hosts` (this one, `this`, counted among them) have lost etcd and none
/// still holds a registration.
pub(crate) async fn outage_agreed(hosts: &BTreeMap<u16, HostInfo>, this: u16) -> bool {
    let others: Vec<&HostInfo> = hosts.values().filter(|h| h.number != this).collect();
    let total = others.len() + 1;
    let mut asks = tokio::task::JoinSet::new();
    for h in others {
        let apis = h.api.clone();
        asks.spawn(async move {
            for api in apis {
                if let Some(a) = ask(&api).await {
                    return Some(a.registered);
                }
            }
            None
        });
    }
    let answers = asks.join_all().await;
    if answers.contains(&Some(true)) {
        return false;
    }
    let lapsed = 1 + answers.iter().filter(|a| **a == Some(false)).count();
    lapsed * 2 > total
}

async fn ask(api: &str) -> Option<LeaseAnswer> {
    let client = crate::client::Client::remote(&format!("http://{api}"), None).ok()?;
    let call = client.call(hyper::Method::GET, "/cluster/lease", None);
    let body = tokio::time::timeout(ASK_TIMEOUT, call).await.ok()?.ok()?;
    serde_json::from_slice(&body).ok()
}
