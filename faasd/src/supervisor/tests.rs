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
