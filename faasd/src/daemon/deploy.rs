//! Changing one function: deploy, update, remove, scale. Each holds that function's own
//! operation lock for as long as it takes and the registry's lock only for a lookup or an
//! insert, so a slow image pull for one function never delays another.

use std::{collections::BTreeSet, net::Ipv6Addr, sync::Arc, time::SystemTime};

use faasd_common::BindingKey;

use faasd_core::{
    spec::{Deployment, FunctionSpec, Settings, SpecError},
    store::FunctionRecord,
};

use super::{
    Daemon, DaemonError, Entry, Function,
    activate::{Listeners, SlotChoice, socket_error},
    fd_name,
};
use crate::{runtime::Runtime, sockets, status::FunctionStatus, supervisor::Command};

impl Daemon {
    /// Deploys a new function (`update == false`) or replaces one (`update == true`): on
    /// this host, or in a cluster wherever the scheduler places it.
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
        if let Some(c) = &self.cluster {
            return self.submit(c, spec, update).await;
        }
        self.deploy_here(spec, settings, update, None).await
    }

    /// Deploys or updates a function on this host, at `address` when it has one already
    /// (given by the cluster), else at the next of this host's prefix.
    pub(super) async fn deploy_here(
        &self,
        spec: FunctionSpec,
        settings: Settings,
        update: bool,
        address: Option<Ipv6Addr>,
    ) -> Result<FunctionStatus, DaemonError> {
        let id = spec.id();
        // A new function takes its place in the registry at once (a second deploy of the
        // same name sees it and gets 409), with its operation lock held until it is done.
        let (entry, fresh) = if update {
            (
                self.entry(&id)
                    .ok_or_else(|| DaemonError::NoFunction(id.clone()))?,
                false,
            )
        } else {
            let mut registry = self.functions.write().expect("registry lock");
            if registry.contains_key(&id) {
                return Err(DaemonError::FunctionExists(id.clone()));
            }
            let entry = Arc::new(Entry::default());
            registry.insert(id.clone(), entry.clone());
            (entry, true)
        };
        let _op = entry.op.lock().await;
        let result = self
            .deploy_locked(&entry, spec, settings, fresh, address)
            .await;
        if result.is_err() && fresh {
            let mut registry = self.functions.write().expect("registry lock");
            if registry.get(&id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                registry.remove(&id);
            }
        }
        result
    }

    async fn deploy_locked(
        &self,
        entry: &Entry,
        spec: FunctionSpec,
        settings: Settings,
        fresh: bool,
        address: Option<Ipv6Addr>,
    ) -> Result<FunctionStatus, DaemonError> {
        let id = spec.id();
        let old = entry.current();
        if old.is_none() && !fresh {
            // Removed while this update waited for the function's lock.
            return Err(DaemonError::NoFunction(id.clone()));
        }
        let (address, created_at) = match &old {
            Some(f) => (f.record.address, f.record.created_at),
            None => {
                let addr = match address {
                    Some(a) => a,
                    None => self.store.allocate_address(self.config.function_prefix)?,
                };
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                (addr, now)
            }
        };
        let (ns, name) = (spec.namespace.clone(), spec.name.clone());
        let record = Arc::new(FunctionRecord {
            spec,
            address,
            created_at,
        });
        // The record goes to disk while the sockets are made: the flush and the activation
        // overlap, and nothing is acknowledged before both are done.
        let commit = self.store.put(record.clone());
        // The new version gets sockets of its own (SO_REUSEPORT lets them share the address
        // with the old ones) and binding it flips each key in one map update: connections
        // go to the new version from then on, none is refused.
        let activated = self.activate(record, settings).await;
        let error = match (activated, commit.durable().await) {
            (Ok(f), Ok(())) => Ok(Arc::new(f)),
            (Ok(f), Err(e)) => {
                // Serving, but not on disk: a restart would not know it. Undo it.
                self.discard(&f, old.is_none()).await;
                Err(e.into())
            }
            (Err(e), _) => Err(e),
        };
        let new = match error {
            Ok(new) => new,
            Err(e) => {
                // Leave the host as it was: the previous version in the maps and on disk, or
                // no trace of the new function.
                if let Some(old) = &old {
                    let mut dp = self.dataplane.lock().expect("dataplane lock");
                    for (key, slot) in &old.bindings {
                        dp.point(*key, *slot)?;
                    }
                }
                let undo = match &old {
                    Some(old) => self.store.put(old.record.clone()),
                    None => self.store.remove(&ns, &name),
                };
                if let Err(undo) = undo.durable().await {
                    tracing::error!("{id}: taking back the failed deploy's record: {undo}");
                }
                return Err(e);
            }
        };
        let status = self.status_now(&new);
        self.name_set(&new).await;
        *entry.current.write().expect("entry lock") = Some(new.clone());
        if let Some(old) = old {
            let taken_over: BTreeSet<BindingKey> = new.bindings.iter().map(|(k, _)| *k).collect();
            self.drain(old, taken_over);
        }
        Ok(status)
    }

    /// Makes a new version's sockets, binds them in slots of their own and starts its
    /// supervisor. A container's image is prepared first: a deploy whose image is missing
    /// or unusable fails here, before anything serves.
    async fn activate(
        &self,
        record: Arc<FunctionRecord>,
        settings: Settings,
    ) -> Result<Function, DaemonError> {
        let parts = self.parts(&record.spec, &settings)?;
        let runtime: Arc<dyn Runtime> = match &record.spec.image {
            None => {
                self.secret_files(&record.spec)?;
                self.runtime.clone()
            }
            Some(image) => {
                let rt = self.container_runtime(&record.spec, image, &settings)?;
                rt.prepare().await?;
                Arc::new(rt)
            }
        };
        let sockets = settings
            .ports
            .iter()
            .map(|p| {
                sockets::create(record.address, p, self.config.backlog)
                    .map_err(|e| socket_error(&record, p, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let listeners = Listeners {
            slots: vec![SlotChoice::New; sockets.len()],
            sockets,
            adopted: Vec::new(),
        };
        self.supervise(record, settings, parts, runtime, listeners)
    }

    /// Stops a version that never took over and frees what it holds; its cgroup too when
    /// no other version uses it.
    async fn discard(&self, f: &Function, remove_cgroup: bool) {
        f.handle
            .ask(|done| Command::Shutdown {
                stop_instances: true,
                done,
            })
            .await;
        self.unbind(&f.bindings);
        self.files.release(f.bindings.len());
        if remove_cgroup && let Some(cg) = &f.cgroup {
            crate::runtime::cgroup::remove(cg);
        }
    }

    /// Lets a replaced version serve what it had already queued, then stops it and frees its
    /// slots. Bindings the new version took over stay with the new version.
    fn drain(&self, old: Arc<Function>, taken_over: BTreeSet<BindingKey>) {
        let dataplane = self.dataplane.clone();
        let files = self.files.clone();
        tokio::spawn(async move {
            old.handle.ask(|done| Command::Drain { done }).await;
            let mut dp = dataplane.lock().expect("dataplane lock");
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
                dp.release_slot(*slot);
            }
            drop(dp);
            files.release(old.bindings.len());
            old.log
                .write("faasd", "previous version drained and stopped");
        });
    }

    /// Removes a function: from this host, or in a cluster from the cluster (the host
    /// running it then removes it).
    pub async fn remove(&self, namespace: &str, name: &str) -> Result<(), DaemonError> {
        if let Some(c) = &self.cluster {
            return self.withdraw(c, namespace, name).await;
        }
        self.remove_here(namespace, name).await
    }

    /// Removes a function from this host: instances stopped, sockets closed, bindings
    /// gone, state deleted.
    pub(super) async fn remove_here(&self, namespace: &str, name: &str) -> Result<(), DaemonError> {
        let id = format!("{namespace}/{name}");
        let entry = self
            .entry(&id)
            .ok_or_else(|| DaemonError::NoFunction(id.clone()))?;
        let _op = entry.op.lock().await;
        let f = entry
            .current
            .write()
            .expect("entry lock")
            .take()
            .ok_or_else(|| DaemonError::NoFunction(id.clone()))?;
        {
            let mut registry = self.functions.write().expect("registry lock");
            if registry.get(&id).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                registry.remove(&id);
            }
        }
        if let Err(e) = self.store.remove(namespace, name).durable().await {
            // Still on disk: put it back in the registry so that nothing disagrees.
            *entry.current.write().expect("entry lock") = Some(f);
            self.functions
                .write()
                .expect("registry lock")
                .entry(id)
                .or_insert_with(|| entry.clone());
            return Err(e.into());
        }
        self.name_removed(name, namespace).await;
        for p in &f.settings.ports {
            self.service.manager.remove_fds(&fd_name(&f.record.spec, p));
        }
        self.retire(&f, true).await;
        f.log.remove();
        // A process function's own directory goes with it.
        let _ = std::fs::remove_dir_all(self.config.data_dir.join(namespace).join(name));
        if let Ok(e) = &self.egress {
            e.forget(&f.record.spec.id());
            e.remove_files(&f.record.spec);
        }
        Ok(())
    }

    /// Sets the number of running instances (0 = scale to zero; the sockets stay).
    pub async fn scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> Result<(), DaemonError> {
        let f = self.function(namespace, name)?;
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
        f.handle
            .send(Command::Scale(replicas))
            .map_err(|_| DaemonError::ShuttingDown(format!("{namespace}/{name}")))
    }
}
