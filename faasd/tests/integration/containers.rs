//! Container functions through a real containerd: the private one `cargo xtask test`
//! starts, named by FAASD_TEST_CONTAINERD, holding the sample images
//! `localhost/hello:latest` (takes sockets) and `localhost/hello-port:latest` (binds 8080);
//! `localhost/hello-unlabeled:latest` takes sockets without saying so in its label.
//! What these tests find in containerd they check with `ctr`, an independent client.

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::harness::{
    Daemon, Netns, cgroup_value, ctr, function_below, http_get, http_get_path, instance_of,
    wait_cgroup_frozen, wait_gone,
};

/// The containerd the tests use, or `None` (the test then skips with a message).
pub fn containerd() -> Option<PathBuf> {
    std::env::var_os("FAASD_TEST_CONTAINERD").map(PathBuf::from)
}

/// Binds `$socket` to the test containerd's socket, or skips the test with a message.
#[macro_export]
macro_rules! require_containerd {
    ($socket:ident) => {
        $crate::require_privileges!();
        let Some($socket) = $crate::containers::containerd() else {
            $crate::harness::skip(
                "no containerd for the tests (cargo xtask test starts one and sets \
                 FAASD_TEST_CONTAINERD)",
            );
            return;
        };
    };
}

/// Containers, tasks, snapshots and leases in containerd that belong to function `name`
/// (instance ids start with the function's name and the daemon's pid).
fn leftovers(socket: &Path, name: &str, daemon_pid: i32) -> Vec<String> {
    let prefix = format!("{name}-{daemon_pid}-");
    let mut found = Vec::new();
    for (what, args) in [
        ("container", &["containers", "ls", "-q"][..]),
        ("task", &["tasks", "ls"][..]),
        ("snapshot", &["snapshots", "ls"][..]),
        ("lease", &["leases", "ls", "-q"][..]),
    ] {
        for line in ctr(socket, args).lines() {
            if let Some(id) = line.split_whitespace().next()
                && id.starts_with(&prefix)
            {
                found.push(format!("{what} {id}"));
            }
        }
    }
    found
}

/// Asserts that no instance directory is left in the daemon's runtime directory.
fn assert_no_instance_files(ns: &Netns) {
    let containers_dir = ns.dir.join("run/containers");
    let left: Vec<_> = std::fs::read_dir(&containers_dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "left in {}: {left:?}",
        containers_dir.display()
    );
}

/// Removes what a test left in containerd for its functions: the daemon is killed with
/// SIGKILL at the end of a test, and containers outlive it. Declared after the namespace
/// and before the daemon, so it runs between the two.
pub struct Cleanup<'a> {
    pub socket: &'a PathBuf,
    pub names: &'a [&'a str],
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let list = |args: &[&str]| {
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket)
                .args(["--namespace", "faasd"])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let ours = |id: &str| self.names.iter().any(|n| id.starts_with(&format!("{n}-")));
        for id in list(&["containers", "ls", "-q"])
            .lines()
            .filter(|i| ours(i))
        {
            list(&["tasks", "kill", "-s", "SIGKILL", id]);
            list(&["tasks", "rm", "-f", id]);
            list(&["containers", "rm", id]);
        }
        for id in list(&["leases", "ls", "-q"]).lines().filter(|i| ours(i)) {
            list(&["leases", "rm", "--sync", id]);
        }
    }
}

pub fn start<'a>(ns: &'a Netns, socket: &PathBuf) -> Daemon<'a> {
    Daemon::start_with(ns, &format!("containerd = {socket:?}\n"))
}

pub fn http(addr: Ipv6Addr) -> SocketAddr {
    SocketAddr::from((addr, 8080))
}

