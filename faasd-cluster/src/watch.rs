//! Following a prefix of keys: one read, then a watch from the revision after it, and a
//! fresh read whenever the watch breaks, so the map is never left half up to date.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{EventType, GetOptions, WatchOptions};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::{Etcd, EtcdError};

/// A JSON value faasd wrote at `key`.
pub(crate) fn parse<V: DeserializeOwned>(
    what: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<V, EtcdError> {
    serde_json::from_slice(value).map_err(|e| EtcdError::Invalid {
        what,
        key: String::from_utf8_lossy(key).into_owned(),
        why: e.to_string(),
    })
}

/// Where [`follow`] keeps what it reads.
pub trait Mirror<K, V> {
    /// Everything, as one read found it; whether that changed anything.
    fn replace(&mut self, all: BTreeMap<K, V>) -> bool;
    /// One key put.
    fn insert(&mut self, k: K, v: V);
    /// One key deleted.
    fn remove(&mut self, k: &K);
}

impl<K: Ord, V: PartialEq> Mirror<K, V> for BTreeMap<K, V> {
    fn replace(&mut self, all: BTreeMap<K, V>) -> bool {
        let changed = *self != all;
        *self = all;
        changed
    }
    fn insert(&mut self, k: K, v: V) {
        BTreeMap::insert(self, k, v);
    }
    fn remove(&mut self, k: &K) {
        BTreeMap::remove(self, k);
    }
}

/// A map followed from etcd, and whether etcd was read yet: until then it holds what this
/// host last knew, which may be out of date.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Synced<M> {
    /// Whether `items` came from etcd.
    pub synced: bool,
    /// The keys.
    pub items: M,
}

impl<K: Ord, V: PartialEq> Mirror<K, V> for Synced<BTreeMap<K, V>> {
    fn replace(&mut self, all: BTreeMap<K, V>) -> bool {
        let changed = !self.synced | self.items.replace(all);
        self.synced = true;
        changed
    }
    fn insert(&mut self, k: K, v: V) {
        self.items.insert(k, v);
    }
    fn remove(&mut self, k: &K) {
        self.items.remove(k);
    }
}

/// Keeps `out` what the keys under `prefix` hold (JSON values, by what `key` makes of
/// the rest of each key; keys it makes nothing of are left out), until `out` has no
/// receiver left.
pub(crate) async fn follow<K, V, M>(
    etcd: Arc<Etcd>,
    prefix: &'static str,
    what: &'static str,
    key: fn(&str) -> Option<K>,
    out: watch::Sender<M>,
) where
    K: Ord,
    V: DeserializeOwned + PartialEq,
    M: Mirror<K, V>,
{
    while !out.is_closed() {
        if let Err(e) = once(&etcd, prefix, what, key, &out).await {
            tracing::warn!("following {what}: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn once<K, V, M>(
    etcd: &Etcd,
    prefix: &'static str,
    what: &'static str,
    key: fn(&str) -> Option<K>,
    out: &watch::Sender<M>,
) -> Result<(), EtcdError>
where
    K: Ord,
    V: DeserializeOwned + PartialEq,
    M: Mirror<K, V>,
{
    let key_of = |raw: &[u8]| {
        std::str::from_utf8(raw)
            .ok()
            .and_then(|k| k.strip_prefix(prefix))
            .and_then(key)
    };
    let r = etcd
        .call(what, |mut c| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        })
        .await?;
    let revision = r.header().map_or(0, |h| h.revision());
    let mut now = BTreeMap::new();
    for kv in r.kvs() {
        if let Some(k) = key_of(kv.key()) {
            now.insert(k, parse(what, kv.key(), kv.value())?);
        }
    }
    out.send_if_modified(|old| old.replace(now));
    let mut stream = etcd
        .call(what, |mut c| async move {
            let from = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            c.watch(prefix, Some(from)).await
        })
        .await?;
    loop {
        let message = stream
            .message()
            .await
            .map_err(|source| EtcdError::Refused { what, source })?;
        let Some(m) = message.filter(|m| !m.canceled()) else {
            return Ok(());
        };
        for event in m.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(k) = key_of(kv.key()) else { continue };
            match event.event_type() {
                EventType::Put => {
                    let v = parse(what, kv.key(), kv.value())?;
                    out.send_modify(|all| {
                        all.insert(k, v);
                    });
                }
                EventType::Delete => {
                    out.send_modify(|all| {
                        all.remove(&k);
                    });
                }
            }
        }
    }
}
