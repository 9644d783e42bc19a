//! This host in a cluster: its number claimed in etcd (kept in the state directory, so a
//! restart needs no etcd to know it), its registration kept alive under a lease, the
//! other hosts followed into the WireGuard mesh, and every host's functions' names into
//! this host's `.faas` zone (this host's own put under its lease, so they go with it).
//!
//! The address plan ([`faasd_common::plan`]): host N owns `fd00:faa5:N::/48` for its
//! functions and `fd00:faa5:0:(0x100 + N − 1)::/64` for itself (its address is the first
//! of it) and the WireGuard peers it adds, so every address is unique in the cluster and
//! each host routes both of another host's ranges to that host's peer entry. A function
//! the scheduler moved off a dead host keeps its address: the host that runs it now adds
//! a local route for it, and every other host routes that one address to it (a /128 on
//! its peer entry, longer than the dead host's /48).

mod fence;
mod schedule;
mod secrets;

pub use fence::LeaseAnswer;
pub use schedule::Functions;
pub use secrets::ClusterKey;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use faasd_cluster::{
    Endpoints, Etcd, EtcdError, FunctionName, HostInfo, NameRecord, Placed, Synced, Tls,
};
use faasd_core::config::{ClusterConfig, Ipv6Net};
use faasd_core::spec::Deployment;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::wireguard::{HostPeer, WireGuard};

/// Errors joining the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// The host number's file in the state directory.
    #[error("{path}: {source}")]
    NumberFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The host number's file holds something else.
    #[error("{path} holds {found:?}, not a host number; remove it to claim one again")]
    BadNumberFile {
        /// The file.
        path: PathBuf,
        /// What it holds.
        found: String,
    },
    /// The name is taken.
    #[error("{}/{} exists{}", .function.0, .function.1, match .host {
        Some(h) => format!(" on host {h}"),
        None => " (not placed yet)".to_owned(),
    })]
    Exists {
        /// The function.
        function: FunctionName,
        /// Where it runs.
        host: Option<u16>,
    },
    /// The cluster key's file.
    #[error("[cluster] key-file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cluster key's file holds no key.
    #[error(
        "[cluster] key-file {0} must hold 32 bytes in base64 (make one with \
         `head -c 32 /dev/urandom | base64`, the same file on every host)"
    )]
    BadKey(PathBuf),
    /// No randomness for a nonce.
    #[error("reading random bytes: {0}")]
    Random(std::io::Error),
    /// A sealed secret does not open with this host's key.
    #[error(
        "secret {0} in etcd does not open with this host's cluster key: is [cluster] \
         key-file the same file on every host?"
    )]
    Unseal(String),
    /// Secrets need the cluster key.
    #[error(
        "secrets in a cluster are sealed with the cluster key: set [cluster] key-file (the \
         same file on every host)"
    )]
    NoKey,
    /// No such secret.
    #[error("secret {}/{} not found", .0.0, .0.1)]
    NoSecret(FunctionName),
    /// The secret exists.
    #[error("secret {}/{} already exists; update it with PUT", .0.0, .0.1)]
    SecretExists(FunctionName),
    /// There is no such host in the cluster.
    #[error("host {0} is not registered in the cluster (see faasd cluster status)")]
    NoHost(u16),
    /// There is no such function in the cluster.
    #[error("{}/{} is not deployed in the cluster", .0.0, .0.1)]
    NoFunction(FunctionName),
    /// No host can take the function.
    #[error("{}/{} cannot be placed: {why}", .function.0, .function.1)]
    Unplaceable {
        /// The function.
        function: FunctionName,
        /// Why.
        why: String,
    },
    /// The host has no name.
    #[error("[cluster] name is unset and the machine's host name cannot be read: {0}")]
    NoName(std::io::Error),
    /// A cluster host must be reachable over WireGuard.
    #[error(
        "a cluster host needs WireGuard with wireguard-endpoint set (the address and port \
         the other hosts reach it at)"
    )]
    NoEndpoint,
}

