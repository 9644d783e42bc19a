//! Bringing functions up: restoring every stored one when the daemon starts (taking back
//! the sockets of instances that kept serving), and installing one version of a function:
//! its sockets, bindings and supervisor.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex, RwLock, atomic::AtomicU64},
};

use faasd_common::BindingKey;

use super::{Daemon, DaemonError, Entry, Function, SlotLookups, error::internal, fd_name};
use crate::{
    containerd::image::ImageRef,
    logs::FunctionLog,
    runtime::{Instance, Runtime, cgroup, container::ContainerRuntime},
    secrets::SecretError,
    sockets,
    spec::{FunctionSpec, Port, Settings, SpecError},
    store::FunctionRecord,
    supervisor::{self, Adopted},
};

/// A socket that cannot be made: out of descriptors is the operator's to fix (507), the
/// rest is the host's (500).
fn socket_error(record: &FunctionRecord, p: &Port, e: std::io::Error) -> DaemonError {
    let what = format!(
        "creating socket [{}]:{}/{}",
        record.address, p.port, p.protocol
    );
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        return DaemonError::Full(format!(
            "{what}: {e}; raise the open-file limit (LimitNOFILE= in faasd.service, or ulimit -n)"
        ));
    }
    internal(format!("{what}: {e}"))
}

impl Daemon {
    pub(super) async fn restore(
        &self,
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
        let mut pinned: BTreeMap<BindingKey, u32> = pinned.into_iter().collect();
        let mut functions: Vec<Function> = Vec::with_capacity(records.len());
        for rec in records {
            let id = rec.spec.id();
            // Settings only: a program that went missing shows as a failed start in
            // `describe`, rather than the function vanishing from the API.
            let settings = match Settings::parse(&rec.spec.deployment) {
                Ok(s) => s,
                Err(e) => {
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
                .map(|p| pinned.remove(&BindingKey::new(rec.address, p.port, p.protocol.number())))
                .collect();
            let kept: Vec<(BindingKey, u32)> = settings
                .ports
                .iter()
                .zip(&keep)
                .filter_map(|(p, s)| {
                    s.map(|s| (BindingKey::new(rec.address, p.port, p.protocol.number()), s))
                })
                .collect();
            {
                let mut dp = self.dataplane.lock().expect("dataplane lock");
                kept.iter().for_each(|(_, s)| dp.claim_slot(*s));
            }
            match self.activate(rec, settings, keep, true).await {
                Ok(f) => functions.push(f),
                Err(e) => {
                    tracing::error!("restoring function {id}: {e}");
                    // Not restored: its pinned bindings and slots are stale now.
                    self.unbind(&kept);
                }
            }
        }
        if let Some(z) = &self.zone {
            z.set_all(functions.iter().map(|f| {
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

    /// Creates sockets (or takes them back from a surviving instance), binds them in the
    /// maps, and starts the function's supervisor.
    pub(super) async fn activate(
        &self,
        record: Arc<FunctionRecord>,
        settings: Settings,
        keep_slots: Vec<Option<u32>>,
        recover: bool,
    ) -> Result<Function, DaemonError> {
        // Given back if anything below fails; kept by the function otherwise.
        let files = self.files.reserve(settings.ports.len())?;
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
                let keep: Vec<String> = recovered
                    .iter()
                    .map(|(_, a)| a.instance.id.clone())
                    .collect();
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
                                sockets::create(record.address, p, self.config.backlog)
                                    .map_err(|e| socket_error(&record, p, e))
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
                let mut dp = self.dataplane.lock().expect("dataplane lock");
                let slot = match keep {
                    Some(s) => s,
                    None => dp.take_slot()?,
                };
                let key = BindingKey::new(record.address, p.port, p.protocol.number());
                bindings.push((key, slot));
                dp.bind(key, slot, sock)?;
                dp.set_policy(slot, &settings.policy)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.unbind(&bindings);
            return Err(e);
        }
        let settings = Arc::new(settings);
        let handle = supervisor::spawn(
            supervisor::Context {
                record: record.clone(),
                settings: settings.clone(),
                config: self.config.clone(),
                runtime,
                lookups: Box::new(SlotLookups {
                    counters: self.counters.clone(),
                    slots: bindings.iter().map(|(_, s)| *s).collect(),
                }),
                router: self.router.clone(),
                log: log.clone(),
                cgroup: cgroup.clone(),
                latencies: self.latencies.clone(),
            },
            sockets,
            adopted,
        )
        .map_err(|e| {
            self.unbind(&bindings);
            internal(format!("watching the sockets: {e}"))
        })?;
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
        files.keep();
        Ok(Function {
            invocation_seconds: settings.latency_histograms.then(Mutex::default),
            record,
            settings,
            bindings,
            handle,
            log,
            cgroup,
            invocations: AtomicU64::new(0),
            invocation_codes: Mutex::default(),
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
        let mut unusable = None;
        for (i, p) in settings.ports.iter().enumerate() {
            let n = 3 + i as i32;
            // SAFETY: pidfd_getfd duplicates the target's fd into us; checked and owned.
            let fd =
                unsafe { libc::syscall(libc::SYS_pidfd_getfd, instance.pidfd.as_raw_fd(), n, 0) };
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
