//! Calls out: what a running instance needs to open connections, and the policy that
//! decides where they may go.
//!
//! - An instance that may call out runs in a network namespace of its own with one veth
//!   link to the host (see [`netns`]): an IPv6 address inside the host's function prefix
//!   (so other functions answer it directly) and an IPv4 one, both masqueraded on the way
//!   out of the platform (see [`nat`]). The namespaces are made ahead, in a small pool, by a
//!   thread of their own; each lives exactly as long as the instance in it (the kernel
//!   removes namespace, link and routes when it exits), so a stopped function has none.
//! - An instance with `faasd.dev/egress=none` keeps the namespace with only `lo`.
//! - The policy is enforced by the data plane's egress programs on the function's cgroup:
//!   a rule per function while it has a cgroup ([`Egress::admit`], [`Egress::release`]).
//! - Names: `/etc/resolv.conf` names faasd's DNS (which forwards what is not `faas.` to the
//!   host's resolvers) and `/etc/hosts` the function, both bound read-only over the host's.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use faasd_common::EgressReason;
use faasd_core::{
    config::Config,
    spec::{EgressMode, FunctionSpec, Settings},
};
use faasd_dataplane::{EgressPolicy, Refused};

mod nat;
pub mod netns;

pub use netns::Prepared;

/// Errors setting up calls out.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The host's NAT and forwarding rules could not be installed.
    #[error("installing the NAT rules with nft (apt-get install nftables): {0}")]
    Nat(#[source] std::io::Error),
    /// nft refused the rules.
    #[error("nft refused faasd's NAT rules: {0}")]
    NatRefused(String),
    /// A sysctl could not be written.
    #[error("writing {path}: {source}")]
    Sysctl {
        /// The sysctl's file.
        path: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The egress programs or their maps.
    #[error(transparent)]
    Dataplane(#[from] faasd_dataplane::DataplaneError),
    /// A network namespace could not be prepared.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// A file instances see (resolv.conf, hosts) could not be written.
    #[error("writing {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What an instance gets for its network, from [`Egress::admit`].
#[derive(Debug)]
pub struct Network {
    /// The namespace to join, when it may call out.
    pub netns: Option<Prepared>,
    /// Files bound read-only over the host's (source, target).
    pub binds: Vec<(PathBuf, PathBuf)>,
}

/// Calls out for the whole host: the pool, the rules, the files instances see.
#[derive(Debug)]
pub struct Egress {
    default: EgressMode,
    pool: netns::Pool,
    rules: Mutex<Rules>,
    resolv_conf: PathBuf,
    hosts_dir: PathBuf,
}

/// The egress programs' maps, and the cgroups with a rule (path → cgroup id).
#[derive(Debug)]
struct Rules {
    maps: faasd_dataplane::Egress,
    cgroups: HashMap<PathBuf, u64>,
    /// Refusals of rules already removed, by function cgroup path.
    folded: HashMap<PathBuf, Refused>,
}

impl Egress {
    /// Installs NAT and forwarding, starts the pool and keeps the egress maps. `cgroups`:
    /// the cgroup holding every function's cgroup, and its level below the root.
    pub fn start(
        config: &Config,
        maps: faasd_dataplane::Egress,
        dns: Option<SocketAddr>,
    ) -> Result<Self, EgressError> {
        nat::install(config)?;
        let dir = config.runtime_dir.join("egress");
        let hosts_dir = dir.join("hosts");
        std::fs::create_dir_all(&hosts_dir).map_err(|source| EgressError::File {
            path: hosts_dir.clone(),
            source,
        })?;
        let resolv_conf = dir.join("resolv.conf");
        let nameserver = dns.map_or_else(
            || "# faasd serves no DNS (dns = [])".to_owned(),
            |a| format!("nameserver {}", a.ip()),
        );
        write_atomic(
            &resolv_conf,
            &format!(
                "# Written by faasd: its DNS answers faas. and forwards the rest.\n\
                 {nameserver}\nsearch faas\noptions edns0\n"
            ),
        )?;
        let mut cgroups = HashMap::new();
        let mut stale = Vec::new();
        for id in maps.cgroups() {
            stale.push(id);
        }
        let mut rules = Rules {
            maps,
            cgroups: HashMap::new(),
            folded: HashMap::new(),
        };
        // The previous daemon's rules stay for cgroups that still exist: their instances
        // keep running under them. The restore finds those by path again.
        let live = live_cgroups(config);
        for id in stale {
            match live.get(&id) {
                Some(path) => {
                    cgroups.insert(path.clone(), id);
                }
                None => {
                    let _ = rules.maps.clear(id);
                }
            }
        }
        rules.cgroups = cgroups;
        Ok(Self {
            default: config.egress,
            pool: netns::Pool::start(config)?,
            rules: Mutex::new(rules),
            resolv_conf,
            hosts_dir,
        })
    }

    /// The mode a function runs with.
    pub fn mode(&self, settings: &Settings) -> EgressMode {
        settings.egress.mode.unwrap_or(self.default)
    }

    /// Gets an instance ready to call out: the rule of its cgroup (made here if the
    /// runtime has not made it yet), a prepared namespace unless its mode is `none`, and
    /// the files it sees.
    pub async fn admit(
        &self,
        spec: &FunctionSpec,
        address: Ipv6Addr,
        settings: &Settings,
        cgroup: Option<&Path>,
    ) -> Result<Network, EgressError> {
        let mode = self.mode(settings);
        if let Some(dir) = cgroup {
            crate::runtime::cgroup::create(dir).map_err(|source| EgressError::File {
                path: dir.to_owned(),
                source,
            })?;
            let id = std::fs::metadata(dir)
                .map_err(|source| EgressError::File {
                    path: dir.to_owned(),
                    source,
                })?
                .ino();
            let mut rules = self.rules.lock().expect("egress rules");
            if rules.cgroups.get(dir) != Some(&id) {
                let policy = EgressPolicy {
                    mode: match mode {
                        EgressMode::All => faasd_common::EgressMode::All,
                        EgressMode::Faas => faasd_common::EgressMode::Faas,
                        EgressMode::None => faasd_common::EgressMode::None,
                    },
                    allow: settings.egress.allow.clone(),
                    deny: settings.egress.deny.clone(),
                };
                rules.maps.set(id, &policy)?;
                rules.cgroups.insert(dir.to_owned(), id);
            }
        }
        let netns = match mode {
            EgressMode::None => None,
            EgressMode::All | EgressMode::Faas => Some(self.pool.take().await?),
        };
        let hosts = self.hosts_file(spec, address)?;
        Ok(Network {
            netns,
            binds: vec![
                (self.resolv_conf.clone(), "/etc/resolv.conf".into()),
                (hosts, "/etc/hosts".into()),
            ],
        })
    }

    /// The function's cgroup is gone: its rule goes, and what it refused is kept.
    pub fn release(&self, cgroup: &Path) {
        let mut rules = self.rules.lock().expect("egress rules");
        let Some(id) = rules.cgroups.remove(cgroup) else {
            return;
        };
        match rules.maps.clear(id) {
            Ok(refused) => {
                let total = rules.folded.entry(cgroup.to_owned()).or_default();
                for (t, r) in total.iter_mut().zip(refused) {
                    *t += r;
                }
            }
            Err(e) => tracing::warn!("removing the egress rule of {}: {e}", cgroup.display()),
        }
    }

    /// The function was removed: forget what it refused.
    pub fn forget(&self, cgroup: &Path) {
        self.release(cgroup);
        self.rules
            .lock()
            .expect("egress rules")
            .folded
            .remove(cgroup);
    }

    /// Connections refused for each function cgroup that refused any, by reason, with its
    /// label: what `/metrics` shows.
    pub fn refused(&self) -> Vec<(PathBuf, &'static str, u64)> {
        let rules = self.rules.lock().expect("egress rules");
        let mut totals: HashMap<&Path, Refused> = rules
            .folded
            .iter()
            .map(|(p, r)| (p.as_path(), *r))
            .collect();
        for (path, id) in &rules.cgroups {
            let now = rules.maps.refused(*id);
            let t = totals.entry(path.as_path()).or_default();
            for (t, r) in t.iter_mut().zip(now) {
                *t += r;
            }
        }
        let mut out = Vec::new();
        for (path, counts) in totals {
            for (reason, label) in EgressReason::ALL {
                let n = counts[reason as usize];
                if n > 0 {
                    out.push((path.to_owned(), label, n));
                }
            }
        }
        out
    }

    /// `/etc/hosts` of the function: localhost and its own names. Written at its first
    /// start, so a function that never runs has none.
    fn hosts_file(&self, spec: &FunctionSpec, address: Ipv6Addr) -> Result<PathBuf, EgressError> {
        let path = self
            .hosts_dir
            .join(format!("{}.{}", spec.name, spec.namespace));
        if !path.exists() {
            let (name, ns) = (&spec.name, &spec.namespace);
            let short = if ns == faasd_core::spec::DEFAULT_NAMESPACE {
                format!(" {name}.faas")
            } else {
                String::new()
            };
            write_atomic(
                &path,
                &format!(
                    "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n\
                     {address} {name}.{ns}.faas{short} {name}\n"
                ),
            )?;
        }
        Ok(path)
    }

    /// Removes a removed function's hosts file.
    pub fn remove_files(&self, spec: &FunctionSpec) {
        let _ = std::fs::remove_file(
            self.hosts_dir
                .join(format!("{}.{}", spec.name, spec.namespace)),
        );
    }
}

/// The function cgroups that exist under the configured parent, by cgroup id.
fn live_cgroups(config: &Config) -> HashMap<u64, PathBuf> {
    let mut out = HashMap::new();
    let Some(root) = crate::runtime::cgroup::root() else {
        return out;
    };
    let parent = root.join(&config.cgroup_parent);
    for ns in std::fs::read_dir(&parent).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            if let Ok(m) = f.metadata()
                && m.is_dir()
            {
                out.insert(m.ino(), f.path());
            }
        }
    }
    out
}

fn write_atomic(path: &Path, text: &str) -> Result<(), EgressError> {
    let tmp = path.with_extension("tmp");
    let err = |source| EgressError::File {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// The addresses of the `n`th instance namespace.
pub fn addresses(config: &Config, n: u32) -> Option<(Ipv4Addr, Ipv6Addr)> {
    Some((
        config.egress_ipv4.nth(n)?,
        config.egress_ipv6.nth(u128::from(n))?,
    ))
}
