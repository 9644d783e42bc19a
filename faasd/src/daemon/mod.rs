//! The daemon's functions: the registry, and the operations on it (deploy, update, remove,
//! scale, list) and recovery on start.
//!
//! Order of a deploy (DESIGN.md, flow 1): validate → store (durable first) → address →
//! sockets → maps → supervisor. A restart rebuilds everything from the store, reuses the
//! socket slots the pinned bindings map already holds, and takes back the sockets of
//! instances still serving from the previous daemon (`pidfd_getfd`), so they keep running.
//!
//! Locking: the registry maps a function's id to its entry under a lock that is only ever
//! held to look up, insert or remove an entry. Each entry has its own operation lock, which
//! serialises deploys, updates and removals of that one function, however slow (an image
//! pull, a container's preparation, a grace period); nothing else waits on it.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use faasd_common::{BindingKey, SlotCounters};

use faasd_core::{
    config::Config,
    spec::{FunctionSpec, Port, Settings, SpecError},
    store::{FunctionRecord, Store},
};
use faasd_dataplane::{CounterSnapshot, Counters, Dataplane};

use crate::{
    logs::FunctionLog,
    metrics::{FunctionRow, Latencies},
    notify,
    runtime::{Runtime, cgroup, container::ContainerHost},
    secrets::Secrets,
    status::{FunctionState, FunctionStatus, Histogram, HostStatus, OpenFiles, PortCounters},
    supervisor::{self, Command},
};

mod activate;
mod deploy;
mod error;
mod files;
mod placed;
mod restore;

pub use error::{DaemonError, ErrorKind};

/// One deployed version of a function.
struct Function {
    record: Arc<FunctionRecord>,
    settings: Arc<Settings>,
    bindings: Vec<(BindingKey, u32)>,
    handle: supervisor::Handle,
    log: FunctionLog,
    cgroup: Option<PathBuf>,
    invocations: AtomicU64,
    /// Calls through `/function/*` by HTTP status.
    invocation_codes: Mutex<BTreeMap<u16, u64>>,
    /// Their durations, for a function that keeps its own histograms.
    invocation_seconds: Option<Mutex<Histogram>>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("id", &self.record.spec.id())
            .finish()
    }
}

/// A function's place in the registry. `current` is empty while its first deploy runs.
#[derive(Debug, Default)]
struct Entry {
    /// Held across one deploy, update or removal of this function.
    op: tokio::sync::Mutex<()>,
    current: RwLock<Option<Arc<Function>>>,
}

impl Entry {
    fn current(&self) -> Option<Arc<Function>> {
        self.current.read().expect("entry lock").clone()
    }
}

/// The daemon's state.
#[derive(Debug)]
pub struct Daemon {
    config: Arc<Config>,
    store: Store,
    /// The one owner of the maps and socket slots; held for map updates only.
    dataplane: Arc<Mutex<Dataplane>>,
    counters: Counters,
    runtime: Arc<dyn Runtime>,
    containers: Arc<ContainerHost>,
    secrets: Secrets,
    zone: Option<Arc<crate::dns::Zone>>,
    http: crate::metrics::HttpStats,
    latencies: Arc<Latencies>,
    /// Where stopped functions wait without a task.
    lot: Arc<supervisor::Lot>,
    wireguard: Option<Arc<crate::wireguard::WireGuard>>,
    /// This host in its cluster, when it is in one.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    router: notify::Router,
    cgroup_root: Option<PathBuf>,
    functions: RwLock<BTreeMap<String, Arc<Entry>>>,
    files: Arc<files::Budget>,
    service: Arc<crate::systemd::Service>,
    /// Calls out, or why the host cannot offer them.
    egress: Result<Arc<crate::egress::Egress>, String>,
    /// `/async-function` calls, kept on disk until their callback is delivered.
    async_calls: Arc<crate::asynccall::AsyncCalls>,
}

/// Every socket's queue in one dump, for pages that show many functions; without one
/// (no `inet_diag` in the kernel), each socket is asked.
fn queue_dump() -> Option<crate::sockdiag::Queues> {
    crate::sockdiag::dump()
        .inspect_err(|e| tracing::debug!("sock_diag dump: {e}; asking each socket"))
        .ok()
}

