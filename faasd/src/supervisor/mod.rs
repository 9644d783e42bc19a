//! The supervisor of one function: a task that owns the function's sockets and instances.
//!
//! While the function is stopped the task waits on its sockets and its mailbox and nothing
//! else: no timer, no wake-up. The first pending connection (or datagram) starts an
//! instance, which accepts that very connection from the kernel's queue. A start runs as a
//! task of its own and reports back, so the supervisor keeps handling orders, notices and
//! exits meanwhile. Every timer (stop grace, start timeout, watchdog, crash-loop backoff,
//! idle check, output polling) is a deadline computed from the state, and the task sleeps
//! until the earliest one only while one exists. With nothing due at all, the supervisor
//! parks and its task ends (see `park`).

use std::{
    collections::HashMap,
    net::SocketAddrV6,
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::select_all;
use tokio::{io::unix::AsyncFd, sync::oneshot};

use faasd_core::{
    config::{Config, DYNAMIC_USER},
    spec::{ScaleType, Settings},
    store::FunctionRecord,
};

use crate::{
    clock::monotonic_ns,
    layout,
    logs::{FunctionLog, Output},
    mailbox::Mailbox,
    metrics::Latencies,
    notify::{self, Notice, NoticeSender},
    runtime::{Instance, Launch, Milestones, RunAs, Runtime, cgroup},
    sockets,
    status::{ActivationTiming, FunctionState, InstanceInfo, Phase},
};

mod autoscale;
mod connections;
mod park;
#[cfg(test)]
mod tests;

pub use park::{Lot, parked};

/// An instance that ends sooner than this after starting counts towards a crash loop.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// Quick exits in a row tolerated before restarts are delayed.
const CRASH_LOOP_AFTER: u32 = 3;
/// Longest delay between restarts of a crash-looping function.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A draining version stops once its sockets have had nothing queued for this long, which
/// also lets requests it already accepted finish.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// How often a draining version looks at its queues.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// How often running instances' output is copied into the function's log.
const OUTPUT_POLL: Duration = Duration::from_millis(250);
/// The longest gap between idle checks of a running function that may scale down.
const IDLE_CHECK_MAX: Duration = Duration::from_secs(1);

/// Instance ids are unique for the daemon's life, across versions of a function.
static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);
/// Times any supervisor woke up: the proof that idle functions cost no CPU.
static WAKEUPS: AtomicU64 = AtomicU64::new(0);

/// How many times supervisors have woken up since the daemon started.
pub fn wakeups() -> u64 {
    WAKEUPS.load(Ordering::Relaxed)
}

/// The steering counters of one function, read through the data plane's reader.
pub trait Lookups: Send + Sync + std::fmt::Debug {
    /// Lookups that matched the function's bindings so far (all its sockets).
    fn lookups(&self) -> u64;
}

/// Orders for a supervisor.
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

/// Everything a supervisor receives.
#[derive(Debug)]
enum Event {
    Command(Command),
    Exited(i32),
    Notice(i32, Notice),
    /// A forwarded instance's probe passed: it is ready.
    Reachable(i32),
    Started(Started),
    Reaped(Box<Running>, String),
    /// A prepare that ran as its own task ended.
    Prepared(Result<Box<Standby>, String>),
    /// A prepared instance that was not used has been released.
    Discarded(String),
}

/// The instance a function with `faasd.dev/prepare` keeps while it is stopped, and the
/// task that reports its end.
#[derive(Debug)]
struct Standby {
    prepared: crate::runtime::prepared::Prepared,
    output: Output,
    watch: Option<tokio::task::AbortHandle>,
}

impl Standby {
    /// The instance and its output, its exit watch stopped: its end is someone else's
    /// to report from here (the started instance's own watch, or its release).
    fn unwatched(self) -> (crate::runtime::prepared::Prepared, Output) {
        if let Some(w) = self.watch {
            w.abort();
        }
        (self.prepared, self.output)
    }
}

/// The outcome of a start that ran as its own task.
#[derive(Debug)]
struct Started {
    id: String,
    result: Result<Instance, String>,
    output: Output,
    running_ns: u64,
}

/// The daemon's handle on a supervisor.
#[derive(Debug)]
pub struct Handle {
    mailbox: Arc<Mailbox<Event>>,
    /// Latest state.
    pub state: Arc<Mutex<FunctionState>>,
    /// The function's sockets, in `settings.ports` order (for their queue statistics).
    pub sockets: Arc<[OwnedFd]>,
}

impl Handle {
    /// Sends an order; gives it back when the supervisor has ended.
    pub fn send(&self, c: Command) -> Result<(), Command> {
        self.mailbox.post(Event::Command(c)).map_err(|e| match e {
            Event::Command(c) => c,
            _ => unreachable!("only commands are posted here"),
        })
    }

    /// Whether the supervisor is parked (stopped, with no task of its own).
    pub fn parked(&self) -> bool {
        self.mailbox.is_parked()
    }

