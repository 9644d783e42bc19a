//! Socket activation through a real daemon: scale from zero, bursts, idle stop, Accept=yes,
//! watchdog, crash loops.

use std::{
    net::SocketAddr,
    sync::{Arc, Barrier},
    time::Duration,
};

use faasd::status::Phase;

use crate::{
    harness::{
        Daemon, Netns, cgroup_frozen, faasd_bin, function_below, hello_bin, http_get,
        http_get_path, instance_of, static_hello_bin, wait_cgroup_frozen, wait_gone,
    },
    require_privileges,
};

#[test]
fn first_connection_starts_a_stopped_function_and_idle_stops_it_again() {
    require_privileges!();
    let ns = Netns::new("wake");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "hello",
        &[
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=1s",
        ],
    );
    let s = d.describe("hello");
    assert_eq!(
        (s.state.phase, s.replicas),
        (Phase::Stopped, 0),
        "deployed functions wait for a connection"
    );
    let cgroup = faasd::runtime::cgroup::root()
        .expect("cgroup v2")
        .join(&ns.cgroup_parent)
        .join("openfaas-fn/hello");
    assert!(!cgroup.exists(), "a stopped function has no cgroup");

    let target = SocketAddr::from((addr, 8080));
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200, "{body}");
    let first = instance_of(&body);
    // The answer can arrive before the daemon has recorded the instance it started.
    let s = d.wait_for("hello", "the instance that served", |s| s.replicas == 1);
    assert_eq!(s.state.activations, 1);
    assert_eq!(
        s.counters[0].steered, 1,
        "the connection went through sk_lookup"
    );
    assert_isolated(&ns, s.state.instances[0].pid, "hello", addr);

    d.wait_for("hello", "idle scale to zero", |s| {
        s.state.phase == Phase::Stopped && s.replicas == 0
    });
    assert!(
        !cgroup.exists(),
        "the cgroup goes with the last instance: {}",
        cgroup.display()
    );
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200);
    assert_ne!(
        instance_of(&body),
        first,
        "a new instance served after the stop"
    );
    assert_eq!(d.describe("hello").state.activations, 2);
    let log = d.cli_ok(&["logs", "hello"]);
    assert!(
        log.contains("serving") && log.contains("idle for 1s"),
        "{log}"
    );
}