#[test]
fn an_image_calls_out_under_its_egress_policy() {
    require_containerd!(socket);
    use crate::egress::{HOST4, INTERNET4, INTERNET6, call, config, expect};
    if crate::egress::nsd_missing() {
        return;
    }
    let host = crate::egress::host();
    let _internet = crate::egress::Internet::new(&host);
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-out", "ctr-shut"],
    };
    let d = Daemon::start_with(&host, &config(&host, &format!("containerd = {socket:?}\n")));
    let deploy = |name: &str, extra: &[&str]| {
        let mut args = vec!["deploy", name, "--image", "localhost/hello:latest"];
        args.extend_from_slice(extra);
        d.cli_ok(&args);
        d.describe(name).address
    };
    let out = deploy("ctr-out", &[]);
    let shut = deploy("ctr-shut", &["--annotation", "faasd.dev/egress=none"]);
    let ifaces = call(&d, out, "/interfaces");
    expect(&d, ifaces.split_whitespace().eq(["eth0", "lo"]), &ifaces);
    let v4 = call(&d, out, &format!("/connect/{INTERNET4}:80"));
    expect(&d, v4.contains(&format!("internet saw {HOST4}")), &v4);
    let named = call(&d, out, "/connect/www.example.test:80");
    expect(&d, named.contains("internet saw"), &named);
    let refused = call(&d, shut, &format!("/connect/[{INTERNET6}]:80"));
    expect(&d, refused.contains("Operation not permitted"), &refused);
    let (_, metrics) = d.api("GET", "/metrics", "");
    let line = "faasd_egress_refused_total{function=\"ctr-shut\",namespace=\"openfaas-fn\",\
                reason=\"none\"} 1";
    expect(&d, metrics.contains(line), line);
}

#[test]
fn an_image_starts_on_its_first_connection_with_only_lo() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-first");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-first"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&[
        "deploy",
        "ctr-first",
        "--image",
        "localhost/hello:latest",
        "-e",
        "GREETING=from envVars",
        "--annotation",
        "faasd.dev/egress=none",
    ]);
    let f = d.describe("ctr-first");
    assert_eq!(f.image, "localhost/hello:latest");
    assert!(f.state.instances.is_empty(), "deploy starts nothing");
    let (code, body) = ns.run(|| http_get(http(f.address))).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
    let instance = instance_of(&body);
    assert!(instance.starts_with("ctr-first-"), "{body}");
    // With no calls out, the container's network namespace holds only the loopback.
    let (_, ifaces) = ns
        .run(|| http_get_path(http(f.address), "/interfaces"))
        .unwrap();
    assert_eq!(ifaces.trim(), "lo");
    let get = |path: &str| ns.run(|| http_get_path(http(f.address), path)).unwrap().1;
    assert_eq!(get("/env/GREETING").trim(), "from envVars");
    // Without readOnlyRootFilesystem the container may write to its root.
    assert_eq!(get("/write").trim(), "wrote to /");
    let s = d.describe("ctr-first");
    assert_eq!(s.state.activations, 1);
    assert_eq!(s.state.instances.len(), 1);
    // stdout/stderr reach the function's log, with the instance id.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let logs = d.cli_ok(&["logs", "ctr-first"]);
        if logs
            .lines()
            .any(|l| l.contains(&instance) && l.contains("hello: instance"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no output in the log:\n{logs}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn five_hundred_first_connections_start_one_container_and_all_are_served() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-burst");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-burst"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&["deploy", "ctr-burst", "--image", "localhost/hello:latest"]);
    let addr = http(d.describe("ctr-burst").address);
    let results: Vec<_> = ns.run(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..500).map(|_| s.spawn(|| http_get(addr))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    });
    let failed: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let s = d.describe("ctr-burst");
    assert_eq!(s.state.activations, 1, "one activation for the burst");
    assert_eq!(s.state.starts, 1);
}

#[test]
fn limits_are_in_the_cgroup_and_enforced_and_the_root_can_be_read_only() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-mem");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-mem"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&[
        "deploy",
        "ctr-mem",
        "--image",
        "localhost/hello:latest",
        "--memory-limit",
        "32Mi",
        "--cpu-limit",
        "250m",
        "--read-only",
        "-l",
        "com.openfaas.scale.min=1",
    ]);
    let s = d.wait_for("ctr-mem", "a running instance", |s| {
        s.available_replicas == 1
    });
    let pid = s.state.instances[0].pid;
    assert_eq!(
        cgroup_value(pid, "memory", "memory.limit_in_bytes", "memory.max"),
        Some("33554432".into()),
        "memory limit in the cgroup of pid {pid}"
    );
    // 250m: a quarter of the 100 ms period.
    let quota = cgroup_value(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
    assert!(
        quota
            .as_deref()
            .is_some_and(|q| q == "25000" || q.starts_with("25000 ")),
        "cpu quota in the cgroup of pid {pid}: {quota:?}"
    );
    let addr = http(s.address);
    let (_, wrote) = ns.run(|| http_get_path(addr, "/write")).unwrap();
    assert!(wrote.contains("Read-only file system"), "{wrote}");
    let (code, body) = ns.run(|| http_get_path(addr, "/alloc/8")).unwrap();
    assert_eq!(
        (code, body.contains("allocated 8 MiB")),
        (200, true),
        "{body}"
    );
    // 64 MiB does not fit: the kernel kills the container, the request gets no answer.
    let r = ns.run(|| http_get_path(addr, "/alloc/64"));
    assert!(!matches!(&r, Ok((200, _))), "64 MiB fit in 32 MiB: {r:?}");
    d.wait_for("ctr-mem", "the killed instance to be replaced", |s| {
        s.state.instances.first().is_some_and(|i| i.pid != pid)
    });
    let logs = d.cli_ok(&["logs", "ctr-mem"]);
    assert!(logs.contains("killed by signal 9"), "{logs}");
}

