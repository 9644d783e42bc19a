//! The `containerd` runtime: each instance is a container of the function's OCI image,
//! created and started through containerd's API with runc (or crun).
//!
//! An instance's life: a lease named after the instance holds its snapshot; the container
//! gets the spec from [`faasd_containerd::oci`]; the task writes stdout and stderr to the
//! instance's output file (`file://` I/O of the runc shim). With socket passing, the
//! container's entrypoint is the activation shim: faasd listens on a unix socket in the
//! instance's directory, bind-mounted at [`handoff::RUN_DIR`], and sends the function's
//! sockets to the shim the moment it connects. When the instance ends, [`Runtime::reap`]
//! deletes the task, the container and the lease (and with it the snapshot), and the
//! instance's directory: nothing stays behind in containerd.

use std::{
    collections::BTreeMap,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::Duration,
};

use containerd_client::{
    services::v1::{
        Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
        DeleteTaskRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
        container::Runtime as ContainerRuntimeName, snapshots::PrepareSnapshotRequest,
    },
    tonic,
};
use faasd_common::handoff;
use prost::Message;
use sendfd::SendWithFd;

use faasd_containerd::{
    Containerd, ContainerdError, SNAPSHOTTER,
    image::ImageConfig,
    oci::{Bind, ContainerSpec},
};
use faasd_core::{image_ref::ImageRef, spec::FunctionSpec};

use super::{Instance, Launch, Milestones, Runtime, RuntimeError, prepared::Prepared};

/// Label on every container faasd creates: the function it belongs to (`namespace/name`).
pub const FUNCTION_LABEL: &str = "dev.faasd.function";
/// The containerd shim faasd asks for.
const SHIM_RUNTIME: &str = "io.containerd.runc.v2";
/// How long the activation shim has to connect for its sockets.
const HANDOFF_TIMEOUT: Duration = Duration::from_secs(10);

/// The static activation shim, built by faasd's build script.
pub(super) static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/faasd-shim"));

/// Options of containerd's runc shim (`containerd.runc.v1.Options`); only the fields
/// faasd sets.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// The OCI runtime binary: `runc` or `crun`.
    #[prost(string, tag = "6")]
    binary_name: String,
}

/// What every container function on this host shares: the containerd connection and
/// faasd's files.
#[derive(Debug)]
pub struct ContainerHost {
    socket: PathBuf,
    /// Credentials and CAs for pulling images.
    registries: faasd_containerd::credentials::Registries,
    client: tokio::sync::Mutex<Option<Containerd>>,
    runtime_dir: PathBuf,
    notify_dir: PathBuf,
    cgroup_parent: String,
    oci_runtime: String,
    shim: OnceLock<PathBuf>,
    /// Held while the shim is written: two first launches at once would share its
    /// temporary file, and one would find it renamed away.
    shim_writing: std::sync::Mutex<()>,
}

impl ContainerHost {
    /// Prepares the host side; containerd need not be running yet.
    pub fn new(
        socket: PathBuf,
        registries: faasd_containerd::credentials::Registries,
        runtime_dir: &Path,
        notify_dir: PathBuf,
        cgroup_parent: &str,
        oci_runtime: &str,
    ) -> Self {
        Self {
            socket,
            registries,
            client: tokio::sync::Mutex::new(None),
            runtime_dir: runtime_dir.join("containers"),
            notify_dir,
            cgroup_parent: cgroup_parent.into(),
            oci_runtime: oci_runtime.into(),
            shim: OnceLock::new(),
            shim_writing: std::sync::Mutex::new(()),
        }
    }

    /// A connection, made on first use and kept.
    pub async fn client(&self) -> Result<Containerd, ContainerdError> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let new = Containerd::connect(&self.socket)
            .await?
            .with_registries(self.registries.clone());
        *c = Some(new.clone());
        Ok(new)
    }

    /// Writes the embedded shim to the runtime directory once per daemon (a new file, so
    /// running containers keep the one they mounted).
    fn shim_path(&self) -> Result<&Path, RuntimeError> {
        if let Some(p) = self.shim.get() {
            return Ok(p);
        }
        let _writing = self.shim_writing.lock().expect("shim lock");
        if let Some(p) = self.shim.get() {
            return Ok(p);
        }
        let io = |op| move |source| RuntimeError::Io { op, source };
        let dir = self
            .runtime_dir
            .parent()
            .unwrap_or(&self.runtime_dir)
            .join("shim");
        std::fs::create_dir_all(&dir).map_err(io("creating the shim directory"))?;
        let path = dir.join("faasd-shim");
        let tmp = dir.join(format!(".faasd-shim.{}", std::process::id()));
        std::fs::write(&tmp, SHIM).map_err(io("writing the shim"))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o555))
            .map_err(io("making the shim executable"))?;
        std::fs::rename(&tmp, &path).map_err(io("installing the shim"))?;
        Ok(self.shim.get_or_init(|| path))
    }
}

