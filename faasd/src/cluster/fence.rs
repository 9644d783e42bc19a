//! Whether a host whose registration lapsed may go on serving its functions. etcd cannot
//! tell a host that lost it whether the others lost it too, so the host asks them when
//! they last got a keep-alive through. While most of the hosts it knows (itself included)
//! lost etcd about when it did (none got through more than a keep-alive interval later),
//! etcd is down for everyone and nothing can be placed elsewhere, so it keeps serving.
//! Otherwise it is the one cut off: its functions are about to move (`move-after` after
//! its lease expired) and it must stop serving them first, which it does at once.

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
    /// How long ago etcd took its last keep-alive (none in this run, if `None`).
    pub kept_ms_ago: Option<u64>,
}

impl LeaseAnswer {
    /// Whether this host lost etcd about when the asking one did, whose last keep-alive
    /// went through `asker_kept_ago` ago (`None`: not in its run, so only a host whose
    /// registration lapsed too agrees).
    fn agrees(&self, asker_kept_ago: Option<Duration>, interval: Duration) -> bool {
        match (asker_kept_ago, self.kept_ms_ago) {
            (None, _) => !self.registered,
            (Some(_), None) => true,
            (Some(mine), Some(theirs)) => {
                mine.saturating_sub(Duration::from_millis(theirs)) <= interval + SLACK
            }
        }
    }
}

/// What the answers' clocks may be off by (the time the question and answer take).
const SLACK: Duration = Duration::from_millis(200);

/// Whether most of `hosts` (this one, `this`, counted among them) lost etcd about when
/// this one did, `kept_ago` ago, and none got through after it by more than a keep-alive
/// `interval`.
pub(crate) async fn outage_agreed(
    hosts: &BTreeMap<u16, HostInfo>,
    this: u16,
    kept_ago: Option<Duration>,
    interval: Duration,
) -> bool {
    let others: Vec<&HostInfo> = hosts.values().filter(|h| h.number != this).collect();
    let total = others.len() + 1;
    let mut asks = tokio::task::JoinSet::new();
    for h in others {
        let apis = h.api.clone();
        asks.spawn(async move {
            for api in apis {
                if let Some(a) = ask(&api).await {
                    return Some(a);
                }
            }
            None
        });
    }
    let answers: Vec<LeaseAnswer> = asks.join_all().await.into_iter().flatten().collect();
    if !answers.iter().all(|a| a.agrees(kept_ago, interval)) {
        return false;
    }
    (1 + answers.len()) * 2 > total
}

async fn ask(api: &str) -> Option<LeaseAnswer> {
    let client = crate::client::Client::remote(&format!("http://{api}"), None).ok()?;
    let call = client.call(hyper::Method::GET, "/cluster/lease", None);
    let body = tokio::time::timeout(ASK_TIMEOUT, call).await.ok()?.ok()?;
    serde_json::from_slice(&body).ok()
}