#[test]
fn a_secret_is_readable_inside_and_never_shown() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-secret");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-secret"],
    };
    let d = start(&ns, &socket);
    let value = "hunter2-but-longer";
    d.cli_ok(&["secret", "create", "api-key", "--from-literal", value]);
    // A function that names a secret that does not exist is refused.
    let e = d
        .cli(&[
            "deploy",
            "ctr-secret",
            "--image",
            "localhost/hello:latest",
            "--secret",
            "missing",
        ])
        .unwrap_err();
    assert!(e.contains("missing") && e.contains("secret create"), "{e}");
    d.cli_ok(&[
        "deploy",
        "ctr-secret",
        "--image",
        "localhost/hello:latest",
        "--secret",
        "api-key",
    ]);
    let addr = http(d.describe("ctr-secret").address);
    let (code, body) = ns.run(|| http_get_path(addr, "/secret/api-key")).unwrap();
    assert_eq!((code, body.as_str()), (200, value));
    let shown = d.cli_ok(&["describe", "ctr-secret", "--json"])
        + &d.cli_ok(&["logs", "ctr-secret"])
        + &d.cli_ok(&["secret", "list"])
        + &d.log();
    assert!(
        !shown.contains(value),
        "the secret's value leaked:\n{shown}"
    );
    assert!(shown.contains("api-key"));
}

#[test]
fn idle_scale_to_zero_removes_the_task_and_remove_leaves_nothing() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-idle");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-idle"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&[
        "deploy",
        "ctr-idle",
        "--image",
        "localhost/hello:latest",
        "-l",
        "com.openfaas.scale.zero=true",
        "-l",
        "com.openfaas.scale.zero-duration=1s",
    ]);
    let addr = http(d.describe("ctr-idle").address);
    let (code, _) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200);
    assert!(
        !leftovers(&socket, "ctr-idle", d.pid()).is_empty(),
        "a running container"
    );
    d.wait_for("ctr-idle", "scale to zero", |s| {
        s.state.instances.is_empty()
    });
    wait_gone_from_containerd(&socket, "ctr-idle", d.pid());
    // Called again, it starts again, and then the function is removed while it runs.
    let (code, _) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200);
    d.cli_ok(&["remove", "ctr-idle"]);
    assert_eq!(
        leftovers(&socket, "ctr-idle", d.pid()),
        Vec::<String>::new()
    );
    assert_no_instance_files(&ns);
}

#[test]
fn an_image_that_binds_its_own_port_is_forwarded_to() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-port");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-port"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&[
        "deploy",
        "ctr-port",
        "--image",
        "localhost/hello-port:latest",
    ]);
    let addr = http(d.describe("ctr-port").address);
    for i in 0..3 {
        let (code, body) = ns.run(|| http_get(addr)).unwrap();
        assert_eq!(code, 200, "call {i}: {body}\n{}", d.log());
        assert!(body.contains(&format!("request={}", i + 1)), "{body}");
    }
    let s = d.describe("ctr-port");
    assert_eq!((s.state.activations, s.available_replicas), (1, 1));
}

