//! Socket activation of one function: a task that owns the function's sockets and
//! instances. While the function is stopped it watches the sockets; the first pending
//! connection (or datagram) starts an instance, which accepts that very connection from the
//! kernel's queue. It tracks readiness (READY=1), the watchdog (WATCHDOG=1), crash loops,
//! and idleness, and stops the function when it has been idle long enough.

use std::{
    collections::HashMap,
    net::{Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::select_all;
use serde::{Deserialize, Serialize};
use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, oneshot},
};

use crate::{
    config::Config,
    dataplane::Dataplane,
    logs::{FunctionLog, Output},
    notify::{self, Notice},
    runtime::{Instance, Launch, Runtime},
    sockets,
    spec::{FunctionSpec, Port, Settings},
};

/// How often timers (idle, watchdog, grace periods, backoff) are checked.
const TICK: Duration = Duration::from_millis(200);
/// An instance that ends sooner than this after starting counts towards a crash loop.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// Quick exits in a row tolerated before restarts are delayed.
const CRASH_LOOP_AFTER: u32 = 3;
/// Longest delay between restarts of a crash-looping function.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A draining version stops once its sockets have had nothing queued for this long, which
/// also lets requests it already accepted finish.
const DRAIN_QUIET: Duration = Duration::from_millis(500);

/// Instance ids are unique for the daemon's life, across versions of a function.
static INSTANCE_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC is system-wide, so the benchmark can
/// compare these with its own readings).
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into our timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where a function is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No instance runs; the sockets are watched.
    Stopped,
    /// Instances started, not all ready yet.
    Starting,
    /// Instances serve.
    Running,
    /// Restarts are being delayed after repeated quick exits.
    CrashLoop,
}

/// Timestamps (CLOCK_MONOTONIC ns) of the last activation from zero.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationTiming {
    /// faasd saw the pending connection and asked the runtime for an instance.
    pub requested_ns: u64,
    /// Container runtime: containerd created the task (0 for processes).
    #[serde(default)]
    pub task_created_ns: u64,
    /// Container runtime: containerd started the task (0 for processes).
    #[serde(default)]
    pub task_started_ns: u64,
    /// The instance's program was running (exec succeeded).
    pub running_ns: u64,
    /// The instance said READY=1 (or was considered ready at start).
    pub ready_ns: u64,
}

/// One running instance as reported.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    /// Instance id (also in its environment as FAASD_INSTANCE and in log lines).
    pub id: String,
    /// Host pid.
    pub pid: i32,
    /// Ready to serve.
    pub ready: bool,
    /// Last STATUS= it sent.
    pub status: Option<String>,
}

/// A snapshot of the function's runtime state, for the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionState {
    /// Phase.
    pub phase: Phase,
    /// Running instances.
    pub instances: Vec<InstanceInfo>,
    /// Starts from zero caused by a connection.
    pub activations: u64,
    /// Instances started for any reason.
    pub starts: u64,
    /// Restarts after an instance failed (crash, watchdog).
    pub restarts: u64,
    /// Instances killed for missing WATCHDOG=1.
    pub watchdog_kills: u64,
    /// Why the last start or instance failed, if it did.
    pub last_error: Option<String>,
    /// When a crash-looping function will next be started.
    pub retry_in_ms: Option<u64>,
    /// Timing of the last activation from zero.
    pub last_activation: Option<ActivationTiming>,
    /// Every activation's latency, first connection seen → instance ready.
    #[serde(default)]
    pub activation_seconds: Histogram,
    /// The same activations split in their two phases.
    #[serde(default)]
    pub activation_phases: ActivationPhases,
}

/// An activation's phases, each a histogram.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationPhases {
    /// Connection seen → the function's program running: faasd and the runtime (for a
    /// container: containerd creating and starting the task, the shim handing over).
    pub runtime: Histogram,
    /// Program running → ready (READY=1, or at once for functions that do not notify):
    /// the function's own start.
    pub init: Histogram,
}

