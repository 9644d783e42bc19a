//! A host of a cluster runs what the scheduler placed on it. Deploys and removals through
//! this host's API go to etcd; a follower keeps this host's functions what etcd says is
//! placed here: it deploys those it lacks (at the address the cluster gave them), updates
//! those whose deployment changed, and removes those placed elsewhere or gone.
//!
//! At start nothing comes back before the cluster says what is still this host's (a host
//! that was away must not serve what moved meanwhile); when etcd does not answer, only
//! while most hosts agree that it is down for everyone. A host whose registration lapsed
//! and who finds itself alone in that (it is the one cut off) stops serving its functions
//! at once, `move-after` before the scheduler places them elsewhere.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv6Addr,
    sync::Arc,
    time::Duration,
};

use faasd_cluster::{FunctionName, Placed};
use faasd_common::BindingKey;
use faasd_core::{
    config::Ipv6Net,
    spec::{FunctionSpec, Settings},
    store::FunctionRecord,
};
use tokio::time::Instant;

use super::{Daemon, DaemonError};
use crate::{
    cluster::{Cluster, Functions},
    status::FunctionStatus,
};

/// How often the follower looks again when nothing changed.
const PASS: Duration = Duration::from_millis(500);
/// How long a deployment that failed here waits before it is tried again unchanged.
const RETRY_FAILED: Duration = Duration::from_secs(10);

impl Daemon {
    /// Writes a deploy or an update to the cluster and waits (a few seconds at most) until
    /// the host it is placed on runs it.
    pub(super) async fn submit(
        &self,
        c: &Cluster,
        spec: FunctionSpec,
        update: bool,
    ) -> Result<FunctionStatus, DaemonError> {
        writable(c)?;
        let p = c.submit(&spec.deployment, update).await?;
        let f = (spec.namespace.clone(), spec.name.clone());
        if let Some(host) = p.host
            && !update
        {
            c.wait_published(&f, host).await;
        }
        if p.host == Some(c.number())
            && let Ok(local) = self.function(&f.0, &f.1)
        {
            let mut s = self.status_now(&local);
            s.host = p.host;
            return Ok(s);
        }
        Ok(placed_status(&p))
    }

