//! The daemon's functions: deploy, update, remove, scale, list, and recovery on start.
//!
//! Order of a deploy (DESIGN.md, flow 1): validate → store (durable first) → address →
//! sockets → maps → activation task. A restart rebuilds everything from the store, reuses
//! the socket slots the pinned bindings map already holds, and takes back the sockets of
//! instances still serving from the previous daemon (`pidfd_getfd`), so they keep running.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use faasd_common::{BindingKey, SlotCounters};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::{
    activation::{self, Adopted, Command, FunctionState},
    config::Config,
    containerd::{ContainerdError, image::ImageRef},
    dataplane::{Dataplane, DataplaneStatus},
    logs::FunctionLog,
    notify,
    runtime::{
        Instance, Runtime, cgroup,
        container::{ContainerHost, ContainerRuntime},
    },
    secrets::{SecretError, Secrets},
    sockets,
    spec::{Deployment, FunctionSpec, Port, Settings, SpecError},
    store::{FunctionRecord, Store},
};

/// Errors of daemon operations, each mapping to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The request is invalid (400).
    #[error(transparent)]
    Invalid(#[from] SpecError),
    /// No such function, secret or peer (404).
    #[error("{0}")]
    NotFound(String),
    /// It exists already (409).
    #[error("{0}")]
    Exists(String),
    /// A resource is exhausted: the bindings map or the address prefix (507).
    #[error("{0}")]
    Full(String),
    /// A service faasd needs is down: containerd (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something on the host failed (500).
    #[error("{0}")]
    Internal(String),
}

/// The OpenFaaS FunctionStatus, plus faasd's own fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Name.
    pub name: String,
    /// Image (empty for process functions).
    pub image: String,
    /// Namespace.
    pub namespace: String,
    /// Command line.
    pub env_process: String,
    /// Environment.
    pub env_vars: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Calls through `/function/<name>`.
    pub invocation_count: u64,
    /// Running instances.
    pub replicas: u32,
    /// Ready instances.
    pub available_replicas: u32,
    /// First deploy, RFC 3339.
    pub created_at: String,
    /// faasd: the function's address.
    pub address: Ipv6Addr,
    /// faasd: its sockets.
    pub ports: Vec<Port>,
    /// faasd: activation state.
    pub state: FunctionState,
    /// faasd: data plane counters per port.
    pub counters: Vec<PortCounters>,
}

/// Counters of one function socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortCounters {
    /// Port name.
    pub name: String,
    /// Socket slot in the maps.
    pub slot: u32,
    /// Lookups that matched.
    pub lookups: u64,
    /// Connections or datagrams steered into the socket.
    pub steered: u64,
    /// Lookups that found no socket.
    pub no_socket: u64,
    /// Lookups the function's source policy refused.
    #[serde(default)]
    pub policy_drops: u64,
    /// What waits on the socket now, and what it dropped (from the kernel, not eBPF).
    #[serde(default)]
    pub queued: u64,
    /// Its accept queue's limit (TCP).
    #[serde(default)]
    pub queue_limit: u64,
    /// Connections (TCP) or datagrams (UDP) dropped because its queue was full.
    #[serde(default)]
    pub queue_drops: u64,
}

/// `faasd status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// Data plane.
    pub dataplane: DataplaneStatus,
    /// Functions deployed.
    pub functions: usize,
    /// Function prefix.
    pub function_prefix: String,
    /// Runtime of process functions.
    pub runtime: String,
    /// containerd, for image functions: where, and whether it answers.
    pub containerd: String,
    /// The WireGuard interface: name, implementation, port, public key; or "off".
    pub wireguard: String,
    /// Where the `.faas` zone is served.
    pub dns: Vec<String>,
    /// cgroup v2 root used, if any.
    pub cgroup_root: Option<PathBuf>,
}

struct Function {
    record: FunctionRecord,
    settings: Settings,
    bindings: Vec<(BindingKey, u32)>,
    handle: activation::Handle,
    log: FunctionLog,
    cgroup: Option<PathBuf>,
    invocations: u64,
    /// Calls through `/function/*` by HTTP status, and their durations.
    invocation_codes: BTreeMap<u16, u64>,
    invocation_seconds: crate::activation::Histogram,
}

/// Socket slots: indexes into the SOCKMAP, reused after removal. Every operation is
/// O(log n), so deploying the 100,000th function costs what the first did.
#[derive(Debug, Default)]
struct Slots {
    /// Slots below this have been handed out at some point.
    next: u32,
    /// Slots below `next` that are free again.
    free: BTreeSet<u32>,
}