/// This host's number and name, and the client it claimed them with.
#[derive(Debug)]
pub struct Membership {
    /// The etcd client.
    pub etcd: Arc<Etcd>,
    /// This host's name.
    pub name: String,
    /// This host's number.
    pub number: u16,
    /// Where this host keeps what it knows of the cluster.
    dir: PathBuf,
    /// Whether this host claimed its number just now (its functions, if it had any,
    /// become the cluster's).
    first_join: bool,
    /// The cluster key, when configured.
    key: Option<Arc<ClusterKey>>,
}

/// Connects to etcd and learns this host's number: from the state directory when it was
/// claimed before, else claimed in etcd (which must then answer) and written there.
pub async fn connect(c: &ClusterConfig, state_dir: &Path) -> Result<Membership, ClusterError> {
    let name = match &c.name {
        Some(n) => n.clone(),
        None => host_name().map_err(ClusterError::NoName)?,
    };
    let etcd = Arc::new(
        Etcd::connect(&Endpoints {
            urls: c.endpoints.clone(),
            tls: c.ca.clone().map(|ca| Tls {
                ca,
                identity: c.cert.clone().zip(c.key.clone()),
            }),
        })
        .await?,
    );
    let key = c
        .key_file
        .as_deref()
        .map(ClusterKey::load)
        .transpose()?
        .map(Arc::new);
    let dir = state_dir.join("cluster");
    let path = dir.join("host-number");
    let mut first_join = false;
    let number = match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| ClusterError::BadNumberFile {
                path: path.clone(),
                found: text.trim().to_owned(),
            })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let n = faasd_cluster::claim_host_number(&etcd, &name).await?;
            let file_err = |source| ClusterError::NumberFile {
                path: path.clone(),
                source,
            };
            std::fs::create_dir_all(path.parent().expect("a file in a directory"))
                .map_err(file_err)?;
            faasd_core::durable::write_atomic(&path, format!("{n}\n").as_bytes())
                .map_err(file_err)?;
            first_join = true;
            n
        }
        Err(source) => return Err(ClusterError::NumberFile { path, source }),
    };
    tracing::info!(
        "cluster: this host is {name}, number {number}, etcd {}",
        etcd.endpoints()
    );
    Ok(Membership {
        etcd,
        name,
        number,
        dir,
        first_join,
        key,
    })
}

fn host_name() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// How long a deploy waits for the scheduler to place the function and for its host to
/// run it, before it answers without.
const PLACE_WAIT: Duration = Duration::from_secs(10);

/// A change to this host's functions' names.
#[derive(Debug)]
enum NameChange {
    Set(FunctionName, NameRecord),
    Remove(FunctionName),
}

/// This host in the cluster, while it runs.
#[derive(Debug)]
pub struct Cluster {
    membership: Membership,
    /// The lease this host's registration holds under, while it holds.
    lease: watch::Receiver<Option<i64>>,
    /// When etcd last took this host's keep-alive (never, in this run, if `None`).
    kept: watch::Receiver<Option<tokio::time::Instant>>,
    ttl: Duration,
    hosts: watch::Receiver<BTreeMap<u16, HostInfo>>,
    wireguard: Arc<WireGuard>,
    /// This host's functions' names, to publish.
    names: mpsc::UnboundedSender<NameChange>,
    /// The functions that run on this host (its zone has their names already).
    own_names: Arc<Mutex<BTreeSet<FunctionName>>>,
    /// Told when `own_names` changes (the mesh throws out only what does not run here).
    local_changed: watch::Sender<()>,
    /// The names this host puts in etcd: of its functions it is the host of.
    published: Mutex<BTreeSet<FunctionName>>,
    /// Every host's functions' names, as etcd has them (or as this host last knew).
    all_names: watch::Receiver<BTreeMap<FunctionName, NameRecord>>,
    /// The cluster's functions and where they are placed.
    functions: watch::Receiver<Functions>,
    /// The host that schedules, as last learnt.
    scheduler: watch::Receiver<Option<u16>>,
    /// The hosts being drained.
    drained: watch::Receiver<BTreeMap<u16, bool>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("tasks lock").iter() {
            t.abort();
        }
    }
}