/// An image that takes its sockets but lacks faasd's label is given them when the
/// deployment says so (without the annotation it would be forwarded to a port it never
/// binds).
#[test]
fn an_image_without_the_label_takes_its_sockets_when_the_deployment_says_so() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-unlabeled");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-unlabeled"],
    };
    let d = start(&ns, &socket);
    let e = d
        .cli(&[
            "deploy",
            "ctr-unlabeled",
            "--image",
            "localhost/hello-unlabeled:latest",
            "-a",
            "faasd.dev/socket-activation=yes",
        ])
        .unwrap_err();
    assert!(e.contains("faasd.dev/socket-activation"), "{e}");
    d.cli_ok(&[
        "deploy",
        "ctr-unlabeled",
        "--image",
        "localhost/hello-unlabeled:latest",
        "-a",
        "faasd.dev/socket-activation=true",
    ]);
    let addr = http(d.describe("ctr-unlabeled").address);
    for i in 0..2 {
        let (code, body) = ns.run(|| http_get(addr)).unwrap();
        assert_eq!(code, 200, "call {i}: {body}\n{}", d.log());
        assert!(body.contains(&format!("request={}", i + 1)), "{body}");
    }
    let s = d.describe("ctr-unlabeled");
    assert_eq!((s.state.activations, s.available_replicas), (1, 1));
}

/// Several containers of one function at once, scaled with the load: those that take
/// their sockets share them, those that bind their own port get a path each, and both
/// return to one container after the delay, leaving nothing behind once removed.
#[test]
fn several_containers_of_a_function_share_its_load() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-scale");
    let names = ["ctr-scale", "ctr-scale-port"];
    let _c = Cleanup {
        socket: &socket,
        names: &names,
    };
    let d = start(&ns, &socket);
    for (name, image) in names
        .into_iter()
        .zip(["localhost/hello:latest", "localhost/hello-port:latest"])
    {
        d.cli_ok(&[
            "deploy",
            name,
            "--image",
            image,
            "-e",
            "HELLO_THREADS=1",
            "-l",
            "com.openfaas.scale.max=3",
            "-l",
            "com.openfaas.scale.target-proportion=1",
            "-a",
            "faasd.dev/scale-down-delay=1s",
        ]);
        let addr = http(d.describe(name).address);
        // Three calls of 300 ms of CPU at once, against one connection per instance:
        // three containers, and the calls spread over more than one of them.
        let bodies: Vec<(u16, String)> = std::thread::scope(|scope| {
            let calls: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| ns.run(|| http_get_path(addr, "/work/300"))))
                .collect();
            calls
                .into_iter()
                .map(|c| c.join().unwrap().unwrap())
                .collect()
        });
        let mut served_by = std::collections::HashSet::new();
        for (code, body) in &bodies {
            assert_eq!(*code, 200, "{name}: {body}\n{}", d.log());
            served_by.insert(instance_of(body));
        }
        let s = d.wait_for(name, "three containers", |s| s.state.instances.len() == 3);
        assert!(
            served_by.len() >= 2,
            "{name}: all calls went to {served_by:?} of {:?}",
            s.state.instances
        );
        d.wait_for(name, "one container again", |s| {
            s.state.instances.len() == 1
        });
        let (code, body) = ns.run(|| http_get(addr)).unwrap();
        assert_eq!(code, 200, "{name} after scaling down: {body}");
        d.cli_ok(&["remove", name]);
        assert_eq!(leftovers(&socket, name, d.pid()), Vec::<String>::new());
    }
}