/// The port of an `http://` URL on the instance's own loopback (`127.0.0.1`, `localhost`,
/// `[::1]`); `None` for any other host, which faasd cannot reach from inside.
fn loopback_port(url: &str) -> Option<u16> {
    let authority = url.strip_prefix("http://")?.split('/').next()?;
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.ends_with(']') => (host, port.parse().ok()?),
        _ => (authority, 80),
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]").then_some(port)
}

/// The watchdogs' readiness path.
const WATCHDOG_HEALTH: &str = "/_/health";

/// How an instance's connections reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The shim hands the function's sockets to the image's command (LISTEN_FDS).
    Sockets,
    /// The image binds this port in its own network namespace; faasd accepts on the
    /// function's socket and forwards each connection there.
    Forward(u16),
}

/// The runtime of one container function.
#[derive(Debug)]
pub struct ContainerRuntime {
    host: Arc<ContainerHost>,
    image: ImageRef,
    function: String,
    namespace: String,
    env_process: Option<String>,
    read_only: bool,
    memory_limit: Option<u64>,
    cpu_millis: Option<u64>,
    /// Port forced by `faasd.dev/image-port`.
    image_port: Option<u16>,
    /// What the deployment says of the image's sockets, over its label.
    socket_activation: Option<bool>,
    /// `com.openfaas.ready.http.path`.
    ready_path: Option<String>,
    /// The deployment's `max_inflight` (over the image's), for the watchdog's limit.
    max_inflight: Option<String>,
    secrets: Vec<(String, PathBuf)>,
    config: OnceLock<ImageConfig>,
    /// Calls out: the rule each instance's cgroup gets.
    egress: Option<(Arc<crate::egress::Egress>, faasd_dataplane::EgressPolicy)>,
}

impl ContainerRuntime {
    /// The runtime of `spec`; `secrets` are the host files of the secrets it mounts.
    pub fn new(
        host: Arc<ContainerHost>,
        spec: &FunctionSpec,
        image: ImageRef,
        settings: &faasd_core::spec::Settings,
        secrets: Vec<(String, PathBuf)>,
        egress: Option<Arc<crate::egress::Egress>>,
    ) -> Self {
        let d = &spec.deployment;
        Self {
            egress: egress.map(|e| {
                let policy = e.policy(settings);
                (e, policy)
            }),
            host,
            image,
            function: spec.name.clone(),
            namespace: spec.namespace.clone(),
            env_process: d.env_process.clone().filter(|e| !e.trim().is_empty()),
            read_only: d.read_only_root_filesystem == Some(true),
            memory_limit: settings.memory_limit,
            cpu_millis: settings.cpu_millis,
            image_port: settings.image_port,
            socket_activation: settings.socket_activation,
            ready_path: settings.ready_path.clone(),
            max_inflight: d.env_vars.get(faasd_core::spec::MAX_INFLIGHT_ENV).cloned(),
            secrets,
            config: OnceLock::new(),
        }
    }

    /// Looks the image up (unpacking it if needed) and keeps its config; deploys call this
    /// so a missing image fails the deploy, not the first connection.
    pub async fn prepare(&self) -> Result<&ImageConfig, ContainerdError> {
        if let Some(c) = self.config.get() {
            return Ok(c);
        }
        let client = self.host.client().await?;
        let config = client.image_config(&self.image).await?;
        Ok(self.config.get_or_init(|| config))
    }

    fn delivery(&self, config: &ImageConfig) -> Delivery {
        match (self.image_port, self.socket_activation) {
            (Some(p), _) => Delivery::Forward(p),
            (None, Some(true)) => Delivery::Sockets,
            (None, None) if config.socket_activated() => Delivery::Sockets,
            // OpenFaaS's watchdog images listen on 8080.
            (None, _) => Delivery::Forward(8080),
        }
    }