impl Cluster {
    /// Registers this host (retrying in the background while etcd does not answer),
    /// follows the others' registrations and keeps them the interface's host peers.
    pub fn join(
        membership: Membership,
        c: &ClusterConfig,
        wireguard: Arc<WireGuard>,
        api: Vec<String>,
    ) -> Result<Self, ClusterError> {
        let endpoint = wireguard
            .settings()
            .endpoint
            .clone()
            .ok_or(ClusterError::NoEndpoint)?;
        let info = HostInfo {
            number: membership.number,
            name: membership.name.clone(),
            public_key: wireguard.public_key().to_owned(),
            endpoint: Some(endpoint),
            api,
            labels: c.labels.clone(),
            capacity: c.capacity,
        };
        let (lease_tx, lease) = watch::channel(None);
        let (kept_tx, kept) = watch::channel(None);
        let register = tokio::spawn(keep_registered(
            membership.etcd.clone(),
            info,
            c.lease_ttl,
            lease_tx,
            kept_tx,
        ));
        let (names, changes) = mpsc::unbounded_channel();
        let publish = tokio::spawn(publish_names(
            membership.etcd.clone(),
            lease.clone(),
            changes,
        ));
        // What this host last knew of the others: it meshes with them before etcd answers.
        let hosts_cache = membership.dir.join("hosts.json");
        let (tx, hosts) = watch::channel(load(&hosts_cache));
        let follow = tokio::spawn(faasd_cluster::watch_hosts(membership.etcd.clone(), tx));
        // And of every host's functions' names, to answer for them before etcd does.
        let (tx, all_names) = watch::channel(load(&membership.dir.join("names.json")));
        let follow_names = tokio::spawn(faasd_cluster::watch_names(membership.etcd.clone(), tx));
        let own_names: Arc<Mutex<BTreeSet<FunctionName>>> = Arc::default();
        let (local_changed, local) = watch::channel(());
        let mesh = tokio::spawn(mesh(
            hosts.clone(),
            all_names.clone(),
            (own_names.clone(), local),
            wireguard.clone(),
            membership.number,
            hosts_cache,
        ));
        let (tx, functions) = watch::channel(Synced::default());
        let follow_functions =
            tokio::spawn(faasd_cluster::watch_functions(membership.etcd.clone(), tx));
        let (tx, drained) = watch::channel(BTreeMap::new());
        let follow_drained =
            tokio::spawn(faasd_cluster::watch_draining(membership.etcd.clone(), tx));
        let (leader, scheduler) = watch::channel(None);
        let schedule = tokio::spawn(schedule::run(schedule::Inputs {
            etcd: membership.etcd.clone(),
            this: membership.number,
            lease: lease.clone(),
            hosts: hosts.clone(),
            functions: functions.clone(),
            drained: drained.clone(),
            move_after: c.move_after,
            leader,
        }));
        Ok(Self {
            membership,
            lease,
            kept,
            ttl: c.lease_ttl,
            hosts,
            wireguard,
            names,
            own_names,
            local_changed,
            published: Mutex::default(),
            all_names,
            functions,
            drained,
            scheduler,
            tasks: Mutex::new(vec![
                register.abort_handle(),
                publish.abort_handle(),
                follow.abort_handle(),
                mesh.abort_handle(),
                follow_names.abort_handle(),
                follow_functions.abort_handle(),
                follow_drained.abort_handle(),
                schedule.abort_handle(),
            ]),
        })
    }

    /// A function runs on this host. Unless this host is only one of its replicas, it
    /// answers at `address` on every host through this one, and is called on `port`
    /// through any host's `/function/<name>`.
    pub fn publish(&self, namespace: &str, name: &str, address: Ipv6Addr, port: Option<u16>) {
        let f = (namespace.to_owned(), name.to_owned());
        self.own_names.lock().expect("names lock").insert(f.clone());
        self.local_changed.send_replace(());
        let replica = self
            .placement(namespace, name)
            .is_some_and(|p| p.host != Some(self.membership.number));
        let mut published = self.published.lock().expect("names lock");
        if replica {
            if published.remove(&f) {
                let _ = self.names.send(NameChange::Remove(f));
            }
            return;
        }
        published.insert(f.clone());
        let record = NameRecord {
            address,
            host: self.membership.number,
            port,
        };
        let _ = self.names.send(NameChange::Set(f, record));
    }

    /// Whether this host publishes the function's name (it is its host, not a replica).
    pub fn publishes(&self, namespace: &str, name: &str) -> bool {
        self.published
            .lock()
            .expect("names lock")
            .contains(&(namespace.to_owned(), name.to_owned()))
    }