/// Upper bounds (seconds) of the activation latency buckets: processes start in
/// milliseconds, containers in tens of milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BUCKETS`] (counts per bucket, not cumulative).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    /// Observations per bucket; one more than the bounds (the last is +Inf).
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        if self.buckets.len() != LATENCY_BUCKETS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// Orders for the task.
#[derive(Debug)]
pub enum Command {
    /// Run exactly this many instances now (0 = scale to zero; sockets stay).
    Scale(u32),
    /// A new version has taken over the bindings: serve what is already queued on these
    /// sockets, then stop the instances and end. Answers when done.
    Drain {
        /// Signalled when the task has finished.
        done: oneshot::Sender<()>,
    },
    /// End the task; stop instances first if asked. Answers when done.
    Shutdown {
        /// Stop running instances (function removed, or daemon told to).
        stop_instances: bool,
        /// Signalled when the task has finished.
        done: oneshot::Sender<()>,
    },
}

/// The daemon's handle on a function's task.
#[derive(Debug)]
pub struct Handle {
    /// Orders.
    pub tx: mpsc::UnboundedSender<Command>,
    /// Latest state.
    pub state: Arc<Mutex<FunctionState>>,
    /// The function's sockets, in `settings.ports` order (for their queue statistics).
    pub sockets: Arc<Vec<AsyncFd<OwnedFd>>>,
}

/// An instance from a previous daemon that is still serving; its sockets were recovered.
#[derive(Debug)]
pub struct Adopted {
    /// The instance.
    pub instance: Instance,
    /// Its id.
    pub id: String,
    /// Its output file, if it could be reopened.
    pub output: Option<Output>,
}

/// What the task needs to run a function.
#[derive(Debug)]
pub struct Activation {
    /// The function.
    pub spec: Arc<FunctionSpec>,
    /// Its settings.
    pub settings: Settings,
    /// Its address.
    pub address: Ipv6Addr,
    /// Its sockets, in `settings.ports` order.
    pub sockets: Vec<OwnedFd>,
    /// Its socket slots, in the same order (for the counters).
    pub slots: Vec<u32>,
    /// Daemon configuration.
    pub config: Arc<Config>,
    /// The runtime starting instances.
    pub runtime: Arc<dyn Runtime>,
    /// The data plane (for idle detection from the counters).
    pub dataplane: Arc<Mutex<Dataplane>>,
    /// Notify routing.
    pub router: notify::Router,
    /// Log sink.
    pub log: FunctionLog,
    /// cgroup of the function.
    pub cgroup: Option<PathBuf>,
    /// Instances adopted from a previous daemon.
    pub adopted: Vec<Adopted>,
}

struct Running {
    instance: Instance,
    id: String,
    started: Instant,
    ready: bool,
    status: Option<String>,
    last_watchdog: Instant,
    stop_deadline: Option<Instant>,
    /// Killed by faasd for a failure (watchdog, start timeout): restart it.
    failed: bool,
    output: Option<Output>,
    /// Forwards connections to an image that binds its own port.
    forwarder: Option<tokio::task::AbortHandle>,
}

struct Task {
    a: Activation,
    sockets: Arc<Vec<AsyncFd<OwnedFd>>>,
    instances: HashMap<i32, Running>,
    /// Instances that should be running (non-accept mode).
    target: u32,
    /// Set once a new version took over: (who to tell, since when nothing was queued).
    draining: Option<(oneshot::Sender<()>, Option<Instant>)>,
    crash_streak: u32,
    backoff_until: Option<Instant>,
    last_lookups: u64,
    last_activity: Instant,
    /// Set while an activation from zero awaits its first ready instance.
    activating: Option<ActivationTiming>,
    notice_tx: mpsc::UnboundedSender<(i32, Notice)>,
    exit_tx: mpsc::UnboundedSender<i32>,
    state: Arc<Mutex<FunctionState>>,
    snapshot: FunctionState,
    recorded_pids: Vec<i32>,
    /// The spec's fingerprint, recorded beside each instance.
    fingerprint: String,
}

