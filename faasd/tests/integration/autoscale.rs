//! Scaling with the load: a one-request-at-a-time, CPU-bound function under a burst grows
//! past one instance, never past its max, and returns to one after its scale-down delay.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    harness::{Daemon, Netns, http_get_path},
    require_privileges,
};

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
            "com.openfaas.scale.max=3",
            "-l",
            "com.openfaas.scale.target=1",
            "-a",
            "faasd.dev/scale-down-delay=2s",
        ],
    );
    let target = SocketAddr::from((addr, 8080));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let most = std::thread::scope(|scope| {
        for _ in 0..6 {
            let (stop, served) = (stop.clone(), served.clone());
            scope.spawn(|| {
                ns.run(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if http_get_path(target, "/work/50").is_ok_and(|(c, _)| c == 200) {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            });
        }
        // Watch the instances while the load lasts: never past max.
        let mut most = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            let n = d.describe("busy").state.instances.len();
            assert!(n <= 3, "{n} instances, past max 3:\n{}", d.log());
            most = most.max(n);
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        most
    });
    assert!(
        most >= 2,
        "stayed at {most} instance(s) under the burst:\n{}",
        d.log()
    );
    assert!(served.load(Ordering::Relaxed) > 0);
    let s = d.describe("busy");
    let auto = s
        .state
        .autoscale
        .expect("the autoscaler's state in describe");
    assert!(
        auto.last_decision
            .as_deref()
            .is_some_and(|r| r.contains("waiting")),
        "{auto:?}"
    );
    // Quiet for the 2 s delay: back to one (the function does not scale to zero).
    d.wait_for("busy", "one instance again", |s| {
        s.state.instances.len() == 1
    });
    let logs = d.cli_ok(&["logs", "busy"]);
    assert!(logs.contains("autoscale: nothing waited for 2s"), "{logs}");
}