    /// Whether this host's registration holds (etcd took its last keep-alive in time).
    pub fn registered(&self) -> bool {
        self.lease.borrow().is_some()
    }

    /// This host's number.
    pub fn number(&self) -> u16 {
        self.membership.number
    }

    /// The lease this host's registration holds under, while it holds.
    pub fn lease(&self) -> watch::Receiver<Option<i64>> {
        self.lease.clone()
    }

    /// The cluster's functions and where they are placed.
    pub fn functions(&self) -> watch::Receiver<Functions> {
        self.functions.clone()
    }

    /// Whether this host claimed its number in this run (it joins for the first time).
    pub fn first_join(&self) -> bool {
        self.membership.first_join
    }

    /// Whether most hosts agree that etcd is down for them all (see [`fence`]).
    pub async fn outage_agreed(&self) -> bool {
        let hosts = self.hosts.borrow().clone();
        let kept_ago = self.kept.borrow().map(|t| t.elapsed());
        fence::outage_agreed(&hosts, self.membership.number, kept_ago, self.ttl / 3).await
    }

    /// What this host tells the others asking whether it lost etcd too.
    pub fn lease_answer(&self) -> LeaseAnswer {
        LeaseAnswer {
            number: self.membership.number,
            registered: self.registered(),
            kept_ms_ago: self.kept.borrow().map(|t| t.elapsed().as_millis() as u64),
        }
    }

    /// Deploys (`update == false`) or updates a function of the cluster's in etcd; the
    /// scheduler places a new one. The record as it stands.
    pub async fn submit(&self, d: &Deployment, update: bool) -> Result<Placed, ClusterError> {
        let f: FunctionName = (d.namespace.clone().unwrap_or_default(), d.service.clone());
        let etcd = &*self.membership.etcd;
        if update {
            return faasd_cluster::update_function(etcd, &f, d)
                .await?
                .ok_or(ClusterError::NoFunction(f));
        }
        // Refused at once when no host could take it, rather than left unplaced.
        let load = schedule::load(&self.functions.borrow().items);
        if let Err(why) = schedule::choose(&d.constraints, &self.hosts.borrow(), &load, &[]) {
            return Err(ClusterError::Unplaceable { function: f, why });
        }
        match faasd_cluster::create_function(etcd, &f, d).await? {
            Ok(()) => {}
            Err(existing) => {
                return Err(ClusterError::Exists {
                    function: f,
                    host: existing.host,
                });
            }
        }
        // The scheduler places it (and gives it its address) within moments.
        let mut functions = self.functions.clone();
        let placed = tokio::time::timeout(
            PLACE_WAIT,
            functions.wait_for(|all| {
                all.items
                    .get(&f)
                    .is_some_and(|p| p.host.is_some() || p.unplaced.is_some())
            }),
        )
        .await;
        let p = match placed {
            Ok(Ok(all)) => all.items.get(&f).cloned(),
            _ => None,
        };
        match p {
            Some(p) if p.host.is_none() => Err(ClusterError::Unplaceable {
                function: f,
                why: p.unplaced.unwrap_or_default(),
            }),
            Some(p) => Ok(p),
            None => Ok(Placed::new(d.clone())),
        }
    }

    /// Waits (up to a few seconds) until host `host` publishes `f`'s name: it runs there.
    pub async fn wait_published(&self, f: &FunctionName, host: u16) {
        let mut names = self.all_names.clone();
        let _ = tokio::time::timeout(
            PLACE_WAIT,
            names.wait_for(|all| all.get(f).is_some_and(|r| r.host == host)),
        )
        .await;
    }

    /// Drains host `host` (this one, if `None`): its functions are placed elsewhere and
    /// none placed there, until `drain == false` undoes it. The host it was.
    pub async fn drain(&self, host: Option<u16>, drain: bool) -> Result<u16, ClusterError> {
        let host = host.unwrap_or(self.membership.number);
        if !self.hosts.borrow().contains_key(&host) {
            return Err(ClusterError::NoHost(host));
        }
        faasd_cluster::set_draining(&self.membership.etcd, host, drain).await?;
        Ok(host)
    }

