//! The process sandbox: what an instance may not see or read.

use std::{os::unix::fs::PermissionsExt, path::Path};

use std::net::SocketAddr;

use crate::{
    harness::{Daemon, Netns, cgroup_value, http_get_path},
    require_privileges,
};

/// `/home`, `/root` and faasd's state directory are empty and inaccessible inside a process
/// instance, even one running as root (so that the mounts alone can be what hides them),
/// and the state directory and records are the owner's alone on the host.
#[test]
fn a_process_function_sees_neither_home_nor_root_nor_the_state_directory() {
    require_privileges!();
    let ns = Netns::new("sandbox");
    let d = Daemon::start(&ns);
    let state = ns.dir.join("state");
    let looked_at = [
        "/root".to_owned(),
        "/home".to_owned(),
        state.display().to_string(),
    ];
    let script = format!(
        "for p in {}; do echo looked: $p: $(ls -A $p 2>&1); done; exec /bin/sleep 600",
        looked_at.join(" ")
    );
    d.cli_ok(&[
        "deploy",
        "peek",
        "--command",
        &format!("/bin/sh -c '{script}'"),
        "-l",
        "com.openfaas.scale.min=1",
        "-a",
        "faasd.dev/user=root",
    ]);
    d.wait_for("peek", "its instance", |s| s.replicas == 1);
    let log = d.wait_for_log("peek", "its listings", |log| {
        log.matches("looked: ").count() == looked_at.len()
    });
    for p in &looked_at {
        let seen = log
            .lines()
            .find_map(|l| {
                l.split_once(&format!("looked: {p}:"))
                    .map(|(_, rest)| rest.trim())
            })
            .unwrap_or_else(|| panic!("no listing of {p} in: {log}"));
        assert!(
            seen.is_empty() || seen.contains("Permission denied"),
            "{p} is visible inside: {seen:?}"
        );
    }
    // What was hidden is there on the host.
    for p in ["/root", state.to_str().unwrap()] {
        assert!(
            std::fs::read_dir(p).unwrap().next().is_some(),
            "{p} is not empty on the host"
        );
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700, "the state directory is the owner's");
    assert_eq!(
        mode(&state.join("functions.journal")),
        0o600,
        "so are the records"
    );
}

/// Each process instance has a `/tmp` of its own: what one leaves there, neither another
/// function nor the host sees.
#[test]
fn each_process_instance_has_a_private_tmp() {
    require_privileges!();
    let ns = Netns::new("privtmp");
    let d = Daemon::start(&ns);
    let mark = format!("faasd-mark-{}", std::process::id());
    let deploy = |name: &str, script: &str| {
        d.cli_ok(&[
            "deploy",
            name,
            "--command",
            &format!("/bin/sh -c '{script}; exec /bin/sleep 600'"),
            "-l",
            "com.openfaas.scale.min=1",
        ]);
    };
    deploy(
        "writer",
        &format!("echo x > /tmp/{mark} && echo tmp: $(ls -A /tmp)"),
    );
    deploy("reader", "echo tmp: $(ls -A /tmp)");
    let listing = |name: &str| {
        let log = d.wait_for_log(name, "its listing of /tmp", |log| log.contains("tmp:"));
        let (_, rest) = log.lines().find_map(|l| l.split_once("tmp:")).unwrap();
        rest.trim().to_owned()
    };
    assert_eq!(
        listing("writer"),
        mark,
        "the writer's /tmp holds its file alone"
    );
    assert_eq!(listing("reader"), "", "another function's /tmp is empty");
    assert!(
        !Path::new("/tmp").join(&mark).exists(),
        "nothing reached the host's /tmp"
    );
    assert!(
        std::fs::read_dir("/tmp").unwrap().next().is_some(),
        "the host's /tmp is not empty, so an empty listing means a private one"
    );
}

/// Two functions run as two users of their own (as systemd's `DynamicUser=`), so neither can
/// signal the other or read what the other writes.
#[test]
fn two_functions_run_as_two_users_of_their_own() {
    require_privileges!();
    let ns = Netns::new("dynuser");
    let d = Daemon::start(&ns);
    let uid_of = |name: &str| {
        let addr = d.deploy_hello(name, &["-l", "com.openfaas.scale.min=1"]);
        let s = d.wait_for(name, "its instance", |s| s.replicas == 1);
        let pid = s.state.instances[0].pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid: u32 = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
            .unwrap();
        (addr, uid)
    };
    let (a_addr, a) = uid_of("first");
    let (b_addr, b) = uid_of("second");
    assert_ne!(a, b, "each function has a user of its own");
    let config = faasd_core::config::Config::default();
    assert_eq!(
        (a, b),
        (config.dynamic_uid(a_addr), config.dynamic_uid(b_addr)),
        "the uid follows from the function's address, so it stays across restarts"
    );
}