/// The fd store name of a function socket.
fn fd_name(spec: &FunctionSpec, p: &Port) -> String {
    crate::systemd::function_fd_name(&spec.namespace, &spec.name, p.port, &p.protocol.to_string())
}

/// The lookups of one function's slots, for its supervisor's idle check.
#[derive(Debug)]
struct SlotLookups {
    counters: Counters,
    slots: Vec<u32>,
}

impl supervisor::Lookups for SlotLookups {
    fn lookups(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| self.counters.slot(*s).lookups)
            .sum()
    }
}

/// Calls out, or why (said in the log too) this host cannot offer them: functions then
/// run with only `lo`.
fn egress(
    config: &Config,
    dataplane: &Dataplane,
    root: &std::path::Path,
) -> Result<Arc<crate::egress::Egress>, String> {
    let parent = root.join(&config.cgroup_parent);
    let level =
        u32::try_from(config.cgroup_parent.split('/').count() + 2).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("creating {}: {e}", parent.display()))
        .and_then(|()| dataplane.egress(&parent, level).map_err(|e| e.to_string()))
        .and_then(|maps| crate::egress::Egress::start(config, maps).map_err(|e| e.to_string()))
        .map(Arc::new)
        .inspect_err(|e| tracing::error!("functions cannot call out: {e}"))
}

/// The port `/function/<name>` calls a function on: its first TCP port.
fn first_tcp_port(settings: &faasd_core::spec::Settings) -> Option<u16> {
    settings
        .ports
        .iter()
        .find(|p| p.protocol == faasd_core::spec::Protocol::Tcp)
        .map(|p| p.port)
}

/// The host on the WireGuard network: its interface and its cluster, where it has them.
#[derive(Debug, Default)]
pub struct Network {
    /// The `wg-faas` interface, unless WireGuard is off.
    pub wireguard: Option<Arc<crate::wireguard::WireGuard>>,
    /// This host in its cluster, unless it is alone.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Daemon {
    /// Creates the daemon over an opened store and data plane and restores every function
    /// the store held.
    pub async fn start(
        config: Arc<Config>,
        store: faasd_core::store::Opened,
        dataplane: Dataplane,
        runtime: Arc<dyn Runtime>,
        router: notify::Router,
        network: Network,
        service: Arc<crate::systemd::Service>,
    ) -> Result<Arc<Self>, DaemonError> {
        let Network { wireguard, cluster } = network;
        let cgroup_root = cgroup::root();
        if cgroup_root.is_none() {
            tracing::warn!("no cgroup v2 hierarchy found: functions run without a cgroup");
        }
        let pinned = dataplane.bindings();
        let counters = dataplane.counters()?;
        let egress = match &cgroup_root {
            Some(root) => egress(&config, &dataplane, root),
            None => Err("no cgroup v2 hierarchy for the egress programs".to_owned()),
        };
        let containers = Arc::new(ContainerHost::new(
            config.containerd.clone(),
            faasd_containerd::credentials::Registries::new(
                config.docker_config(),
                config.registry_certs_dir.clone(),
            ),
            &config.runtime_dir,
            config.notify_dir(),
            &config.cgroup_parent,
            &config.oci_runtime,
        ));
        let zone = (!config.dns.is_empty() || config.zone_file.is_some()).then(|| {
            Arc::new(crate::dns::Zone::new(
                config.dns_host,
                config.state_dir.join("dns-serial"),
                config.zone_file.clone(),
            ))
        });
        let faasd_core::store::Opened { store, records } = store;
        let lot = supervisor::Lot::new().map_err(|source| DaemonError::Host {
            what: "making the parking lot",
            source,
        })?;
        let async_calls = Arc::new(crate::asynccall::AsyncCalls::open(
            &config.state_dir.join("async"),
            config.async_queue_limit,
            config.async_callback_retry_for,
        )?);
        let daemon = Arc::new(Self {
            async_calls,
            lot,
            secrets: Secrets::new(&config.state_dir),
            zone,
            http: Default::default(),
            latencies: Arc::default(),
            wireguard,
            cluster,
            config,
            store,
            dataplane: Arc::new(Mutex::new(dataplane)),
            counters,
            runtime,
            containers,
            router,
            cgroup_root,
            functions: RwLock::default(),
            files: Arc::new(files::Budget::measure()),
            service,
            egress,
        });
        if let (Some(c), Some(z)) = (&daemon.cluster, &daemon.zone) {
            c.follow_names(z.clone());
        }
        if let Some(c) = &daemon.cluster {
            c.follow_secrets(daemon.secrets.clone());
        }
        if daemon.cluster.is_some() {
            // What it brings back waits until the cluster says what is still this host's.
            daemon.follow_placements(records, pinned);
        } else {
            daemon.restore(records, pinned).await?;
        }
        Ok(daemon)
    }