    /// The token other hosts relay requests with (with the cluster key only).
    pub fn api_token(&self) -> Option<&str> {
        self.membership.key.as_deref().map(ClusterKey::api_token)
    }

    /// Another host's API, to relay a request to a function it runs: its first API
    /// address, with the cluster's token (`None` without the cluster key, or when the
    /// host is not registered).
    pub fn peer(&self, host: u16) -> Option<crate::client::Client> {
        let token = self.api_token()?;
        let api = self.hosts.borrow().get(&host)?.api.first()?.clone();
        crate::client::Client::peer(&api, token).ok()
    }

    /// Keeps `store` the cluster's secrets (with the cluster key; without it, the cluster
    /// has no secrets and refuses them).
    pub fn follow_secrets(&self, store: crate::secrets::Secrets) {
        let Some(key) = self.membership.key.clone() else {
            return;
        };
        let (tx, sealed) = watch::channel(Synced::default());
        let watch = tokio::spawn(faasd_cluster::watch_secrets(
            self.membership.etcd.clone(),
            tx,
        ));
        let follow = tokio::spawn(secrets::follow(
            self.membership.etcd.clone(),
            key,
            store,
            self.membership.first_join,
            sealed,
        ));
        let mut tasks = self.tasks.lock().expect("tasks lock");
        tasks.push(watch.abort_handle());
        tasks.push(follow.abort_handle());
    }

    /// Creates (`update == false`) or replaces a secret of the cluster's, sealed.
    pub async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        update: bool,
    ) -> Result<(), ClusterError> {
        secrets::put(
            &self.membership.etcd,
            self.membership.key.as_deref(),
            (namespace.to_owned(), name.to_owned()),
            value,
            update,
        )
        .await
    }

    /// Removes a secret of the cluster's.
    pub async fn remove_secret(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        let s = (namespace.to_owned(), name.to_owned());
        if self.membership.key.is_none() {
            return Err(ClusterError::NoKey);
        }
        if faasd_cluster::delete_secret(&self.membership.etcd, &s).await? {
            Ok(())
        } else {
            Err(ClusterError::NoSecret(s))
        }
    }

    /// Removes a function of the cluster's; the host running it stops it.
    pub async fn remove(&self, namespace: &str, name: &str) -> Result<(), ClusterError> {
        let f = (namespace.to_owned(), name.to_owned());
        if faasd_cluster::delete_function(&self.membership.etcd, &f).await? {
            Ok(())
        } else {
            Err(ClusterError::NoFunction(f))
        }
    }

    /// A function this host ran before it joined: it becomes the cluster's, placed here at
    /// its address (unless the cluster has one of that name already).
    pub async fn adopt(
        &self,
        d: &Deployment,
        address: Ipv6Addr,
        created_at: u64,
    ) -> Result<(), ClusterError> {
        let f: FunctionName = (d.namespace.clone().unwrap_or_default(), d.service.clone());
        let p = Placed {
            address: Some(address),
            host: Some(self.membership.number),
            created_at,
            ..Placed::new(d.clone())
        };
        faasd_cluster::adopt_function(&self.membership.etcd, &f, &p).await?;
        Ok(())
    }

    /// The address of another host's function of that name, as the cluster's names say.
    pub fn elsewhere(&self, namespace: &str, name: &str) -> Option<Ipv6Addr> {
        let names = self.all_names.borrow();
        names
            .get(&(namespace.to_owned(), name.to_owned()))
            .filter(|r| r.host != self.membership.number)
            .map(|r| r.address)
    }

    /// Where `/function/<name>` calls another host's function: its address and port.
    pub fn invocation_target(&self, namespace: &str, name: &str) -> Option<(Ipv6Addr, u16)> {
        let names = self.all_names.borrow();
        let r = names.get(&(namespace.to_owned(), name.to_owned()))?;
        Some((r.address, r.port?))
    }

    /// The host a function runs on and its address, as the scheduler placed it.
    pub fn placement(&self, namespace: &str, name: &str) -> Option<Placed> {
        self.functions
            .borrow()
            .items
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// A function of this host's is gone.
    pub fn withdraw(&self, namespace: &str, name: &str) {
        let f = (namespace.to_owned(), name.to_owned());
        self.own_names.lock().expect("names lock").remove(&f);
        self.local_changed.send_replace(());
        if self.published.lock().expect("names lock").remove(&f) {
            let _ = self.names.send(NameChange::Remove(f));
        }
    }

    /// Keeps the other hosts' functions' names in `zone`, as etcd has them, starting from
    /// what this host last knew (kept on disk, so it answers for them without etcd).
    pub fn follow_names(&self, zone: Arc<crate::dns::Zone>) {
        let sync = tokio::spawn(sync_zone(
            self.all_names.clone(),
            zone,
            self.own_names.clone(),
            self.membership.number,
            self.membership.dir.join("names.json"),
        ));
        self.tasks
            .lock()
            .expect("tasks lock")
            .push(sync.abort_handle());
    }

    /// What `faasd cluster status` shows.
    pub async fn status(&self) -> ClusterStatus {
        let handshakes: BTreeMap<String, Option<u64>> = self
            .wireguard
            .host_status()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, live)| (k, live.handshake_secs_ago))
            .collect();
        let mut functions: BTreeMap<u16, usize> = BTreeMap::new();
        for h in self
            .functions
            .borrow()
            .items
            .values()
            .filter_map(|p| p.host)
        {
            *functions.entry(h).or_default() += 1;
        }
        let hosts = self
            .hosts
            .borrow()
            .values()
            .map(|h| HostStatus {
                this: h.number == self.membership.number,
                draining: self.drained.borrow().contains_key(&h.number),
                functions: functions.get(&h.number).copied().unwrap_or(0),
                handshake_secs_ago: handshakes.get(&h.public_key).copied().flatten(),
                prefix: prefix_of(h.number).to_string(),
                address: faasd_common::plan::host_address(h.number),
                info: h.clone(),
            })
            .collect();
        let etcd = self
            .membership
            .etcd
            .health()
            .await
            .into_iter()
            .map(|m| MemberReport {
                endpoint: m.endpoint,
                version: m.state.as_ref().ok().map(|s| s.version.clone()),
                leader: m.state.as_ref().is_ok_and(|s| s.leader),
                raft_index: m.state.as_ref().ok().map(|s| s.raft_index),
                error: m.state.err(),
            })
            .collect();
        ClusterStatus {
            name: self.membership.name.clone(),
            number: self.membership.number,
            registered: self.registered(),
            scheduler: *self.scheduler.borrow(),
            hosts,
            etcd,
        }
    }
}