/// Starts the task; it runs until told to shut down.
pub fn spawn(mut a: Activation) -> std::io::Result<Handle> {
    if a.settings.accept.is_some() {
        // In accept mode faasd alone accepts on the socket.
        for s in &a.sockets {
            sockets::set_nonblocking(s)?;
        }
    }
    let sockets = std::mem::take(&mut a.sockets)
        .into_iter()
        // SAFETY: each OwnedFd is moved into its AsyncFd, which alone closes it.
        .map(|fd| unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from))
        .collect::<std::io::Result<Vec<_>>>()?;
    let (tx, cmd_rx) = mpsc::unbounded_channel();
    let (notice_tx, notice_rx) = mpsc::unbounded_channel();
    let (exit_tx, exit_rx) = mpsc::unbounded_channel();
    let snapshot = FunctionState {
        phase: Phase::Stopped,
        instances: Vec::new(),
        activations: 0,
        starts: 0,
        restarts: 0,
        watchdog_kills: 0,
        last_error: None,
        retry_in_ms: None,
        last_activation: None,
        activation_seconds: Histogram::default(),
        activation_phases: ActivationPhases::default(),
    };
    let state = Arc::new(Mutex::new(snapshot.clone()));
    let adopted = std::mem::take(&mut a.adopted);
    let fingerprint = a.spec.fingerprint();
    let sockets = Arc::new(sockets);
    let mut task = Task {
        target: a.settings.min_scale,
        a,
        sockets: sockets.clone(),
        instances: HashMap::new(),
        draining: None,
        crash_streak: 0,
        backoff_until: None,
        last_lookups: 0,
        last_activity: Instant::now(),
        activating: None,
        notice_tx,
        exit_tx,
        state: state.clone(),
        snapshot,
        recorded_pids: Vec::new(),
        fingerprint,
    };
    for ad in adopted {
        task.track(ad.instance, ad.id, true, ad.output);
    }
    task.target = task.target.max(task.instances.len() as u32);
    tokio::spawn(task.run(cmd_rx, notice_rx, exit_rx));
    Ok(Handle { tx, state, sockets })
}

/// Resolves when one of the sockets has a connection or datagram waiting.
async fn pending(sockets: Arc<Vec<AsyncFd<OwnedFd>>>) {
    loop {
        let (ready, _, _) = select_all(sockets.iter().map(|s| Box::pin(s.readable()))).await;
        let Ok(mut guard) = ready else { return };
        if sockets::pending(guard.get_inner()) {
            return;
        }
        // Readiness left over from before the last instance drained the queue. The guard
        // only clears it if no new event arrived since it was taken, so nothing is missed.
        guard.clear_ready();
    }
}

