//! Restoring every stored function when the daemon starts: taking back the sockets of
//! instances that kept serving and those systemd's fd store kept, stopping what an earlier
//! daemon left behind, and binding each function's sockets in the slots they had.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    sync::{Arc, RwLock},
};

use faasd_common::BindingKey;

use faasd_core::{
    spec::{FunctionSpec, Settings},
    store::FunctionRecord,
};

use super::{
    Daemon, DaemonError, Entry, Function,
    activate::{Listeners, SlotChoice, socket_error},
};
use crate::{
    runtime::{Instance, Runtime, cgroup},
    sockets,
    supervisor::Adopted,
};

/// One function to restore, with the slots its bindings keep.
struct Job {
    record: Arc<FunctionRecord>,
    settings: Settings,
    keep: Vec<Option<u32>>,
}

/// What an earlier daemon left in one namespace, looked up once for all its functions.
#[derive(Debug, Default)]
struct NamespaceLeftovers {
    /// Function cgroups that exist.
    cgroups: HashSet<String>,
    /// Whether any process runs in the namespace's cgroups.
    populated: bool,
    /// Functions with an instances file (instances that may still run).
    instance_files: HashSet<String>,
}

/// What an earlier daemon left, by namespace: a restore then touches only the cgroups and
/// files that exist, instead of trying each function's.
#[derive(Debug, Default)]
struct Leftovers(HashMap<String, NamespaceLeftovers>);

fn names_in(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| HashSet::new(),
        |d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        },
    )
}

impl Leftovers {
    fn find<'a>(daemon: &Daemon, jobs: impl Iterator<Item = &'a Job>) -> Self {
        let mut left = Self::default();
        for job in jobs {
            let ns = &job.record.spec.namespace;
            if left.0.contains_key(ns) {
                continue;
            }
            let cgroup_dir = daemon
                .cgroup_root
                .as_ref()
                .map(|root| root.join(&daemon.config.cgroup_parent).join(ns));
            let found = NamespaceLeftovers {
                cgroups: cgroup_dir.as_deref().map(names_in).unwrap_or_default(),
                populated: cgroup_dir.as_deref().is_some_and(cgroup::populated),
                instance_files: names_in(&crate::layout::instances_dir(
                    &daemon.config.runtime_dir,
                    ns,
                )),
            };
            left.0.insert(ns.clone(), found);
        }
        left
    }

    fn namespace(&self, spec: &FunctionSpec) -> Option<&NamespaceLeftovers> {
        self.0.get(&spec.namespace)
    }

    fn has_cgroup(&self, spec: &FunctionSpec) -> bool {
        self.namespace(spec)
            .is_some_and(|n| n.cgroups.contains(&spec.name))
    }

    fn may_have_processes(&self, spec: &FunctionSpec) -> bool {
        self.namespace(spec).is_none_or(|n| n.populated)
    }

    fn has_instances_file(&self, spec: &FunctionSpec) -> bool {
        self.namespace(spec)
            .is_none_or(|n| n.instance_files.contains(&spec.name))
    }
}