/// Registers this host (again every second while etcd does not answer) and passes on
/// the lease it holds under while it holds, and when etcd last took a keep-alive.
async fn keep_registered(
    etcd: Arc<Etcd>,
    info: HostInfo,
    ttl: Duration,
    lease: watch::Sender<Option<i64>>,
    kept: watch::Sender<Option<tokio::time::Instant>>,
) {
    let registration = loop {
        match faasd_cluster::register(etcd.clone(), info.clone(), ttl).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!("cluster: registering this host: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tracing::info!("cluster: registered under a lease of {ttl:?}");
    let mut current = registration.lease();
    let mut last = registration.kept();
    loop {
        lease.send_replace(*current.borrow_and_update());
        kept.send_replace(Some(*last.borrow_and_update()));
        tokio::select! {
            changed = current.changed() => if changed.is_err() { return },
            changed = last.changed() => if changed.is_err() { return },
        }
    }
}

/// Puts this host's functions' names under its lease, all of them again whenever the
/// lease is new, and retries what etcd did not take every second.
async fn publish_names(
    etcd: Arc<Etcd>,
    mut lease: watch::Receiver<Option<i64>>,
    mut changes: mpsc::UnboundedReceiver<NameChange>,
) {
    let mut mine: BTreeMap<FunctionName, NameRecord> = BTreeMap::new();
    // Names etcd does not have as they are here yet: to put, or to delete (`false`).
    let mut pending: BTreeMap<FunctionName, (NameRecord, bool)> = BTreeMap::new();
    loop {
        tokio::select! {
            change = changes.recv() => match change {
                None => return,
                Some(NameChange::Set(f, r)) => {
                    mine.insert(f.clone(), r.clone());
                    pending.insert(f, (r, true));
                }
                Some(NameChange::Remove(f)) => {
                    if let Some(r) = mine.remove(&f) {
                        pending.insert(f, (r, false));
                    }
                }
            },
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
                pending.extend(mine.iter().map(|(f, r)| (f.clone(), (r.clone(), true))));
            }
            () = tokio::time::sleep(Duration::from_secs(1)), if !pending.is_empty() => {}
        }
        let Some(l) = *lease.borrow() else { continue };
        let etcd = &*etcd;
        let mut left = BTreeMap::new();
        for (f, (record, put)) in std::mem::take(&mut pending) {
            let done = if put {
                faasd_cluster::put_name(etcd, &f, &record, l).await
            } else {
                faasd_cluster::delete_name(etcd, &f, &record).await
            };
            if let Err(e) = done {
                tracing::warn!("cluster: {}/{}: {e}", f.0, f.1);
                left.insert(f, (record, put));
            }
        }
        pending = left;
    }
}

/// Keeps the other hosts' names in `zone`: added and changed ones set, gone ones taken
/// out (unless this host has a function of that name itself), and every version written
/// to `cache`.
async fn sync_zone(
    mut names: watch::Receiver<BTreeMap<FunctionName, NameRecord>>,
    zone: Arc<crate::dns::Zone>,
    own: Arc<Mutex<BTreeSet<FunctionName>>>,
    this: u16,
    cache: PathBuf,
) {
    let mut shown: BTreeMap<FunctionName, Ipv6Addr> = BTreeMap::new();
    loop {
        let all = names.borrow_and_update().clone();
        let now: BTreeMap<FunctionName, Ipv6Addr> = {
            let own = own.lock().expect("names lock");
            all.iter()
                .filter(|(f, r)| r.host != this && !own.contains(*f))
                .map(|(f, r)| (f.clone(), r.address))
                .collect()
        };
        store(&cache, all);
        let set: Vec<(&str, &str, Ipv6Addr)> = now
            .iter()
            .filter(|(f, a)| shown.get(*f) != Some(a))
            .map(|((ns, name), a)| (name.as_str(), ns.as_str(), *a))
            .collect();
        if !set.is_empty() {
            zone.set_all(set).await;
        }
        for (ns, name) in shown.keys().filter(|f| !now.contains_key(*f)) {
            if !own
                .lock()
                .expect("names lock")
                .contains(&(ns.clone(), name.clone()))
            {
                zone.remove(name, ns).await;
            }
        }
        shown = now;
        if names.changed().await.is_err() {
            return;
        }
    }
}

/// What this host last knew of the cluster, kept in its state directory (empty when it
/// has none or cannot read it: etcd will tell again).
fn load<K: Ord + serde::de::DeserializeOwned, V: serde::de::DeserializeOwned>(
    path: &Path,
) -> BTreeMap<K, V> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<(K, V)>>(&b).ok())
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

