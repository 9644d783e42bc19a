//! The supervisor's state machine against a fake runtime and fake steering: real
//! processes (`sleep`) stand in for instances, so exits, signals and pidfds are real, but
//! nothing is cloned into namespaces and no eBPF is loaded.

use std::{
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use faasd_core::spec::{Deployment, FunctionSpec};

use super::*;
use crate::runtime::{Milestones, RuntimeError};

/// Starts `sleep` for every instance, or fails when told to; records each launch.
#[derive(Debug, Default)]
struct FakeRuntime {
    fail: AtomicBool,
    launches: Mutex<Vec<Launch>>,
    handovers: Mutex<Vec<std::os::unix::net::UnixStream>>,
    /// Every pid it started, prepared or not.
    pids: Mutex<Vec<i32>>,
}

#[async_trait::async_trait]
impl Runtime for FakeRuntime {
    async fn start(&self, launch: Launch) -> Result<Instance, RuntimeError> {
        self.launches.lock().unwrap().push(launch.clone());
        if self.fail.load(Ordering::Relaxed) {
            return Err(RuntimeError::Container("told to fail".into()));
        }
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.pids.lock().unwrap().push(pid);
        // SAFETY: pidfd_open on our own child; checked and owned.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // The child is reaped by `reap`; std's handle is not needed for that.
        std::mem::forget(child);
        Ok(Instance {
            pid,
            // SAFETY: a fresh descriptor.
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            id: launch.instance,
            milestones: Milestones::default(),
        })
    }

    /// A `sleep` too, with a hand-over socket whose other end the fake keeps (and reads
    /// nothing from): what the supervisor does with a prepared instance is under test.
    async fn prepare(
        &self,
        launch: Launch,
    ) -> Result<crate::runtime::prepared::Prepared, RuntimeError> {
        let instance = self.start(launch).await?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        self.handovers.lock().unwrap().push(theirs);
        Ok(crate::runtime::prepared::Prepared::new(
            instance, ours, None, false,
        ))
    }

    async fn reap(&self, instance: &Instance) -> String {
        let mut status = 0;
        // SAFETY: waits for our own child, which has ended.
        unsafe { libc::waitpid(instance.pid, &mut status, 0) };
        crate::runtime::describe_exit(status)
    }
}

/// Steering counters the test sets by hand.
#[derive(Debug, Default)]
struct FakeLookups(Arc<AtomicU64>);

impl Lookups for FakeLookups {
    fn lookups(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

struct Fixture {
    handle: Handle,
    runtime: Arc<FakeRuntime>,
    lookups: Arc<AtomicU64>,
    client: std::net::TcpListener,
    dir: PathBuf,
}

/// A function on a listening socket bound to a free loopback port, with these labels and
/// annotations.
fn fixture(tag: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Fixture {
    let dir = std::env::temp_dir().join(format!("faasd-sup-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut ann: Vec<(String, String)> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ann.push(("faasd.dev/ports".into(), format!("http={port}/tcp")));
    let (spec, settings) = FunctionSpec::from_deployment(Deployment {
        service: tag.into(),
        env_process: Some("/bin/true".into()),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        annotations: ann.into_iter().collect(),
        ..Default::default()
    })
    .unwrap();
    let config = Config {
        state_dir: dir.join("state"),
        runtime_dir: dir.join("run"),
        stop_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let runtime = Arc::new(FakeRuntime::default());
    let lookups = Arc::new(AtomicU64::new(0));
    let ctx = Context {
        log: FunctionLog::new(&config.state_dir, &spec.namespace, &spec.name),
        record: Arc::new(FunctionRecord {
            spec,
            address: std::net::Ipv6Addr::LOCALHOST,
            created_at: 0,
        }),
        settings: Arc::new(settings),
        config: Arc::new(config),
        runtime: runtime.clone(),
        lookups: Box::new(FakeLookups(lookups.clone())),
        router: notify::Router::default(),
        cgroup: None,
        latencies: Arc::default(),
        lot: Lot::new().unwrap(),
        egress: None,
    };
    let sock: OwnedFd = listener.try_clone().unwrap().into();
    let handle = spawn(ctx, vec![sock], Vec::new()).unwrap();
    Fixture {
        handle,
        runtime,
        lookups,
        client: listener,
        dir,
    }
}

impl Fixture {
    fn state(&self) -> FunctionState {
        self.handle.state.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, ok: impl Fn(&FunctionState) -> bool) -> FunctionState {
        for _ in 0..500 {
            let s = self.state();
            if ok(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}: state stayed {:?}", self.state());
    }

    async fn finish(self) {
        self.handle
            .ask(|done| Command::Shutdown {
                stop_instances: true,
                done,
            })
            .await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_function_sleeps_until_a_connection_starts_it() {
    let f = fixture("wake", &[], &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.state().phase, Phase::Stopped);
    assert!(f.runtime.launches.lock().unwrap().is_empty());
    assert!(f.handle.parked(), "a stopped function keeps no task");
    let _conn = std::net::TcpStream::connect(f.client.local_addr().unwrap()).unwrap();
    let s = f.wait_for("activated", |s| s.phase == Phase::Running).await;
    assert_eq!((s.activations, s.starts, s.instances.len()), (1, 1, 1));
    assert!(!f.handle.parked(), "a running function has its task back");
    let launch = f.runtime.launches.lock().unwrap()[0].clone();
    let env: std::collections::BTreeMap<_, _> = launch.env.into_iter().collect();
    assert_eq!(env["LISTEN_FDS"], "1");
    assert_eq!(env["LISTEN_FDNAMES"], "http");
    assert_eq!(launch.fds.len(), 1);
    assert!(
        s.last_activation
            .is_some_and(|t| t.ready_ns >= t.requested_ns)
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_starts_back_off_as_a_crash_loop_and_scale_resets_it() {
    let f = fixture("crash", &[], &[]);
    f.runtime.fail.store(true, Ordering::Relaxed);
    f.handle.send(Command::Scale(1)).unwrap();
    let s = f
        .wait_for("crash loop", |s| s.phase == Phase::CrashLoop)
        .await;
    assert!(s.retry_in_ms.is_some_and(|ms| ms <= 30_000), "{s:?}");
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("told to fail"))
    );
    f.runtime.fail.store(false, Ordering::Relaxed);
    f.handle.send(Command::Scale(1)).unwrap();
    let s = f
        .wait_for("running after scale", |s| s.phase == Phase::Running)
        .await;
    assert_eq!(s.instances.len(), 1);
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_function_scales_to_zero_but_not_while_connections_arrive() {
    let f = fixture(
        "idle",
        &[
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "400ms"),
        ],
        &[],
    );
    f.handle.send(Command::Scale(1)).unwrap();
    f.wait_for("running", |s| s.phase == Phase::Running).await;
    // Lookups keep arriving for a while: the function stays up.
    for _ in 0..8 {
        f.lookups.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(f.state().phase, Phase::Running, "stopped while in use");
    }
    // Then nothing: it stops by itself (SIGTERM; sleep dies of it) and waits for the next.
    f.wait_for("scaled to zero", |s| s.phase == Phase::Stopped)
        .await;
    assert_eq!(f.state().restarts, 0, "a requested stop is not a restart");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_instances_to_stop() {
    let f = fixture("shutdown", &[("com.openfaas.scale.min", "2")], &[]);
    let s = f.wait_for("two running", |s| s.instances.len() == 2).await;
    let pids: Vec<i32> = s.instances.iter().map(|i| i.pid).collect();
    f.finish().await;
    for pid in pids {
        // SAFETY: signal 0 only checks whether the pid exists.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "pid {pid} still runs");
    }
}

/// Whether `pid` still exists (a zombie counts: it has not been reaped).
fn exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the pid exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_function_keeps_one_instance_waiting_and_starts_with_it() {
    let f = fixture("prepare", &[], &[("faasd.dev/prepare", "true")]);
    let s = f.wait_for("prepared", |s| s.prepared.is_some()).await;
    assert_eq!(
        s.phase,
        Phase::Stopped,
        "a prepared instance is not a running one"
    );
    let first = s.prepared.unwrap();
    for _ in 0..100 {
        if f.handle.parked() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        f.handle.parked(),
        "a prepared function parks as a stopped one does"
    );
    assert_eq!(f.runtime.launches.lock().unwrap().len(), 1);

    f.handle.send(Command::Scale(1)).unwrap();
    let s = f.wait_for("running", |s| s.phase == Phase::Running).await;
    assert_eq!(s.instances.len(), 1);
    assert_eq!(
        s.instances[0].id, first,
        "the start used the prepared instance"
    );
    assert_eq!(s.prepared, None);
    assert_eq!(
        f.runtime.launches.lock().unwrap().len(),
        1,
        "nothing new was launched for it"
    );

    // Stopped again: the next one is prepared.
    f.handle.send(Command::Scale(0)).unwrap();
    let s = f
        .wait_for("prepared again", |s| {
            s.phase == Phase::Stopped && s.prepared.as_ref().is_some_and(|p| *p != first)
        })
        .await;
    assert_eq!(s.instances.len(), 0);
    let pids = f.runtime.pids.lock().unwrap().clone();
    assert_eq!(pids.len(), 2);
    assert!(!exists(pids[0]), "the stopped instance was reaped");
    assert!(exists(pids[1]), "the prepared one waits");
    f.finish().await;
    assert!(
        !exists(pids[1]),
        "removing the function releases its prepared instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_instance_that_ends_unused_is_released_and_not_replaced_in_a_loop() {
    let f = fixture("prepare-dies", &[], &[("faasd.dev/prepare", "true")]);
    f.wait_for("prepared", |s| s.prepared.is_some()).await;
    let pid = f.runtime.pids.lock().unwrap()[0];
    // SAFETY: kills the fake's own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let s = f
        .wait_for("released", |s| {
            s.prepared.is_none()
                && s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("ended before it was used"))
        })
        .await;
    assert_eq!(s.phase, Phase::Stopped);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!exists(pid), "the ended instance was reaped");
    assert_eq!(
        f.runtime.launches.lock().unwrap().len(),
        1,
        "no new prepare until the next activation"
    );
    // The next activation starts normally and, once stopped, prepares again.
    f.handle.send(Command::Scale(1)).unwrap();
    f.wait_for("running", |s| s.phase == Phase::Running).await;
    f.handle.send(Command::Scale(0)).unwrap();
    f.wait_for("prepared again", |s| s.prepared.is_some()).await;
    assert_eq!(f.runtime.launches.lock().unwrap().len(), 3);
    f.finish().await;
}