    /// Sends an order that answers, and waits for the answer (at once if the supervisor
    /// has already ended).
    pub async fn ask(&self, make: impl FnOnce(oneshot::Sender<()>) -> Command) {
        let (done, wait) = oneshot::channel();
        if self.send(make(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// An instance from a previous daemon that is still serving; its sockets were recovered.
#[derive(Debug)]
pub struct Adopted {
    /// The instance.
    pub instance: Instance,
    /// Its output file, if it could be reopened.
    pub output: Option<Output>,
}

/// What a supervisor needs to run a function; shared with its start tasks.
#[derive(Debug)]
pub struct Context {
    /// The function as stored (spec and address), shared with the daemon.
    pub record: Arc<FunctionRecord>,
    /// Its settings.
    pub settings: Arc<Settings>,
    /// Daemon configuration.
    pub config: Arc<Config>,
    /// The runtime starting instances.
    pub runtime: Arc<dyn Runtime>,
    /// The function's steering counters (for idle detection).
    pub lookups: Box<dyn Lookups>,
    /// Notify routing.
    pub router: notify::Router,
    /// Log sink.
    pub log: FunctionLog,
    /// cgroup of the function.
    pub cgroup: Option<PathBuf>,
    /// The host-wide latency histograms.
    pub latencies: Arc<Latencies>,
    /// Where the function waits while it is parked.
    pub lot: Arc<Lot>,
    /// Calls out, for process functions (none where the host cannot offer them).
    pub egress: Option<Arc<crate::egress::Egress>>,
}

#[derive(Debug)]
struct Running {
    instance: Instance,
    started: Instant,
    ready: bool,
    status: Option<String>,
    last_watchdog: Instant,
    /// Asked to stop: SIGKILL is due at this moment.
    stop_deadline: Option<Instant>,
    /// SIGKILL has been sent; only its exit is awaited.
    killed: bool,
    /// Killed by faasd for a failure (watchdog, start timeout): restart it.
    failed: bool,
    output: Option<Output>,
    /// An image that binds its own port: the wait for it to accept there, after which
    /// connections are forwarded to it.
    probe: Option<tokio::task::AbortHandle>,
}

/// How the task ends, once it has been told to.
#[derive(Debug)]
struct Ending {
    done: Option<oneshot::Sender<()>>,
    stop_instances: bool,
}

#[derive(Debug)]
struct Supervisor {
    ctx: Arc<Context>,
    sockets: Arc<[OwnedFd]>,
    /// The sockets registered with tokio's reactor, made when first waited on; a parked
    /// function has none (the lot watches its sockets).
    watched: Option<Arc<sockets::Watched>>,
    mailbox: Arc<Mailbox<Event>>,
    instances: HashMap<i32, Running>,
    /// Starts in flight.
    starting: u32,
    /// Ended instances whose runtime is still releasing them.
    reaping: u32,
    /// Instances that should be running (non-accept mode).
    target: u32,
    /// Set once a new version took over: (who to tell, since when nothing was queued).
    draining: Option<(oneshot::Sender<()>, Option<Instant>)>,
    ending: Option<Ending>,
    crash_streak: u32,
    backoff_until: Option<Instant>,
    /// Next idle check, while the function may scale down.
    idle_check: Option<Instant>,
    last_lookups: u64,
    last_activity: Instant,
    next_output: Instant,
    /// Set while an activation from zero awaits its first ready instance.
    activating: Option<ActivationTiming>,
    state: Arc<Mutex<FunctionState>>,
    snapshot: FunctionState,
    recorded_pids: Vec<i32>,
    /// Scaling with the load, for functions that ask for it.
    autoscaler: autoscale::Autoscaler,
    /// Images that bind their own port: their instances' paths, and the accept loop that
    /// hands connections to them.
    forwarding: Option<(Arc<crate::forward::Paths>, tokio::task::AbortHandle)>,
    /// The prepared instance waiting for the next activation, and whether one is being
    /// prepared.
    standby: Option<Standby>,
    preparing: bool,
    /// The last prepare failed (or its instance ended unused): none until the next
    /// activation.
    prepare_failed: bool,
    /// The instances are frozen (`faasd.dev/freeze-after`) until a connection comes.
    frozen: bool,
}

/// Starts the supervisor of a function over its sockets (in `settings.ports` order); it
/// runs until told to shut down or drain.
pub fn spawn(
    ctx: Context,
    sockets: Vec<OwnedFd>,
    adopted: Vec<Adopted>,
) -> std::io::Result<Handle> {
    if ctx.settings.accept.is_some() {
        // In accept mode faasd alone accepts on the socket.
        for s in &sockets {
            sockets::set_nonblocking(s)?;
        }
    }
    let sockets: Arc<[OwnedFd]> = sockets.into();
    let snapshot = FunctionState {
        activation_seconds: ctx.settings.latency_histograms.then(Default::default),
        ..Default::default()
    };
    let state = Arc::new(Mutex::new(snapshot));
    let mailbox = Arc::new(Mailbox::new());
    let ctx = Arc::new(ctx);
    let mut s = Supervisor::from_parked(park::Parked {
        standby: None,
        target: ctx.settings.min_scale,
        ctx,
        sockets: sockets.clone(),
        mailbox: mailbox.clone(),
        state: state.clone(),
        crash_streak: 0,
        last_lookups: 0,
        last_activity: Instant::now(),
    });
    for ad in adopted {
        s.track(ad.instance, true, ad.output);
    }
    s.target = s.target.max(s.instances.len() as u32);
    // A stopped function is parked straight away: deploying or restoring it spawns no
    // task at all (but for its prepare, when it asks for one).
    s.reconcile();
    s.keep_prepared();
    s.publish();
    if s.parkable() {
        if let Err(me) = s.park() {
            tokio::spawn(me.run(false));
        }
    } else {
        tokio::spawn(s.run(false));
    }
    Ok(Handle {
        mailbox,
        state,
        sockets,
    })
}

/// Resolves when one of the sockets has a connection or datagram waiting (never without
/// sockets to watch).
async fn pending(sockets: Option<Arc<sockets::Watched>>) {
    let Some(sockets) = sockets else {
        return std::future::pending().await;
    };
    loop {
        let (ready, _, _) = select_all(sockets.fds().iter().map(|s| Box::pin(s.readable()))).await;
        let Ok(mut guard) = ready else { return };
        if sockets::pending(guard.get_inner()) {
            return;
        }
        // Readiness left over from before the last instance drained the queue. The guard
        // only clears it if no new event arrived since it was taken, so nothing is missed.
        guard.clear_ready();
    }
}

impl Supervisor {
    /// A supervisor with no instance and nothing in flight, over what a parked one kept
    /// (or what a new one starts with).
    fn from_parked(p: park::Parked) -> Self {
        let snapshot = p.state.lock().expect("state lock").clone();
        Self {
            ctx: p.ctx,
            sockets: p.sockets,
            watched: None,
            mailbox: p.mailbox,
            instances: HashMap::new(),
            starting: 0,
            reaping: 0,
            target: p.target,
            draining: None,
            ending: None,
            crash_streak: p.crash_streak,
            backoff_until: None,
            idle_check: None,
            last_lookups: p.last_lookups,
            last_activity: p.last_activity,
            next_output: Instant::now(),
            activating: None,
            state: p.state,
            snapshot,
            recorded_pids: Vec::new(),
            autoscaler: autoscale::Autoscaler::default(),
            forwarding: None,
            standby: p.standby,
            preparing: false,
            prepare_failed: false,
            frozen: false,
        }
    }

    /// What parking keeps; everything else is empty or unset while parkable, and the
    /// snapshot was just published into `state`.
    fn into_parked(self) -> park::Parked {
        park::Parked {
            ctx: self.ctx,
            sockets: self.sockets,
            mailbox: self.mailbox,
            state: self.state,
            target: self.target,
            crash_streak: self.crash_streak,
            last_lookups: self.last_lookups,
            last_activity: self.last_activity,
            standby: self.standby,
        }
    }

    /// The supervisor's loop. `resumed`: woken from parking, so something is waiting
    /// (a connection or a message), and it must be taken before parking again.
    async fn run(mut self, resumed: bool) {
        self.reconcile();
        // Woken by a connection, it starts the instance at once: registering the sockets
        // with the reactor and waiting on them would only say what a poll says now.
        if resumed && self.watching() && self.sockets.iter().any(sockets::pending) {
            self.on_pending();
        }
        self.keep_prepared();
        self.publish();
        let mailbox = self.mailbox.clone();
        let mut may_park = !resumed;
        loop {
            if may_park && self.parkable() {
                match self.park() {
                    // Resumed on a new task by the next connection or message.
                    Ok(()) => return,
                    Err(me) => self = *me,
                }
            }
            may_park = true;
            let deadline = self.next_deadline();
            let watched = if self.watching() {
                self.watched()
            } else {
                // Instances accept on the sockets: registered, they would wake the reactor
                // at every connection the instances take. (Forwarding accepts on them
                // itself, through the same registration.)
                if self.watched.is_some() && self.ctx.runtime.upstream().is_none() {
                    self.watched = None;
                }
                None
            };
            let watch = watched.is_some();
            tokio::select! {
                ev = mailbox.recv() => self.on_event(ev),
                () = pending(watched), if watch => self.on_pending(),
                () = sleep_until(deadline), if deadline.is_some() => self.on_timer(Instant::now()),
            }
            WAKEUPS.fetch_add(1, Ordering::Relaxed);
            if self.drained() {
                let done = self.draining.take().map(|(done, _)| done);
                self.end(done, true);
            }
            if self.finished() {
                break;
            }
            self.keep_prepared();
            self.publish();
        }
        self.mailbox.close();
        for pid in self.instances.keys() {
            self.ctx.router.forget(*pid);
        }
        self.ctx.log.close();
        if let Some(done) = self.ending.and_then(|e| e.done) {
            let _ = done.send(());
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Command(Command::Scale(n)) => {
                self.target = n;
                self.crash_streak = 0;
                self.prepare_failed = false;
                self.backoff_until = None;
                self.reconcile();
            }
            Event::Command(Command::Drain { done }) => {
                self.draining = Some((done, None));
                self.discard_standby();
            }
            Event::Command(Command::Shutdown {
                stop_instances,
                done,
            }) => self.end(Some(done), stop_instances),
            Event::Exited(pid) => self.on_exit(pid),
            Event::Notice(pid, n) => self.on_notice(pid, n),
            Event::Reachable(pid) => self.set_ready(pid),
            Event::Started(s) => self.on_started(s),
            Event::Reaped(r, how) => self.on_reaped(*r, &how),
            Event::Prepared(p) => self.on_prepared(p),
            Event::Discarded(id) => {
                self.reaping -= 1;
                self.ctx
                    .log
                    .write("faasd", &format!("prepared instance {id} released"));
            }
        }
    }

    /// Begins the end: the task finishes once no start is in flight and, when instances
    /// are to stop, none runs any more.
    fn end(&mut self, done: Option<oneshot::Sender<()>>, stop_instances: bool) {
        if let Some(e) = &mut self.ending {
            // A second order to end: answer it too (the first one's answer still comes).
            e.stop_instances |= stop_instances;
            if let Some(d) = done {
                let _ = d.send(());
            }
        } else {
            self.ending = Some(Ending {
                done,
                stop_instances,
            });
        }
        // A prepared instance serves no version but this one, and no later daemon.
        self.discard_standby();
        if stop_instances {
            self.target = 0;
            let pids: Vec<i32> = self.instances.keys().copied().collect();
            for pid in pids {
                self.stop(pid);
            }
        }
    }

    fn finished(&self) -> bool {
        let Some(e) = &self.ending else { return false };
        // Releases (a prepared instance's among them) are waited for either way: nothing of
        // a prepared instance outlives its supervisor.
        self.starting == 0
            && !self.preparing
            && self.reaping == 0
            && (!e.stop_instances || self.instances.is_empty())
    }

    /// The earliest moment something is due, if anything is.
    fn next_deadline(&self) -> Option<Instant> {
        let settings = &self.ctx.settings;
        let start_timeout = self.ctx.config.start_timeout;
        let mut due: Option<Instant> = None;
        let mut at = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        for r in self.instances.values() {
            match r.stop_deadline {
                Some(d) if !r.killed => at(d),
                Some(_) => {}
                None if !r.ready => at(r.started + start_timeout),
                None => {
                    // A frozen instance cannot ping; its watchdog starts again at the thaw.
                    if let Some(w) = settings.watchdog.filter(|_| !self.frozen) {
                        at(r.last_watchdog + w);
                    }
                }
            }
        }
        if self.instances.values().any(|r| r.output.is_some()) {
            at(self.next_output);
        }
        if let Some(t) = self.backoff_until {
            at(t);
        }
        if let Some(t) = self.idle_check {
            at(t);
        }
        if let Some(t) = self.autoscaler.check {
            at(t);
        }
        if self.draining.is_some() {
            at(Instant::now() + DRAIN_POLL);
        }
        due
    }

    fn on_timer(&mut self, now: Instant) {
        if now >= self.next_output {
            for r in self.instances.values_mut() {
                if let Some(out) = r.output.as_mut() {
                    out.drain(&self.ctx.log, &r.instance.id);
                }
            }
            self.next_output = now + OUTPUT_POLL;
        }
        let watchdog = self.ctx.settings.watchdog.filter(|_| !self.frozen);
        let start_timeout = self.ctx.config.start_timeout;
        let mut to_kill = Vec::new();
        for (pid, r) in &mut self.instances {
            if let Some(d) = r.stop_deadline {
                if now >= d && !r.killed {
                    r.killed = true;
                    let _ = r.instance.signal(libc::SIGKILL);
                }
                continue;
            }
            if !r.ready && now >= r.started + start_timeout {
                to_kill.push((
                    *pid,
                    format!(
                        "instance {} sent no READY=1 within {start_timeout:?}",
                        r.instance.id
                    ),
                    false,
                ));
            } else if let Some(w) = watchdog
                && r.ready
                && now >= r.last_watchdog + w
            {
                to_kill.push((
                    *pid,
                    format!("instance {} missed its watchdog ({w:?})", r.instance.id),
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
        if self.idle_check.is_some_and(|t| now >= t) {
            self.check_idle(now);
        }
        if self.autoscaler.check.is_some_and(|t| now >= t) {
            self.autoscale(now);
        }
    }

    /// Keeps a load check due while the function scales with the load and has instances.
    fn schedule_autoscale(&mut self, now: Instant) {
        let wanted = self.ctx.settings.autoscale.is_some()
            && self.draining.is_none()
            && self.ending.is_none()
            && (!self.instances.is_empty() || self.starting > 0);
        self.autoscaler.check = match (wanted, self.autoscaler.check) {
            (false, _) => None,
            (true, Some(t)) => Some(t),
            (true, None) => Some(now + autoscale::TICK),
        };
    }

    /// One load check: the function's load against its instances, a decision if the
    /// target should move (said in the log, in `describe` and in `/metrics`).
    fn autoscale(&mut self, now: Instant) {
        self.autoscaler.check = None;
        // A reference count, not a copy: the settings are read below while `self` changes.
        let ctx = self.ctx.clone();
        let s = &ctx.settings;
        let Some(a) = &s.autoscale else {
            return;
        };
        let queued: u64 = self
            .sockets
            .iter()
            .zip(&s.ports)
            .filter(|(_, p)| p.protocol == faasd_core::spec::Protocol::Tcp)
            .filter_map(|(fd, _)| sockets::queue_stats(fd, true).ok())
            .map(|q| q.queued)
            .sum();
        let open = match a.kind {
            ScaleType::Capacity => connections::open(ctx.record.address, &s.ports),
            ScaleType::Rps | ScaleType::Cpu => None,
        };
        let load = autoscale::Load {
            // The dump failing (it does not here) leaves what waits as the load.
            open: open.as_ref().map_or(queued, |o| o.len() as u64),
            queued,
            running: self.live(),
            starting: self.starting,
            target: self.target,
            // A crash loop (backing off, or as many quick exits in a row as make one), or
            // failing with nothing running: more starts would only fail more. One failure
            // next to instances that run (a start that lost a race) does not stop it.
            crashing: self.backoff_until.is_some()
                || self.crash_streak >= CRASH_LOOP_AFTER
                || (self.crash_streak > 0 && self.live() == 0),
            counter: match a.kind {
                _ if !self.autoscaler.counter_due(now) => None,
                ScaleType::Capacity => None,
                ScaleType::Rps => Some(ctx.lookups.lookups()),
                ScaleType::Cpu => Some(self.cpu_usec()),
            },
        };
        // Taken out for the check, which may look at the instances; the idle ones it
        // found are the ones a decision down stops (not looked up again).
        let mut autoscaler = std::mem::take(&mut self.autoscaler);
        let mut idle = None;
        let checked = autoscaler.check(now, a, (s.min_scale, s.max_scale), &load, || {
            let found = self.idle_instances(open.as_deref())?;
            let n = found.len() as u32;
            idle = Some(found);
            Some(n)
        });
        self.autoscaler = autoscaler;
        let status = self.snapshot.autoscale.get_or_insert_with(Default::default);
        status.kind = a.kind.as_str().to_owned();
        status.load = checked.load;
        status.queued = queued;
        match &checked.decision {
            Some(d) => {
                status.target = d.target;
                status.last_decision = Some(d.reason.clone());
                if d.target > self.target {
                    status.scaled_up += 1;
                } else {
                    status.scaled_down += 1;
                }
            }
            None => status.target = self.target,
        }
        if let Some(d) = checked.decision {
            self.ctx
                .log
                .write("faasd", &format!("autoscale: {}", d.reason));
            self.target = d.target;
            self.reconcile_with(idle);
        }
        self.schedule_autoscale(now);
    }

    /// CPU time the instances have used, in µs, from their cgroups (one for every process
    /// instance of the function, one each for containers).
    fn cpu_usec(&self) -> u64 {
        let mut seen = Vec::new();
        for pid in self.instances.keys() {
            if let Some(dir) = cgroup::of_process(*pid)
                && !seen.contains(&dir)
            {
                seen.push(dir);
            }
        }
        seen.iter().filter_map(|d| cgroup::cpu_usage_usec(d)).sum()
    }

    /// The running instances that hold none of the function's open connections, or
    /// `None` when that cannot be told (then none may be stopped for it).
    fn idle_instances(&self, open: Option<&[u32]>) -> Option<Vec<i32>> {
        let fetched;
        let open = match open {
            Some(o) => o,
            None => {
                fetched = connections::open(self.ctx.record.address, &self.ctx.settings.ports)?;
                &fetched
            }
        };
        let mut idle = Vec::new();
        for (pid, r) in &self.instances {
            if r.stop_deadline.is_some() {
                continue;
            }
            let held = match &self.forwarding {
                // faasd holds a forwarded instance's connections itself.
                Some((paths, _)) if r.probe.is_some() => paths.open(*pid) as usize,
                _ => connections::held_by(*pid, open)?,
            };
            if held == 0 {
                idle.push(*pid);
            }
        }
        idle.sort_unstable();
        Some(idle)
    }

    /// Instances running and not asked to stop.
    fn live(&self) -> u32 {
        self.instances
            .values()
            .filter(|r| r.stop_deadline.is_none())
            .count() as u32
    }

    /// Whether a draining version has had nothing queued for [`DRAIN_QUIET`].
    fn drained(&mut self) -> bool {
        let Some((_, quiet_since)) = self.draining.as_mut() else {
            return false;
        };
        if self.sockets.iter().any(sockets::pending) {
            *quiet_since = None;
            return false;
        }
        quiet_since.get_or_insert_with(Instant::now).elapsed() >= DRAIN_QUIET
    }

    /// Whether the sockets should be watched: nothing accepts on them (stopped function),
    /// or, in accept mode, there is room for another instance.
    fn watching(&self) -> bool {
        if self.backoff_until.is_some() || self.ending.is_some() {
            return false;
        }
        let busy = self.instances.len() as u32 + self.starting;
        match self.ctx.settings.accept {
            Some(max) => busy < max,
            // A frozen instance cannot take the connection: faasd thaws it.
            None => busy == 0 || self.frozen,
        }
    }

    /// The sockets' registration with the reactor, made on first use. When it cannot be
    /// made (the kernel's epoll limits), the function is retried a second later.
    fn watched(&mut self) -> Option<Arc<sockets::Watched>> {
        if self.watched.is_none() {
            match sockets::Watched::new(&self.sockets) {
                Ok(w) => self.watched = Some(Arc::new(w)),
                Err(e) => {
                    self.fail(format!("watching the sockets: {e}"));
                    self.backoff_until = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        self.watched.clone()
    }

    fn on_pending(&mut self) {
        if let Some(max) = self.ctx.settings.accept {
            self.accept_connections(max);
            return;
        }
        if self.frozen {
            self.thaw();
            self.snapshot.thaws += 1;
            // Idle again from now, checked as before it froze.
            self.idle_check = None;
            self.schedule_idle_check(Instant::now());
            return;
        }
        self.snapshot.activations += 1;
        self.prepare_failed = false;
        self.activating = Some(ActivationTiming {
            requested_ns: monotonic_ns(),
            ..Default::default()
        });
        self.target = self.target.max(1);
        self.reconcile();
        // A burst against a function at zero starts what its queue asks for at once.
        if self.ctx.settings.autoscale.is_some() {
            self.autoscale(Instant::now());
        }
        // Written once the start is under way: a parked function's log is closed, and
        // opening it would come before a prepared instance gets its sockets.
        self.ctx
            .log
            .write("faasd", "connection pending: activating");
    }

    /// Accept=yes: one instance per connection, up to `max` at once; the rest wait in
    /// the kernel's queue.
    fn accept_connections(&mut self, max: u32) {
        while self.instances.len() as u32 + self.starting < max {
            match sockets::accept(&self.sockets[0]) {
                Ok(Some(conn)) => self.start_instance(Some(conn)),
                Ok(None) => break,
                Err(e) => {
                    self.fail(format!("accept: {e}"));
                    break;
                }
            }
        }
    }

    /// Starts or stops instances until as many run (or are starting) as the target says.
    fn reconcile(&mut self) {
        self.reconcile_with(None);
    }

    /// As [`Supervisor::reconcile`], stopping first the instances of `idle` when it is
    /// known (else they are looked up when some must stop).
    fn reconcile_with(&mut self, idle: Option<Vec<i32>>) {
        if self.ctx.settings.accept.is_some() || self.ending.is_some() {
            return;
        }
        if self.backoff_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.backoff_until = None;
        if let Some((paths, _)) = &self.forwarding {
            paths.set_wanted(self.target);
        }
        let live = self.live();
        for _ in live + self.starting..self.target {
            self.start_instance(None);
        }
        if live > self.target {
            // Idle instances first: an instance serving a connection is the last to go.
            let idle = idle
                .or_else(|| self.idle_instances(None))
                .unwrap_or_default();
            let mut extra: Vec<i32> = self
                .instances
                .iter()
                .filter(|(_, r)| r.stop_deadline.is_none())
                .map(|(p, _)| *p)
                .collect();
            extra.sort_unstable_by_key(|p| (!idle.contains(p), *p));
            for pid in extra.into_iter().take((live - self.target) as usize) {
                self.stop(pid);
            }
        }
        let now = Instant::now();
        self.schedule_idle_check(now);
        self.schedule_autoscale(now);
    }

    /// Keeps an idle check due while the function runs above its minimum and may scale
    /// down, or runs and may freeze; none otherwise.
    fn schedule_idle_check(&mut self, now: Instant) {
        let s = &self.ctx.settings;
        let may_scale_down = self.draining.is_none()
            && s.accept.is_none()
            && self.target > s.min_scale
            && s.scale_to_zero_after.is_some();
        let may_freeze =
            self.draining.is_none() && s.freeze_after.is_some() && self.target > 0 && !self.frozen;
        match (may_scale_down || may_freeze, self.idle_check) {
            (false, _) => self.idle_check = None,
            (true, Some(_)) => {}
            (true, None) => {
                self.last_activity = now;
                self.last_lookups = self.ctx.lookups.lookups();
                self.idle_check = Some(now + self.idle_step());
            }
        }
    }

    fn idle_step(&self) -> Duration {
        let s = &self.ctx.settings;
        let after = [s.scale_to_zero_after, s.freeze_after]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_default();
        (after / 4).clamp(Duration::from_millis(50), IDLE_CHECK_MAX)
    }

    /// The cgroups that hold the instances: a container's own, or the function's.
    fn instance_cgroups(&self) -> Vec<PathBuf> {
        if self.ctx.record.spec.image.is_some() {
            self.instances
                .values()
                .filter_map(|r| self.ctx.runtime.instance_cgroup(&r.instance.id))
                .collect()
        } else {
            self.ctx.cgroup.iter().cloned().collect()
        }
    }

    /// Freezes the instances (cgroup v2's freezer: they stay in memory, scheduled never)
    /// and, where the memory controller is on, pushes their memory out.
    fn freeze(&mut self) {
        let cgroups = self.instance_cgroups();
        if cgroups.is_empty() {
            return;
        }
        for (i, cg) in cgroups.iter().enumerate() {
            if let Err(e) = cgroup::freeze(cg, true) {
                for done in &cgroups[..i] {
                    let _ = cgroup::freeze(done, false);
                }
                self.fail(format!("freezing {}: {e}", cg.display()));
                return;
            }
            cgroup::reclaim(cg);
        }
        self.frozen = true;
        self.snapshot.frozen = true;
        self.ctx
            .log
            .write("faasd", "idle: frozen until the next connection");
    }

    /// Thaws frozen instances.
    fn thaw(&mut self) {
        if !self.frozen {
            return;
        }
        for cg in self.instance_cgroups() {
            if let Err(e) = cgroup::freeze(&cg, false) {
                tracing::warn!("thawing {}: {e}", cg.display());
            }
        }
        self.frozen = false;
        self.snapshot.frozen = false;
        let now = Instant::now();
        for r in self.instances.values_mut() {
            r.last_watchdog = now;
        }
    }

    fn fail(&mut self, msg: String) {
        tracing::warn!("{}: {msg}", self.ctx.record.spec.id());
        self.ctx.log.write("faasd", &msg);
        self.snapshot.last_error = Some(msg);
    }

    fn schedule_backoff(&mut self) {
        if self.crash_streak < CRASH_LOOP_AFTER {
            return;
        }
        let exp = (self.crash_streak - CRASH_LOOP_AFTER).min(10);
        let delay = (Duration::from_millis(250) * 2u32.pow(exp)).min(MAX_BACKOFF);
        self.backoff_until = Some(Instant::now() + delay);
        self.ctx.log.write(
            "faasd",
            &format!(
                "crash loop: {} quick exits in a row, next start in {delay:?}",
                self.crash_streak
            ),
        );
    }

    /// A start that failed counts towards a crash loop. In accept mode the failed start's
    /// connection is closed and the next one gets its own try: the backoff is for kept
    /// instances only.
    fn start_failed(&mut self, why: String) {
        self.fail(format!("start failed: {why}"));
        if self.ctx.settings.accept.is_none() {
            self.crash_streak += 1;
            self.schedule_backoff();
        }
    }

    /// Starts one instance: the prepared one if there is one, else a new one.
    fn start_instance(&mut self, conn: Option<(OwnedFd, SocketAddrV6)>) {
        if conn.is_none()
            && let Some(standby) = self.standby.take()
        {
            self.go(standby);
            return;
        }
        self.launch_instance(conn, false);
    }

    /// Keeps one instance prepared while the function is stopped, when it asks for it: set
    /// up ahead, so that the next activation costs only the hand-over and the exec.
    fn keep_prepared(&mut self) {
        let wanted = self.ctx.settings.prepare
            && !self.prepare_failed
            && self.standby.is_none()
            && !self.preparing
            && self.ending.is_none()
            && self.draining.is_none()
            && self.backoff_until.is_none()
            && self.instances.is_empty()
            && self.starting == 0
            && self.reaping == 0
            && self.target == 0;
        if wanted {
            self.launch_instance(None, true);
        }
    }

    fn on_prepared(&mut self, prepared: Result<Box<Standby>, String>) {
        self.preparing = false;
        let mut standby = match prepared {
            Ok(s) => *s,
            Err(e) => {
                // Tried again after the next activation, not in a loop meanwhile.
                self.prepare_failed = true;
                self.fail(format!("preparing an instance: {e}"));
                return;
            }
        };
        if self.ending.is_some() || self.draining.is_some() {
            self.release(standby);
            return;
        }
        standby.watch = self.watch_exit(&standby.prepared.instance);
        let instance = &standby.prepared.instance;
        self.ctx.log.write(
            "faasd",
            &format!("instance {} prepared for the next activation", instance.id),
        );
        self.standby = Some(standby);
    }

    /// Hands the prepared instance its sockets, as a task of its own that reports back with
    /// [`Event::Started`]. A prepared instance that cannot take them is killed and released,
    /// and the start fails (the next try starts a new instance).
    fn go(&mut self, standby: Standby) {
        let (prepared, output) = standby.unwatched();
        self.starting += 1;
        self.snapshot.starts += 1;
        let ctx = self.ctx.clone();
        let mailbox = self.mailbox.clone();
        let sockets = &self.sockets;
        // An image that binds its own port gets none: faasd forwards to it.
        let (names, fds): (String, Vec<i32>) = if ctx.runtime.upstream().is_some() {
            (String::new(), Vec::new())
        } else {
            let names: Vec<&str> = ctx.settings.ports.iter().map(|p| p.name.as_str()).collect();
            (
                names.join(":"),
                sockets.iter().map(|s| s.as_raw_fd()).collect(),
            )
        };
        let id = prepared.instance.id.clone();
        // Sent here, not from a task: the instance starts its command on this message, and
        // every hop before it would be paid by the connection waiting for it.
        let went = prepared.go(&names, &fds);
        tokio::spawn(async move {
            let went = match went {
                Ok(going) => tokio::task::spawn_blocking(move || going.running()).await,
                Err(failed) => Ok(Err(failed)),
            };
            let result = match went {
                Ok(Ok(mut instance)) => {
                    // Its task was made and started when it was prepared, not now.
                    instance.milestones = Milestones::default();
                    Ok(instance)
                }
                Ok(Err((instance, e))) => {
                    kill_and_wait(&instance).await;
                    ctx.runtime.reap(&instance).await;
                    Err(format!("the prepared instance {id}: {e}"))
                }
                Err(e) => Err(format!("handing over to the prepared instance: {e}")),
            };
            let started = Started {
                id,
                result,
                output,
                running_ns: monotonic_ns(),
            };
            if let Err(Event::Started(s)) = mailbox.post(Event::Started(started))
                && let Ok(i) = s.result
            {
                let _ = i.signal(libc::SIGKILL);
            }
        });
    }

    /// Lets the prepared instance go, if there is one.
    fn discard_standby(&mut self) {
        if let Some(s) = self.standby.take() {
            self.release(s);
        }
    }

    /// Kills a prepared instance nobody will use and has its runtime release it (a
    /// container's task, container and snapshot), as a task that reports back with
    /// [`Event::Discarded`].
    fn release(&mut self, standby: Standby) {
        let (prepared, output) = standby.unwatched();
        self.reaping += 1;
        let ctx = self.ctx.clone();
        let mailbox = self.mailbox.clone();
        tokio::spawn(async move {
            let instance = prepared.instance;
            kill_and_wait(&instance).await;
            ctx.runtime.reap(&instance).await;
            output.finish(&ctx.log, &instance.id);
            let _ = mailbox.post(Event::Discarded(instance.id));
        });
    }

    /// Starts one instance as a task of its own; it reports back with [`Event::Started`],
    /// or, `prepare`d, with [`Event::Prepared`].
    fn launch_instance(&mut self, conn: Option<(OwnedFd, SocketAddrV6)>, prepare: bool) {
        let seq = INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{}-{seq}", self.ctx.record.spec.name, std::process::id());
        let output_file =
            layout::output_path(&self.ctx.config.runtime_dir, &self.ctx.record.spec, &id);
        let (output, out_w) = match Output::create(output_file.clone()) {
            Ok(o) => o,
            Err(e) => {
                self.start_failed(format!("creating the output file: {e}"));
                return;
            }
        };
        let mut launch = launch(
            &self.ctx,
            &self.sockets,
            id.clone(),
            output_file,
            &conn,
            &out_w,
        );
        if prepare {
            self.preparing = true;
        } else {
            self.starting += 1;
            self.snapshot.starts += 1;
        }
        let ctx = self.ctx.clone();
        let mailbox = self.mailbox.clone();
        // The start task holds the sockets, the connection and the output's write end
        // until the runtime has passed them on.
        let sockets = self.sockets.clone();
        tokio::spawn(async move {
            // The instance's network: a prepared namespace, its rule, its names.
            // (A container's cgroup is its instance's, which the container runtime rules.)
            let network = match &ctx.egress {
                Some(e) => Some(
                    e.admit(
                        &ctx.record.spec,
                        ctx.record.address,
                        &ctx.settings,
                        ctx.cgroup
                            .as_deref()
                            .filter(|_| ctx.record.spec.image.is_none()),
                    )
                    .await,
                ),
                None => None,
            }
            .transpose();
            let launched = match network {
                Ok(network) => {
                    if let Some(n) = &network {
                        launch.netns = Some(n.netns.fd.as_raw_fd());
                        launch.binds = n.binds.clone();
                    }
                    // The instance holds the namespace from here; ours closes after.
                    let r = if prepare {
                        Launched::Prepared(ctx.runtime.prepare(launch).await)
                    } else {
                        Launched::Started(ctx.runtime.start(launch).await)
                    };
                    drop(network);
                    r
                }
                Err(e) => {
                    let e = crate::runtime::RuntimeError::Container(format!(
                        "preparing its network: {e}"
                    ));
                    match prepare {
                        true => Launched::Prepared(Err(e)),
                        false => Launched::Started(Err(e)),
                    }
                }
            };
            let running_ns = monotonic_ns();
            drop((sockets, conn, out_w));
            let event = match launched {
                Launched::Started(result) => Event::Started(Started {
                    id,
                    result: result.map_err(|e| e.to_string()),
                    output,
                    running_ns,
                }),
                Launched::Prepared(result) => Event::Prepared(
                    result
                        .map(|prepared| {
                            Box::new(Standby {
                                prepared,
                                output,
                                watch: None,
                            })
                        })
                        .map_err(|e| e.to_string()),
                ),
            };
            // The supervisor is gone (it waits for its starts, so only a daemon that is
            // exiting gets here): stop what was started rather than leak it.
            match mailbox.post(event) {
                Err(Event::Started(Started { result: Ok(i), .. })) => {
                    let _ = i.signal(libc::SIGKILL);
                }
                Err(Event::Prepared(Ok(s))) => {
                    let _ = s.prepared.instance.signal(libc::SIGKILL);
                }
                _ => {}
            }
        });
    }

    fn on_started(&mut self, s: Started) {
        self.starting -= 1;
        let instance = match s.result {
            Ok(i) => i,
            Err(e) => {
                self.start_failed(e);
                self.reconcile();
                return;
            }
        };
        let pid = instance.pid;
        if let Some(t) = self.activating.as_mut()
            && t.running_ns == 0
        {
            t.task_created_ns = instance.milestones.created_ns;
            t.task_started_ns = instance.milestones.started_ns;
            t.running_ns = s.running_ns;
        }
        let forward = self.ctx.runtime.upstream();
        let ready = !self.ctx.settings.notify && forward.is_none();
        self.track(instance, ready, Some(s.output));
        if let Some(upstream) = forward
            && let Err(e) = self.forward(pid, upstream)
        {
            self.kill_failed(pid, format!("instance {}: {e}", s.id));
        }
        if self.ending.as_ref().is_some_and(|e| e.stop_instances) {
            self.stop(pid);
        }
    }

    /// For an image that binds its own port: forward the function's connections to it
    /// once it accepts there, which is when the instance counts as ready.
    fn forward(&mut self, pid: i32, upstream: crate::forward::Upstream) -> Result<(), String> {
        // faasd alone accepts on the sockets of such a function.
        for s in self.sockets.iter() {
            sockets::set_nonblocking(s).map_err(|e| format!("forwarding: {e}"))?;
        }
        let watched = self
            .watched()
            .ok_or_else(|| "forwarding: the sockets cannot be watched".to_string())?;
        let connector = crate::forward::Connector::new(pid)
            .map_err(|e| format!("entering the instance's network namespace: {e}"))?;
        let mailbox = self.mailbox.clone();
        let deadline = Instant::now() + self.ctx.config.start_timeout;
        let paths = match &self.forwarding {
            Some((paths, _)) => paths.clone(),
            None => {
                // A capacity target is what an instance carries before the next one
                // takes connections.
                let limit = self
                    .ctx
                    .settings
                    .autoscale
                    .as_ref()
                    .filter(|a| a.kind == ScaleType::Capacity)
                    .map(faasd_core::spec::Autoscale::connections_per_instance);
                let paths = Arc::new(crate::forward::Paths::new(limit, upstream.max_inflight));
                paths.set_wanted(self.target);
                let task = tokio::spawn(crate::forward::serve(watched, paths.clone()));
                self.forwarding = Some((paths.clone(), task.abort_handle()));
                paths
            }
        };
        let probe = tokio::spawn(async move {
            if let Some(path) = crate::forward::probe(pid, connector, &upstream, deadline).await {
                paths.add(path);
                let _ = mailbox.post(Event::Reachable(pid));
            }
        });
        if let Some(r) = self.instances.get_mut(&pid) {
            r.probe = Some(probe.abort_handle());
        }
        Ok(())
    }

    /// Posts [`Event::Exited`] when the instance ends (a task waiting on a copy of its
    /// pidfd); the handle stops the watch.
    fn watch_exit(&self, instance: &Instance) -> Option<tokio::task::AbortHandle> {
        let fd = instance.pidfd.try_clone().ok()?;
        let (mailbox, pid) = (self.mailbox.clone(), instance.pid);
        let watch = tokio::spawn(async move {
            // SAFETY: the duplicated pidfd is moved into the AsyncFd, which alone closes it.
            if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
                let _ = afd.readable().await;
            }
            let _ = mailbox.post(Event::Exited(pid));
        });
        Some(watch.abort_handle())
    }

    /// Takes an instance under management: exit watch, notify routing, bookkeeping.
    fn track(&mut self, instance: Instance, ready: bool, output: Option<Output>) {
        let pid = instance.pid;
        let mailbox = self.mailbox.clone();
        self.ctx.router.register(
            pid,
            NoticeSender::new(move |pid, n| {
                let _ = mailbox.post(Event::Notice(pid, n));
            }),
        );
        self.watch_exit(&instance);
        let now = Instant::now();
        self.instances.insert(
            pid,
            Running {
                instance,
                started: now,
                ready,
                status: None,
                last_watchdog: now,
                stop_deadline: None,
                killed: false,
                failed: false,
                output,
                probe: None,
            },
        );
        if ready {
            self.mark_ready();
        }
    }

    fn mark_ready(&mut self) {
        if let Some(mut t) = self.activating.take() {
            t.ready_ns = monotonic_ns();
            self.ctx.latencies.observe_activation(&t);
            if let Some(h) = self.snapshot.activation_seconds.as_mut() {
                h.observe(&t);
            }
            self.snapshot.last_activation = Some(t);
        }
    }

    fn on_notice(&mut self, pid: i32, n: Notice) {
        let Some(r) = self.instances.get_mut(&pid) else {
            return;
        };
        match n {
            // A forwarded instance is ready when faasd reaches it (its probe), whatever it
            // says of itself.
            Notice::Ready if self.forwarding.is_some() => r.last_watchdog = Instant::now(),
            Notice::Ready => self.set_ready(pid),
            Notice::Watchdog => r.last_watchdog = Instant::now(),
            Notice::Status(s) => r.status = Some(s),
            Notice::Stopping => {}
        }
    }

    fn set_ready(&mut self, pid: i32) {
        let Some(r) = self.instances.get_mut(&pid) else {
            return;
        };
        let first = !r.ready;
        r.ready = true;
        r.last_watchdog = Instant::now();
        if first {
            self.mark_ready();
        }
    }

    fn stop(&mut self, pid: i32) {
        // A frozen instance would take its SIGTERM only when thawed.
        self.thaw();
        let grace = self
            .ctx
            .settings
            .stop_timeout
            .unwrap_or(self.ctx.config.stop_timeout);
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
            r.killed = true;
            let _ = r.instance.signal(libc::SIGKILL);
        }
        self.fail(why);
    }

    /// An instance ended: its runtime releases it (a container's task and container are
    /// deleted, some milliseconds) in a task of its own, which reports back.
    fn on_exit(&mut self, pid: i32) {
        if let Some(s) = self.standby.take_if(|s| s.prepared.instance.pid == pid) {
            // Prepared again after the next activation, not in a loop meanwhile.
            self.prepare_failed = true;
            self.fail(format!(
                "prepared instance {} ended before it was used",
                s.prepared.instance.id
            ));
            self.release(s);
            return;
        }
        let Some(mut r) = self.instances.remove(&pid) else {
            return;
        };
        if self.instances.is_empty() {
            self.frozen = false;
            self.snapshot.frozen = false;
        }
        self.ctx.router.forget(pid);
        if let Some(probe) = r.probe.take() {
            probe.abort();
        }
        if let Some((paths, task)) = &self.forwarding
            && !paths.remove(pid)
            && !self.instances.values().any(|r| r.probe.is_some())
        {
            // No instance left to forward to: the function's socket is watched for the
            // next activation instead.
            task.abort();
            self.forwarding = None;
        }
        self.reaping += 1;
        let ctx = self.ctx.clone();
        let mailbox = self.mailbox.clone();
        tokio::spawn(async move {
            let how = ctx.runtime.reap(&r.instance).await;
            let _ = mailbox.post(Event::Reaped(Box::new(r), how));
        });
    }

    fn on_reaped(&mut self, mut r: Running, how: &str) {
        self.reaping -= 1;
        let id = r.instance.id.clone();
        if let Some(out) = r.output.take() {
            out.finish(&self.ctx.log, &id);
        }
        self.ctx.log.write("faasd", &format!("instance {id} {how}"));
        // A stopped function keeps no cgroup. A version being replaced leaves it to the
        // new one, which starts its instances there.
        if self.instances.is_empty()
            && self.starting == 0
            && self.reaping == 0
            && self.draining.is_none()
            && self.ending.is_none()
            && let Some(cg) = &self.ctx.cgroup
            && crate::runtime::cgroup::remove_empty(cg)
            && let Some(egress) = &self.ctx.egress
        {
            egress.release(cg);
        }
        if self.ctx.settings.accept.is_some() || self.ending.is_some() {
            return;
        }
        let requested = r.stop_deadline.is_some() && !r.failed;
        if requested {
            // Asked to stop after a run that was no quick exit: whatever failed before
            // has passed.
            if r.started.elapsed() >= QUICK_EXIT {
                self.crash_streak = 0;
            }
            self.schedule_idle_check(Instant::now());
            return;
        }
        // Unexpected end, or killed for a failure.
        if !r.failed {
            self.snapshot.last_error = Some(format!("instance {id} {how}"));
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
            self.target = self.ctx.settings.min_scale.max(live).min(self.target);
        }
        if self.target as usize > self.instances.len() + self.starting as usize {
            self.snapshot.restarts += 1;
        }
        self.schedule_backoff();
        self.reconcile();
    }

    /// Scale to zero (or to the minimum) after `zero-duration` without a new connection,
    /// with nothing queued and no connection still open.
    fn check_idle(&mut self, now: Instant) {
        let s = self.ctx.settings.clone();
        let zero_after = s.scale_to_zero_after.filter(|_| self.target > s.min_scale);
        // faasd accepts for a forwarded image itself: it stays thawed to do so.
        let freeze_after = s
            .freeze_after
            .filter(|_| !self.frozen && self.forwarding.is_none());
        let Some(first_due) = freeze_after.into_iter().chain(zero_after).min() else {
            self.idle_check = None;
            return;
        };
        self.idle_check = Some(now + self.idle_step());
        // While frozen nothing can have come unseen: a connection thaws the function.
        if !self.frozen {
            let lookups = self.ctx.lookups.lookups();
            if lookups != self.last_lookups {
                self.last_lookups = lookups;
                self.last_activity = now;
                return;
            }
        }
        let idle_for = now - self.last_activity;
        if idle_for < first_due {
            return;
        }
        if !self.frozen {
            let open = connections::open(self.ctx.record.address, &s.ports);
            if self.sockets.iter().any(sockets::pending) || open.is_none_or(|o| !o.is_empty()) {
                self.last_activity = now;
                return;
            }
        }
        if let Some(after) = zero_after
            && idle_for >= after
        {
            let min = s.min_scale;
            self.ctx
                .log
                .write("faasd", &format!("idle for {after:?}: scaling to {min}"));
            self.target = min;
            self.idle_check = None;
            self.reconcile();
            return;
        }
        // Not in the middle of a start (a container's takes longer than the idle step).
        if self.starting == 0 && !self.instances.is_empty() {
            self.freeze();
        }
        // Frozen, only the stop is due, at its time: no check in between.
        if self.frozen {
            self.idle_check = zero_after.map(|a| self.last_activity + a);
        }
    }

    /// Writes the running instances' pids and ids (runtime dir: gone after a reboot, when
    /// no instance can have survived anyway).
    fn record_instances(&self) {
        let path = layout::instances_file(&self.ctx.config.runtime_dir, &self.ctx.record.spec);
        // Computed here rather than kept: a stopped function has nothing to record.
        let fingerprint = self.ctx.record.spec.fingerprint();
        let text: String = self
            .snapshot
            .instances
            .iter()
            .map(|i| format!("{} {} {fingerprint}\n", i.pid, i.id))
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
                id: r.instance.id.clone(),
                pid: *pid,
                ready: r.ready,
                status: r.status.clone(),
            })
            .collect();
        s.instances.sort_by_key(|i| i.pid);
        s.prepared = self
            .standby
            .as_ref()
            .map(|s| s.prepared.instance.id.clone());
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
        } else if s.instances.is_empty() && self.starting == 0 {
            Phase::Stopped
        } else if !s.instances.is_empty() && s.instances.iter().all(|i| i.ready) {
            Phase::Running
        } else {
            Phase::Starting
        };
        if s.phase == Phase::Stopped {
            // A stopped function holds no file but its sockets.
            self.ctx.log.close();
        }
        let mut shared = self.state.lock().expect("state lock");
        if *shared != self.snapshot {
            *shared = self.snapshot.clone();
        }
    }
}

/// What a launch task made.
enum Launched {
    Started(Result<Instance, crate::runtime::RuntimeError>),
    Prepared(Result<crate::runtime::prepared::Prepared, crate::runtime::RuntimeError>),
}

/// Kills an instance and waits (up to 5 s) until it has ended, so that its runtime can
/// release it.
async fn kill_and_wait(instance: &Instance) {
    let _ = instance.signal(libc::SIGKILL);
    if let Ok(fd) = instance.pidfd.try_clone() {
        // SAFETY: the duplicated pidfd is moved into the AsyncFd, which alone closes it.
        if let Ok(afd) = unsafe { AsyncFd::register(fd) } {
            let _ = tokio::time::timeout(Duration::from_secs(5), afd.readable()).await;
        }
    }
}

/// Sleeps until `deadline` (never, when there is none: the caller does not poll it then).
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// What the runtime needs to start one instance: the systemd protocol's environment
/// (LISTEN_FDS, LISTEN_FDNAMES, NOTIFY_SOCKET, WATCHDOG_USEC), the descriptors to pass
/// and where its output goes.
fn launch(
    ctx: &Context,
    sockets: &[OwnedFd],
    id: String,
    output: PathBuf,
    conn: &Option<(OwnedFd, SocketAddrV6)>,
    out_w: &std::fs::File,
) -> Launch {
    let s = &ctx.settings;
    let mut env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), "/".into()),
        ("FAASD_INSTANCE".into(), id.clone()),
        ("FAASD_FUNCTION".into(), ctx.record.spec.name.clone()),
        ("FAASD_ADDRESS".into(), ctx.record.address.to_string()),
        (
            "NOTIFY_SOCKET".into(),
            ctx.config.notify_socket().to_string_lossy().into(),
        ),
    ];
    env.extend(
        ctx.record
            .spec
            .deployment
            .env_vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    if let Some(w) = s.watchdog {
        env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
    }
    let fds: Vec<i32> = match conn {
        Some((c, peer)) => {
            env.push(("LISTEN_FDS".into(), "1".into()));
            env.push(("LISTEN_FDNAMES".into(), "connection".into()));
            env.push(("REMOTE_ADDR".into(), peer.ip().to_string()));
            env.push(("REMOTE_PORT".into(), peer.port().to_string()));
            vec![c.as_raw_fd()]
        }
        None => {
            let names: Vec<&str> = s.ports.iter().map(|p| p.name.as_str()).collect();
            env.push(("LISTEN_FDS".into(), sockets.len().to_string()));
            env.push(("LISTEN_FDNAMES".into(), names.join(":")));
            sockets.iter().map(|s| s.as_raw_fd()).collect()
        }
    };
    let conn_fd = conn.as_ref().map(|(c, _)| c.as_raw_fd());
    let spec = &ctx.record.spec;
    let process = spec.image.is_none();
    let data_dir = process.then(|| ctx.config.data_dir.join(&spec.namespace).join(&spec.name));
    if let Some(d) = &data_dir {
        env.push(("STATE_DIRECTORY".into(), d.to_string_lossy().into_owned()));
    }
    let secrets = crate::secrets::Secrets::new(&ctx.config.state_dir);
    Launch {
        instance: id,
        output,
        argv: ctx.record.spec.argv.clone(),
        env,
        fds,
        stdin: conn_fd,
        stdout: conn_fd.unwrap_or(out_w.as_raw_fd()),
        stderr: out_w.as_raw_fd(),
        user: match &s.user {
            Some(u) => RunAs::User(u.clone()),
            None if ctx.config.user == DYNAMIC_USER => {
                RunAs::Dynamic(ctx.config.dynamic_uid(ctx.record.address))
            }
            None => RunAs::User(ctx.config.user.clone()),
        },
        cgroup: ctx.cgroup.clone(),
        netns: None,
        binds: Vec::new(),
        limits: crate::runtime::cgroup::Limits {
            memory: s.memory_limit,
            cpu_millis: s.cpu_millis,
            pids: s.pids_max,
        },
        data_dir,
        read_only: spec.deployment.read_only_root_filesystem == Some(true),
        // Checked at deploy; one removed since is reported by the start.
        secrets: if process {
            spec.deployment
                .secrets
                .iter()
                .map(|n| {
                    let file = secrets
                        .file(&spec.namespace, n)
                        .unwrap_or_else(|_| ctx.config.state_dir.join("secrets").join(n));
                    (n.clone(), file)
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}