impl Slots {
    fn take(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop_first() {
            return Some(s);
        }
        (self.next < faasd_common::MAX_BINDINGS).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Marks a slot the pinned map already uses as taken.
    fn claim(&mut self, slot: u32) {
        while self.next <= slot {
            self.free.insert(self.next);
            self.next += 1;
        }
        self.free.remove(&slot);
    }

    fn release(&mut self, slot: u32) {
        if slot < self.next {
            self.free.insert(slot);
        }
    }
}

/// The daemon's state.
#[derive(Debug)]
pub struct Daemon {
    config: Arc<Config>,
    store: Store,
    dataplane: Arc<Mutex<Dataplane>>,
    runtime: Arc<dyn Runtime>,
    containers: Arc<ContainerHost>,
    secrets: Secrets,
    zone: Option<Arc<crate::dns::Zone>>,
    http: crate::metrics::HttpStats,
    wireguard: Option<Arc<crate::wireguard::WireGuard>>,
    router: notify::Router,
    cgroup_root: Option<PathBuf>,
    functions: tokio::sync::Mutex<BTreeMap<String, Function>>,
    slots: Arc<Mutex<Slots>>,
    service: Arc<crate::systemd::Service>,
}

impl std::fmt::Debug for Function {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Function")
            .field("id", &self.record.spec.id())
            .finish()
    }
}

/// A full map is the operator's to resolve (507); any other map failure is the host's (500).
/// The fd store name of a function socket.
fn fd_name(spec: &FunctionSpec, p: &crate::spec::Port) -> String {
    crate::systemd::function_fd_name(&spec.namespace, &spec.name, p.port, &p.protocol.to_string())
}

impl DaemonError {
    fn no_function(id: &str) -> Self {
        Self::NotFound(format!("function {id} not found"))
    }

    fn function_exists(id: &str) -> Self {
        Self::Exists(format!("function {id} already exists; update it with PUT"))
    }
}