#[test]
fn a_datagram_starts_a_stopped_function_and_the_reply_comes_from_its_address() {
    require_privileges!();
    let ns = Netns::new("udp");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "udp",
        &["-a", "faasd.dev/ports=http=8080/tcp,echo=5353/udp"],
    );
    assert_eq!(d.describe("udp").state.phase, Phase::Stopped);
    let (reply, from) = ns.run(|| {
        let s = std::net::UdpSocket::bind("[::]:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.send_to(b"ping", SocketAddr::from((addr, 5353))).unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = s.recv_from(&mut buf).unwrap();
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert!(
        reply.contains("instance=") && reply.contains("bytes=4"),
        "{reply}"
    );
    assert_eq!(
        from,
        SocketAddr::from((addr, 5353)),
        "the reply's source is the function address"
    );
    let s = d.wait_for("udp", "the instance that replied", |s| s.replicas == 1);
    assert_eq!(s.state.activations, 1);
    let echo = s.counters.iter().find(|c| c.name == "echo").unwrap();
    assert_eq!(echo.steered, 1);
}

#[test]
fn a_burst_of_500_first_connections_is_all_served() {
    require_privileges!();
    let ns = Netns::new("burst");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello("burst", &[]);
    assert_eq!(d.describe("burst").state.phase, Phase::Stopped);
    let target = SocketAddr::from((addr, 8080));
    const THREADS: usize = 50;
    const PER_THREAD: usize = 10;
    let results: Vec<Result<u16, String>> = ns.run(|| {
        let start = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let start = start.clone();
                std::thread::spawn(move || {
                    // Open all of this thread's connections at once, then read them.
                    start.wait();
                    let conns: Vec<_> = (0..PER_THREAD)
                        .map(|_| {
                            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(10))
                        })
                        .collect();
                    conns
                        .into_iter()
                        .map(|c| {
                            use std::io::{Read, Write};
                            let mut c = c.map_err(|e| format!("connect: {e}"))?;
                            c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                            c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                                .map_err(|e| format!("write: {e}"))?;
                            let mut r = String::new();
                            c.read_to_string(&mut r).map_err(|e| format!("read: {e}"))?;
                            r.split_whitespace()
                                .nth(1)
                                .and_then(|s| s.parse().ok())
                                .ok_or(r)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let failed: Vec<_> = results.iter().filter(|r| **r != Ok(200)).collect();
    assert_eq!(results.len(), THREADS * PER_THREAD);
    assert!(
        failed.is_empty(),
        "{} of 500 failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let s = d.describe("burst");
    assert_eq!(
        s.state.activations, 1,
        "one activation served the whole burst"
    );
    assert_eq!(s.counters[0].steered, 500);
}

#[test]
fn accept_mode_runs_one_instance_per_connection() {
    require_privileges!();
    let ns = Netns::new("accept");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "inetd",
        &[
            "-a",
            "faasd.dev/accept=true",
            "-a",
            "faasd.dev/max-connections=4",
        ],
    );
    let target = SocketAddr::from((addr, 8080));
    let (a, b) = ns.run(|| (http_get(target).unwrap(), http_get(target).unwrap()));
    assert_eq!((a.0, b.0), (200, 200));
    assert_ne!(
        instance_of(&a.1),
        instance_of(&b.1),
        "each connection gets its own instance"
    );
    assert!(a.1.contains("remote="), "REMOTE_ADDR is set: {}", a.1);
    d.wait_for("inetd", "instances to finish", |s| s.replicas == 0);
    // Scaling is meaningless for it and is refused with a reason.
    let e = d.cli(&["scale", "inetd", "2"]).unwrap_err();
    assert!(e.contains("one instance per connection"), "{e}");
}

#[test]
fn the_watchdog_restarts_a_function_that_stops_pinging() {
    require_privileges!();
    let ns = Netns::new("wdog");
    let d = Daemon::start(&ns);
    d.deploy_hello(
        "hangs",
        &[
            "-l",
            "com.openfaas.scale.min=1",
            "-a",
            "faasd.dev/watchdog=500ms",
            "-e",
            "HELLO_WATCHDOG_STOP_AFTER_MS=300",
        ],
    );
    let s = d.wait_for("hangs", "a watchdog kill and restart", |s| {
        s.state.watchdog_kills >= 1 && s.state.restarts >= 1 && s.available_replicas == 1
    });
    assert!(s.state.restarts >= 1);
    assert!(
        s.state
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("watchdog"),
        "{:?}",
        s.state.last_error
    );
}

#[test]
fn a_crash_looping_function_is_restarted_with_backoff() {
    require_privileges!();
    let ns = Netns::new("crash");
    let d = Daemon::start(&ns);
    d.cli_ok(&[
        "deploy",
        "crashes",
        "--command",
        "/bin/false",
        "-l",
        "com.openfaas.scale.min=1",
    ]);
    let s = d.wait_for("crashes", "crash-loop backoff", |s| {
        s.state.phase == Phase::CrashLoop
    });
    assert!(s.state.retry_in_ms.is_some());
    assert!(
        s.state
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("exited with status 1"),
        "{:?}",
        s.state.last_error
    );
    assert!(d.cli_ok(&["describe", "crashes"]).contains("crash loop"));
}

#[test]
fn a_notify_function_is_ready_only_after_ready_1() {
    require_privileges!();
    let ns = Netns::new("notify");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello("ready", &["-a", "faasd.dev/notify=true"]);
    let (code, _) = ns.run(|| http_get(SocketAddr::from((addr, 8080)))).unwrap();
    assert_eq!(code, 200);
    let s = d.wait_for("ready", "READY=1", |s| s.available_replicas == 1);
    let t = s.state.last_activation.expect("activation timing recorded");
    assert!(
        t.requested_ns <= t.running_ns && t.running_ns <= t.ready_ns,
        "{t:?}"
    );
}

/// The instance runs as the function's own user, in its function's cgroup, in namespaces
/// of its own.
fn assert_isolated(ns: &Netns, pid: i32, name: &str, address: std::net::Ipv6Addr) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let own = faasd_core::config::Config::default()
        .dynamic_uid(address)
        .to_string();
    for field in ["Uid:", "Gid:"] {
        let ids = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
        assert!(
            ids.split_whitespace().all(|id| id == own),
            "{field} the function's own {own}: {ids}"
        );
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let expected = format!("0::/{}/openfaas-fn/{name}", ns.cgroup_parent);
    assert!(
        cgroup.lines().any(|l| l == expected),
        "{expected} not in {cgroup}"
    );
    // The daemon is the instance's parent.
    let daemon_pid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap()
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
        .unwrap();
    for kind in ["net", "pid", "mnt", "ipc", "uts"] {
        let own = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
        let daemon = std::fs::read_link(format!("/proc/{daemon_pid}/ns/{kind}")).unwrap();
        assert_ne!(own, daemon, "{kind} namespace is the daemon's");
    }
}

#[test]
fn an_update_refuses_no_connection() {
    require_privileges!();
    let ns = Netns::new("update");
    let d = Daemon::start(&ns);
    let (addr, old) = d.deploy_running("upd", &[]);
    let target = SocketAddr::from((addr, 8080));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let answers: Vec<Result<(u16, String), String>> = std::thread::scope(|s| {
        let client = s.spawn(|| {
            ns.run(|| {
                let mut out = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    out.push(http_get(target).map_err(|e| e.to_string()));
                    std::thread::sleep(Duration::from_millis(2));
                }
                out
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        d.update_running("upd", &["-e", "VERSION=2"]);
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().unwrap()
    });
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed during the update, e.g. {:?}",
        failed.len(),
        answers.len(),
        failed[0]
    );
    let served_by: Vec<String> = answers
        .iter()
        .map(|a| instance_of(&a.as_ref().unwrap().1))
        .collect();
    assert_eq!(
        served_by.first(),
        Some(&old.id),
        "the old version served before"
    );
    assert_ne!(
        served_by.last(),
        Some(&old.id),
        "the new version serves after"
    );
    let new = d.describe("upd");
    assert_eq!(new.env_vars.get("VERSION").map(String::as_str), Some("2"));
    // The old version drains, stops, and leaves its slot.
    crate::harness::wait_gone(old.pid, 10, || d.cli_ok(&["logs", "upd"]));
    assert!(
        d.cli_ok(&["logs", "upd"])
            .contains("previous version drained and stopped")
    );
}

/// A program that installs no SIGTERM handler stops on SIGTERM at once: faasd's own init is
/// pid 1 of the instance's pid namespace (where SIGTERM would be ignored) and forwards it to
/// the function, its child.
#[test]
fn a_function_without_a_sigterm_handler_stops_at_once() {
    require_privileges!();
    let ns = Netns::new("sigterm");
    let d = Daemon::start(&ns);
    d.cli_ok(&[
        "deploy",
        "sleeper",
        "--command",
        "/bin/sleep 600",
        "-l",
        "com.openfaas.scale.min=1",
        "-a",
        "faasd.dev/stop-timeout=60s",
    ]);
    let s = d.wait_for("sleeper", "its instance", |s| s.replicas == 1);
    let init = s.state.instances[0].pid;
    let function = function_below(init);
    let comm = std::fs::read_to_string(format!("/proc/{function}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep", "the function runs below its init");
    let status = std::fs::read_to_string(format!("/proc/{function}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t2")),
        "the function is pid 2 of its namespace: {status}"
    );

    d.cli_ok(&["scale", "sleeper", "0"]);
    // Far inside the 60 s grace period: without the init, SIGKILL would end it at 60 s.
    wait_gone(init, 10, || d.log());
    let log = d.cli_ok(&["logs", "sleeper"]);
    assert!(
        log.contains("exited with status 143"),
        "ended by SIGTERM (128 + 15), not SIGKILL: {log}"
    );
}

/// The same at an idle stop: a handler-less sample (`HELLO_SIGTERM=default`) with a 60 s
/// grace period is gone soon after its idle deadline, ended by the SIGTERM itself.
#[test]
fn a_handler_less_function_stops_at_its_idle_deadline_not_after_the_grace_period() {
    require_privileges!();
    let ns = Netns::new("idle-sigterm");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "lazy",
        &[
            "-e",
            "HELLO_SIGTERM=default",
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=1s",
            "-a",
            "faasd.dev/stop-timeout=60s",
        ],
    );
    let (code, _) = ns.run(|| http_get(SocketAddr::from((addr, 8080)))).unwrap();
    assert_eq!(code, 200);
    let pid = d.describe("lazy").state.instances[0].pid;
    // The idle deadline is 1 s away; the grace period would end at 61 s.
    wait_gone(pid, 10, || d.log());
    let log = d.cli_ok(&["logs", "lazy"]);
    assert!(
        log.contains("exited with status 143"),
        "ended by SIGTERM (128 + 15), not SIGKILL: {log}"
    );
}

/// The processes in a function's cgroup.
fn in_cgroup(ns: &Netns, name: &str) -> Vec<i32> {
    let procs = faasd::runtime::cgroup::root()
        .expect("cgroup v2")
        .join(&ns.cgroup_parent)
        .join("openfaas-fn")
        .join(name)
        .join("cgroup.procs");
    std::fs::read_to_string(procs)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits (up to 10 s) until a function's cgroup holds no process.
fn wait_cgroup_empty(ns: &Netns, name: &str, why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !in_cgroup(ns, name).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: {:?} still in the cgroup",
            in_cgroup(ns, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_prepared_function_waits_confined_and_its_first_connection_runs_that_instance() {
    require_privileges!();
    let ns = Netns::new("prep");
    let mut d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "prep",
        &[
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=1s",
            "--annotation",
            "faasd.dev/prepare=true",
        ],
    );
    let s = d.wait_for("prep", "an instance prepared", |s| {
        s.state.prepared.is_some()
    });
    assert_eq!((s.state.phase, s.replicas), (Phase::Stopped, 0));
    let prepared = s.state.prepared.clone().unwrap();
    // Waiting, it is the instance's init and the function forked from it, which waits
    // for its first connection: both already as confined as they will run, with their own
    // user and namespaces, no privileges, the system call filter. `hello` is linked
    // dynamically, so the function is the program itself, exec'd and held before main.
    let mut pids = in_cgroup(&ns, "prep");
    pids.sort_unstable();
    assert_eq!(
        pids.len(),
        2,
        "the prepared init and its function: {pids:?}"
    );
    let (init, function) = (pids[0], pids[1]);
    assert_isolated(&ns, init, "prep", addr);
    let status_of = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status_of(function).contains(&format!("\nPPid:\t{init}\n")),
        "the function waits as the init's child:\n{}",
        status_of(function)
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{function}/exe")).unwrap(),
        std::fs::canonicalize(hello_bin()).unwrap(),
        "the held function is the program, exec'd"
    );
    let maps = std::fs::read_to_string(format!("/proc/{function}/maps")).unwrap();
    assert!(
        maps.contains("/memfd:faasd-preload"),
        "faasd's library holds it (loaded from the memfd):\n{maps}"
    );
    for kind in ["net", "pid", "mnt", "ipc", "uts"] {
        let ns_of = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
        assert_eq!(ns_of(function), ns_of(init), "the init's {kind} namespace");
    }
    for pid in [init, function] {
        let status = status_of(pid);
        for want in ["NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000"] {
            assert!(status.lines().any(|l| l == want), "{want} in\n{status}");
        }
    }

    let target = SocketAddr::from((addr, 8080));
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert_eq!(instance_of(&body), prepared, "the prepared instance served");
    // Let on to main, the program sees the systemd protocol's variables and none of the
    // library's: nothing it starts inherits them.
    for (name, want) in [
        ("LISTEN_FDS", "1"),
        ("LISTEN_PID", "2"),
        ("LD_PRELOAD", "LD_PRELOAD is not set"),
        ("FAASD_HANDOVER_FD", "FAASD_HANDOVER_FD is not set"),
    ] {
        let (code, body) = ns
            .run(|| http_get_path(target, &format!("/env/{name}")))
            .unwrap();
        assert_eq!((code, body.trim()), (200, want), "{name}");
    }
    let s = d.wait_for("prep", "the prepared instance running", |s| s.replicas == 1);
    assert_eq!(s.state.instances[0].id, prepared);
    assert_eq!(s.state.instances[0].pid, pids[0]);
    assert_eq!(s.state.prepared, None, "used, it is no longer prepared");

    // Stopped after its idle time, the function prepares the next one.
    let s = d.wait_for("prep", "stopped and prepared again", |s| {
        s.replicas == 0 && s.state.prepared.as_ref().is_some_and(|p| *p != prepared)
    });
    let next = s.state.prepared.unwrap();
    assert_eq!(
        in_cgroup(&ns, "prep").len(),
        2,
        "only the next prepared init and its function"
    );
    // A prepared instance holds no socket and does not outlive faasd: killed with -9, its
    // hand-over socket closes and the instance ends.
    d.kill9();
    wait_cgroup_empty(&ns, "prep", "after kill -9 of faasd");
    d.restart();
    let s = d.wait_for("prep", "prepared by the new daemon", |s| {
        s.state.prepared.as_ref().is_some_and(|p| *p != next)
    });
    assert_eq!(s.replicas, 0);
    let (code, _) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200);
    d.cli_ok(&["remove", "prep"]);
    wait_cgroup_empty(&ns, "prep", "after remove");
}

#[test]
fn a_prepared_static_program_waits_before_its_exec_and_serves_its_first_connection() {
    require_privileges!();
    let ns = Netns::new("prepst");
    let d = Daemon::start(&ns);
    let program = static_hello_bin();
    d.cli_ok(&[
        "deploy",
        "prepst",
        "--command",
        &program,
        "--annotation",
        "faasd.dev/prepare=true",
    ]);
    let addr = d.describe("prepst").address;
    let s = d.wait_for("prepst", "an instance prepared", |s| {
        s.state.prepared.is_some()
    });
    let prepared = s.state.prepared.clone().unwrap();
    // No loader would preload faasd's library into a static program: its function waits
    // for the sockets in faasd's own code (the spawner's image), before its exec.
    let pids = in_cgroup(&ns, "prepst");
    assert_eq!(
        pids.len(),
        2,
        "the prepared init and its function: {pids:?}"
    );
    let function = *pids.iter().max().unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{function}/exe")).unwrap(),
        std::fs::canonicalize(faasd_bin()).unwrap(),
        "the function waits before its exec"
    );
    let target = SocketAddr::from((addr, 8080));
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert_eq!(instance_of(&body), prepared, "the prepared instance served");
    let (code, body) = ns.run(|| http_get_path(target, "/env/LD_PRELOAD")).unwrap();
    assert_eq!((code, body.trim()), (200, "LD_PRELOAD is not set"));
    d.cli_ok(&["remove", "prepst"]);
    wait_cgroup_empty(&ns, "prepst", "after remove");
}

#[test]
fn an_idle_function_freezes_and_its_next_connection_thaws_the_same_instance() {
    require_privileges!();
    let ns = Netns::new("freeze");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "freeze",
        &[
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=4s",
            "--annotation",
            "faasd.dev/freeze-after=300ms",
        ],
    );
    let cgroup = faasd::runtime::cgroup::root()
        .expect("cgroup v2")
        .join(&ns.cgroup_parent)
        .join("openfaas-fn/freeze");
    let target = SocketAddr::from((addr, 8080));
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200, "{body}");
    let first = instance_of(&body);
    let s = d.wait_for("freeze", "frozen after 300ms idle", |s| s.state.frozen);
    assert_eq!(s.replicas, 1, "a frozen instance is still there");
    wait_cgroup_frozen(&cgroup);
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert_eq!(
        instance_of(&body),
        first,
        "the frozen instance served, thawed"
    );
    let s = d.describe("freeze");
    assert_eq!((s.state.thaws, s.state.frozen), (1, false));
    assert!(!cgroup_frozen(&cgroup));
    assert_eq!(s.state.activations, 1, "a thaw is no activation");
    // Frozen again, then stopped at its zero-duration (thawed first, so that it takes its
    // SIGTERM): the idle time counts from the last connection.
    d.wait_for("freeze", "frozen again", |s| s.state.frozen);
    d.wait_for("freeze", "stopped after 4s idle", |s| {
        s.replicas == 0 && !s.state.frozen
    });
    let log = d.cli_ok(&["logs", "freeze"]);
    assert!(log.contains("frozen until the next connection"), "{log}");
    let (code, body) = ns.run(|| http_get(target)).unwrap();
    assert_eq!(code, 200);
    assert_ne!(instance_of(&body), first, "stopped, a new instance serves");
}

/// Context switches of every thread of `pid` so far.
fn context_switches(pid: i32) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads");
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn connections_to_a_running_instance_do_not_wake_the_daemon() {
    require_privileges!();
    let ns = Netns::new("quiet");
    let d = Daemon::start(&ns);
    // Kept running from its deploy, and started by a scale request (as faas-cli does).
    let (kept, _) = d.deploy_running("kept", &[]);
    let scaled = d.deploy_hello("scaled", &[]);
    let (code, body) = d.api(
        "POST",
        "/system/scale-function/scaled",
        r#"{"serviceName":"scaled","replicas":1}"#,
    );
    assert_eq!(code, 202, "{body}");
    d.wait_for("scaled", "one replica", |s| s.available_replicas == 1);
    for (name, addr) in [("kept", kept), ("scaled", scaled)] {
        let target = SocketAddr::from((addr, 8080));
        assert_eq!(ns.run(|| http_get(target)).unwrap().0, 200);
        std::thread::sleep(Duration::from_millis(200));
        let before = context_switches(d.pid());
        const CONNECTIONS: u64 = 300;
        for _ in 0..CONNECTIONS {
            assert_eq!(ns.run(|| http_get(target)).unwrap().0, 200);
        }
        // The instance accepts them; the daemon has nothing to do with any of them (a
        // registration of the socket with its reactor once cost a wakeup each).
        let woke = context_switches(d.pid()).saturating_sub(before);
        assert!(
            woke < CONNECTIONS / 10,
            "{name}: the daemon's threads switched {woke} times over {CONNECTIONS} \
             connections to a running instance"
        );
    }
}