    /// The entry of a function, if it is deployed (or being deployed).
    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        self.functions
            .read()
            .expect("registry lock")
            .get(id)
            .cloned()
    }

    /// The current version of a function.
    fn function(&self, namespace: &str, name: &str) -> Result<Arc<Function>, DaemonError> {
        let id = format!("{namespace}/{name}");
        self.entry(&id)
            .and_then(|e| e.current())
            .ok_or_else(|| DaemonError::NoFunction(id.clone()))
    }

    /// Every deployed function (their current versions), in id order.
    /// How many functions are deployed.
    pub fn function_count(&self) -> usize {
        self.functions.read().expect("registry lock").len()
    }

    fn all(&self) -> Vec<Arc<Function>> {
        let entries: Vec<Arc<Entry>> = self
            .functions
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        entries.iter().filter_map(|e| e.current()).collect()
    }

    /// The secret store.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Creates (`update == false`) or replaces a secret: in this host's store, or in a
    /// cluster sealed in etcd, answered once this host's store holds it too.
    pub async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        update: bool,
    ) -> Result<(), DaemonError> {
        let Some(c) = &self.cluster else {
            return Ok(self.secrets.put(namespace, name, value, update)?);
        };
        self.secrets.validate(namespace, name, value)?;
        c.put_secret(namespace, name, value, update).await?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            let here = self.secrets.file(namespace, name).ok();
            if here.and_then(|p| std::fs::read(p).ok()).as_deref() == Some(value) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Removes a secret: from this host's store, or from the cluster.
    pub async fn remove_secret(&self, namespace: &str, name: &str) -> Result<(), DaemonError> {
        match &self.cluster {
            None => Ok(self.secrets.remove(namespace, name)?),
            Some(c) => Ok(c.remove_secret(namespace, name).await?),
        }
    }

    /// The WireGuard interface, unless it is off.
    pub fn wireguard(&self) -> Result<&crate::wireguard::WireGuard, DaemonError> {
        self.wireguard
            .as_deref()
            .ok_or_else(|| DaemonError::NoWireGuard)
    }

    /// This host in its cluster, unless it is alone.
    pub fn cluster(&self) -> Result<&crate::cluster::Cluster, DaemonError> {
        self.cluster.as_deref().ok_or(DaemonError::NoCluster)
    }

    /// A function's name answers for its address: in this host's zone, and in a cluster on
    /// every host.
    async fn name_set(&self, f: &Function) {
        let spec = &f.record.spec;
        if let Some(z) = &self.zone {
            z.set(&spec.name, &spec.namespace, f.record.address).await;
        }
        if let Some(c) = &self.cluster {
            c.publish(
                &spec.namespace,
                &spec.name,
                f.record.address,
                first_tcp_port(&f.settings),
            );
        }
    }

    /// A function's name answers no more here (in a cluster, unless another host runs a
    /// function of that name: then it answers for that one).
    async fn name_removed(&self, name: &str, namespace: &str) {
        let elsewhere = self
            .cluster
            .as_ref()
            .and_then(|c| c.elsewhere(namespace, name));
        if let Some(z) = &self.zone {
            match elsewhere {
                Some(address) => z.set(name, namespace, address).await,
                None => z.remove(name, namespace).await,
            }
        }
        if let Some(c) = &self.cluster {
            c.withdraw(namespace, name);
        }
    }

    /// The `.faas` zone, unless DNS is off.
    pub fn zone(&self) -> Option<&Arc<crate::dns::Zone>> {
        self.zone.as_ref()
    }

    fn unbind(&self, bindings: &[(BindingKey, u32)]) {
        let mut dp = self.dataplane.lock().expect("dataplane lock");
        for (key, slot) in bindings {
            if let Err(e) = dp.unbind(key, *slot) {
                tracing::warn!("unbinding slot {slot}: {e}");
            }
            dp.release_slot(*slot);
        }
    }

    fn instances_file(&self, spec: &FunctionSpec) -> PathBuf {
        crate::layout::instances_file(&self.config.runtime_dir, spec)
    }

    /// A function's counters per socket. Its queues come from `queues` (one dump for the
    /// whole namespace, when many functions are read) or else from each socket.
    fn port_counters(
        f: &Function,
        read: &dyn Fn(u32) -> (SlotCounters, u64),
        queues: Option<&crate::sockdiag::Queues>,
    ) -> Vec<PortCounters> {
        f.settings
            .ports
            .iter()
            .zip(&f.bindings)
            .enumerate()
            .map(|(i, (p, (_, slot)))| {
                let (c, policy_drops) = read(*slot);
                let queue = queues
                    .and_then(|q| q.get(f.record.address, p.port, p.protocol))
                    .or_else(|| {
                        let stream = p.protocol == faasd_core::spec::Protocol::Tcp;
                        crate::sockets::queue_stats(f.handle.sockets.get(i)?, stream).ok()
                    })
                    .unwrap_or_default();
                PortCounters {
                    name: p.name.clone(),
                    slot: *slot,
                    lookups: c.lookups,
                    steered: c.steered,
                    no_socket: c.no_socket,
                    policy_drops,
                    queued: queue.queued,
                    queue_limit: queue.limit,
                    queue_drops: queue.drops,
                }
            })
            .collect()
    }

    /// One pass over every slot's counters.
    fn counter_snapshot(&self) -> CounterSnapshot {
        let n = self
            .dataplane
            .lock()
            .expect("dataplane lock")
            .slot_high_water();
        self.counters.snapshot(n)
    }

    fn status_of(
        f: &Function,
        read: &dyn Fn(u32) -> (SlotCounters, u64),
        queues: Option<&crate::sockdiag::Queues>,
    ) -> FunctionStatus {
        let state = f.handle.state.lock().expect("state lock").clone();
        FunctionStatus {
            invocation_count: f.invocations.load(Ordering::Relaxed),
            replicas: state.instances.len() as u32,
            available_replicas: state.instances.iter().filter(|i| i.ready).count() as u32,
            state,
            counters: Self::port_counters(f, read, queues),
            ..FunctionStatus::declared(
                &f.record.spec.deployment,
                f.record.spec.image.as_deref(),
                f.record.address,
                f.settings.ports.clone(),
                f.record.created_at,
            )
        }
    }

    /// A function's status, with its counters read now.
    fn status_now(&self, f: &Function) -> FunctionStatus {
        Self::status_of(
            f,
            &|s| (self.counters.slot(s), self.counters.policy_drops(s)),
            None,
        )
    }

    /// Functions of `namespace`, or all when `None`; in a cluster, every host's.
    pub async fn list(&self, namespace: Option<&str>) -> Vec<FunctionStatus> {
        let counters = self.counter_snapshot();
        let queues = queue_dump();
        let mut list: Vec<FunctionStatus> = self
            .all()
            .iter()
            .filter(|f| namespace.is_none_or(|ns| f.record.spec.namespace == ns))
            .map(|f| {
                Self::status_of(
                    f,
                    &|s| (counters.slot(s), counters.policy_drops(s)),
                    queues.as_ref(),
                )
            })
            .collect();
        if let Some(c) = &self.cluster {
            placed::add_elsewhere(c, namespace, &mut list);
        }
        list
    }

    /// A function's runtime state alone (no counters), for callers that poll it.
    pub async fn state(&self, namespace: &str, name: &str) -> Result<FunctionState, DaemonError> {
        let f = self.function(namespace, name)?;
        Ok(f.handle.state.lock().expect("state lock").clone())
    }

    /// One function; in a cluster, another host's as the cluster places it.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<FunctionStatus, DaemonError> {
        match (self.function(namespace, name), &self.cluster) {
            (Ok(f), c) => {
                let mut s = self.status_now(&f);
                s.host = c.as_ref().map(|c| c.number());
                Ok(s)
            }
            (Err(e), Some(c)) => c
                .placement(namespace, name)
                .map(|p| placed::placed_status(&p))
                .ok_or(e),
            (Err(e), None) => Err(e),
        }
    }

    /// The namespaces in use: the default one and every one that holds a function or a
    /// secret (a namespace comes into being with its first function or secret).
    pub async fn namespaces(&self) -> Result<Vec<String>, DaemonError> {
        let mut set: BTreeSet<String> = self
            .all()
            .iter()
            .map(|f| f.record.spec.namespace.clone())
            .collect();
        set.extend(self.secrets.namespaces()?);
        set.insert(faasd_core::spec::DEFAULT_NAMESPACE.into());
        Ok(set.into_iter().collect())
    }

    /// Address and first TCP port of a function, counting an invocation.
    pub async fn invocation_target(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Ipv6Addr, u16), DaemonError> {
        let f = match self.function(namespace, name) {
            Ok(f) => f,
            // Another host's, in a cluster: called at its address over the mesh.
            Err(e) => {
                return self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.invocation_target(namespace, name))
                    .ok_or(e);
            }
        };
        let port = first_tcp_port(&f.settings).ok_or_else(|| {
            SpecError(format!(
                "function {namespace}/{name} has no TCP port to invoke"
            ))
        })?;
        f.invocations.fetch_add(1, Ordering::Relaxed);
        Ok((f.record.address, port))
    }

    /// Records the outcome of a call through `/function/*`.
    pub async fn record_invocation(&self, namespace: &str, name: &str, code: u16, seconds: f64) {
        self.latencies.observe_invocation(seconds);
        if let Ok(f) = self.function(namespace, name) {
            *f.invocation_codes
                .lock()
                .expect("invocation lock")
                .entry(code)
                .or_default() += 1;
            if let Some(h) = &f.invocation_seconds {
                h.lock().expect("invocation lock").observe(seconds);
            }
        }
    }

    /// Everything `/metrics` shows, gathered for [`crate::metrics::render`].
    pub async fn metrics(&self) -> crate::metrics::Page {
        let host = self.status().await;
        let counters = self.counter_snapshot();
        let queues = queue_dump();
        let functions: Vec<FunctionRow> = self
            .all()
            .iter()
            .map(|f| {
                let state = f.handle.state.lock().expect("state lock");
                FunctionRow {
                    record: f.record.clone(),
                    settings: f.settings.clone(),
                    sockets: Self::port_counters(
                        f,
                        &|s| (counters.slot(s), counters.policy_drops(s)),
                        queues.as_ref(),
                    ),
                    activations: state.activations,
                    restarts: state.restarts,
                    watchdog_kills: state.watchdog_kills,
                    instances: state.instances.len() as u32,
                    ready: state.instances.iter().filter(|i| i.ready).count() as u32,
                    invocation_codes: f
                        .invocation_codes
                        .lock()
                        .expect("invocation lock")
                        .iter()
                        .map(|(c, n)| (*c, *n))
                        .collect(),
                    histograms: state.activation_seconds.clone().map(|a| {
                        let calls = f
                            .invocation_seconds
                            .as_ref()
                            .map(|h| h.lock().expect("invocation lock").clone())
                            .unwrap_or_default();
                        Box::new((a, calls))
                    }),
                    autoscale: state.autoscale.clone().map(Box::new),
                }
            })
            .collect();
        let peers = self
            .wireguard
            .as_ref()
            .and_then(|w| w.peer_status().ok())
            .unwrap_or_default();
        let (dns, dns_from_memory) = self
            .zone
            .as_ref()
            .map(|z| (z.query_counts(), z.answers_from_memory()))
            .unwrap_or_default();
        crate::metrics::Page {
            host,
            functions,
            peers,
            dns,
            dns_from_memory,
            http: self.http.snapshot(),
            latencies: self.latencies.snapshot(),
            supervisors: crate::metrics::Supervisors {
                wakeups: supervisor::wakeups(),
                parked: supervisor::parked(),
            },
            egress_refused: self.egress_refused(),
            async_calls: self.async_calls.counts(),
        }
    }

    /// Calls out refused, by function and reason.
    fn egress_refused(&self) -> Vec<crate::metrics::EgressRefused> {
        let Ok(e) = &self.egress else {
            return Vec::new();
        };
        let mut out: Vec<_> = e
            .refused()
            .into_iter()
            .map(|(owner, reason, count)| {
                let (namespace, function) = owner.split_once('/').unwrap_or(("", &owner));
                crate::metrics::EgressRefused {
                    namespace: namespace.to_owned(),
                    function: function.to_owned(),
                    reason,
                    count,
                }
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.namespace, &a.function, a.reason).cmp(&(&b.namespace, &b.function, b.reason))
        });
        out
    }

    /// Resolves once the daemon can take its registry's lock: it is not stuck.
    pub async fn alive(&self) {
        drop(self.functions.read().expect("registry lock"));
    }

    /// The API's request counters.
    pub fn http_stats(&self) -> &crate::metrics::HttpStats {
        &self.http
    }

    /// A function's log.
    pub async fn log(&self, namespace: &str, name: &str) -> Result<FunctionLog, DaemonError> {
        Ok(self.function(namespace, name)?.log.clone())
    }

    /// Host status.
    pub async fn status(&self) -> HostStatus {
        let dataplane = self.dataplane.lock().expect("dataplane lock").status();
        HostStatus {
            dataplane,
            functions: self.all().len(),
            function_prefix: self.config.function_prefix.to_string(),
            runtime: "process".into(),
            wireguard: self.wireguard.as_ref().map_or_else(
                || "off".into(),
                |w| {
                    format!(
                        "{} ({}), port {}, public key {}",
                        w.settings().interface,
                        match w.backend() {
                            crate::wireguard::Backend::Embedded => "embedded boringtun, userspace",
                            crate::wireguard::Backend::Kernel => "kernel, made by faasd",
                            crate::wireguard::Backend::Adopted => "adopted",
                        },
                        w.settings().port,
                        w.public_key()
                    )
                },
            ),
            egress: match &self.egress {
                Ok(e) => e.summary(),
                Err(why) => format!("off: {why}"),
            },
            host_nat: self.egress.as_ref().ok().map(|e| e.nat()),
            dns: self.config.dns.iter().map(|a| a.to_string()).collect(),
            containerd: match self.containers.client().await {
                Ok(c) => format!("reachable at {}", c.socket().display()),
                Err(e) => e.to_string(),
            },
            cgroup_root: self.cgroup_root.clone(),
            open_files: OpenFiles {
                used: files::open_now(),
                limit: self.files.limit(),
            },
            backlog: self.config.backlog,
        }
    }

    /// The async calls' queue.
    pub fn async_calls(&self) -> &Arc<crate::asynccall::AsyncCalls> {
        &self.async_calls
    }

    /// Ends the async calls' work and every supervisor; stops instances if configured to.
    pub async fn shutdown(&self) {
        self.async_calls.stop().await;
        let stop = self.config.stop_functions_on_exit;
        let entries = std::mem::take(&mut *self.functions.write().expect("registry lock"));
        for (_, e) in entries {
            let _op = e.op.lock().await;
            let current = e.current.write().expect("entry lock").take();
            if let Some(f) = current {
                self.retire(&f, stop).await;
            }
        }
    }

    async fn retire(&self, f: &Function, stop_instances: bool) {
        f.handle
            .ask(|done| Command::Shutdown {
                stop_instances,
                done,
            })
            .await;
        if stop_instances {
            self.unbind(&f.bindings);
            self.files.release(f.bindings.len());
            let _ = std::fs::remove_file(self.instances_file(&f.record.spec));
            if let Some(cg) = &f.cgroup {
                cgroup::remove(cg);
                if let Ok(e) = &self.egress {
                    e.release(cg);
                }
            }
        }
    }
}