/// Waits until containerd holds nothing of the function's (or panics with what is left).
fn wait_gone_from_containerd(socket: &Path, name: &str, daemon_pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = leftovers(socket, name, daemon_pid);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{name} left {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_missing_image_is_a_clear_error_and_leaves_no_state() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-missing");
    let d = start(&ns, &socket);
    let e = d
        .cli(&[
            "deploy",
            "ctr-missing",
            "--image",
            "localhost/no-such-image:1.0",
        ])
        .unwrap_err();
    assert!(
        e.contains("localhost/no-such-image:1.0") && e.contains("faasd image import"),
        "{e}"
    );
    let e = d
        .cli(&["deploy", "ctr-missing", "--image", "Not/A Reference"])
        .unwrap_err();
    assert!(e.contains("400") && e.contains("image"), "{e}");
    assert_eq!(d.cli_ok(&["list", "--json"]).trim(), "[]");
    let stored: Vec<_> = std::fs::read_dir(ns.dir.join("state/functions/openfaas-fn"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(stored.is_empty(), "{stored:?}");
}

#[test]
fn without_containerd_the_daemon_runs_and_image_deploys_say_where_it_looked() {
    crate::require_privileges!();
    let ns = Netns::new("ctr-absent");
    let d = Daemon::start_with(&ns, "containerd = \"/nonexistent/containerd.sock\"\n");
    let e = d
        .cli(&["deploy", "absent", "--image", "localhost/hello:latest"])
        .unwrap_err();
    assert!(
        e.contains("503")
            && e.contains("unreachable")
            && e.contains("/nonexistent/containerd.sock"),
        "{e}"
    );
    // Process functions are unaffected.
    let addr = d.deploy_hello("proc", &[]);
    let (code, _) = ns.run(|| http_get(SocketAddr::from((addr, 8080)))).unwrap();
    assert_eq!(code, 200);
}

#[test]
fn a_container_keeps_serving_through_a_kill_9_and_is_adopted() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-adopt");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-adopt", "ctr-fwd"],
    };
    let mut d = start(&ns, &socket);
    let running = ["-l", "com.openfaas.scale.min=1"];
    let mut args = vec!["deploy", "ctr-adopt", "--image", "localhost/hello:latest"];
    args.extend_from_slice(&running);
    d.cli_ok(&args);
    let mut args = vec![
        "deploy",
        "ctr-fwd",
        "--image",
        "localhost/hello-port:latest",
    ];
    args.extend_from_slice(&running);
    d.cli_ok(&args);
    let before = d.wait_for("ctr-adopt", "a running instance", |s| {
        s.available_replicas == 1
    });
    let fwd = d.wait_for("ctr-fwd", "a running instance", |s| {
        s.available_replicas == 1
    });
    let old_fwd_pid = fwd.state.instances[0].pid;
    let pid = before.state.instances[0].pid;
    let first_daemon = d.pid();
    d.kill9();
    // The container holds the function's sockets itself: it answers with no faasd.
    let (code, body) = ns.run(|| http_get(http(before.address))).unwrap();
    assert_eq!(code, 200, "{body}");
    d.restart();
    let after = d.describe("ctr-adopt");
    assert_eq!(
        after
            .state
            .instances
            .iter()
            .map(|i| i.pid)
            .collect::<Vec<_>>(),
        vec![pid],
        "the same container is adopted\n{}",
        d.log()
    );
    let (code, _) = ns.run(|| http_get(http(after.address))).unwrap();
    assert_eq!(code, 200);
    // A forwarded instance's sockets lived in the dead daemon: its container is
    // replaced, and the old one deleted from containerd.
    let fwd = d.wait_for("ctr-fwd", "a new forwarded instance", |s| {
        s.available_replicas == 1 && s.state.instances[0].pid != old_fwd_pid
    });
    let (code, _) = ns.run(|| http_get(http(fwd.address))).unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        leftovers(&socket, "ctr-fwd", first_daemon),
        Vec::<String>::new()
    );
}

#[test]
fn an_image_missing_from_containerd_is_pulled_from_its_registry() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-pull");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-pull"],
    };
    let Some(_registry) = crate::registries::LocalRegistry::with_sample(&ns) else {
        return;
    };
    let d = start(&ns, &socket);
    // An unreachable registry and an unknown tag are refused, with the reason.
    let e = d
        .cli(&[
            "deploy",
            "ctr-pull",
            "--image",
            "127.0.0.1:5999/hello:pulled",
        ])
        .unwrap_err();
    assert!(
        e.contains("cannot reach the registry 127.0.0.1:5999") && e.contains("faasd image import"),
        "{e}"
    );
    // The registry's failure is a bad gateway (502), a missing tag the caller's (400).
    let (code, body) = d.api(
        "POST",
        "/system/functions",
        r#"{"service":"ctr-pull","image":"127.0.0.1:5999/hello:pulled"}"#,
    );
    assert_eq!(code, 502, "{body}");
    let (code, body) = d.api(
        "POST",
        "/system/functions",
        r#"{"service":"ctr-pull","image":"127.0.0.1:5000/hello:no-such-tag"}"#,
    );
    assert_eq!(code, 400, "{body}");
    let e = d
        .cli(&[
            "deploy",
            "ctr-pull",
            "--image",
            "127.0.0.1:5000/hello:no-such-tag",
        ])
        .unwrap_err();
    assert!(e.contains("404"), "{e}");
    // containerd keeps what an earlier run pulled: forget the name, so this run pulls.
    let tag = "127.0.0.1:5000/hello:pulled";
    let _ = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["--namespace", "faasd", "images", "rm", tag])
        .output();
    d.cli_ok(&["deploy", "ctr-pull", "--image", tag]);
    assert!(
        ctr(&socket, &["images", "ls", "-q"])
            .lines()
            .any(|l| l == tag)
    );
    let addr = http(d.describe("ctr-pull").address);
    let (code, body) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
}

