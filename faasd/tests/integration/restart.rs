//! Daemon restarts, graceful and kill -9: running functions keep serving while the daemon
//! is down, and the next daemon restores functions, addresses and instances.

use std::net::SocketAddr;

use faasd::status::Phase;

use crate::{
    harness::{Daemon, Netns, alive, http_get, instance_of, wait_gone},
    require_privileges,
};

fn restart_keeps_serving(kill9: bool) {
    let ns = Netns::new(if kill9 { "kill9" } else { "term" });
    let mut d = Daemon::start(&ns);
    let (running, instance) = d.deploy_running("running", &[]);
    let stopped = d.deploy_hello("stopped", &[]);
    let pid = instance.pid;
    let (_, body) = ns
        .run(|| http_get(SocketAddr::from((running, 8080))))
        .unwrap();
    let instance = instance_of(&body);

    if kill9 {
        d.kill9()
    } else {
        d.stop()
    }
    // No daemon now: the pinned program and the function's own sockets carry on.
    let (code, body) = ns
        .run(|| http_get(SocketAddr::from((running, 8080))))
        .unwrap();
    assert_eq!(
        (code, instance_of(&body)),
        (200, instance.clone()),
        "served while faasd was down"
    );
    // The stopped function's socket went with the daemon: its connection is refused, and
    // the program logs that (read by the next daemon).
    let e = ns
        .run(|| http_get(SocketAddr::from((stopped, 8080))))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");

    d.restart();
    let status = d.cli_ok(&["status", "--json"]);
    assert!(status.contains("\"adopted\":true"), "{status}");
    let event = format!("binding [{stopped}]:8080/6");
    d.wait_for_status("the kernel's event", |s| {
        s.contains(&event) && s.contains("has no socket")
    });
    let after = d.describe("running");
    assert_eq!(after.address, running, "addresses are stable");
    assert_eq!(
        after.state.instances.first().map(|i| i.pid),
        Some(pid),
        "the instance was adopted"
    );
    let (code, body) = ns
        .run(|| http_get(SocketAddr::from((running, 8080))))
        .unwrap();
    assert_eq!((code, instance_of(&body)), (200, instance));

    assert_eq!(d.describe("stopped").address, stopped);
    let (code, _) = ns
        .run(|| http_get(SocketAddr::from((stopped, 8080))))
        .unwrap();
    assert_eq!(
        code, 200,
        "the stopped function activates after the restart"
    );

    // The adopted instance is managed: scaling to zero stops it.
    d.cli_ok(&["scale", "running", "0"]);
    d.wait_for("running", "scale to zero", |s| {
        s.state.phase == Phase::Stopped
    });
    assert!(!alive(pid), "the old instance is gone");
}

#[test]
fn graceful_restart_keeps_functions_serving() {
    require_privileges!();
    restart_keeps_serving(false);
}

#[test]
fn kill_9_restart_keeps_functions_serving_and_state() {
    require_privileges!();
    restart_keeps_serving(true);
}