/// Keeps what this host knows of the cluster for [`load`].
fn store<K: Serialize, V: Serialize>(path: &Path, map: BTreeMap<K, V>) {
    let list: Vec<(K, V)> = map.into_iter().collect();
    let json = serde_json::to_vec(&list).expect("cluster state serializes");
    if let Err(e) = faasd_core::durable::write_atomic(path, &json) {
        tracing::warn!("cluster: keeping {}: {e}", path.display());
    }
}

/// Host `n`'s function prefix.
fn prefix_of(n: u16) -> Ipv6Net {
    let (addr, len) = faasd_common::plan::host_prefix(n);
    Ipv6Net { addr, len }
}

/// Keeps the interface's host peers what the registrations say, this host left out, and
/// every version in `cache`. Each routes the host's ranges and the functions it runs at
/// addresses outside them (moved there from a host that died); an address of this host's
/// range that another host serves is thrown out of the local route here.
async fn mesh(
    mut hosts: watch::Receiver<BTreeMap<u16, HostInfo>>,
    mut names: watch::Receiver<BTreeMap<FunctionName, NameRecord>>,
    (own, mut local): (Arc<Mutex<BTreeSet<FunctionName>>>, watch::Receiver<()>),
    wireguard: Arc<WireGuard>,
    this: u16,
    cache: PathBuf,
) {
    let mut stored = BTreeMap::new();
    let mut thrown: BTreeSet<Ipv6Addr> = BTreeSet::new();
    loop {
        let all = hosts.borrow_and_update().clone();
        let others: Vec<HostInfo> = all.values().filter(|h| h.number != this).cloned().collect();
        if all != stored {
            store(&cache, all.clone());
            stored = all;
        }
        let mut moved: BTreeMap<u16, Vec<Ipv6Net>> = BTreeMap::new();
        let mut elsewhere = BTreeSet::new();
        let here = own.lock().expect("names lock").clone();
        for (f, r) in names.borrow_and_update().iter() {
            if r.host != this && prefix_of(this).contains(r.address) && !here.contains(f) {
                elsewhere.insert(r.address);
            }
            if !prefix_of(r.host).contains(r.address) {
                moved.entry(r.host).or_default().push(Ipv6Net {
                    addr: r.address,
                    len: 128,
                });
            }
        }
        let mut peers = Vec::with_capacity(others.len());
        for h in &others {
            let mut allowed = vec![
                prefix_of(h.number),
                Ipv6Net {
                    addr: faasd_common::plan::host_network(h.number),
                    len: 64,
                },
            ];
            allowed.extend(moved.remove(&h.number).unwrap_or_default());
            peers.push(HostPeer {
                public_key: h.public_key.clone(),
                allowed,
                endpoint: match &h.endpoint {
                    Some(e) => resolve(e).await,
                    None => None,
                },
            });
        }
        for (a, add) in elsewhere
            .difference(&thrown)
            .map(|a| (*a, true))
            .chain(thrown.difference(&elsewhere).map(|a| (*a, false)))
            .collect::<Vec<_>>()
        {
            match crate::net::throw_route(Ipv6Net { addr: a, len: 128 }, add).await {
                Ok(()) if add => {
                    thrown.insert(a);
                }
                Ok(()) => {
                    thrown.remove(&a);
                }
                Err(e) => tracing::warn!("cluster: {e}"),
            }
        }
        match wireguard.mesh(&peers) {
            Ok(true) => tracing::info!("cluster: {} other host(s) in the mesh", peers.len()),
            Ok(false) => {}
            Err(e) => tracing::warn!("cluster: updating the WireGuard mesh: {e}"),
        }
        tokio::select! {
            changed = hosts.changed() => if changed.is_err() { return },
            changed = names.changed() => if changed.is_err() { return },
            changed = local.changed() => if changed.is_err() { return },
        }
    }
}

