//! The scheduler. Every host campaigns for the scheduler key under its lease; the one
//! holding it places each function not placed yet, those of a host whose lease expired
//! `move-after` ago, and those of a drained host, on the live host (not drained) that
//! satisfies its constraints and runs the fewest functions. Each write is a transaction that holds only while this host still
//! holds the key and the function is unchanged, so a deposed scheduler writes nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use faasd_cluster::{Constraint, Decision, Etcd, FunctionName, HostInfo, Placed, Synced};
use tokio::{sync::watch, time::Instant};

/// How often the scheduler looks again when nothing changed (for hosts gone long enough).
const PASS: Duration = Duration::from_millis(250);

/// The cluster's functions, as etcd has them.
pub type Functions = Synced<BTreeMap<FunctionName, Placed>>;

/// What the scheduler follows.
#[derive(Debug)]
pub(super) struct Inputs {
    pub etcd: Arc<Etcd>,
    pub this: u16,
    pub lease: watch::Receiver<Option<i64>>,
    pub hosts: watch::Receiver<BTreeMap<u16, HostInfo>>,
    pub functions: watch::Receiver<Functions>,
    /// The hosts being drained.
    pub drained: watch::Receiver<BTreeMap<u16, bool>>,
    pub move_after: Duration,
    /// The scheduler's host, as last learnt.
    pub leader: watch::Sender<Option<u16>>,
}

/// Campaigns, and schedules while this host holds the key.
pub(super) async fn run(mut i: Inputs) {
    // When this scheduler first saw each host gone (a new scheduler starts counting anew:
    // it moves later, never sooner).
    let mut gone_since: BTreeMap<u16, Instant> = BTreeMap::new();
    // The lease under which this host took the key: it holds the key as long as the lease
    // lives, so it need not ask again (a write less per pass).
    let mut won: Option<i64> = None;
    // Whether the last pass left something to look at again (a gone host whose
    // functions wait for `move-after`, a function placed nowhere): only then does a
    // pass run without a change, so an idle cluster costs nothing per function.
    let mut again = false;
    loop {
        let timer = tokio::select! {
            _ = i.hosts.changed() => false,
            _ = i.functions.changed() => false,
            _ = i.drained.changed() => false,
            () = tokio::time::sleep(PASS) => true,
        };
        let Some(lease) = *i.lease.borrow() else {
            i.leader.send_replace(None);
            won = None;
            continue;
        };
        let holder = if won == Some(lease) {
            Ok(i.this)
        } else {
            faasd_cluster::campaign(&i.etcd, i.this, lease).await
        };
        match holder {
            Ok(holder) => {
                if i.leader.send_replace(Some(holder)) != Some(holder) {
                    tracing::info!("cluster: host {holder} schedules");
                }
                if holder != i.this {
                    won = None;
                    gone_since.clear();
                    continue;
                }
                if won != Some(lease) {
                    // Just elected: everything is looked at once.
                    again = true;
                }
                won = Some(lease);
            }
            Err(e) => {
                tracing::warn!("cluster: {e}");
                continue;
            }
        }
        let hosts = i.hosts.borrow().clone();
        let functions = i.functions.borrow().clone();
        let drained: Vec<u16> = i.drained.borrow().keys().copied().collect();
        if functions.synced && (again || !timer) {
            again = pass(&i, &hosts, &drained, &functions.items, &mut gone_since).await;
        }
    }
}

async fn pass(
    i: &Inputs,
    all_hosts: &BTreeMap<u16, HostInfo>,
    drained: &[u16],
    functions: &BTreeMap<FunctionName, Placed>,
    gone_since: &mut BTreeMap<u16, Instant>,
) -> bool {
    let now = Instant::now();
    let hosts: BTreeMap<u16, HostInfo> = all_hosts
        .iter()
        .filter(|(n, _)| !drained.contains(n))
        .map(|(n, h)| (*n, h.clone()))
        .collect();
    let hosts = &hosts;
    gone_since.retain(|h, _| !all_hosts.contains_key(h));
    let mut load = load(functions);
    for h in load.keys().filter(|h| !all_hosts.contains_key(h)) {
        gone_since.entry(*h).or_insert(now);
    }
    for (f, p) in functions {
        // A host is done with when drained (alive, it lets its functions go at once) or
        // gone for `move-after`.
        let done_with = |h: u16| {
            drained.contains(&h)
                || gone_since
                    .get(&h)
                    .is_some_and(|t| now.duration_since(*t) >= i.move_after)
        };
        let Some(decision) = decide(p, hosts, &done_with, &load) else {
            continue;
        };
        let current = match faasd_cluster::function(&i.etcd, f).await {
            Ok(Some((current, revision))) if current == *p => (current, revision),
            // Changed or removed since the map was taken: the next pass sees it.
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("cluster: {e}");
                return true;
            }
        };
        match faasd_cluster::place(&i.etcd, i.this, f, current.0, current.1, decision).await {
            Ok(Some(placed)) => {
                if let Some(h) = placed.host {
                    for n in std::iter::once(h).chain(placed.replicas.iter().copied()) {
                        if !p.runs_on(n) {
                            *load.entry(n).or_default() += 1;
                        }
                    }
                    match p.host {
                        Some(old) if old != h => tracing::info!(
                            "cluster: {}/{} moved from host {old} (gone or drained) to host {h}",
                            f.0,
                            f.1
                        ),
                        Some(_) => {}
                        None => tracing::info!("cluster: {}/{} placed on host {h}", f.0, f.1),
                    }
                    if placed.replicas != p.replicas {
                        tracing::info!(
                            "cluster: {}/{} runs on host {h} and on {:?}",
                            f.0,
                            f.1,
                            placed.replicas
                        );
                    }
                } else if let Some(why) = &placed.unplaced {
                    tracing::warn!("cluster: {}/{} placed nowhere: {why}", f.0, f.1);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("cluster: {e}");
                return true;
            }
        }
    }
    // A gone host's functions wait for `move-after`; once it passed, what fits nowhere
    // else waits for a change of the hosts, which wakes the scheduler anyway.
    gone_since
        .values()
        .any(|t| now.duration_since(*t) < i.move_after)
}