/// OpenFaaS `limits` and `faasd.dev/pids-max` of a process function are in its instance's
/// cgroups (v1 controllers on a hybrid host, the unified hierarchy elsewhere) and hold: a
/// thread past the pids limit is refused, an allocation past the memory limit is killed.
#[test]
fn limits_of_a_process_function_are_in_its_cgroup_and_enforced() {
    require_privileges!();
    let ns = Netns::new("plimits");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello(
        "bounded",
        &[
            "--memory-limit",
            "48Mi",
            "--cpu-limit",
            "250m",
            "--annotation",
            "faasd.dev/pids-max=24",
            "-l",
            "com.openfaas.scale.min=1",
        ],
    );
    let s = d.wait_for("bounded", "a running instance", |s| {
        s.available_replicas == 1
    });
    let pid = s.state.instances[0].pid;
    let function = crate::harness::function_below(pid);
    for p in [pid, function] {
        assert_eq!(
            cgroup_value(p, "memory", "memory.limit_in_bytes", "memory.max"),
            Some((48u64 << 20).to_string()),
            "memory limit in the cgroup of pid {p}"
        );
        assert_eq!(
            cgroup_value(p, "pids", "pids.max", "pids.max"),
            Some("24".into()),
            "pids limit in the cgroup of pid {p}"
        );
        let quota = cgroup_value(p, "cpu", "cpu.cfs_quota_us", "cpu.max");
        assert!(
            quota
                .as_deref()
                .is_some_and(|q| q == "25000" || q.starts_with("25000 ")),
            "cpu quota in the cgroup of pid {p}: {quota:?}"
        );
    }
    let get = |path: &str| {
        ns.run(|| http_get_path(SocketAddr::from((addr, 8080)), path))
            .map(|(_, body)| body)
    };
    // The function's own threads (a pool of 8 serving connections) count against it.
    let threads = get("/threads/40").unwrap();
    assert!(
        threads.contains("Resource temporarily unavailable") && !threads.starts_with("started 40 "),
        "{threads}"
    );
    let small = get("/alloc/8").unwrap();
    assert!(small.contains("allocated 8 MiB"), "{small}");
    let big = get("/alloc/96");
    assert!(
        !big.as_ref().is_ok_and(|b| b.contains("allocated")),
        "96 MiB fit in 48 MiB: {big:?}"
    );
    d.wait_for("bounded", "the killed instance to be replaced", |s| {
        s.state.instances.first().is_some_and(|i| i.pid != pid)
    });
}

/// A process function has no capabilities, even run as root, and the containers' system
/// call filter: a new user namespace, which any unprivileged process may make, is refused.
#[test]
fn a_process_function_has_no_capabilities_and_the_system_call_filter() {
    require_privileges!();
    let ns = Netns::new("seccomp");
    let d = Daemon::start(&ns);
    for (name, extra) in [
        ("as-root", &["--annotation", "faasd.dev/user=root"][..]),
        ("dynamic", &[][..]),
    ] {
        let mut args = vec!["-l", "com.openfaas.scale.min=1"];
        args.extend_from_slice(extra);
        let addr = d.deploy_hello(name, &args);
        let s = d.wait_for(name, "its instance", |s| s.available_replicas == 1);
        let function = crate::harness::function_below(s.state.instances[0].pid);
        let status = std::fs::read_to_string(format!("/proc/{function}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_default()
                .to_owned()
        };
        for cap in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(cap), "0000000000000000", "{name}: {cap}\n{status}");
        }
        assert_eq!(field("Seccomp:"), "2", "{name}: a filter\n{status}");
        assert_eq!(field("NoNewPrivs:"), "1", "{name}\n{status}");
        let (_, body) = ns
            .run(|| http_get_path(SocketAddr::from((addr, 8080)), "/unshare"))
            .unwrap();
        assert_eq!(
            body.trim(),
            "unshare: Operation not permitted (os error 1)",
            "{name}"
        );
    }
}

/// `readOnlyRootFilesystem` for a process function: the host's root is read-only inside,
/// its private `/tmp` and its own directory (`STATE_DIRECTORY`) are writable, another
/// function's directory is out of its reach, and its secret is at /var/openfaas/secrets.
#[test]
fn a_read_only_process_function_writes_only_its_own_places_and_reads_its_secret() {
    require_privileges!();
    let ns = Netns::new("readonly");
    let d = Daemon::start(&ns);
    d.cli_ok(&[
        "secret",
        "create",
        "token",
        "--from-literal",
        "s3cr3t-value",
    ]);
    let other = d.deploy_hello("other", &["-l", "com.openfaas.scale.min=1"]);
    let addr = d.deploy_hello(
        "locked",
        &[
            "--read-only",
            "--secret",
            "token",
            "-l",
            "com.openfaas.scale.min=1",
        ],
    );
    for f in ["other", "locked"] {
        d.wait_for(f, "its instance", |s| s.available_replicas == 1);
    }
    let data = ns.dir.join("data/openfaas-fn");
    let get = |at: std::net::Ipv6Addr, path: &str| {
        ns.run(|| http_get_path(SocketAddr::from((at, 8080)), path))
            .unwrap()
            .1
    };
    let own = data.join("locked");
    let env = get(addr, "/env/STATE_DIRECTORY");
    assert_eq!(env.trim(), own.to_string_lossy(), "{env}");
    let root = get(addr, "/write");
    assert!(root.contains("Read-only file system"), "{root}");
    let usr = get(addr, "/write-in/usr");
    assert!(usr.contains("Read-only file system"), "{usr}");
    let tmp = get(addr, "/write-in/tmp");
    assert!(tmp.starts_with("wrote to /tmp"), "{tmp}");
    let mine = get(addr, &format!("/write-in{}", own.display()));
    assert!(mine.starts_with("wrote to"), "{mine}");
    // Without a read-only root the other function writes its own directory too, but not
    // this one's.
    let theirs = get(other, &format!("/write-in{}", data.join("other").display()));
    assert!(theirs.starts_with("wrote to"), "{theirs}");
    let foreign = get(other, &format!("/write-in{}", own.display()));
    assert!(foreign.contains("Permission denied"), "{foreign}");
    let secret = get(addr, "/secret/token");
    assert_eq!(secret, "s3cr3t-value");
    let none = get(other, "/secret/token");
    assert!(none.contains("cannot read secret token"), "{none}");
    // The directory goes with the function.
    d.cli_ok(&["remove", "locked"]);
    assert!(!own.exists(), "{} is left", own.display());
}