/// `host:port` → an address WireGuard can send to.
async fn resolve(endpoint: &str) -> Option<SocketAddr> {
    if let Ok(a) = endpoint.parse() {
        return Some(a);
    }
    match tokio::net::lookup_host(endpoint).await {
        Ok(mut addrs) => addrs.next(),
        Err(e) => {
            tracing::warn!("cluster: resolving another host's endpoint {endpoint}: {e}");
            None
        }
    }
}

/// A host as `faasd cluster status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// Its registration.
    #[serde(flatten)]
    pub info: HostInfo,
    /// Whether it is this host.
    pub this: bool,
    /// Its function prefix.
    pub prefix: String,
    /// Its own address.
    pub address: Ipv6Addr,
    /// Seconds since this host's last WireGuard handshake with it.
    pub handshake_secs_ago: Option<u64>,
    /// Functions placed on it.
    pub functions: usize,
    /// Whether it is being drained.
    #[serde(default)]
    pub draining: bool,
}

/// `POST /system/cluster/drain`'s body, and its answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainAnswer {
    /// The host's number.
    pub host: u16,
    /// Whether it is drained now.
    pub draining: bool,
}

/// An etcd member as `faasd cluster status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// Its client URL.
    pub endpoint: String,
    /// Its version, when it answered.
    pub version: Option<String>,
    /// Whether it is the leader.
    pub leader: bool,
    /// Its raft index, when it answered.
    pub raft_index: Option<u64>,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// `GET /system/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// This host's name.
    pub name: String,
    /// This host's number.
    pub number: u16,
    /// Whether this host's registration holds (its lease kept alive).
    pub registered: bool,
    /// The host that places functions, as this host last learnt.
    pub scheduler: Option<u16>,
    /// Every registered host, by number.
    pub hosts: Vec<HostStatus>,
    /// Each etcd member's health.
    pub etcd: Vec<MemberReport>,
}