impl Daemon {
    /// Brings back every stored function. Slots still pinned for a function's bindings are
    /// claimed for it first, so that the activations, spread over one task per core, never
    /// hand one out to another function.
    pub(super) async fn restore(
        self: &Arc<Self>,
        records: Vec<Arc<FunctionRecord>>,
        pinned: Vec<(BindingKey, u32)>,
    ) -> Result<(), DaemonError> {
        self.store
            .raise_counter_above(
                self.config.function_prefix,
                records.iter().map(|r| r.address),
            )
            .durable()
            .await?;
        // Names answer from the start; those of functions that fail to come back are taken
        // out again below. The zone fills on its own task, beside the activations.
        let zone_fill = self.zone.clone().map(|z| {
            let records = records.clone();
            tokio::spawn(async move {
                let names: Vec<(&str, &str, std::net::Ipv6Addr)> = records
                    .iter()
                    .map(|r| (r.spec.name.as_str(), r.spec.namespace.as_str(), r.address))
                    .collect();
                z.set_all(names).await
            })
        });
        let mut pinned: BTreeMap<BindingKey, u32> = pinned.into_iter().collect();
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut jobs: Vec<Vec<Job>> = (0..workers).map(|_| Vec::new()).collect();
        {
            let mut dp = self.dataplane.lock().expect("dataplane lock");
            for (i, rec) in records.into_iter().enumerate() {
                // Settings only: a program that went missing shows as a failed start in
                // `describe`, rather than the function vanishing from the API.
                let settings = match Settings::parse(&rec.spec.deployment) {
                    Ok(s) => s,
                    Err(e) => {
                        let id = rec.spec.id();
                        tracing::error!(
                            "stored function {id} has settings this faasd rejects ({e}); not \
                             restored. Its record is kept: deploy {id} again with settings this \
                             version accepts to replace it"
                        );
                        continue;
                    }
                };
                // Keep the slots the data plane already uses for this function's bindings, so
                // steering to instances that kept serving does not change.
                let keep: Vec<Option<u32>> = settings
                    .ports
                    .iter()
                    .map(|p| {
                        pinned.remove(&BindingKey::new(rec.address, p.port, p.protocol.number()))
                    })
                    .collect();
                keep.iter().flatten().for_each(|s| dp.claim_slot(*s));
                jobs[i % workers].push(Job {
                    record: rec,
                    settings,
                    keep,
                });
            }
        }
        let left = Arc::new(Leftovers::find(self, jobs.iter().flatten()));
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|jobs| {
                let daemon = self.clone();
                let left = left.clone();
                tokio::spawn(async move {
                    let mut restored = Vec::with_capacity(jobs.len());
                    let mut failed = Vec::new();
                    for job in jobs {
                        let record = job.record.clone();
                        match daemon.restore_one(job, &left).await {
                            Some(f) => restored.push(f),
                            None => failed.push(record),
                        }
                    }
                    (restored, failed)
                })
            })
            .collect();
        let mut functions: Vec<Function> = Vec::new();
        let mut failed = Vec::new();
        for t in tasks {
            let (restored, lost) = t.await?;
            functions.extend(restored);
            failed.extend(lost);
        }
        if let Some(fill) = zone_fill {
            fill.await?;
        }
        if let Some(z) = &self.zone {
            for r in &failed {
                z.remove(&r.spec.name, &r.spec.namespace).await;
            }
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
            dp.unbind(&key, slot)?;
        }
        drop(dp);
        tracing::info!("restored {} functions", functions.len());
        let mut registry = self.functions.write().expect("registry lock");
        for f in functions {
            let id = f.record.spec.id();
            let entry = Entry {
                current: RwLock::new(Some(Arc::new(f))),
                ..Default::default()
            };
            registry.insert(id, Arc::new(entry));
        }
        Ok(())
    }

    async fn restore_one(&self, job: Job, left: &Leftovers) -> Option<Function> {
        let id = job.record.spec.id();
        let kept: Vec<(BindingKey, u32)> = job
            .settings
            .ports
            .iter()
            .zip(&job.keep)
            .filter_map(|(p, s)| {
                s.map(|s| {
                    let key = BindingKey::new(job.record.address, p.port, p.protocol.number());
                    (key, s)
                })
            })
            .collect();
        match self.bring_back(job, left).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::error!("restoring function {id}: {e}");
                // Not restored: its pinned bindings and slots are stale now.
                self.unbind(&kept);
                None
            }
        }
    }

    async fn bring_back(&self, job: Job, left: &Leftovers) -> Result<Function, DaemonError> {
        let Job {
            record,
            settings,
            keep,
        } = job;
        let spec = &record.spec;
        let parts = self.parts(spec, &settings)?;
        let recovered = if left.has_instances_file(spec) {
            self.recover_instance(&record, &settings)
        } else {
            None
        };
        // Anything else in the function's cgroup was left by an earlier daemon (say, a
        // version that was still draining when it died): nobody manages it any more.
        // Accept-mode instances are left to finish their connections.
        if let Some(cg) = &parts.cgroup
            && left.has_cgroup(spec)
        {
            if settings.accept.is_none() && left.may_have_processes(spec) {
                let keep = recovered.as_ref().map(|(_, a)| a.instance.pid);
                let n = cgroup::kill_strays(cg, keep);
                if n > 0 {
                    tracing::warn!(
                        "{}: stopped {n} stray process(es) left by an earlier daemon",
                        spec.id()
                    );
                }
            }
            // A stopped function keeps no cgroup (one whose strays are still dying goes
            // when its next instance ends).
            if recovered.is_none() {
                cgroup::remove_empty(cg);
            }
        }
        let runtime: Arc<dyn Runtime> = match &spec.image {
            None => self.runtime.clone(),
            Some(image) => {
                // One bad image never keeps the others down: the function shows the failure
                // when it starts.
                let rt = self.container_runtime(spec, image, &settings)?;
                if let Err(e) = rt.prepare().await {
                    tracing::warn!("{}: {e}", spec.id());
                }
                let keep: Vec<String> = recovered
                    .iter()
                    .map(|(_, a)| a.instance.id.clone())
                    .collect();
                match rt.remove_strays(&keep).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        "{}: deleted {n} container(s) left by an earlier daemon",
                        spec.id()
                    ),
                    Err(e) => {
                        tracing::warn!("{}: looking for leftover containers: {e}", spec.id())
                    }
                }
                Arc::new(rt)
            }
        };
        let (sockets, adopted) = match recovered {
            Some((socks, inst)) => (socks, vec![inst]),
            None => {
                // What systemd's fd store kept: connections queued on those sockets while
                // no daemon ran are still there.
                let mut stored = self.service.stored.lock().expect("stored sockets lock");
                let socks = settings
                    .ports
                    .iter()
                    .map(|p| {
                        let addr = std::net::SocketAddrV6::new(record.address, p.port, 0, 0);
                        match stored.take(addr, p.protocol == faasd_core::spec::Protocol::Tcp) {
                            Some(s) => Ok(s),
                            None => sockets::create(record.address, p, self.config.backlog)
                                .map_err(|e| socket_error(&record, p, e)),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (socks, Vec::new())
            }
        };
        let listeners = Listeners {
            sockets,
            slots: keep
                .iter()
                .map(|k| k.map_or(SlotChoice::New, SlotChoice::Kept))
                .collect(),
            adopted,
        };
        self.supervise(record, settings, parts, runtime, listeners)
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
        // The instance's pid is faasd's init's (in a process instance, and in a container
        // started through the shim), which holds no descriptor: the sockets are the
        // function's, its child.
        let holder = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<i32>().ok());
        let function = holder
            // SAFETY: pidfd_open on a pid; the result is checked and owned.
            .map(|child| unsafe { libc::syscall(libc::SYS_pidfd_open, child, 0) })
            .filter(|fd| *fd >= 0)
            // SAFETY: fresh descriptor.
            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd as i32) });
        let mut socks = Vec::new();
        let mut unusable = function.is_none().then(|| "it has no function".to_owned());
        for (i, p) in settings.ports.iter().enumerate() {
            let Some(function) = &function else { break };
            let n = 3 + i as i32;
            // SAFETY: pidfd_getfd duplicates the target's fd into us; checked and owned.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, function.as_raw_fd(), n, 0) };
            if fd < 0 {
                unusable = Some(format!("its fd {n}: {}", std::io::Error::last_os_error()));
                break;
            }
            // SAFETY: fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            match sockets::local_addr(&fd) {
                Ok(a) if *a.ip() == rec.address && a.port() == p.port => socks.push(fd),
                other => {
                    unusable = Some(format!(
                        "its fd {n} is {other:?}, not the socket [{}]:{}",
                        rec.address, p.port
                    ));
                    break;
                }
            }
        }
        if let Some(why) = unusable {
            tracing::warn!(
                "{}: pid {pid} is not a usable instance any more ({why}); stopping it",
                rec.spec.id()
            );
            let _ = instance.signal(libc::SIGKILL);
            return None;
        }
        // pidfd_getfd sets close-on-exec; the file status flags (O_NONBLOCK) are shared
        // with the instance and stay as it set them.
        let output = crate::logs::Output::reopen(crate::layout::output_path(
            &self.config.runtime_dir,
            &rec.spec,
            id,
        ))
        .ok();
        Some((socks, Adopted { output, instance }))
    }
}