#[test]
fn removing_a_function_leaves_nothing_behind() {
    require_privileges!();
    let ns = Netns::new("remove");
    let d = Daemon::start(&ns);
    let (addr, instance) = d.deploy_running("gone", &[]);
    let pid = instance.pid;
    d.cli_ok(&["remove", "gone"]);
    assert!(!alive(pid), "instance stopped");
    assert!(d.cli_ok(&["status", "--json"]).contains("\"bindings\":0"));
    assert!(
        !ns.dir
            .join("state/functions/openfaas-fn/gone.json")
            .exists()
    );
    if let Some(root) = faasd::runtime::cgroup::root() {
        let cg = root.join(&ns.cgroup_parent).join("openfaas-fn/gone");
        assert!(!cg.exists(), "{} is left", cg.display());
    }
    let outputs = ns.dir.join("run/output/openfaas-fn/gone");
    assert!(
        std::fs::read_dir(&outputs).map_or(true, |mut d| d.next().is_none()),
        "instance output files are left in {}",
        outputs.display()
    );
    let e = ns
        .run(|| http_get(SocketAddr::from((addr, 8080))))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn a_second_daemon_in_the_same_namespace_refuses_to_start() {
    require_privileges!();
    let ns = Netns::new("twice");
    let d = Daemon::start(&ns);
    // Another state directory, same namespace: the data plane is the conflict.
    let out = ns.run(|| {
        std::process::Command::new(crate::harness::faasd_bin())
            .args(["daemon", "--state-dir"])
            .arg(ns.dir.join("state2"))
            .arg("--runtime-dir")
            .arg(ns.dir.join("run2"))
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already uses this network namespace"), "{err}");
    // The first daemon is untouched.
    assert!(d.cli_ok(&["status"]).contains("bindings"));
}

/// Deploys `name` over the API socket; whether the answer was a 2xx (false once the
/// daemon is gone).
fn try_deploy(socket: &std::path::Path, name: &str, program: &str) -> bool {
    use std::io::{Read, Write};
    let body = serde_json::json!({"service": name, "envProcess": program}).to_string();
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let sent = write!(
        s,
        "POST /system/functions HTTP/1.1\r\nHost: faasd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut resp = String::new();
    sent.is_ok() && s.read_to_string(&mut resp).is_ok() && resp.starts_with("HTTP/1.1 20")
}

/// Deploys from several clients at once, so that the store commits them in batches, while
/// the daemon is killed underneath them.
#[test]
fn kill_9_during_deploys_loses_no_acknowledged_function() {
    require_privileges!();
    const CLIENTS: usize = 6;
    let ns = Netns::new("crashdeploy");
    let mut d = Daemon::start(&ns);
    let hello = crate::harness::hello_bin();
    let pid = d.pid();
    let acknowledged: Vec<String> = std::thread::scope(|s| {
        let (socket, hello) = (&d.socket, &hello);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                s.spawn(move || {
                    let mut ok = Vec::new();
                    for i in 0..2_000 {
                        let name = format!("f{c}-{i}");
                        if !try_deploy(socket, &name, hello) {
                            break; // the daemon is gone
                        }
                        ok.push(name);
                    }
                    ok
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(400));
        // SAFETY: SIGKILL to the daemon, our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    d.kill9(); // reap
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < CLIENTS * 2_000,
        "the kill landed mid-stream ({})",
        acknowledged.len()
    );

    d.restart();
    let list: Vec<faasd::status::FunctionStatus> =
        serde_json::from_str(&d.cli_ok(&["list", "--json"])).unwrap();
    let names: std::collections::BTreeSet<&str> = list.iter().map(|f| f.name.as_str()).collect();
    for n in &acknowledged {
        assert!(
            names.contains(n.as_str()),
            "acknowledged deploy of {n} was lost"
        );
    }
    // At most the deploys in flight (one per client) may have landed without an answer.
    assert!(list.len() <= acknowledged.len() + CLIENTS);
    let addresses: std::collections::BTreeSet<_> = list.iter().map(|f| f.address).collect();
    assert_eq!(addresses.len(), list.len(), "addresses are unique");
    let new = d.deploy_hello("after-crash", &[]);
    assert!(
        !addresses.contains(&new),
        "a new function gets a new address"
    );
    for f in &list {
        let (code, _) = ns
            .run(|| http_get(SocketAddr::from((f.address, 8080))))
            .unwrap();
        assert_eq!(code, 200, "{} serves after the restart", f.name);
    }
}

#[test]
fn a_restart_during_an_update_leaves_no_stray_instance() {
    require_privileges!();
    let ns = Netns::new("drainkill");
    let mut d = Daemon::start(&ns);
    let (addr, old) = d.deploy_running("upd", &[]);
    d.update_running("upd", &[]);
    let new = d
        .wait_for("upd", "the new version", |s| s.available_replicas == 1)
        .state
        .instances[0]
        .clone();
    assert_ne!(new.pid, old.pid);
    // Within the old version's drain period.
    d.kill9();
    assert!(alive(old.pid), "the old version was still draining");
    d.restart();
    wait_gone(old.pid, 5, || {
        "the stray old instance was not stopped".into()
    });
    let s = d.describe("upd");
    assert_eq!(
        s.state.instances.first().map(|i| i.pid),
        Some(new.pid),
        "the new version was adopted"
    );
    let (code, body) = ns.run(|| http_get(SocketAddr::from((addr, 8080)))).unwrap();
    assert_eq!((code, instance_of(&body)), (200, new.id));
}

#[test]
fn an_instance_of_another_version_is_not_adopted() {
    require_privileges!();
    let ns = Netns::new("fingerprint");
    let mut d = Daemon::start(&ns);
    let (addr, old) = d.deploy_running("fp", &[]);
    d.kill9();
    // As if the daemon had died right after an update, before the new version recorded
    // its instance: the record names an instance of another version.
    let record = ns.dir.join("run/instances/openfaas-fn/fp");
    let text = std::fs::read_to_string(&record).unwrap();
    let forged: Vec<&str> = text.split_whitespace().take(2).collect();
    std::fs::write(
        &record,
        format!("{} {} 0000000000000000\n", forged[0], forged[1]),
    )
    .unwrap();
    d.restart();
    let s = d.wait_for("fp", "a fresh instance", |s| s.available_replicas == 1);
    assert_ne!(
        s.state.instances[0].pid, old.pid,
        "the other version's instance was not adopted"
    );
    assert!(!alive(old.pid), "and it was stopped as a stray");
    let (code, body) = ns.run(|| http_get(SocketAddr::from((addr, 8080)))).unwrap();
    assert_eq!(
        (code, instance_of(&body)),
        (200, s.state.instances[0].id.clone())
    );
}

#[test]
fn a_function_whose_program_went_missing_is_restored_and_says_why() {
    require_privileges!();
    let ns = Netns::new("missing");
    let mut d = Daemon::start(&ns);
    let program = ns.dir.join("hello-copy");
    std::fs::copy(crate::harness::hello_bin(), &program).unwrap();
    d.cli_ok(&["deploy", "lost", "--command", program.to_str().unwrap()]);
    let addr = d.describe("lost").address;
    d.stop();
    std::fs::remove_file(&program).unwrap();
    d.restart();
    // Still there, so the operator can see it, fix it or remove it.
    assert_eq!(d.describe("lost").address, addr);
    let _ = ns.run(|| {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((addr, 8080)),
            std::time::Duration::from_secs(2),
        )
    });
    let s = d.wait_for("lost", "the failed start", |s| s.state.last_error.is_some());
    let err = s.state.last_error.unwrap();
    assert!(
        err.contains("execve") && err.contains("No such file"),
        "{err}"
    );
    d.cli_ok(&["remove", "lost"]);
}

#[test]
fn a_daemon_with_another_program_build_replaces_it_and_keeps_the_bindings() {
    require_privileges!();
    let ns = Netns::new("upgrade");
    let mut d = Daemon::start(&ns);
    let (addr, inst) = d.deploy_running("kept", &[]);
    let before = d.cli_ok(&["status", "--json"]);
    d.kill9();
    // What an older faasd left: the same maps, its link pinned under its own build's name.
    let pins = ns.pin_dir();
    let link = std::fs::read_dir(&pins)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sk_lookup_link-")
        })
        .expect("a pinned link");
    let older = pins.join("sk_lookup_link-0000000000000000");
    std::fs::rename(&link, &older).unwrap();
    d.restart();
    let links: Vec<String> = std::fs::read_dir(&pins)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sk_lookup_link"))
        .collect();
    assert_eq!(
        links,
        vec![link.file_name().unwrap().to_string_lossy().into_owned()]
    );
    let after: serde_json::Value = serde_json::from_str(&d.cli_ok(&["status", "--json"])).unwrap();
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    assert_ne!(
        after["dataplane"]["programId"], before["dataplane"]["programId"],
        "a new program was loaded"
    );
    assert_eq!(after["dataplane"]["adopted"], true, "maps kept");
    // The instance kept running and its binding still steers to it.
    let s = d.describe("kept");
    assert_eq!(s.state.instances[0].pid, inst.pid);
    let (code, body) = ns.run(|| http_get(SocketAddr::from((addr, 8080)))).unwrap();
    assert_eq!(code, 200);
    assert_eq!(instance_of(&body), inst.id);
}