    /// Deletes every container of this function except `keep` (those left by an earlier
    /// daemon that nobody manages any more). Returns how many went.
    pub async fn remove_strays(&self, keep: &[String]) -> Result<usize, ContainerdError> {
        let client = self.host.client().await?;
        let filter = format!(
            "labels.\"{FUNCTION_LABEL}\"=={}/{}",
            self.namespace, self.function
        );
        let list = client
            .containers()
            .list(client.request(ListContainersRequest {
                filters: vec![filter],
            }))
            .await
            .map_err(ContainerdError::rpc("listing containers"))?
            .into_inner()
            .containers;
        let mut n = 0;
        for c in list.into_iter().filter(|c| !keep.contains(&c.id)) {
            kill_task_and_wait(&client, &c.id).await;
            self.delete_instance(&client, &c.id).await;
            n += 1;
        }
        Ok(n)
    }

    /// Creates and starts the instance's container. `prepared`: its shim connects and waits
    /// for its sockets, whose connection is returned, instead of receiving them at once.
    async fn start_instance(
        &self,
        launch: &Launch,
        prepared: bool,
    ) -> Result<(Instance, Option<tokio::net::UnixStream>), StartError> {
        let config = self.prepare().await?.clone();
        let client = self.host.client().await?;
        let shim = self.host.shim_path()?.to_owned();
        let id = launch.instance.to_owned();
        let dir = self.host.runtime_dir.join(&id);
        let _ = std::fs::remove_dir_all(&dir);
        create_dir(&dir, 0o755)?;
        let delivery = self.delivery(&config);
        let mut binds = vec![Bind {
            source: self.host.notify_dir.to_string_lossy().into(),
            destination: handoff::NOTIFY_DIR.into(),
            read_only: false,
        }];
        // The shim is every container's pid 1, faasd's init; with sockets it also takes
        // them over the handoff socket.
        binds.push(Bind {
            source: shim.to_string_lossy().into(),
            destination: handoff::SHIM.into(),
            read_only: true,
        });
        let listener = match delivery {
            Delivery::Forward(_) if !prepared => None,
            _ => {
                let path = dir.join("handoff.sock");
                let l =
                    bind_long(&dir, "handoff.sock").map_err(io("binding the handoff socket"))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                    .map_err(io("opening the handoff socket to the container's user"))?;
                binds.push(Bind {
                    source: dir.to_string_lossy().into(),
                    destination: handoff::RUN_DIR.into(),
                    read_only: false,
                });
                Some(l)
            }
        };
        binds.extend(launch.binds.iter().map(|(source, destination)| Bind {
            source: source.to_string_lossy().into(),
            destination: destination.to_string_lossy().into(),
            read_only: true,
        }));
        if !self.secrets.is_empty() {
            let sdir = dir.join("secrets");
            create_dir(&sdir, 0o755)?;
            for (name, file) in &self.secrets {
                let dst = sdir.join(name);
                std::fs::copy(file, &dst).map_err(io("copying a secret"))?;
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o444))
                    .map_err(io("copying a secret"))?;
            }
            binds.push(Bind {
                source: sdir.to_string_lossy().into(),
                destination: "/var/openfaas/secrets".into(),
                read_only: true,
            });
        }
        let spec = self.container_spec(&config, delivery, prepared, launch, binds);

        // From here on, whatever was created is removed again if a later step fails.
        let created = async {
            client.create_lease(&id).await?;
            let mounts = client
                .snapshots()
                .prepare(client.leased(
                    &id,
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: id.clone(),
                        parent: config.chain_id.clone(),
                        labels: Default::default(),
                    },
                ))
                .await
                .map_err(ContainerdError::rpc("preparing the container's snapshot"))?
                .into_inner()
                .mounts;
            let container = Container {
                id: id.clone(),
                labels: [(
                    FUNCTION_LABEL.to_owned(),
                    format!("{}/{}", self.namespace, self.function),
                )]
                .into(),
                image: config.name.clone(),
                runtime: Some(ContainerRuntimeName {
                    name: SHIM_RUNTIME.into(),
                    options: Some(prost_types::Any {
                        type_url: "containerd.runc.v1.Options".into(),
                        value: RuncOptions {
                            binary_name: self.host.oci_runtime.clone(),
                        }
                        .encode_to_vec(),
                    }),
                }),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: serde_json::to_vec(&spec.to_json()).expect("JSON serializes"),
                }),
                snapshotter: SNAPSHOTTER.into(),
                snapshot_key: id.clone(),
                ..Default::default()
            };
            client
                .containers()
                .create(client.leased(
                    &id,
                    CreateContainerRequest {
                        container: Some(container),
                    },
                ))
                .await
                .map_err(ContainerdError::rpc("creating the container"))?;
            let output = format!("file://{}", launch.output.display());
            let task = client
                .tasks()
                .create(client.request(CreateTaskRequest {
                    container_id: id.clone(),
                    rootfs: mounts,
                    stdout: output.clone(),
                    stderr: output,
                    ..Default::default()
                }))
                .await
                .map_err(ContainerdError::rpc("creating the task"))?
                .into_inner();
            // Its cgroup exists now: the egress rule goes on before the command runs.
            if let Some((egress, policy)) = &self.egress
                && let Some(cg) = self.cgroup_of(&id)
            {
                let owner = format!("{}/{}", self.namespace, self.function);
                egress.grant(&cg, &owner, policy)?;
            }
            let created_ns = crate::clock::monotonic_ns();
            client
                .tasks()
                .start(client.request(StartRequest {
                    container_id: id.clone(),
                    exec_id: String::new(),
                }))
                .await
                .map_err(ContainerdError::rpc("starting the task"))?;
            let milestones = Milestones {
                created_ns,
                started_ns: crate::clock::monotonic_ns(),
            };
            Ok::<_, StartError>((task.pid, milestones))
        }
        .await;
        let (pid, milestones) = match created {
            Ok((pid, m)) => (pid as i32, m),
            Err(e) => {
                self.delete_instance(&client, &id).await;
                return Err(e);
            }
        };
        let connected = match listener {
            Some(l) => accept_shim(l).await.map(Some),
            None => Ok(None),
        };
        let handed = match connected {
            Ok(Some(shim)) if !prepared => send_sockets(&shim, launch).await.map(|()| None),
            other => other,
        };
        let pidfd = pidfd_open(pid).map_err(io("pidfd_open on the container's process"));
        match (handed, pidfd) {
            (Ok(shim), Ok(pidfd)) => Ok((
                Instance {
                    pid,
                    pidfd,
                    id,
                    milestones,
                },
                shim,
            )),
            (Err(e), _) | (_, Err(e)) => {
                kill_task_and_wait(&client, &id).await;
                self.delete_instance(&client, &id).await;
                Err(e)
            }
        }
    }

    fn container_spec(
        &self,
        config: &ImageConfig,
        delivery: Delivery,
        prepared: bool,
        launch: &Launch,
        binds: Vec<Bind>,
    ) -> ContainerSpec {
        // The image's environment, then faasd's (which wins, but for PATH: the image
        // knows where its programs are).
        let mut env: BTreeMap<String, String> = config.env.iter().cloned().collect();
        for (k, v) in &launch.env {
            if k.starts_with("LISTEN_") || (k == "PATH" && env.contains_key("PATH")) {
                continue;
            }
            env.insert(k.clone(), v.clone());
        }
        env.insert(
            "NOTIFY_SOCKET".into(),
            format!("{}/notify.sock", handoff::NOTIFY_DIR),
        );
        let command = match (delivery, &self.env_process) {
            // OpenFaaS's watchdog reads the process to fork from `fprocess`.
            (Delivery::Forward(_), Some(p)) => {
                env.insert("fprocess".into(), p.clone());
                config.command()
            }
            (Delivery::Sockets, Some(p)) => p.split_whitespace().map(str::to_owned).collect(),
            (_, None) => config.command(),
        };
        let mode = match delivery {
            Delivery::Sockets => None,
            Delivery::Forward(_) => Some("--init"),
        };
        let args = std::iter::once(handoff::SHIM)
            .chain(mode)
            .chain(prepared.then_some("--prepared"))
            .chain(["--"])
            .map(str::to_owned)
            .chain(command)
            .collect();
        ContainerSpec {
            hostname: self.function.clone(),
            args,
            env: env.into_iter().collect(),
            cwd: config.working_dir.clone(),
            uid: config.uid,
            gid: config.gid,
            read_only: self.read_only,
            memory_limit: self.memory_limit,
            cpu_millis: self.cpu_millis,
            // Flat under the parent: runc removes the instance's own cgroup, and on a host
            // with cgroup v1 controllers per-function parents would stay behind in each.
            cgroups_path: format!("/{}/{}", self.host.cgroup_parent, launch.instance),
            binds,
            // The prepared namespace, by faasd's descriptor of it: runc opens the path.
            netns: launch
                .netns
                .map(|fd| format!("/proc/{}/fd/{fd}", std::process::id())),
        }
    }

    /// An instance's cgroup in the unified hierarchy, where the egress programs look.
    fn cgroup_of(&self, id: &str) -> Option<PathBuf> {
        super::cgroup::root().map(|r| r.join(&self.host.cgroup_parent).join(id))
    }

    /// Deletes the task (if any), the container, its lease and snapshot, and the instance's
    /// directory. Returns the exit status containerd recorded, if it had one.
    async fn delete_instance(&self, client: &Containerd, id: &str) -> Option<u32> {
        // The pidfd reports the exit before the shim has reaped it and told containerd,
        // which refuses to delete a task it still thinks runs: wait for it to know.
        let mut tasks = client.tasks();
        let wait = tasks.wait(client.request(WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }));
        let waited = match tokio::time::timeout(Duration::from_secs(5), wait).await {
            Ok(Ok(r)) => Some(r.into_inner().exit_status),
            _ => None,
        };
        let status = match client
            .tasks()
            .delete(client.request(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
        {
            Ok(r) => waited.or(Some(r.into_inner().exit_status)),
            Err(s) if s.code() == tonic::Code::NotFound => waited,
            Err(s) => {
                tracing::warn!("{id}: deleting the task: {}", s.message());
                waited
            }
        };
        if let Err(s) = client
            .containers()
            .delete(client.request(DeleteContainerRequest { id: id.into() }))
            .await
            && s.code() != tonic::Code::NotFound
        {
            tracing::warn!("{id}: deleting the container: {}", s.message());
        }
        if let Err(e) = client.delete_lease(id).await {
            tracing::warn!("{id}: deleting the lease: {e}");
        }
        let _ = std::fs::remove_dir_all(self.host.runtime_dir.join(id));
        if let Some((egress, _)) = &self.egress
            && let Some(cg) = self.cgroup_of(id)
        {
            egress.release(&cg);
        }
        status
    }
}