impl From<crate::dataplane::DataplaneError> for DaemonError {
    fn from(e: crate::dataplane::DataplaneError) -> Self {
        match e {
            crate::dataplane::DataplaneError::Full { .. } => Self::Full(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

/// An exhausted prefix is the operator's to resolve (507); a failing disk is the host's (500).
impl From<crate::store::StoreError> for DaemonError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::PrefixExhausted(_) => Self::Full(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

/// An unreachable containerd is a 503, a missing or unusable image the caller's 400.
impl From<ContainerdError> for DaemonError {
    fn from(e: ContainerdError) -> Self {
        match e {
            ContainerdError::Unreachable { .. } => Self::Unavailable(e.to_string()),
            ContainerdError::Image { .. } => Self::Invalid(SpecError(e.to_string())),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<crate::wireguard::WireGuardError> for DaemonError {
    fn from(e: crate::wireguard::WireGuardError) -> Self {
        use crate::wireguard::{WireGuardError as W, peers::PeerError as P};
        match e {
            W::Peer(P::Invalid(m)) | W::Invalid(m) => Self::Invalid(SpecError(m)),
            W::Peer(P::NotFound(_)) => Self::NotFound(e.to_string()),
            W::Peer(P::Exists(_)) => Self::Exists(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<SecretError> for DaemonError {
    fn from(e: SecretError) -> Self {
        match e {
            SecretError::Invalid(m) => Self::Invalid(SpecError(m)),
            SecretError::NotFound(_) => Self::NotFound(e.to_string()),
            SecretError::Exists(_) => Self::Exists(e.to_string()),
            SecretError::Io { .. } => Self::Internal(e.to_string()),
        }
    }
}

fn internal(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Internal(e.to_string())
}

impl Daemon {
    /// Creates the daemon over an opened store and data plane and restores every stored
    /// function.
    pub async fn start(
        config: Arc<Config>,
        store: Store,
        dataplane: Dataplane,
        runtime: Arc<dyn Runtime>,
        router: notify::Router,
        wireguard: Option<Arc<crate::wireguard::WireGuard>>,
        service: Arc<crate::systemd::Service>,
    ) -> Result<Arc<Self>, DaemonError> {
        let cgroup_root = cgroup::root();
        if cgroup_root.is_none() {
            tracing::warn!("no cgroup v2 hierarchy found: functions run without a cgroup");
        }
        let pinned = dataplane.bindings();
        let containers = Arc::new(ContainerHost::new(
            config.containerd.clone(),
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
        let daemon = Arc::new(Self {
            secrets: Secrets::new(&config.state_dir),
            zone,
            http: Default::default(),
            wireguard,
            config,
            store,
            dataplane: Arc::new(Mutex::new(dataplane)),
            runtime,
            containers,
            router,
            cgroup_root,
            functions: tokio::sync::Mutex::default(),
            slots: Arc::default(),
            service,
        });
        daemon.restore(pinned).await?;
        Ok(daemon)
    }

    async fn restore(&self, pinned: Vec<(BindingKey, u32)>) -> Result<(), DaemonError> {
        let records = self.store.load().map_err(internal)?;
        self.store
            .raise_counter_above(
                self.config.function_prefix,
                records.iter().map(|r| r.address),
            )
            .map_err(internal)?;
        let mut pinned: BTreeMap<BindingKey, u32> = pinned.into_iter().collect();
        let mut functions = self.functions.lock().await;
        for rec in records {
            let id = rec.spec.id();
            // Settings only: a program that went missing shows as a failed start in
            // `describe`, rather than the function vanishing from the API.
            let settings = match Settings::parse(&rec.spec.deployment) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(
                        "stored function {id} has settings this faasd rejects ({e}); not \
                         restored. Fix or move its record: {}",
                        self.config
                            .state_dir
                            .join("functions")
                            .join(&rec.spec.namespace)
                            .display()
                    );
                    continue;
                }
            };
            // Keep the slots the data plane already uses for this function's bindings, so
            // steering to instances that kept serving does not change.
            let keep: Vec<Option<u32>> = settings
                .ports
                .iter()
                .map(|p| pinned.remove(&BindingKey::new(rec.address, p.port, p.protocol.number())))
                .collect();
            {
                let mut slots = self.slots.lock().expect("slots lock");
                keep.iter().flatten().for_each(|s| slots.claim(*s));
            }
            match self.activate(rec, settings, keep, true).await {
                Ok(f) => {
                    functions.insert(id, f);
                }
                Err(e) => tracing::error!("restoring function {id}: {e}"),
            }
        }
        if let Some(z) = &self.zone {
            z.set_all(functions.values().map(|f| {
                (
                    f.record.spec.name.as_str(),
                    f.record.spec.namespace.as_str(),
                    f.record.address,
                )
            }))
            .await;
        }
        // Stored sockets of functions that no longer exist.
        let left = self
            .service
            .stored
            .lock()
            .expect("stored sockets lock")
            .drain_names();
        for name in left {
            self.service.manager.remove_fds(&name);
        }
        // Bindings of functions that no longer exist.
        let mut dp = self.dataplane.lock().expect("dataplane lock");
        for (key, slot) in pinned {
            tracing::info!(
                "removing stale binding [{}]:{} (slot {slot})",
                key.ipv6(),
                key.port
            );
            dp.unbind(&key, slot).map_err(internal)?;
        }
        tracing::info!("restored {} functions", functions.len());
        Ok(())
    }

    /// Creates sockets (or takes them back from a surviving instance), binds them in the
    /// maps, and starts the activation task.
    async fn activate(
        &self,
        record: FunctionRecord,
        settings: Settings,
        keep_slots: Vec<Option<u32>>,
        recover: bool,
    ) -> Result<Function, DaemonError> {
        let spec = &record.spec;
        let log = FunctionLog::new(&self.config.state_dir, &spec.namespace, &spec.name);
        let cgroup = match &self.cgroup_root {
            Some(root) => Some(
                cgroup::for_function(
                    root,
                    &self.config.cgroup_parent,
                    &spec.namespace,
                    &spec.name,
                )
                .map_err(internal)?,
            ),
            None => None,
        };
        // Only a restarted daemon takes instances back; during an update the running
        // instance is the old version's.
        let recovered = if recover {
            self.recover_instance(&record, &settings)
        } else {
            None
        };
        // Anything else in the function's cgroup was left by an earlier daemon (say, a
        // version that was still draining when it died): nobody manages it any more.
        // Accept-mode instances are left to finish their connections.
        if recover
            && settings.accept.is_none()
            && let Some(cg) = &cgroup
        {
            let keep = recovered.as_ref().map(|(_, a)| a.instance.pid);
            let n = cgroup::kill_strays(cg, keep);
            if n > 0 {
                tracing::warn!(
                    "{}: stopped {n} stray process(es) left by an earlier daemon",
                    spec.id()
                );
            }
        }
        let runtime = match &spec.image {
            None => self.runtime.clone(),
            Some(image) => {
                let keep: Vec<String> = recovered.iter().map(|(_, a)| a.id.clone()).collect();
                self.container_runtime(spec, image, &settings, recover, &keep)
                    .await?
            }
        };
        let (sockets, adopted) = match recovered {
            Some((socks, inst)) => (socks, vec![inst]),
            None => {
                // A restarted daemon takes back what systemd's fd store kept: connections
                // queued on those sockets while it was down are still there.
                let mut stored = self.service.stored.lock().expect("stored sockets lock");
                let socks = settings
                    .ports
                    .iter()
                    .map(|p| {
                        let addr = std::net::SocketAddrV6::new(record.address, p.port, 0, 0);
                        let kept = recover
                            .then(|| stored.take(addr, p.protocol == crate::spec::Protocol::Tcp))
                            .flatten();
                        kept.map_or_else(
                            || {
                                sockets::create(record.address, p, self.config.backlog).map_err(
                                    |e| {
                                        internal(format!(
                                            "creating socket [{}]:{}/{}: {e}",
                                            record.address, p.port, p.protocol
                                        ))
                                    },
                                )
                            },
                            Ok,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (socks, Vec::new())
            }
        };
        let mut bindings = Vec::new();
        let result = (|| {
            for ((p, sock), keep) in settings.ports.iter().zip(&sockets).zip(keep_slots) {
                let slot = match keep {
                    Some(s) => s,
                    None => self
                        .slots
                        .lock()
                        .expect("slots lock")
                        .take()
                        .ok_or_else(|| {
                            DaemonError::Full(format!(
                                "no free socket slot (max {})",
                                faasd_common::MAX_BINDINGS
                            ))
                        })?,
                };
                let key = BindingKey::new(record.address, p.port, p.protocol.number());
                bindings.push((key, slot));
                let mut dp = self.dataplane.lock().expect("dataplane lock");
                dp.bind(key, slot, sock)?;
                dp.set_policy(slot, &settings.policy)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.unbind(&bindings);
            return Err(e);
        }
        let handle = activation::spawn(activation::Activation {
            spec: Arc::new(record.spec.clone()),
            settings: settings.clone(),
            address: record.address,
            sockets,
            slots: bindings.iter().map(|(_, s)| *s).collect(),
            config: self.config.clone(),
            runtime,
            dataplane: self.dataplane.clone(),
            router: self.router.clone(),
            log: log.clone(),
            cgroup: cgroup.clone(),
            adopted,
        })
        .map_err(internal)?;
        // Kept in systemd's fd store (when there is one) for the next start.
        for (p, sock) in settings.ports.iter().zip(handle.sockets.iter()) {
            self.service.manager.store_fds(
                &fd_name(&record.spec, p),
                &[std::os::fd::AsFd::as_fd(sock.get_ref())],
            );
        }
        if let Some(ad) = &handle.state.lock().expect("state lock").instances.first() {
            tracing::info!(
                "{}: adopted running instance {} (pid {})",
                record.spec.id(),
                ad.id,
                ad.pid
            );
        }
        Ok(Function {
            record,
            settings,
            bindings,
            handle,
            log,
            cgroup,
            invocations: 0,
            invocation_codes: BTreeMap::new(),
            invocation_seconds: Default::default(),
        })
    }

    /// The runtime of a container function. A deploy fails at once when containerd is
    /// unreachable, the image is missing or a secret does not exist; a restore goes on
    /// (the function shows the failure when it starts) so one bad image never keeps the
    /// others down. A restore also deletes containers an earlier daemon left behind.
    async fn container_runtime(
        &self,
        spec: &FunctionSpec,
        image: &str,
        settings: &Settings,
        restoring: bool,
        keep: &[String],
    ) -> Result<Arc<dyn Runtime>, DaemonError> {
        let image = ImageRef::parse(image).map_err(|e| SpecError(format!("image: {e}")))?;
        let secrets = spec
            .deployment
            .secrets
            .iter()
            .map(|s| {
                self.secrets
                    .file(&spec.namespace, s)
                    .map(|f| (s.clone(), f))
                    .map_err(|e| match e {
                        SecretError::NotFound(_) => DaemonError::Invalid(SpecError(format!(
                            "{e} in namespace {}; create it first (faasd secret create {s})",
                            spec.namespace
                        ))),
                        e => e.into(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rt = ContainerRuntime::new(self.containers.clone(), spec, image, settings, secrets);
        if !restoring {
            rt.prepare().await?;
            return Ok(Arc::new(rt));
        }
        if let Err(e) = rt.prepare().await {
            tracing::warn!("{}: {e}", spec.id());
        }
        match rt.remove_strays(keep).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "{}: deleted {n} container(s) left by an earlier daemon",
                spec.id()
            ),
            Err(e) => tracing::warn!("{}: looking for leftover containers: {e}", spec.id()),
        }
        Ok(Arc::new(rt))
    }

    /// The secret store.
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// The WireGuard interface, unless it is off.
    pub fn wireguard(&self) -> Result<&crate::wireguard::WireGuard, DaemonError> {
        self.wireguard.as_deref().ok_or_else(|| {
            DaemonError::Invalid(SpecError(
                "WireGuard is off on this host (--no-wireguard): there are no peers".into(),
            ))
        })
    }

    /// The `.faas` zone, unless DNS is off.
    pub fn zone(&self) -> Option<&Arc<crate::dns::Zone>> {
        self.zone.as_ref()
    }

    fn unbind(&self, bindings: &[(BindingKey, u32)]) {
        let mut dp = self.dataplane.lock().expect("dataplane lock");
        let mut slots = self.slots.lock().expect("slots lock");
        for (key, slot) in bindings {
            if let Err(e) = dp.unbind(key, *slot) {
                tracing::warn!("unbinding slot {slot}: {e}");
            }
            slots.release(*slot);
        }
    }

    fn instances_file(&self, spec: &FunctionSpec) -> PathBuf {
        activation::instances_file(&self.config.runtime_dir, spec)
    }

    /// Finds an instance of this function left running by a previous daemon and takes
    /// copies of its sockets with `pidfd_getfd`, so the function keeps serving on them.
    fn recover_instance(
        &self,
        rec: &FunctionRecord,
        settings: &Settings,
    ) -> Option<(Vec<OwnedFd>, Adopted)> {
        if settings.accept.is_some() {
            return None;
        }
        let text = std::fs::read_to_string(self.instances_file(&rec.spec)).ok()?;
        let mut fields = text.lines().next()?.split_whitespace();
        let (pid, id, fingerprint) = (fields.next()?, fields.next()?, fields.next()?);
        // An instance of another version (the daemon died right after an update) is not
        // this function's: it is stopped as a stray instead.
        if fingerprint != rec.spec.fingerprint() {
            return None;
        }
        let pid: i32 = pid.parse().ok()?;
        // SAFETY: pidfd_open on a pid; the result is checked and owned.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            return None;
        }
        // SAFETY: fresh descriptor.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let instance = Instance {
            pid,
            pidfd,
            id: id.to_owned(),
            milestones: Default::default(),
        };
        let mut socks = Vec::new();
        for (i, p) in settings.ports.iter().enumerate() {
            // SAFETY: pidfd_getfd duplicates the target's fd into us; checked and owned.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_pidfd_getfd,
                    instance.pidfd.as_raw_fd(),
                    3 + i as i32,
                    0,
                )
            };
            if fd < 0 {
                break;
            }
            // SAFETY: fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            match sockets::local_addr(&fd) {
                Ok(a) if *a.ip() == rec.address && a.port() == p.port => socks.push(fd),
                _ => break,
            }
        }
        if socks.len() != settings.ports.len() {
            tracing::warn!(
                "{}: pid {pid} is not a usable instance any more; stopping it",
                rec.spec.id()
            );
            let _ = instance.signal(libc::SIGKILL);
            return None;
        }
        // pidfd_getfd sets close-on-exec; the file status flags (O_NONBLOCK) are shared
        // with the instance and stay as it set them.
        let output = crate::logs::Output::reopen(activation::output_path(
            &self.config.runtime_dir,
            &rec.spec,
            id,
        ))
        .ok();
        Some((
            socks,
            Adopted {
                output,
                instance,
                id: id.to_owned(),
            },
        ))
    }

    /// Deploys a new function (`update == false`) or replaces one (`update == true`).
    pub async fn deploy(&self, d: Deployment, update: bool) -> Result<FunctionStatus, DaemonError> {
        if !self.config.process_functions && d.image.as_deref().is_none_or(|i| i.trim().is_empty())
        {
            return Err(SpecError(
                "image: required; this host runs container images only (process-functions = \
                 false)"
                    .into(),
            )
            .into());
        }
        let (spec, settings) = FunctionSpec::from_deployment(d)?;
        let id = spec.id();
        let mut functions = self.functions.lock().await;
        let existing = functions
            .get(&id)
            .map(|f| (f.record.address, f.record.created_at));
        let (address, created_at) = match (existing, update) {
            (Some(_), false) => return Err(DaemonError::function_exists(&id)),
            (None, true) => return Err(DaemonError::no_function(&id)),
            (Some(e), true) => e,
            (None, false) => {
                let addr = self.store.allocate_address(self.config.function_prefix)?;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                (addr, now)
            }
        };
        let (ns, name) = (spec.namespace.clone(), spec.name.clone());
        let record = FunctionRecord {
            spec,
            address,
            created_at,
        };
        self.store.put(&record).map_err(internal)?;
        // The new version gets sockets of its own (SO_REUSEPORT lets them share the address
        // with the old ones) and binding it flips each key in one map update: connections
        // go to the new version from then on, none is refused.
        let n = settings.ports.len();
        let new = match self.activate(record, settings, vec![None; n], false).await {
            Ok(f) => f,
            Err(e) => {
                // Leave the host as it was: the previous version on disk and in the maps, or
                // no trace of the new function.
                match functions.get(&id) {
                    Some(old) => {
                        self.store.put(&old.record).map_err(internal)?;
                        let mut dp = self.dataplane.lock().expect("dataplane lock");
                        for (key, slot) in &old.bindings {
                            dp.point(*key, *slot).map_err(internal)?;
                        }
                    }
                    None => self.store.remove(&ns, &name).map_err(internal)?,
                }
                return Err(e);
            }
        };
        let status = self.status_of(&new);
        let taken_over: BTreeSet<BindingKey> = new.bindings.iter().map(|(k, _)| *k).collect();
        if let Some(z) = &self.zone {
            z.set(&name, &ns, address).await;
        }
        if let Some(old) = functions.insert(id, new) {
            self.drain(old, taken_over);
        }
        Ok(status)
    }

    /// Lets a replaced version serve what it had already queued, then stops it and frees its
    /// slots. Bindings the new version took over stay with the new version.
    fn drain(&self, old: Function, taken_over: BTreeSet<BindingKey>) {
        let (done, wait) = oneshot::channel();
        let _ = old.handle.tx.send(Command::Drain { done });
        let dataplane = self.dataplane.clone();
        let slots = self.slots.clone();
        tokio::spawn(async move {
            // Own all of `old`, its task's sender included: a closure that captured only
            // the fields it reads would drop the sender here, and the task would end at
            // once without stopping its instances.
            let old = old;
            let _ = wait.await;
            let mut dp = dataplane.lock().expect("dataplane lock");
            let mut slots = slots.lock().expect("slots lock");
            for (key, slot) in &old.bindings {
                let cleared = if taken_over.contains(key) {
                    dp.clear_slot(*slot)
                } else {
                    dp.unbind(key, *slot)
                };
                if let Err(e) = cleared {
                    tracing::warn!(
                        "{}: freeing slot {slot} after the update: {e}",
                        old.record.spec.id()
                    );
                }
                slots.release(*slot);
            }
            old.log
                .write("faasd", "previous version drained and stopped");
        });
    }

    async fn retire(&self, f: Function, stop_instances: bool) {
        let (done, wait) = oneshot::channel();
        if f.handle
            .tx
            .send(Command::Shutdown {
                stop_instances,
                done,
            })
            .is_ok()
        {
            let _ = wait.await;
        }
        if stop_instances {
            self.unbind(&f.bindings);
            let _ = std::fs::remove_file(self.instances_file(&f.record.spec));
            if let Some(cg) = &f.cgroup {
                cgroup::remove(cg);
            }
        }
    }

    /// Removes a function: instances stopped, sockets closed, bindings gone, state deleted.
    pub async fn remove(&self, namespace: &str, name: &str) -> Result<(), DaemonError> {
        let id = format!("{namespace}/{name}");
        let mut functions = self.functions.lock().await;
        let f = functions
            .remove(&id)
            .ok_or_else(|| DaemonError::no_function(&id))?;
        self.store.remove(namespace, name).map_err(internal)?;
        if let Some(z) = &self.zone {
            z.remove(name, namespace).await;
        }
        for p in &f.settings.ports {
            self.service.manager.remove_fds(&fd_name(&f.record.spec, p));
        }
        let log = f.log.clone();
        self.retire(f, true).await;
        log.remove();
        Ok(())
    }

    /// Sets the number of running instances (0 = scale to zero; the sockets stay).
    pub async fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> Result<(), DaemonError> {
        let id = format!("{namespace}/{name}");
        let functions = self.functions.lock().await;
        let f = functions
            .get(&id)
            .ok_or_else(|| DaemonError::no_function(&id))?;
        if replicas > f.settings.max_scale {
            return Err(SpecError(format!(
                "replicas {replicas} exceeds com.openfaas.scale.max ({})",
                f.settings.max_scale
            ))
            .into());
        }
        // Zero is scale to zero, always allowed (the next connection starts the function
        // again); between zero and the minimum is a mistake.
        if replicas != 0 && replicas < f.settings.min_scale {
            return Err(SpecError(format!(
                "replicas {replicas} is below com.openfaas.scale.min ({}): scale to 0 to stop \
                 it, or lower the label (faasd deploy --update) to run fewer",
                f.settings.min_scale
            ))
            .into());
        }
        if f.settings.accept.is_some() {
            return Err(SpecError(
                "an accept-mode function runs one instance per connection; it cannot be scaled"
                    .into(),
            )
            .into());
        }
        f.handle.tx.send(Command::Scale(replicas)).map_err(internal)
    }

    fn status_of(&self, f: &Function) -> FunctionStatus {
        let d = &f.record.spec.deployment;
        let state = f.handle.state.lock().expect("state lock").clone();
        let dp = self.dataplane.lock().expect("dataplane lock");
        let counters = f
            .settings
            .ports
            .iter()
            .zip(&f.bindings)
            .enumerate()
            .map(|(i, (p, (_, slot)))| {
                let SlotCounters {
                    lookups,
                    steered,
                    no_socket,
                } = dp.slot_counters(*slot);
                let queue = f
                    .handle
                    .sockets
                    .get(i)
                    .and_then(|s| crate::sockets::queue_stats(s.get_ref()).ok())
                    .unwrap_or_default();
                PortCounters {
                    name: p.name.clone(),
                    slot: *slot,
                    lookups,
                    steered,
                    no_socket,
                    policy_drops: dp.policy_drops(*slot),
                    queued: queue.queued,
                    queue_limit: queue.limit,
                    queue_drops: queue.drops,
                }
            })
            .collect();
        FunctionStatus {
            name: f.record.spec.name.clone(),
            image: f.record.spec.image.clone().unwrap_or_default(),
            namespace: f.record.spec.namespace.clone(),
            env_process: d.env_process.clone().unwrap_or_default(),
            env_vars: d.env_vars.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            invocation_count: f.invocations,
            replicas: state.instances.len() as u32,
            available_replicas: state.instances.iter().filter(|i| i.ready).count() as u32,
            created_at: humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(f.record.created_at),
            )
            .to_string(),
            address: f.record.address,
            ports: f.settings.ports.clone(),
            state,
            counters,
        }
    }

    /// Functions of `namespace`, or all when `None`.
    pub async fn list(&self, namespace: Option<&str>) -> Vec<FunctionStatus> {
        self.functions
            .lock()
            .await
            .values()
            .filter(|f| namespace.is_none_or(|ns| f.record.spec.namespace == ns))
            .map(|f| self.status_of(f))
            .collect()
    }

    /// A function's runtime state alone (no counters), for callers that poll it.
    pub async fn state(&self, namespace: &str, name: &str) -> Result<FunctionState, DaemonError> {
        let id = format!("{namespace}/{name}");
        let functions = self.functions.lock().await;
        let f = functions
            .get(&id)
            .ok_or_else(|| DaemonError::no_function(&id))?;
        Ok(f.handle.state.lock().expect("state lock").clone())
    }

    /// One function.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<FunctionStatus, DaemonError> {
        let id = format!("{namespace}/{name}");
        let functions = self.functions.lock().await;
        let f = functions
            .get(&id)
            .ok_or_else(|| DaemonError::no_function(&id))?;
        Ok(self.status_of(f))
    }

    /// The namespaces in use: the default one and every one that holds a function or a
    /// secret (a namespace comes into being with its first function or secret).
    pub async fn namespaces(&self) -> Result<Vec<String>, DaemonError> {
        let mut set: std::collections::BTreeSet<String> = self
            .functions
            .lock()
            .await
            .values()
            .map(|f| f.record.spec.namespace.clone())
            .collect();
        set.extend(self.secrets.namespaces()?);
        set.insert(crate::spec::DEFAULT_NAMESPACE.into());
        Ok(set.into_iter().collect())
    }

    /// Address and first TCP port of a function, counting an invocation.
    pub async fn invocation_target(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Ipv6Addr, u16), DaemonError> {
        let id = format!("{namespace}/{name}");
        let mut functions = self.functions.lock().await;
        let f = functions
            .get_mut(&id)
            .ok_or_else(|| DaemonError::no_function(&id))?;
        let port = f
            .settings
            .ports
            .iter()
            .find(|p| p.protocol == crate::spec::Protocol::Tcp)
            .ok_or_else(|| SpecError(format!("function {id} has no TCP port to invoke")))?;
        f.invocations += 1;
        Ok((f.record.address, port.port))
    }

    /// Records the outcome of a call through `/function/*`.
    pub async fn record_invocation(&self, namespace: &str, name: &str, code: u16, seconds: f64) {
        let mut functions = self.functions.lock().await;
        if let Some(f) = functions.get_mut(&format!("{namespace}/{name}")) {
            *f.invocation_codes.entry(code).or_default() += 1;
            f.invocation_seconds.observe(seconds);
        }
    }

    /// Everything `/metrics` shows, in Prometheus text format.
    pub async fn metrics(&self) -> String {
        let host = self.status().await;
        let functions: Vec<crate::metrics::FunctionMetrics> = {
            let functions = self.functions.lock().await;
            functions
                .values()
                .map(|f| crate::metrics::FunctionMetrics {
                    status: self.status_of(f),
                    invocation_codes: f.invocation_codes.clone(),
                    invocation_seconds: f.invocation_seconds.clone(),
                })
                .collect()
        };
        let peers = self
            .wireguard
            .as_ref()
            .and_then(|w| w.peer_status().ok())
            .unwrap_or_default();
        let dns = self
            .zone
            .as_ref()
            .map(|z| z.query_counts())
            .unwrap_or_default();
        crate::metrics::render(&crate::metrics::Sources {
            host: &host,
            functions: &functions,
            peers: &peers,
            dns: &dns,
            http: &self.http,
        })
    }

    /// Resolves once the daemon's function table is free: it is not stuck.
    pub async fn alive(&self) {
        drop(self.functions.lock().await);
    }

    /// The API's request counters.
    pub fn http_stats(&self) -> &crate::metrics::HttpStats {
        &self.http
    }

    /// A function's log.
    pub async fn log(&self, namespace: &str, name: &str) -> Result<FunctionLog, DaemonError> {
        let id = format!("{namespace}/{name}");
        let functions = self.functions.lock().await;
        Ok(functions
            .get(&id)
            .ok_or_else(|| DaemonError::no_function(&id))?
            .log
            .clone())
    }

    /// Host status.
    pub async fn status(&self) -> HostStatus {
        let dataplane = self.dataplane.lock().expect("dataplane lock").status();
        HostStatus {
            dataplane,
            functions: self.functions.lock().await.len(),
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
            dns: self.config.dns.iter().map(|a| a.to_string()).collect(),
            containerd: match self.containers.client().await {
                Ok(c) => format!("reachable at {}", c.socket().display()),
                Err(e) => e.to_string(),
            },
            cgroup_root: self.cgroup_root.clone(),
        }
    }

    /// Ends every activation task; stops instances if configured to.
    pub async fn shutdown(&self) {
        let stop = self.config.stop_functions_on_exit;
        let mut functions = self.functions.lock().await;
        for (_, f) in std::mem::take(&mut *functions) {
            self.retire(f, stop).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_are_reused_lowest_first_and_claims_are_respected() {
        let mut s = Slots::default();
        assert_eq!((s.take(), s.take(), s.take()), (Some(0), Some(1), Some(2)));
        s.release(1);
        assert_eq!(s.take(), Some(1));
        // After a restart the pinned map says slot 5 is in use.
        let mut s = Slots::default();
        s.claim(5);
        let taken: Vec<_> = (0..6).map(|_| s.take().unwrap()).collect();
        assert_eq!(taken, [0, 1, 2, 3, 4, 6]);
    }

    #[test]
    fn slots_run_out_at_the_map_size() {
        let mut s = Slots::default();
        s.claim(faasd_common::MAX_BINDINGS - 1);
        for _ in 0..faasd_common::MAX_BINDINGS - 1 {
            assert!(s.take().is_some());
        }
        assert_eq!(s.take(), None);
    }
}