impl Task {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        mut notice_rx: mpsc::UnboundedReceiver<(i32, Notice)>,
        mut exit_rx: mpsc::UnboundedReceiver<i32>,
    ) {
        self.reconcile();
        self.publish();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let watch = self.watching();
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::Scale(n)) => {
                        self.target = n;
                        self.crash_streak = 0;
                        self.backoff_until = None;
                        self.reconcile();
                    }
                    Some(Command::Drain { done }) => self.draining = Some((done, None)),
                    Some(Command::Shutdown { stop_instances, done }) => {
                        if stop_instances {
                            self.stop_all(&mut exit_rx).await;
                        }
                        for pid in self.instances.keys() {
                            self.a.router.forget(*pid);
                        }
                        let _ = done.send(());
                        return;
                    }
                    None => return,
                },
                Some(pid) = exit_rx.recv() => self.on_exit(pid),
                Some((pid, n)) = notice_rx.recv() => self.on_notice(pid, n),
                () = pending(self.sockets.clone()), if watch => self.on_pending(),
                _ = tick.tick() => self.on_tick(),
            }
            if self.drained() {
                self.stop_all(&mut exit_rx).await;
                if let Some((done, _)) = self.draining.take() {
                    let _ = done.send(());
                }
                return;
            }
            self.publish();
        }
    }

    /// Whether a draining version has had nothing queued for [`DRAIN_QUIET`].
    fn drained(&mut self) -> bool {
        let Some((_, quiet_since)) = self.draining.as_mut() else {
            return false;
        };
        if self.sockets.iter().any(|s| sockets::pending(s.get_ref())) {
            *quiet_since = None;
            return false;
        }
        quiet_since.get_or_insert_with(Instant::now).elapsed() >= DRAIN_QUIET
    }

    /// Whether the sockets should be watched: nothing accepts on them (stopped function),
    /// or, in accept mode, there is room for another instance.
    fn watching(&self) -> bool {
        if self.backoff_until.is_some() {
            return false;
        }
        match self.a.settings.accept {
            Some(max) => (self.instances.len() as u32) < max,
            None => self.instances.is_empty(),
        }
    }

    fn on_pending(&mut self) {
        if let Some(max) = self.a.settings.accept {
            self.accept_connections(max);
            return;
        }
        self.a.log.write("faasd", "connection pending: activating");
        self.snapshot.activations += 1;
        self.activating = Some(ActivationTiming {
            requested_ns: monotonic_ns(),
            ..Default::default()
        });
        self.target = self.target.max(1);
        self.last_activity = Instant::now();
        // Visible before the start blocks, so the API never shows a served connection
        // without its activation.
        self.publish();
        self.reconcile();
    }

    /// Accept=yes: one instance per connection, up to `max` at once; the rest wait in
    /// the kernel's queue.
    fn accept_connections(&mut self, max: u32) {
        while (self.instances.len() as u32) < max {
            let accepted = sockets::accept(self.sockets[0].get_ref());
            match accepted {
                Ok(Some((conn, peer))) => {
                    if let Err(e) = self.start_instance(Some((conn, peer))) {
                        self.fail(format!("starting an instance for {peer}: {e}"));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(format!("accept: {e}"));
                    break;
                }
            }
        }
    }

    /// Starts or stops instances until as many run as the target says.
    fn reconcile(&mut self) {
        if self.a.settings.accept.is_some() {
            return;
        }
        if self.backoff_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.backoff_until = None;
        let live = self
            .instances
            .values()
            .filter(|r| r.stop_deadline.is_none())
            .count() as u32;
        for _ in live..self.target {
            if let Err(e) = self.start_instance(None) {
                self.fail(format!("start failed: {e}"));
                self.crash_streak += 1;
                self.schedule_backoff();
                return;
            }
        }
        if live > self.target {
            let mut extra: Vec<i32> = self
                .instances
                .iter()
                .filter(|(_, r)| r.stop_deadline.is_none())
                .map(|(p, _)| *p)
                .collect();
            extra.sort_unstable();
            for pid in extra.into_iter().take((live - self.target) as usize) {
                self.stop(pid);
            }
        }
    }

    fn fail(&mut self, msg: String) {
        tracing::warn!("{}: {msg}", self.a.spec.id());
        self.a.log.write("faasd", &msg);
        self.snapshot.last_error = Some(msg);
    }

    fn schedule_backoff(&mut self) {
        if self.crash_streak < CRASH_LOOP_AFTER {
            return;
        }
        let exp = (self.crash_streak - CRASH_LOOP_AFTER).min(10);
        let delay = (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_BACKOFF);
        self.backoff_until = Some(Instant::now() + delay);
        self.a.log.write(
            "faasd",
            &format!(
                "crash loop: {} quick exits in a row, next start in {delay:?}",
                self.crash_streak
            ),
        );
    }

    fn start_instance(&mut self, conn: Option<(OwnedFd, SocketAddrV6)>) -> Result<(), String> {
        let s = &self.a.settings;
        let seq = INSTANCE_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let id = format!("{}-{}-{seq}", self.a.spec.name, std::process::id());
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), "/".into()),
            ("FAASD_INSTANCE".into(), id.clone()),
            ("FAASD_FUNCTION".into(), self.a.spec.name.clone()),
            ("FAASD_ADDRESS".into(), self.a.address.to_string()),
            (
                "NOTIFY_SOCKET".into(),
                self.a.config.notify_socket().to_string_lossy().into(),
            ),
        ];
        env.extend(
            self.a
                .spec
                .deployment
                .env_vars
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if let Some(w) = s.watchdog {
            env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
        }
        let fds: Vec<i32>;
        match &conn {
            Some((c, peer)) => {
                fds = vec![c.as_raw_fd()];
                env.push(("LISTEN_FDS".into(), "1".into()));
                env.push(("LISTEN_FDNAMES".into(), "connection".into()));
                env.push(("REMOTE_ADDR".into(), peer.ip().to_string()));
                env.push(("REMOTE_PORT".into(), peer.port().to_string()));
            }
            None => {
                fds = self
                    .sockets
                    .iter()
                    .map(|s| s.get_ref().as_raw_fd())
                    .collect();
                env.push(("LISTEN_FDS".into(), fds.len().to_string()));
                env.push((
                    "LISTEN_FDNAMES".into(),
                    s.ports
                        .iter()
                        .map(|p: &Port| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(":"),
                ));
            }
        }
        let output_file = output_path(&self.a.config.runtime_dir, &self.a.spec, &id);
        let (output, out_w) = Output::create(output_file.clone())
            .map_err(|e| format!("creating the output file: {e}"))?;
        let user = s.user.as_deref().unwrap_or(&self.a.config.user);
        let launch = Launch {
            instance: &id,
            output: &output_file,
            argv: &self.a.spec.argv,
            env,
            fds,
            stdin: conn.as_ref().map(|(c, _)| c.as_raw_fd()),
            stdout: conn
                .as_ref()
                .map_or(out_w.as_raw_fd(), |(c, _)| c.as_raw_fd()),
            stderr: out_w.as_raw_fd(),
            user,
            cgroup: self.a.cgroup.clone(),
        };
        // The start blocks until exec (about 2 ms): let the runtime move this worker's other
        // tasks elsewhere meanwhile, so other functions and the API are not held up.
        let instance = tokio::task::block_in_place(|| self.a.runtime.start(&launch))
            .map_err(|e| e.to_string())?;
        drop(out_w);
        self.snapshot.starts += 1;
        let pid = instance.pid;
        if let Some(t) = self.activating.as_mut()
            && t.task_created_ns == 0
        {
            t.task_created_ns = instance.milestones.created_ns;
            t.task_started_ns = instance.milestones.started_ns;
        }
        let forward = self.a.runtime.forward_port();
        self.track(instance, id, !s.notify && forward.is_none(), Some(output));
        if let Some(port) = forward {
            self.forward(pid, port)?;
        }
        Ok(())
    }

    /// For an image that binds its own port: forward the function's connections to it
    /// once it accepts there, which is when the instance counts as ready.
    fn forward(&mut self, pid: i32, port: u16) -> Result<(), String> {
        // faasd alone accepts on the sockets of such a function.
        for s in self.sockets.iter() {
            sockets::set_nonblocking(s.get_ref()).map_err(|e| format!("forwarding: {e}"))?;
        }
        let connector = crate::forward::Connector::new(pid)
            .map_err(|e| format!("entering the instance's network namespace: {e}"))?;
        let notices = self.notice_tx.clone();
        let deadline = Instant::now() + self.a.config.start_timeout;
        let task = tokio::spawn(crate::forward::serve(
            self.sockets.clone(),
            connector,
            port,
            deadline,
            move || {
                let _ = notices.send((pid, Notice::Ready));
            },
        ));
        if let Some(r) = self.instances.get_mut(&pid) {
            r.forwarder = Some(task.abort_handle());
        }
        Ok(())
    }

    /// Takes an instance under management: exit watch, notify routing, bookkeeping.
    fn track(&mut self, instance: Instance, id: String, ready: bool, output: Option<Output>) {
        let pid = instance.pid;
        self.a.router.register(pid, self.notice_tx.clone());
        if let Ok(fd) = instance.pidfd.try_clone() {
            let exit_tx = self.exit_tx.clone();
            tokio::spawn(async move {
                // SAFETY: the duplicated pidfd is moved into the AsyncFd, which alone closes it.
                if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
                    let _ = afd.readable().await;
                }
                let _ = exit_tx.send(pid);
            });
        }
        let now = Instant::now();
        if let Some(t) = self.activating.as_mut()
            && t.running_ns == 0
        {
            t.running_ns = monotonic_ns();
        }
        self.instances.insert(
            pid,
            Running {
                instance,
                id,
                started: now,
                ready,
                status: None,
                last_watchdog: now,
                stop_deadline: None,
                failed: false,
                output,
                forwarder: None,
            },
        );
        if ready {
            self.mark_ready();
        }
    }

    fn mark_ready(&mut self) {
        if let Some(mut t) = self.activating.take() {
            t.ready_ns = monotonic_ns();
            let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
            let s = &mut self.snapshot;
            s.activation_seconds
                .observe(seconds(t.requested_ns, t.ready_ns));
            s.activation_phases
                .runtime
                .observe(seconds(t.requested_ns, t.running_ns));
            s.activation_phases
                .init
                .observe(seconds(t.running_ns, t.ready_ns));
            self.snapshot.last_activation = Some(t);
        }
    }

    fn on_notice(&mut self, pid: i32, n: Notice) {
        let Some(r) = self.instances.get_mut(&pid) else {
            return;
        };
        match n {
            Notice::Ready => {
                let first = !r.ready;
                r.ready = true;
                r.last_watchdog = Instant::now();
                if first {
                    self.mark_ready();
                }
            }
            Notice::Watchdog => r.last_watchdog = Instant::now(),
            Notice::Status(s) => r.status = Some(s),
            Notice::Stopping => {}
        }
    }

    fn stop(&mut self, pid: i32) {
        let grace = self
            .a
            .settings
            .stop_timeout
            .unwrap_or(self.a.config.stop_timeout);
        if let Some(r) = self.instances.get_mut(&pid)
            && r.stop_deadline.is_none()
        {
            r.stop_deadline = Some(Instant::now() + grace);
            let _ = r.instance.signal(libc::SIGTERM);
        }
    }

    fn kill_failed(&mut self, pid: i32, why: String) {
        if let Some(r) = self.instances.get_mut(&pid) {
            r.failed = true;
            r.stop_deadline = Some(Instant::now());
            let _ = r.instance.signal(libc::SIGKILL);
        }
        self.fail(why);
    }

    fn on_exit(&mut self, pid: i32) {
        let Some(mut r) = self.instances.remove(&pid) else {
            return;
        };
        self.a.router.forget(pid);
        if let Some(f) = r.forwarder.take() {
            f.abort();
        }
        // A container's runtime deletes its task and container here (some milliseconds).
        let how = tokio::task::block_in_place(|| self.a.runtime.reap(&r.instance));
        if let Some(out) = r.output.take() {
            out.finish(&self.a.log, &r.id);
        }
        self.a
            .log
            .write("faasd", &format!("instance {} {how}", r.id));
        if self.a.settings.accept.is_some() {
            return;
        }
        let requested = r.stop_deadline.is_some() && !r.failed;
        if requested {
            return;
        }
        // Unexpected end, or killed for a failure.
        if !r.failed {
            self.snapshot.last_error = Some(format!("instance {} {how}", r.id));
        }
        if r.started.elapsed() < QUICK_EXIT {
            self.crash_streak += 1;
        } else {
            self.crash_streak = 0;
        }
        if !r.failed {
            // A function that ended by itself runs again on the next connection; only
            // min-scale instances come back at once.
            let live = self.instances.len() as u32;
            self.target = self.a.settings.min_scale.max(live).min(self.target);
        }
        if self.target as usize > self.instances.len() {
            self.snapshot.restarts += 1;
        }
        self.schedule_backoff();
        self.reconcile();
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let watchdog = self.a.settings.watchdog;
        let start_timeout = self.a.config.start_timeout;
        for r in self.instances.values_mut() {
            if let Some(out) = r.output.as_mut() {
                out.drain(&self.a.log, &r.id);
            }
        }
        let mut to_kill = Vec::new();
        for (pid, r) in &self.instances {
            if let Some(d) = r.stop_deadline {
                if now >= d {
                    let _ = r.instance.signal(libc::SIGKILL);
                }
                continue;
            }
            if !r.ready && now - r.started > start_timeout {
                to_kill.push((
                    *pid,
                    format!("instance {} sent no READY=1 within {start_timeout:?}", r.id),
                    false,
                ));
            } else if let Some(w) = watchdog
                && r.ready
                && now - r.last_watchdog > w
            {
                to_kill.push((
                    *pid,
                    format!("instance {} missed its watchdog ({w:?})", r.id),
                    true,
                ));
            }
        }
        for (pid, why, is_watchdog) in to_kill {
            self.snapshot.watchdog_kills += u64::from(is_watchdog);
            self.kill_failed(pid, why);
        }
        if self.backoff_until.is_some_and(|t| now >= t) {
            self.reconcile();
        }
        self.check_idle(now);
    }

    /// Scale to zero (or to the minimum) after `zero-duration` without a new connection,
    /// with nothing queued and no connection still open.
    fn check_idle(&mut self, now: Instant) {
        if self.draining.is_some() {
            return;
        }
        let Some(after) = self.a.settings.scale_to_zero_after else {
            return;
        };
        if self.a.settings.accept.is_some() || self.target <= self.a.settings.min_scale {
            return;
        }
        let lookups: u64 = {
            let dp = self.a.dataplane.lock().expect("dataplane lock");
            self.a
                .slots
                .iter()
                .map(|s| dp.slot_counters(*s).lookups)
                .sum()
        };
        if lookups != self.last_lookups {
            self.last_lookups = lookups;
            self.last_activity = now;
            return;
        }
        if now - self.last_activity < after {
            return;
        }
        if self.sockets.iter().any(|s| sockets::pending(s.get_ref()))
            || has_open_connections(self.a.address, &self.a.settings.ports)
        {
            self.last_activity = now;
            return;
        }
        self.a.log.write(
            "faasd",
            &format!(
                "idle for {after:?}: scaling to {}",
                self.a.settings.min_scale
            ),
        );
        self.target = self.a.settings.min_scale;
        self.reconcile();
    }

    async fn stop_all(&mut self, exit_rx: &mut mpsc::UnboundedReceiver<i32>) {
        self.target = 0;
        let pids: Vec<i32> = self.instances.keys().copied().collect();
        for pid in pids {
            self.stop(pid);
        }
        let mut tick = tokio::time::interval(TICK);
        while !self.instances.is_empty() {
            tokio::select! {
                Some(pid) = exit_rx.recv() => self.on_exit(pid),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    /// Writes the running instances' pids and ids (runtime dir: gone after a reboot, when
    /// no instance can have survived anyway).
    fn record_instances(&self) {
        let path = instances_file(&self.a.config.runtime_dir, &self.a.spec);
        let text: String = self
            .snapshot
            .instances
            .iter()
            .map(|i| format!("{} {} {}\n", i.pid, i.id, self.fingerprint))
            .collect();
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!("recording instances in {}: {e}", path.display());
        }
    }

    fn publish(&mut self) {
        let s = &mut self.snapshot;
        s.instances = self
            .instances
            .iter()
            .map(|(pid, r)| InstanceInfo {
                id: r.id.clone(),
                pid: *pid,
                ready: r.ready,
                status: r.status.clone(),
            })
            .collect();
        s.instances.sort_by_key(|i| i.pid);
        let pids: Vec<i32> = s.instances.iter().map(|i| i.pid).collect();
        // A draining version's instances are not the function's any more: the new
        // version owns the record.
        if pids != self.recorded_pids && self.draining.is_none() {
            self.recorded_pids = pids;
            self.record_instances();
        }
        let s = &mut self.snapshot;
        s.retry_in_ms = self
            .backoff_until
            .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64);
        s.phase = if s.retry_in_ms.is_some() {
            Phase::CrashLoop
        } else if s.instances.is_empty() {
            Phase::Stopped
        } else if s.instances.iter().all(|i| i.ready) {
            Phase::Running
        } else {
            Phase::Starting
        };
        *self.state.lock().expect("state lock") = s.clone();
    }
}