/// Kills a container's task and waits (briefly) for it to exit.
async fn kill_task_and_wait(client: &Containerd, id: &str) {
    let kill = KillRequest {
        container_id: id.into(),
        exec_id: String::new(),
        signal: libc::SIGKILL as u32,
        all: true,
    };
    if client.tasks().kill(client.request(kill)).await.is_err() {
        return;
    }
    let mut tasks = client.tasks();
    let wait = tasks.wait(client.request(WaitRequest {
        container_id: id.into(),
        exec_id: String::new(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
}

/// Waits for the shim to connect.
async fn accept_shim(
    listener: std::os::unix::net::UnixListener,
) -> Result<tokio::net::UnixStream, StartError> {
    listener
        .set_nonblocking(true)
        .map_err(io("setting up the handoff socket"))?;
    let listener = tokio::net::UnixListener::from_std(listener)
        .map_err(io("setting up the handoff socket"))?;
    let (stream, _) = tokio::time::timeout(HANDOFF_TIMEOUT, listener.accept())
        .await
        .map_err(|_| {
            StartError::Runtime(RuntimeError::Io {
                op: "waiting for the container's activation shim",
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("it did not connect within {HANDOFF_TIMEOUT:?}"),
                ),
            })
        })?
        .map_err(io("accepting the activation shim"))?;
    Ok(stream)
}

/// Sends the shim the sockets and their names.
async fn send_sockets(stream: &tokio::net::UnixStream, launch: &Launch) -> Result<(), StartError> {
    let names = launch
        .env
        .iter()
        .find(|(k, _)| k == "LISTEN_FDNAMES")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    loop {
        stream.writable().await.map_err(io("sending the sockets"))?;
        match stream.send_with_fd(names.as_bytes(), &launch.fds) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(io("sending the sockets")(e)),
        }
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open on a pid; the result is checked and owned.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), StartError> {
    std::fs::create_dir_all(dir).map_err(io("creating the instance directory"))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io("creating the instance directory"))
}

/// A failed start, from either side.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    #[error("the instance's egress rule: {0}")]
    Egress(#[from] crate::egress::EgressError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

impl From<StartError> for RuntimeError {
    fn from(e: StartError) -> Self {
        match e {
            StartError::Runtime(e) => e,
            StartError::Containerd(e) => RuntimeError::Container(e.to_string()),
            StartError::Egress(e) => RuntimeError::Container(e.to_string()),
        }
    }
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Runtime(RuntimeError::Io { op, source })
}

#[async_trait::async_trait]
impl Runtime for ContainerRuntime {
    async fn start(&self, launch: Launch) -> Result<Instance, RuntimeError> {
        let (instance, _) = self.start_instance(&launch, false).await?;
        Ok(instance)
    }

    async fn prepare(&self, launch: Launch) -> Result<Prepared, RuntimeError> {
        let (instance, shim) = self.start_instance(&launch, true).await?;
        let handover = shim
            .ok_or_else(|| std::io::Error::other("its shim did not connect"))
            .and_then(super::prepared::from_tokio)
            .map_err(|source| RuntimeError::Io {
                op: "keeping the prepared container's shim connection",
                source,
            })?;
        Ok(Prepared::new(instance, handover, None, false))
    }

    async fn reap(&self, instance: &Instance) -> String {
        let status = match self.host.client().await {
            Ok(client) => self.delete_instance(&client, &instance.id).await,
            Err(e) => {
                tracing::warn!("{}: cannot delete the container: {e}", instance.id);
                None
            }
        };
        match status {
            Some(s) if s > 128 => format!("killed by signal {}", s - 128),
            Some(s) => format!("exited with status {s}"),
            None => "exited".into(),
        }
    }

    fn instance_cgroup(&self, id: &str) -> Option<PathBuf> {
        self.cgroup_of(id)
    }

    fn upstream(&self) -> Option<crate::forward::Upstream> {
        let config = self.config.get()?;
        let Delivery::Forward(port) = self.delivery(config) else {
            return None;
        };
        let image_env = |k: &str| config.env.iter().find(|(n, _)| n == k).map(|(_, v)| v);
        // OpenFaaS's watchdogs (found by the `fprocess` they run) answer /_/health once
        // their handler is up, though they bind the port before.
        let watchdog = self.env_process.is_some() || image_env("fprocess").is_some();
        let ready_path = self
            .ready_path
            .clone()
            .or_else(|| watchdog.then(|| WATCHDOG_HEALTH.to_owned()));
        let max_inflight = self
            .max_inflight
            .as_ref()
            .or_else(|| image_env(faasd_core::spec::MAX_INFLIGHT_ENV))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| *n > 0);
        // of-watchdog's http mode forwards to its server without waiting for it to listen.
        let behind = (watchdog && image_env("mode").is_some_and(|m| m == "http"))
            .then(|| image_env("upstream_url").and_then(|u| loopback_port(u)))
            .flatten();
        Some(crate::forward::Upstream {
            port,
            ready_path,
            behind,
            max_inflight,
        })
    }
}

/// Binds a unix socket named `name` in `dir` however long the directory's path: a socket
/// address holds 107 bytes, and an instance directory named after a 63-character function
/// goes past that. The directory is reached through its descriptor in /proc instead.
fn bind_long(dir: &Path, name: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    let dir = std::fs::File::open(dir)?;
    std::os::unix::net::UnixListener::bind(format!(
        "/proc/self/fd/{}/{name}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
}

#[cfg(test)]
mod tests {
    use super::loopback_port;

    #[test]
    fn the_upstream_port_comes_from_a_loopback_url_only() {
        assert_eq!(loopback_port("http://127.0.0.1:3000"), Some(3000));
        assert_eq!(loopback_port("http://localhost:8082/path"), Some(8082));
        assert_eq!(loopback_port("http://[::1]:5000"), Some(5000));
        assert_eq!(loopback_port("http://127.0.0.1"), Some(80));
        assert_eq!(loopback_port("http://[::1]"), Some(80));
        assert_eq!(loopback_port("http://10.0.0.1:3000"), None);
        assert_eq!(loopback_port("https://127.0.0.1:3000"), None);
        assert_eq!(loopback_port("http://127.0.0.1:port"), None);
    }
}
