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
    net::{Ipv4Addr, Ipv6Addr},
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
    /// The namespace to join.
    pub netns: Prepared,
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
    /// The cgroup that holds functions' cgroups (and containers' instance cgroups).
    parent: Option<PathBuf>,
    /// Who a container instance's cgroup belongs to, by cgroup id: its path does not say,
    /// and a restarted daemon needs to know.
    owners_dir: PathBuf,
    /// `egress-ipv4` and `egress-ipv6`.
    ranges: (faasd_core::config::Ipv4Net, faasd_core::config::Ipv6Net),
}

/// The egress programs' maps, and the cgroups with a rule.
#[derive(Debug)]
struct Rules {
    maps: faasd_dataplane::Egress,
    cgroups: HashMap<PathBuf, Ruled>,
    /// Refusals of rules already removed, by function (`namespace/name`).
    folded: HashMap<String, Refused>,
}

/// A cgroup's rule: its id in the maps, the function (`namespace/name`) it is for, and
/// the policy it holds.
#[derive(Debug)]
struct Ruled {
    id: u64,
    owner: String,
    /// `None` for a rule a previous daemon made.
    policy: Option<EgressPolicy>,
}

impl Egress {
    /// Starts the pool (whose thread installs NAT and forwarding when the first instance
    /// that may call out starts) and keeps the egress maps, and the previous daemon's
    /// rules of cgroups that still exist (their instances run on).
    pub fn start(config: &Config, maps: faasd_dataplane::Egress) -> Result<Self, EgressError> {
        let dir = config.runtime_dir.join("egress");
        let hosts_dir = dir.join("hosts");
        let owners_dir = dir.join("owners");
        for d in [&hosts_dir, &owners_dir] {
            std::fs::create_dir_all(d).map_err(|source| EgressError::File {
                path: d.clone(),
                source,
            })?;
        }
        let resolv_conf = dir.join("resolv.conf");
        let nameserver = config.dns.first().map_or_else(
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
        let parent = crate::runtime::cgroup::root().map(|r| r.join(&config.cgroup_parent));
        let live = parent.as_deref().map(live_cgroups).unwrap_or_default();
        let mut rules = Rules {
            cgroups: HashMap::new(),
            folded: HashMap::new(),
            maps,
        };
        for id in rules.maps.cgroups() {
            let owner = live.get(&id).and_then(|(path, owner)| {
                owner
                    .clone()
                    .or_else(|| std::fs::read_to_string(owners_dir.join(id.to_string())).ok())
                    .map(|o| (path.clone(), o))
            });
            match owner {
                Some((path, owner)) => {
                    // Its policy is the function's, which the restore does not say here:
                    // the next start of an instance states it again.
                    let policy = None;
                    rules.cgroups.insert(path, Ruled { id, owner, policy });
                }
                None => {
                    let _ = rules.maps.clear(id);
                    let _ = std::fs::remove_file(owners_dir.join(id.to_string()));
                }
            }
        }
        Ok(Self {
            default: config.egress,
            pool: netns::Pool::start(config)?,
            rules: Mutex::new(rules),
            resolv_conf,
            hosts_dir,
            parent,
            owners_dir,
            ranges: (config.egress_ipv4, config.egress_ipv6),
        })
    }

    /// The host's NAT for calls out.
    pub fn nat(&self) -> netns::Nat {
        self.pool.nat()
    }

    /// What `faasd status` says of calls out.
    pub fn summary(&self) -> String {
        let rules = self.rules.lock().expect("egress rules").cgroups.len();
        format!(
            "default {}, instances in {} and {}, {} rule(s) in force, host NAT {}",
            match self.default {
                EgressMode::All => "all",
                EgressMode::Faas => "faas",
                EgressMode::None => "none",
            },
            self.ranges.0,
            self.ranges.1,
            rules,
            match self.nat() {
                netns::Nat::Installed => "installed",
                netns::Nat::Absent => "not installed (no instance calls out)",
                netns::Nat::Failed =>
                    "could not be installed (faasd's log says why: \"calls out cannot leave the host\")",
            }
        )
    }

    /// The mode a function runs with.
    pub fn mode(&self, settings: &Settings) -> EgressMode {
        settings.egress.mode.unwrap_or(self.default)
    }

    /// The policy a function's instances run under.
    pub fn policy(&self, settings: &Settings) -> EgressPolicy {
        EgressPolicy {
            mode: match self.mode(settings) {
                EgressMode::All => faasd_common::EgressMode::All,
                EgressMode::Faas => faasd_common::EgressMode::Faas,
                EgressMode::None => faasd_common::EgressMode::None,
            },
            allow: settings.egress.allow.clone(),
            deny: settings.egress.deny.clone(),
        }
    }

    /// Gets an instance ready to call out: the rule of its function's cgroup (made here
    /// if the runtime has not made it yet; a container's instance cgroup gets its rule
    /// from the container runtime, through [`Egress::grant`]), a prepared namespace (only
    /// `lo` when its mode is `none`), and the files it sees.
    pub async fn admit(
        &self,
        spec: &FunctionSpec,
        address: Ipv6Addr,
        settings: &Settings,
        cgroup: Option<&Path>,
    ) -> Result<Network, EgressError> {
        let policy = self.policy(settings);
        if let Some(dir) = cgroup {
            if !unrestricted(&policy) {
                crate::runtime::cgroup::create(dir).map_err(|source| EgressError::File {
                    path: dir.to_owned(),
                    source,
                })?;
            }
            self.grant(dir, &spec.id(), &policy)?;
        }
        let kind = match self.mode(settings) {
            EgressMode::None => netns::Kind::Closed,
            EgressMode::All | EgressMode::Faas => netns::Kind::Linked,
        };
        let netns = self.pool.take(kind).await?;
        let hosts = self.hosts_file(spec, address)?;
        Ok(Network {
            netns,
            binds: vec![
                (self.resolv_conf.clone(), "/etc/resolv.conf".into()),
                (hosts, "/etc/hosts".into()),
            ],
        })
    }

    /// Gives the cgroup `dir` the rule of `policy` for function `owner` (`namespace/name`),
    /// unless it has that rule: a new version of a function takes over the cgroup of the
    /// one it replaces, with its own policy. An unrestricted policy needs no rule (nothing
    /// to refuse, nothing to count), and costs no system call.
    pub fn grant(&self, dir: &Path, owner: &str, policy: &EgressPolicy) -> Result<(), EgressError> {
        let mut rules = self.rules.lock().expect("egress rules");
        if unrestricted(policy) {
            if rules.cgroups.contains_key(dir) {
                drop(rules);
                self.release(dir);
            }
            return Ok(());
        }
        let file = |source| EgressError::File {
            path: dir.to_owned(),
            source,
        };
        let id = std::fs::metadata(dir).map_err(file)?.ino();
        if rules
            .cgroups
            .get(dir)
            .is_some_and(|r| r.id == id && r.policy.as_ref() == Some(policy))
        {
            return Ok(());
        }
        // A container instance's cgroup sits right under the parent: its owner is written
        // down for the next daemon.
        if dir.parent() == self.parent.as_deref() {
            write_atomic(&self.owners_dir.join(id.to_string()), owner)?;
        }
        // A replaced rule's refusals stay with the function.
        if let Some(old) = rules.cgroups.get(dir).filter(|r| r.id == id) {
            let (owner, refused) = (old.owner.clone(), rules.maps.refused(id));
            let total = rules.folded.entry(owner).or_default();
            for (t, r) in total.iter_mut().zip(refused) {
                *t += r;
            }
        }
        rules.maps.set(id, policy)?;
        let ruled = Ruled {
            id,
            owner: owner.to_owned(),
            policy: Some(policy.clone()),
        };
        rules.cgroups.insert(dir.to_owned(), ruled);
        Ok(())
    }

    /// The cgroup is gone: its rule goes, and what it refused stays with its function.
    pub fn release(&self, cgroup: &Path) {
        let mut rules = self.rules.lock().expect("egress rules");
        let Some(Ruled { id, owner, .. }) = rules.cgroups.remove(cgroup) else {
            return;
        };
        let _ = std::fs::remove_file(self.owners_dir.join(id.to_string()));
        match rules.maps.clear(id) {
            Ok(refused) => {
                let total = rules.folded.entry(owner).or_default();
                for (t, r) in total.iter_mut().zip(refused) {
                    *t += r;
                }
            }
            Err(e) => tracing::warn!("removing the egress rule of {}: {e}", cgroup.display()),
        }
    }

    /// The function (`namespace/name`) was removed: forget what it refused.
    pub fn forget(&self, owner: &str) {
        self.rules
            .lock()
            .expect("egress rules")
            .folded
            .remove(owner);
    }

    /// Connections refused by function (`namespace/name`) and reason, where not zero:
    /// what `/metrics` shows.
    pub fn refused(&self) -> Vec<(String, &'static str, u64)> {
        let rules = self.rules.lock().expect("egress rules");
        let mut totals: HashMap<&str, Refused> =
            rules.folded.iter().map(|(o, r)| (o.as_str(), *r)).collect();
        for r in rules.cgroups.values() {
            let now = rules.maps.refused(r.id);
            let t = totals.entry(r.owner.as_str()).or_default();
            for (t, n) in t.iter_mut().zip(now) {
                *t += n;
            }
        }
        let mut out = Vec::new();
        for (owner, counts) in totals {
            for (reason, label) in EgressReason::ALL {
                let n = counts[reason as usize];
                if n > 0 {
                    out.push((owner.to_owned(), label, n));
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

/// `all` without prefix lists: the programs let everything through without a rule.
fn unrestricted(policy: &EgressPolicy) -> bool {
    policy.mode == faasd_common::EgressMode::All
        && policy.allow.is_empty()
        && policy.deny.is_empty()
}

/// The cgroups under `parent` that can hold a rule, by cgroup id: functions'
/// (`<namespace>/<name>`, which names its owner) and containers' instances (right under
/// the parent; the owners file names theirs).
fn live_cgroups(parent: &Path) -> HashMap<u64, (PathBuf, Option<String>)> {
    let mut out = HashMap::new();
    let dirs = |d: &Path| -> Vec<(PathBuf, u64)> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_dir().then(|| (e.path(), m.ino()))
            })
            .collect()
    };
    for (first, ino) in dirs(parent) {
        out.insert(ino, (first.clone(), None));
        let ns = first
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (function, ino) in dirs(&first) {
            let name = function
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.insert(ino, (function, Some(format!("{ns}/{name}"))));
        }
    }
    out
}

/// Written whole or not at all, even by two instances starting at once.
fn write_atomic(path: &Path, text: &str) -> Result<(), EgressError> {
    faasd_core::durable::write_atomic(path, text.as_bytes()).map_err(|source| EgressError::File {
        path: path.to_owned(),
        source,
    })
}

/// The addresses of the `n`th instance namespace.
pub fn addresses(config: &Config, n: u32) -> Option<(Ipv4Addr, Ipv6Addr)> {
    Some((
        config.egress_ipv4.nth(n)?,
        config.egress_ipv6.nth(u128::from(n))?,
    ))
}