/// A pull that hangs holds no lock anything else needs: while a deploy waits on a registry
/// that accepts the connection and never answers, another function's invocation,
/// `/metrics`, `list` and the systemd watchdog ping all go on.
#[test]
fn a_hanging_pull_blocks_nothing_else() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-hang");
    // The registry: a listener nobody accepts on. The kernel completes the handshake and
    // queues the request; no answer ever comes.
    let registry = ns.run(|| std::net::TcpListener::bind("127.0.0.1:5998").unwrap());
    let notify_path = ns.dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let d = Daemon::start_with_env(
        &ns,
        &format!("containerd = {socket:?}\n"),
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
            // A ping every 250 ms.
            ("WATCHDOG_USEC", "500000"),
        ],
    );
    d.deploy_running("awake", &[]);
    let pull = std::thread::scope(|s| {
        let deploy = s.spawn(|| d.cli(&["deploy", "ctr-hang", "--image", "127.0.0.1:5998/hang:1"]));
        // The deploy is connected and waiting once the registry has it queued.
        std::thread::sleep(Duration::from_millis(500));
        let checks = Instant::now();
        assert!(
            !deploy.is_finished(),
            "the deploy returned at once: {:?}",
            deploy.join()
        );
        let (code, body) = d.api("GET", "/function/awake", "");
        assert_eq!(code, 200, "invocation: {body}");
        let (code, body) = d.api("GET", "/metrics", "");
        assert_eq!(code, 200);
        assert!(body.contains("faasd_function_instances"), "{body}");
        let (code, body) = d.api("GET", "/system/functions", "");
        assert_eq!(code, 200);
        assert!(body.contains("\"awake\""), "{body}");
        // Pings keep coming: drop what is queued from before, then see two new ones.
        let mut buf = [0u8; 256];
        notify.set_nonblocking(true).unwrap();
        while notify.recv(&mut buf).is_ok() {}
        notify.set_nonblocking(false).unwrap();
        let mut pings = 0;
        while pings < 2 {
            let n = notify
                .recv(&mut buf)
                .expect("no WATCHDOG=1 within 2 s while a pull hangs");
            if String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1") {
                pings += 1;
            }
        }
        assert!(checks.elapsed() < Duration::from_secs(10));
        assert!(
            !deploy.is_finished(),
            "the deploy should still wait on the registry: {:?}",
            deploy.join()
        );
        // Killing the daemon ends the deploy's wait.
        // SAFETY: kill on the daemon's pid, our child.
        unsafe { libc::kill(d.pid(), libc::SIGKILL) };
        deploy.join().unwrap()
    });
    assert!(
        pull.is_err(),
        "a deploy from a registry that never answers failed: {pull:?}"
    );
    drop(registry);
}

/// A container whose program installs no SIGTERM handler stops on SIGTERM at once: the
/// shim stays as the container's pid 1, faasd's init, and forwards it.
#[test]
fn a_container_without_a_sigterm_handler_stops_at_once() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-sigterm");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-sigterm", "ctr-sigport"],
    };
    let d = start(&ns, &socket);
    // One that takes its sockets and one that binds its own port: faasd's init is pid 1
    // of both.
    for (name, image) in [
        ("ctr-sigterm", "localhost/hello:latest"),
        ("ctr-sigport", "localhost/hello-port:latest"),
    ] {
        d.cli_ok(&[
            "deploy",
            name,
            "--image",
            image,
            "-e",
            "HELLO_SIGTERM=default",
            "-l",
            "com.openfaas.scale.min=1",
            "-a",
            "faasd.dev/stop-timeout=60s",
        ]);
        let s = d.wait_for(name, "its container", |s| s.available_replicas == 1);
        let init = s.state.instances[0].pid;
        let function = function_below(init);
        let comm = std::fs::read_to_string(format!("/proc/{function}/comm")).unwrap();
        assert_eq!(
            comm.trim(),
            "hello",
            "{name}: the function runs below the shim"
        );
        d.cli_ok(&["scale", name, "0"]);
        // Far inside the 60 s grace period, after which SIGKILL would come: as pid 1 the
        // program would ignore SIGTERM until then.
        wait_gone(init, 15, || d.log());
    }
}