/// Where an instance's stdout and stderr go (see [`Output`]).
pub fn output_path(runtime_dir: &std::path::Path, spec: &FunctionSpec, instance: &str) -> PathBuf {
    runtime_dir
        .join("output")
        .join(&spec.namespace)
        .join(&spec.name)
        .join(instance)
}

/// Where the pids of a function's running instances are kept, for a restarted daemon.
pub fn instances_file(runtime_dir: &std::path::Path, spec: &FunctionSpec) -> PathBuf {
    runtime_dir
        .join("instances")
        .join(&spec.namespace)
        .join(&spec.name)
}

/// Whether a TCP connection to one of the function's ports is still open (accepted
/// sockets live in this namespace, so `/proc/net/tcp6` sees them).
fn has_open_connections(addr: Ipv6Addr, ports: &[Port]) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp6") else {
        return false;
    };
    let key = faasd_common::BindingKey::new(addr, 0, 0);
    let hex_addr: String = key.addr.iter().map(|w| format!("{w:08X}")).collect();
    let locals: Vec<String> = ports
        .iter()
        .filter(|p| p.protocol == crate::spec::Protocol::Tcp)
        .map(|p| format!("{hex_addr}:{:04X}", p.port))
        .collect();
    table.lines().skip(1).any(|l| {
        let mut f = l.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) = (f.nth(1), f.next(), f.next()) else {
            return false;
        };
        // 0A = LISTEN, 06 = TIME_WAIT, 07 = CLOSE: nothing left to serve.
        !matches!(state, "0A" | "06" | "07") && locals.iter().any(|x| x == local)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_are_found_in_proc_format() {
        // The format check runs against this host's real table: a listening socket on
        // ::1 must not count as an open connection, an established one must.
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = [Port {
            name: "t".into(),
            port,
            protocol: crate::spec::Protocol::Tcp,
        }];
        assert!(!has_open_connections(Ipv6Addr::LOCALHOST, &ports));
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _s = l.accept().unwrap();
        assert!(has_open_connections(Ipv6Addr::LOCALHOST, &ports));
    }
}
