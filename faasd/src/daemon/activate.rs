//! The steps a deploy and a restore share: room for the sockets, the function's log and
//! cgroup, the runtime, the bindings, the supervisor. Each path decides where its sockets
//! come from (made new, taken back from a surviving instance or from systemd's fd store).

use std::{
    os::fd::OwnedFd,
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use faasd_common::BindingKey;

use faasd_core::{
    image_ref::ImageRef,
    spec::{FunctionSpec, Port, Settings, SpecError},
    store::FunctionRecord,
};

use super::{Daemon, DaemonError, Function, SlotLookups, fd_name, files::Reservation};
use crate::{
    logs::FunctionLog,
    runtime::{cgroup, container::ContainerRuntime},
    secrets::SecretError,
    supervisor::{self, Adopted},
};

/// What a function holds before it has sockets.
pub(super) struct Parts<'a> {
    pub files: Reservation<'a>,
    pub log: FunctionLog,
    pub cgroup: Option<PathBuf>,
}

/// Where each socket's binding goes: a slot of its own, or the slot its key still points
/// at (a restore, so steering to a surviving instance never changes).
#[derive(Debug, Clone, Copy)]
pub(super) enum SlotChoice {
    New,
    Kept(u32),
}

/// A function's sockets, the slot each binding goes to, and the instances that already
/// serve on them.
pub(super) struct Listeners {
    pub sockets: Vec<OwnedFd>,
    pub slots: Vec<SlotChoice>,
    pub adopted: Vec<Adopted>,
}

/// A socket that cannot be made (out of descriptors is the operator's to fix, the rest
/// the host's: see [`DaemonError::kind`]).
pub(super) fn socket_error(
    record: &FunctionRecord,
    p: &Port,
    source: std::io::Error,
) -> DaemonError {
    DaemonError::Socket {
        socket: format!("[{}]:{}/{}", record.address, p.port, p.protocol),
        source,
    }
}

impl Daemon {
    /// Reserves the descriptors of the function's sockets (given back when the parts are
    /// dropped, kept once the function is supervised) and makes its log; names its cgroup,
    /// which the runtime makes when an instance starts.
    pub(super) fn parts(
        &self,
        spec: &FunctionSpec,
        settings: &Settings,
    ) -> Result<Parts<'_>, DaemonError> {
        let files = self.files.reserve(settings.ports.len())?;
        let log = FunctionLog::new(&self.config.state_dir, &spec.namespace, &spec.name);
        let cgroup = self.cgroup_root.as_ref().map(|root| {
            cgroup::path(
                root,
                &self.config.cgroup_parent,
                &spec.namespace,
                &spec.name,
            )
        });
        Ok(Parts { files, log, cgroup })
    }

    /// The host files of the secrets a function mounts; a missing one is the caller's to
    /// create first.
    pub(super) fn secret_files(
        &self,
        spec: &FunctionSpec,
    ) -> Result<Vec<(String, PathBuf)>, DaemonError> {
        spec.deployment
            .secrets
            .iter()
            .map(|s| {
                self.secrets
                    .file(&spec.namespace, s)
                    .map(|f| (s.clone(), f))
                    .map_err(|e| match e {
                        SecretError::NotFound(_) => DaemonError::MissingSecret {
                            namespace: spec.namespace.clone(),
                            secret: s.clone(),
                            source: e,
                        },
                        e => e.into(),
                    })
            })
            .collect()
    }

    /// The runtime of a container function, before its image is prepared: the image
    /// reference parsed and the secrets it mounts found.
    pub(super) fn container_runtime(
        &self,
        spec: &FunctionSpec,
        image: &str,
        settings: &Settings,
    ) -> Result<ContainerRuntime, DaemonError> {
        let image = ImageRef::parse(image).map_err(|e| SpecError(format!("image: {e}")))?;
        let secrets = self.secret_files(spec)?;
        Ok(ContainerRuntime::new(
            self.containers.clone(),
            spec,
            image,
            settings,
            secrets,
            self.egress.clone().ok(),
        ))
    }

    /// Binds the sockets in the maps and starts the function's supervisor with the adopted
    /// instances. On failure the bindings are taken back and the parts given up.
    pub(super) fn supervise(
        &self,
        record: Arc<FunctionRecord>,
        settings: Settings,
        parts: Parts<'_>,
        runtime: Arc<dyn crate::runtime::Runtime>,
        listeners: Listeners,
    ) -> Result<Function, DaemonError> {
        let Parts { files, log, cgroup } = parts;
        let Listeners {
            sockets,
            slots,
            adopted,
        } = listeners;
        let mut bindings = Vec::new();
        let result = (|| {
            for ((p, sock), choice) in settings.ports.iter().zip(&sockets).zip(&slots) {
                let key = BindingKey::new(record.address, p.port, p.protocol.number());
                let mut dp = self.dataplane.lock().expect("dataplane lock");
                match *choice {
                    SlotChoice::Kept(slot) => {
                        bindings.push((key, slot));
                        dp.reattach(slot, sock, &settings.policy)?;
                    }
                    SlotChoice::New => {
                        let slot = dp.take_slot()?;
                        bindings.push((key, slot));
                        dp.bind(key, slot, sock)?;
                        dp.set_policy(slot, &settings.policy)?;
                    }
                }
            }
            Ok::<_, DaemonError>(())
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
                lot: self.lot.clone(),
                egress: self.egress.clone().ok(),
            },
            sockets,
            adopted,
        )
        .map_err(|e| {
            self.unbind(&bindings);
            DaemonError::Host {
                what: "watching the sockets",
                source: e,
            }
        })?;
        // Kept in systemd's fd store (when there is one) for the next start.
        for (p, sock) in settings.ports.iter().zip(handle.sockets.iter()) {
            self.service
                .manager
                .store_fds(&fd_name(&record.spec, p), &[std::os::fd::AsFd::as_fd(sock)]);
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
}