/// containerd's tasks of function `name` under daemon `daemon_pid`: (id, pid, status).
fn tasks(socket: &Path, name: &str, daemon_pid: i32) -> Vec<(String, String, String)> {
    let prefix = format!("{name}-{daemon_pid}-");
    ctr(socket, &["tasks", "ls"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?;
            Some((id.to_owned(), f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .filter(|(id, _, _)| id.starts_with(&prefix))
        .collect()
}

#[test]
fn a_prepared_image_waits_as_a_started_task_and_serves_its_first_connection() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-prep");
    let names = ["ctr-prep", "ctr-prep-fwd"];
    let _c = Cleanup {
        socket: &socket,
        names: &names,
    };
    let mut d = start(&ns, &socket);
    for (name, image) in names
        .iter()
        .zip(["localhost/hello:latest", "localhost/hello-port:latest"])
    {
        d.cli_ok(&[
            "deploy",
            name,
            "--image",
            image,
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=1s",
            "--annotation",
            "faasd.dev/prepare=true",
        ]);
    }
    let first_daemon = d.pid();
    for name in names {
        let s = d.wait_for(name, "an instance prepared", |s| s.state.prepared.is_some());
        assert_eq!(s.replicas, 0, "a prepared instance is not a replica");
        let prepared = s.state.prepared.clone().unwrap();
        // Its task runs (faasd's shim as pid 1, waiting for faasd's go-ahead).
        let t = tasks(&socket, name, first_daemon);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(
            (t[0].0.as_str(), t[0].2.as_str()),
            (prepared.as_str(), "RUNNING")
        );

        let (code, body) = ns.run(|| http_get(http(s.address))).unwrap();
        assert_eq!(code, 200, "{name}: {body}\n{}", d.log());
        let s = d.wait_for(name, "the prepared instance serving", |s| s.replicas == 1);
        assert_eq!(
            s.state.instances[0].id, prepared,
            "{name}: the prepared one served"
        );
        assert_eq!(s.state.instances[0].pid.to_string(), t[0].1);
        let timing = s.state.last_activation.expect("activation timing");
        assert_eq!(
            timing.task_created_ns, 0,
            "{name}: no task was created for the activation"
        );
        // Scaled to zero, it is deleted from containerd and the next one prepared.
        let s = d.wait_for(name, "stopped and prepared again", |s| {
            s.replicas == 0 && s.state.prepared.as_ref().is_some_and(|p| *p != prepared)
        });
        let next = s.state.prepared.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<String> = tasks(&socket, name, first_daemon)
                .into_iter()
                .map(|t| t.0)
                .collect();
            if ids == [next.clone()] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: tasks {ids:?}, want {next}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Killed with -9, faasd leaves prepared containers whose shims have lost faasd: the
    // next daemon deletes them and prepares its own.
    d.kill9();
    d.restart();
    for name in names {
        wait_gone_from_containerd(&socket, name, first_daemon);
        d.wait_for(name, "prepared by the new daemon", |s| {
            s.state.prepared.is_some()
        });
    }
    for name in names {
        d.cli_ok(&["remove", name]);
        assert_eq!(leftovers(&socket, name, d.pid()), Vec::<String>::new());
    }
    assert_no_instance_files(&ns);
}

#[test]
fn an_idle_container_freezes_thaws_on_its_next_connection_and_is_removed_cleanly() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-freeze");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-freeze"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&[
        "deploy",
        "ctr-freeze",
        "--image",
        "localhost/hello:latest",
        "--annotation",
        "faasd.dev/freeze-after=300ms",
    ]);
    let addr = http(d.describe("ctr-freeze").address);
    let (code, body) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200, "{body}");
    let instance = instance_of(&body);
    d.wait_for("ctr-freeze", "frozen", |s| s.state.frozen);
    // The container's own cgroup is the one frozen.
    wait_cgroup_frozen(
        &faasd::runtime::cgroup::root()
            .expect("cgroup v2")
            .join(&ns.cgroup_parent)
            .join(&instance),
    );
    let (code, body) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert_eq!(
        instance_of(&body),
        instance,
        "the frozen container served, thawed"
    );
    assert_eq!(d.describe("ctr-freeze").state.thaws, 1);
    // Removed while frozen: thawed, stopped and deleted.
    d.wait_for("ctr-freeze", "frozen again", |s| s.state.frozen);
    d.cli_ok(&["remove", "ctr-freeze"]);
    assert_eq!(
        leftovers(&socket, "ctr-freeze", d.pid()),
        Vec::<String>::new()
    );
}
