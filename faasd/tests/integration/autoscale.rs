//! Scaling with the load: a function grows with what the kernel says it carries (open
//! connections, new connections a second, CPU), never past its max, returns to one after
//! its scale-down delay without cutting a connection, and does not multiply while it
//! crash-loops.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use faasd::status::FunctionStatus;

use crate::{
    harness::{Daemon, Netns, http_get_path, instance_of, parse_response},
    require_privileges,
};

/// What a load run saw.
struct Seen {
    /// The most instances at once.
    most: usize,
    /// Calls answered 200.
    served: u64,
    /// The highest load the autoscaler reported meanwhile.
    peak_load: f64,
}

/// Runs `clients` closed-loop clients of `path` for `secs`, watching `describe` meanwhile
/// (asserting `max` is never passed).
fn load(
    d: &Daemon,
    ns: &Netns,
    name: &str,
    target: SocketAddr,
    (clients, path, secs): (usize, &str, u64),
    max: usize,
) -> Seen {
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let (most, peak_load) = std::thread::scope(|scope| {
        for _ in 0..clients {
            let (stop, served) = (stop.clone(), served.clone());
            scope.spawn(|| {
                ns.run(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if http_get_path(target, path).is_ok_and(|(c, _)| c == 200) {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
        }
        let (mut most, mut peak) = (0, 0.0f64);
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            let s = d.describe(name);
            let n = s.state.instances.len();
            assert!(n <= max, "{n} instances, past max {max}:\n{}", d.log());
            most = most.max(n);
            peak = peak.max(s.state.autoscale.map_or(0.0, |a| a.load));
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        (most, peak)
    });
    Seen {
        most,
        served: served.load(Ordering::Relaxed),
        peak_load,
    }
}

fn autoscale_state(s: &FunctionStatus) -> faasd::status::AutoscaleStatus {
    s.state
        .autoscale
        .clone()
        .expect("the autoscaler's state in describe")
}

#[test]
fn a_burst_adds_instances_up_to_max_and_quiet_takes_them_back() {
    require_privileges!();
    let ns = Netns::new("autoscale");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "busy",
        &[
            "-e",
            "HELLO_THREADS=1",
            "-l",
            "com.openfaas.scale.max=4",
            "-a",
            "faasd.dev/scale-down-delay=2s",
        ],
    );
    let target = SocketAddr::from((addr, 8080));
    let Seen { most, served, .. } = load(&d, &ns, "busy", target, (6, "/work/50", 3), 4);
    assert!(
        most >= 2,
        "stayed at {most} instance(s) under the burst:\n{}",
        d.log()
    );
    assert!(served > 0);
    let auto = autoscale_state(&d.describe("busy"));
    assert_eq!(auto.kind, "capacity");
    assert!(auto.scaled_up >= 1, "{auto:?}");
    // Quiet for the 2 s delay: back to one (the function does not scale to zero).
    d.wait_for("busy", "one instance again", |s| {
        s.state.instances.len() == 1
    });
    let logs = d.cli_ok(&["logs", "busy"]);
    assert!(
        logs.contains("autoscale: the load needed at most 1 instance(s) for 2s"),
        "{logs}"
    );
    let metrics = d.api("GET", "/metrics", "").1;
    let sample = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    let labels = "function=\"busy\",namespace=\"openfaas-fn\"";
    assert_eq!(
        sample(&format!("faasd_function_autoscale_target{{{labels}}}")),
        1
    );
    // Down in one step, or in two if the load tapered off as the clients stopped.
    let down = sample(&format!(
        "faasd_function_autoscale_decisions_total{{{labels},direction=\"down\"}}"
    ));
    assert!((1..=3).contains(&down), "{down} decisions down");
}

#[test]
fn capacity_counts_open_connections_and_a_held_one_outlives_scaling_down() {
    require_privileges!();
    let ns = Netns::new("autoscale-held");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "held",
        &[
            "-l",
            "com.openfaas.scale.max=8",
            "-l",
            "com.openfaas.scale.target=2",
            "-l",
            "com.openfaas.scale.target-proportion=1.0",
            "-a",
            "faasd.dev/scale-down-delay=1s",
        ],
    );
    let target = SocketAddr::from((addr, 8080));
    // Six connections open and idle: three instances at two each, and no more.
    let mut conns: Vec<TcpStream> = ns.run(|| {
        (0..6)
            .map(|_| TcpStream::connect(target).unwrap())
            .collect()
    });
    // The decision that starts the third instance may have seen five of the six.
    let s = d.wait_for("held", "three instances for six connections", |s| {
        s.state.instances.len() == 3
            && s.state.instances.iter().all(|i| i.ready)
            && autoscale_state(s).load == 6.0
    });
    let auto = autoscale_state(&s);
    assert_eq!((auto.load, auto.target), (6.0, 3), "{auto:?}");
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        let n = d.describe("held").state.instances.len();
        assert_eq!(
            n,
            3,
            "the target of 2 a instance did not hold:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Five close; one stays open: one instance needed, and the one holding it stays.
    let mut kept = conns.pop().unwrap();
    drop(conns);
    let s = d.wait_for("held", "one instance again", |s| {
        s.state.instances.len() == 1
    });
    let (code, body) = ns.run(move || {
        write!(
            kept,
            "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        kept.read_to_string(&mut resp).unwrap();
        parse_response(&resp)
    });
    assert_eq!(
        code,
        200,
        "the held connection was cut: {body}\n{}",
        d.log()
    );
    assert_eq!(instance_of(&body), s.state.instances[0].id, "{body}");
    let logs = d.cli_ok(&["logs", "held"]);
    assert!(
        logs.contains("connection(s) open at 2 per instance"),
        "{logs}"
    );
}

#[test]
fn rps_and_cpu_grow_with_their_signals() {
    require_privileges!();
    let ns = Netns::new("autoscale-rate");
    let d = Daemon::start(&ns);
    let common = [
        "-l",
        "com.openfaas.scale.max=4",
        "-l",
        "com.openfaas.scale.target-proportion=1.0",
        "-a",
        "faasd.dev/scale-down-delay=1s",
    ];
    // rps: a few new connections a second per instance; one client makes hundreds.
    let mut args = vec![
        "-l",
        "com.openfaas.scale.type=rps",
        "-l",
        "com.openfaas.scale.target=5",
    ];
    args.extend_from_slice(&common);
    let rps = SocketAddr::from((d.deploy_hello("rate", &args), 8080));
    // cpu: 300 millicores per instance; two clients of 20 ms of CPU each keep one
    // instance's two threads at well over that.
    let mut args = vec![
        "-e",
        "HELLO_THREADS=2",
        "-l",
        "com.openfaas.scale.type=cpu",
        "-l",
        "com.openfaas.scale.target=300",
    ];
    args.extend_from_slice(&common);
    let cpu = SocketAddr::from((d.deploy_hello("cpu", &args), 8080));

    for (name, addr, clients, path, per_instance) in [
        ("rate", rps, 1, "/", 5.0),
        ("cpu", cpu, 2, "/work/20", 300.0),
    ] {
        let seen = load(&d, &ns, name, addr, (clients, path, 3), 4);
        let auto = autoscale_state(&d.describe(name));
        assert!(
            seen.most >= 2 && seen.served > 0 && auto.scaled_up >= 1,
            "{name}: {} instance(s), {} served, {auto:?}\n{}",
            seen.most,
            seen.served,
            d.log()
        );
        // Its signal, measured over a window while the load ran, was far above one
        // instance's target (growth may also have come from work waiting in the queue).
        assert_eq!(auto.kind, name.replace("rate", "rps"));
        assert!(
            seen.peak_load > per_instance,
            "{name}: the load peaked at {}, against {per_instance} per instance",
            seen.peak_load
        );
        d.wait_for(name, "one instance again", |s| s.state.instances.len() == 1);
    }
}

#[test]
fn a_crash_looping_function_does_not_multiply() {
    require_privileges!();
    let ns = Netns::new("autoscale-crash");
    let d = Daemon::start(&ns);
    d.cli_ok(&[
        "deploy",
        "crash",
        "--command",
        "/bin/false",
        "-l",
        "com.openfaas.scale.max=4",
    ]);
    let addr = SocketAddr::from((d.describe("crash").address, 8080));
    // Connections keep waiting in the queue while every start fails at once.
    let _waiting: Vec<TcpStream> =
        ns.run(|| (0..6).map(|_| TcpStream::connect(addr).unwrap()).collect());
    d.wait_for_log("crash", "a crash loop", |l| l.contains("crash loop:"));
    // Through two more backoff rounds, never past max.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let s = d.describe("crash");
        assert!(s.state.instances.len() <= 4, "{:?}", s.state);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first burst may start up to max before anything is known to fail; once the
    // crash loop is known, the waiting connections never make it grow again.
    let logs = d.cli_ok(&["logs", "crash"]);
    let after_loop: Vec<&str> = logs
        .lines()
        .skip_while(|l| !l.contains("crash loop:"))
        .filter(|l| l.contains("autoscale:") && l.contains("up to"))
        .collect();
    assert!(
        after_loop.is_empty(),
        "grew while crash-looping: {after_loop:?}\n{logs}"
    );
    let auto = autoscale_state(&d.describe("crash"));
    let before_loop = logs
        .lines()
        .take_while(|l| !l.contains("crash loop:"))
        .filter(|l| l.contains("autoscale:") && l.contains("up to"))
        .count() as u64;
    assert_eq!(auto.scaled_up, before_loop, "{auto:?}");
}