    /// The API of the host that runs a function this host does not (with its host's
    /// number), to relay a request about it there.
    pub fn peer_running(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<(u16, crate::client::Client)> {
        let c = self.cluster.as_ref()?;
        if self.function(namespace, name).is_ok() {
            return None;
        }
        let host = c.placement(namespace, name)?.host?;
        (host != c.number()).then(|| c.peer(host).map(|p| (host, p)))?
    }

    /// Removes a function from the cluster.
    pub(super) async fn withdraw(
        &self,
        c: &Cluster,
        namespace: &str,
        name: &str,
    ) -> Result<(), DaemonError> {
        writable(c)?;
        Ok(c.remove(namespace, name).await?)
    }

    /// Starts the follower, which first brings back what the store held that is still
    /// this host's.
    pub(super) fn follow_placements(
        self: &Arc<Self>,
        records: Vec<Arc<FunctionRecord>>,
        pinned: Vec<(BindingKey, u32)>,
    ) {
        let d = self.clone();
        tokio::spawn(async move {
            let c = d.cluster.clone().expect("called in a cluster");
            let dropped = d.wait_for_verdict(&c, &records).await;
            for r in &records {
                if let Err(e) = d.route_here(r.address).await {
                    tracing::error!("{}: {e}", r.spec.id());
                }
            }
            // Everything comes back, so that what is no longer this host's is stopped
            // and cleaned up like any removed function (its instances may have outlived
            // the previous faasd); only what is still this host's is published.
            if let Err(e) = d.restore(records, pinned).await {
                tracing::error!("cluster: bringing back this host's functions: {e}");
            }
            for (namespace, name, address) in dropped {
                tracing::info!(
                    "cluster: {namespace}/{name} is no longer this host's (placed elsewhere \
                     or removed)"
                );
                d.leave(&namespace, &name, address).await;
            }
            for f in d.all() {
                d.name_set(&f).await;
            }
            if c.first_join() {
                d.adopt_all(&c).await;
            }
            d.follow(&c).await;
        });
    }

    /// Waits until the cluster says which stored functions are no longer this host's:
    /// those etcd places elsewhere or does not know (unless this host joins for the first
    /// time), or none while etcd is down for most hosts.
    async fn wait_for_verdict(
        &self,
        c: &Cluster,
        records: &[Arc<FunctionRecord>],
    ) -> Vec<(String, String, Ipv6Addr)> {
        let mut functions = c.functions();
        let mut lease = c.lease();
        let this = c.number();
        loop {
            let now = functions.borrow_and_update().clone();
            if c.registered() && now.synced {
                return records
                    .iter()
                    .filter(|r| {
                        match now
                            .items
                            .get(&(r.spec.namespace.clone(), r.spec.name.clone()))
                        {
                            Some(p) => !p.runs_on(this),
                            None => !c.first_join(),
                        }
                    })
                    .map(|r| (r.spec.namespace.clone(), r.spec.name.clone(), r.address))
                    .collect();
            }
            if !c.registered() && c.outage_agreed().await {
                tracing::warn!(
                    "cluster: etcd is down for most hosts: serving what this host last ran"
                );
                return Vec::new();
            }
            tokio::select! {
                _ = functions.changed() => {}
                _ = lease.changed() => {}
                () = tokio::time::sleep(PASS) => {}
            }
        }
    }

    /// This host's functions become the cluster's when it joins for the first time; the
    /// follower starts once it sees them (else it would take them for removed).
    async fn adopt_all(&self, c: &Cluster) {
        let mut adopted = Vec::new();
        for f in self.all() {
            let spec = &f.record.spec;
            match c
                .adopt(&spec.deployment, f.record.address, f.record.created_at)
                .await
            {
                Ok(()) => adopted.push((spec.namespace.clone(), spec.name.clone())),
                Err(e) => tracing::error!("cluster: adopting {}: {e}", spec.id()),
            }
        }
        let mut functions = c.functions();
        let seen = functions.wait_for(|all| adopted.iter().all(|f| all.items.contains_key(f)));
        let _ = tokio::time::timeout(Duration::from_secs(10), seen).await;
    }

    /// Keeps this host's functions what the cluster places here, and stops them when this
    /// host is cut off from etcd.
    async fn follow(&self, c: &Cluster) {
        let mut functions = c.functions();
        let mut lease = c.lease();
        let mut failed: HashMap<FunctionName, (Placed, Instant)> = HashMap::new();
        let mut fenced = false;
        loop {
            let timer = tokio::select! {
                _ = functions.changed() => false,
                _ = lease.changed() => false,
                () = tokio::time::sleep(PASS) => true,
            };
            if c.registered() {
                fenced = false;
                // Nothing to do while nothing changed, unless a failed deployment waits
                // for its retry: an idle host costs nothing per function.
                if timer && failed.is_empty() {
                    continue;
                }
                let now: Functions = functions.borrow_and_update().clone();
                if now.synced {
                    self.reconcile(c, &now.items, &mut failed).await;
                }
                continue;
            }
            if fenced || c.outage_agreed().await {
                continue;
            }
            fenced = true;
            tracing::warn!(
                "cluster: this host lost etcd while other hosts did not: it is cut off, and \
                 stops serving its functions before they are placed elsewhere"
            );
            for f in self.all() {
                let spec = &f.record.spec;
                self.leave(&spec.namespace, &spec.name, f.record.address)
                    .await;
            }
        }
    }

    /// One pass over what etcd places here.
    async fn reconcile(
        &self,
        c: &Cluster,
        placed: &BTreeMap<FunctionName, Placed>,
        failed: &mut HashMap<FunctionName, (Placed, Instant)>,
    ) {
        let this = c.number();
        for f in self.all() {
            let spec = &f.record.spec;
            let key = (spec.namespace.clone(), spec.name.clone());
            let Some(p) = placed.get(&key).filter(|p| p.runs_on(this)) else {
                tracing::info!("cluster: {} placed elsewhere or removed", spec.id());
                self.leave(&spec.namespace, &spec.name, f.record.address)
                    .await;
                continue;
            };
            // Its host publishes its name; a replica does not (a replica that became its
            // host, or a host that became a replica, changes that here).
            if (p.host == Some(this)) != c.publishes(&spec.namespace, &spec.name) {
                self.name_set(&f).await;
            }
        }
        failed.retain(|f, (p, at)| placed.get(f) == Some(p) && at.elapsed() < RETRY_FAILED);
        for (f, p) in placed {
            let Some(address) = p.address else {
                continue;
            };
            if !p.runs_on(this) || failed.contains_key(f) {
                continue;
            }
            let update = match self.entry(&format!("{}/{}", f.0, f.1)) {
                // Being deployed or removed right now: the next pass sees how it ended.
                Some(e) if e.current().is_none() => continue,
                Some(e) => {
                    if e.current()
                        .is_some_and(|cur| cur.record.spec.deployment == p.deployment)
                    {
                        continue;
                    }
                    true
                }
                None => false,
            };
            if let Err(e) = self.run_here(p, address, update).await {
                tracing::error!(
                    "cluster: {}/{} placed here does not run: {e} (tried again in {:?} or \
                     when it changes)",
                    f.0,
                    f.1,
                    RETRY_FAILED
                );
                failed.insert(f.clone(), (p.clone(), Instant::now()));
            }
        }
    }

    async fn run_here(
        &self,
        p: &Placed,
        address: Ipv6Addr,
        update: bool,
    ) -> Result<(), DaemonError> {
        let (spec, settings) = FunctionSpec::from_deployment(p.deployment.clone())?;
        self.route_here(address).await?;
        self.deploy_here(spec, settings, update, Some(address))
            .await
            .map(drop)
    }

    /// Removes a function from this host only, and the route of an address it had from
    /// another host.
    async fn leave(&self, namespace: &str, name: &str, address: Ipv6Addr) {
        if let Err(e) = self.remove_here(namespace, name).await {
            tracing::error!("cluster: removing {namespace}/{name} from this host: {e}");
        }
        if !self.config.function_prefix.contains(address)
            && let Err(e) = crate::net::remove_local_route(single(address)).await
        {
            tracing::warn!("{e}");
        }
    }

    /// An address outside this host's prefix (a function moved here) is delivered here.
    async fn route_here(&self, address: Ipv6Addr) -> Result<(), DaemonError> {
        if !self.config.function_prefix.contains(address) {
            crate::net::ensure_local_route(single(address)).await?;
        }
        Ok(())
    }
}

fn single(addr: Ipv6Addr) -> Ipv6Net {
    Ipv6Net { addr, len: 128 }
}

/// Changes need etcd: refused at once, and said why, while this host's registration
/// lapsed.
fn writable(c: &Cluster) -> Result<(), DaemonError> {
    if c.registered() {
        Ok(())
    } else {
        Err(DaemonError::ClusterUnavailable)
    }
}

/// Sets `host` in this host's own entries of `list`, and adds the other hosts' functions
/// (of `namespace`, or all) as the cluster places them. One placed here that does not
/// run here (being deployed, or this host is cut off and stopped it) is left out: the
/// list says what runs where, as far as this host knows.
pub(super) fn add_elsewhere(c: &Cluster, namespace: Option<&str>, list: &mut Vec<FunctionStatus>) {
    let this = c.number();
    let here: std::collections::BTreeSet<(String, String)> = list
        .iter_mut()
        .map(|s| {
            s.host = Some(this);
            (s.namespace.clone(), s.name.clone())
        })
        .collect();
    let functions = c.functions();
    let all = functions.borrow();
    list.extend(
        all.items
            .iter()
            .filter(|(f, p)| {
                namespace.is_none_or(|ns| f.0 == ns) && !here.contains(*f) && !p.runs_on(this)
            })
            .map(|(_, p)| placed_status(p)),
    );
}

/// A function as the cluster places it, for one this host does not run: what was
/// deployed, where, at which address (no live state: that is its host's).
pub(super) fn placed_status(p: &Placed) -> FunctionStatus {
    let d = &p.deployment;
    FunctionStatus {
        host: p.host,
        ..FunctionStatus::declared(
            d,
            d.image.as_deref(),
            p.address.unwrap_or(Ipv6Addr::UNSPECIFIED),
            Settings::parse(d).map(|s| s.ports).unwrap_or_default(),
            p.created_at,
        )
    }
}