/// The functions placed on each host (replicas counted).
pub(crate) fn load(functions: &BTreeMap<FunctionName, Placed>) -> BTreeMap<u16, usize> {
    let mut load = BTreeMap::new();
    for p in functions.values() {
        for h in p.host.iter().chain(&p.replicas) {
            *load.entry(*h).or_default() += 1;
        }
    }
    load
}

/// How many hosts a function runs on: its `com.openfaas.scale.min` when it asks to be
/// spread (`faasd.dev/spread=true`), else one.
fn wanted_hosts(d: &faasd_core::spec::Deployment) -> usize {
    // Most functions are not spread: they cost no parse on each pass.
    if d.annotations.get("faasd.dev/spread").is_none() {
        return 1;
    }
    match faasd_core::spec::Settings::parse(d) {
        Ok(s) if s.spread => s.min_scale.max(1) as usize,
        _ => 1,
    }
}

/// What a function's placement should become, or `None` to leave it as it is. Its host
/// stays while it serves; when it no longer does, a replica that still serves takes over
/// at once, else another host once the host is done with. Replicas that no longer serve are replaced, up to the
/// hosts it wants, while hosts that satisfy its constraints are left.
fn decide(
    p: &Placed,
    hosts: &BTreeMap<u16, HostInfo>,
    done_with: &dyn Fn(u16) -> bool,
    load: &BTreeMap<u16, usize>,
) -> Option<Decision> {
    let constraints = &p.deployment.constraints;
    // A host that serves and still satisfies the constraints (an update may change them).
    let parsed: Vec<Constraint> = constraints
        .iter()
        .filter_map(|c| Constraint::parse(c).ok())
        .collect();
    let serving = |h: &u16| {
        hosts
            .get(h)
            .is_some_and(|info| parsed.iter().all(|c| c.admits(&info.name, &info.labels)))
    };
    let mut replicas: Vec<u16> = p.replicas.iter().copied().filter(serving).collect();
    let host = match p.host {
        Some(h) if serving(&h) => h,
        // Alive, but its constraints no longer admit it: placed again at once.
        Some(h) if hosts.contains_key(&h) && replicas.is_empty() => {
            choose(constraints, hosts, load, &[]).ok()?
        }
        // Not serving (gone or drained), with a replica that serves: it takes over at
        // once, since it runs already.
        Some(_) if !replicas.is_empty() => replicas.remove(0),
        // A gone host's function that fits nowhere else waits for it.
        Some(h) if done_with(h) => choose(constraints, hosts, load, &[]).ok()?,
        Some(_) => return None,
        None => match choose(constraints, hosts, load, &[]) {
            Ok(h) => h,
            Err(why) if p.unplaced.as_ref() == Some(&why) => return None,
            Err(why) => return Some(Decision::Nowhere(why)),
        },
    };
    while 1 + replicas.len() < wanted_hosts(&p.deployment) {
        let taken: Vec<u16> = std::iter::once(host)
            .chain(replicas.iter().copied())
            .collect();
        match choose(constraints, hosts, load, &taken) {
            Ok(h) => replicas.push(h),
            Err(_) => break,
        }
    }
    (p.host != Some(host) || p.replicas != replicas).then_some(Decision::On(host, replicas))
}

/// The live host for a function with these constraints, `taken` left out: among those
/// that satisfy them all and have room (fewer functions than their capacity), the one
/// with the smallest share of its capacity in use (the lowest number among equals); or
/// why there is none.
pub(crate) fn choose(
    constraints: &[String],
    hosts: &BTreeMap<u16, HostInfo>,
    load: &BTreeMap<u16, usize>,
    taken: &[u16],
) -> Result<u16, String> {
    let parsed: Vec<Constraint> = constraints
        .iter()
        .map(|c| Constraint::parse(c))
        .collect::<Result<_, _>>()?;
    let admitted: Vec<&HostInfo> = hosts
        .values()
        .filter(|h| !taken.contains(&h.number))
        .filter(|h| parsed.iter().all(|c| c.admits(&h.name, &h.labels)))
        .collect();
    let used = |h: &HostInfo| load.get(&h.number).copied().unwrap_or(0);
    admitted
        .iter()
        .filter(|h| used(h) < h.capacity as usize)
        .min_by_key(|h| {
            (
                used(h) as u64 * 1_000_000 / u64::from(h.capacity.max(1)),
                h.number,
            )
        })
        .map(|h| h.number)
        .ok_or_else(|| {
            if !admitted.is_empty() {
                "every host that could take it is full (its [cluster] capacity)".to_owned()
            } else if constraints.is_empty() {
                "no host is registered".to_owned()
            } else {
                format!("no live host satisfies {}", constraints.join(", "))
            }
        })
}
