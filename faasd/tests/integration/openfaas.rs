//! OpenFaaS's own tools against faasd: images built around the real watchdogs the way
//! OpenFaaS's templates build them (`cargo xtask image` makes them), and the real
//! faas-cli over TCP with basic auth. The tools come from `FAAS_CLI`, `OF_WATCHDOG` and
//! `CLASSIC_WATCHDOG` (`cargo xtask test` finds them there or on PATH); without them these
//! tests skip with a message (and fail under FAASD_TEST_STRICT).

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    containers::{Cleanup, http, start},
    harness::{Daemon, Netns, Receiver, http_request, skip},
};

/// The tool named by `var`, or `None` after saying why the test cannot run.
fn tool(var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    if found.is_none() {
        skip(format!(
            "{var} names no file (cargo xtask test takes OpenFaaS's tools from FAAS_CLI, \
             OF_WATCHDOG and CLASSIC_WATCHDOG, or from PATH)"
        ));
    }
    found
}

/// POSTs `body` to `path` on the function's address from inside the namespace.
fn call(ns: &Netns, d: &Daemon, name: &str, path: &str, body: &str) -> (u16, String) {
    let addr = http(d.describe(name).address);
    ns.run(|| http_request(addr, "POST", path, body))
        .unwrap_or_else(|e| panic!("calling {name}: {e}\n{}", d.log()))
}

#[test]
fn images_around_the_real_watchdogs_answer_through_faasd() {
    crate::require_containerd!(socket);
    let (Some(_), Some(_)) = (tool("OF_WATCHDOG"), tool("CLASSIC_WATCHDOG")) else {
        return;
    };
    let ns = Netns::new("watchdogs");
    let names = ["wd-streaming", "wd-http", "wd-classic"];
    let _c = Cleanup {
        socket: &socket,
        names: &names,
    };
    let d = start(&ns, &socket);
    for (name, image, answer) in [
        (
            "wd-streaming",
            "of-watchdog-streaming",
            "path=/echo body=ping",
        ),
        // of-watchdog's http mode forwards to the server it started (`hello` itself).
        ("wd-http", "of-watchdog-http", "you sent 4 bytes: ping"),
        ("wd-classic", "classic-watchdog", "path=/echo body=ping"),
    ] {
        d.cli_ok(&[
            "deploy",
            name,
            "--image",
            &format!("localhost/{image}:latest"),
        ]);
        for i in 0..2 {
            let (code, body) = call(&ns, &d, name, "/echo", "ping");
            assert_eq!(
                code,
                200,
                "{name}, call {i}: {body}\n{:?}",
                d.cli(&["logs", name])
            );
            assert!(body.contains(answer), "{name}, call {i}: {body}");
        }
        let s = d.describe(name);
        assert_eq!(
            (s.state.activations, s.available_replicas),
            (1, 1),
            "{name}"
        );
    }
}

/// of-watchdog answers 429 to a request beyond its `max_inflight`; faasd holds such a
/// connection in the function's queue until the instance has room, so both are served.
#[test]
fn of_watchdog_max_inflight_is_what_an_instance_is_given() {
    crate::require_containerd!(socket);
    if tool("OF_WATCHDOG").is_none() {
        return;
    }
    let ns = Netns::new("inflight");
    let _c = Cleanup {
        socket: &socket,
        names: &["wd-inflight"],
    };
    let d = start(&ns, &socket);
    d.cli_ok(&[
        "deploy",
        "wd-inflight",
        "--image",
        "localhost/of-watchdog-streaming:latest",
        "--env",
        "max_inflight=1",
    ]);
    // Started and ready before the two calls.
    assert_eq!(call(&ns, &d, "wd-inflight", "/", "").0, 200);
    let both = std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| s.spawn(|| call(&ns, &d, "wd-inflight", "/sleep/700", "x")))
            .collect();
        calls
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (code, body) in &both {
        assert_eq!(*code, 200, "{body}\n{}", d.log());
        assert!(body.contains("path=/sleep/700"), "{body}");
    }
    assert_eq!(d.describe("wd-inflight").replicas, 1);
}

/// An image that binds its own port is ready when its readiness path answers 2xx, not
/// when the port accepts: connections wait in the queue until then.
#[test]
fn an_image_is_ready_when_its_readiness_path_answers() {
    crate::require_containerd!(socket);
    let ns = Netns::new("ready-path");
    let _c = Cleanup {
        socket: &socket,
        names: &["ready-path"],
    };
    let d = start(&ns, &socket);
    let e = d
        .cli(&[
            "deploy",
            "ready-path",
            "--image",
            "localhost/hello-port:latest",
            "-a",
            "com.openfaas.ready.http.path=health",
        ])
        .unwrap_err();
    assert!(
        e.contains("com.openfaas.ready.http.path") && e.contains("starts with /"),
        "{e}"
    );
    d.cli_ok(&[
        "deploy",
        "ready-path",
        "--image",
        "localhost/hello-port:latest",
        "-a",
        "com.openfaas.ready.http.path=/status/503",
    ]);
    let addr = http(d.describe("ready-path").address);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = ns.run(|| std::net::TcpStream::connect(addr).unwrap());
    std::thread::spawn(move || {
        use std::io::Read;
        let mut s = waiting;
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let _ = tx.send(resp);
    });
    // The instance runs and accepts on its port, but its readiness path answers 503.
    d.wait_for("ready-path", "an instance", |s| s.replicas == 1);
    assert!(
        rx.recv_timeout(Duration::from_millis(1500)).is_err(),
        "answered before the instance was ready"
    );
    assert_eq!(d.describe("ready-path").available_replicas, 0);
    // A path that answers 200: the new version's instance is ready and serves.
    d.cli_ok(&[
        "deploy",
        "ready-path",
        "--update",
        "--image",
        "localhost/hello-port:latest",
        "-a",
        "com.openfaas.ready.http.path=/status/200",
    ]);
    let (code, body) = ns.run(|| crate::harness::http_get(addr)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
    assert_eq!(d.describe("ready-path").available_replicas, 1);
}

/// Runs faas-cli inside the namespace against the daemon's TCP API, with its saved
/// logins kept in the test's directory.
struct FaasCli<'a> {
    bin: PathBuf,
    ns: &'a Netns,
}

/// What one faas-cli run did.
struct Ran {
    ok: bool,
    out: String,
    err: String,
}

impl FaasCli<'_> {
    fn run(&self, args: &[&str], stdin: &str) -> Ran {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("OPENFAAS_URL", "http://[::1]:8081")
            .env("OPENFAAS_CONFIG", self.ns.dir.join("openfaas"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.ns.spawn(&mut cmd);
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Ran {
            ok: out.status.success(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs it and expects success; returns its standard output.
    fn ok(&self, args: &[&str], stdin: &str) -> String {
        let r = self.run(args, stdin);
        assert!(r.ok, "faas-cli {args:?} failed:\n{}\n{}", r.out, r.err);
        r.out
    }
}

#[test]
fn faas_cli_drives_faasd_over_tcp_with_basic_auth() {
    crate::require_containerd!(socket);
    let (Some(bin), Some(_), Some(_)) = (
        tool("FAAS_CLI"),
        tool("OF_WATCHDOG"),
        tool("CLASSIC_WATCHDOG"),
    ) else {
        return;
    };
    let ns = Netns::new("faas-cli");
    let _c = Cleanup {
        socket: &socket,
        names: &["fc-flags", "fc-stack"],
    };
    let d = Daemon::start_with(
        &ns,
        &format!("containerd = {socket:?}\napi = [\"[::1]:8081\"]\n"),
    );
    let cli = FaasCli { bin, ns: &ns };

    // Without a login the gateway refuses, and faas-cli says so.
    let r = cli.run(&["list"], "");
    assert!(!r.ok, "{}", r.out);
    assert!(
        r.out
            .contains("Unauthorized access, run \"faas-cli login\""),
        "{}\n{}",
        r.out,
        r.err
    );
    let r = cli.run(
        &["login", "--username", "admin", "--password-stdin"],
        "wrong",
    );
    assert!(!r.ok, "a wrong password is refused: {}", r.out);
    let password = std::fs::read_to_string(ns.dir.join("state/auth/basic-auth-password")).unwrap();
    let out = cli.ok(
        &["login", "--username", "admin", "--password-stdin"],
        password.trim(),
    );
    assert!(
        out.contains("credentials saved for admin http://[::1]:8081"),
        "{out}"
    );

    // Deploys with flags, and from a stack file.
    let out = cli.ok(
        &[
            "deploy",
            "--image",
            "localhost/of-watchdog-streaming:latest",
            "--name",
            "fc-flags",
            "--label",
            "team=blue",
            "--annotation",
            "note=flags",
            "--env",
            "greeting=hi",
        ],
        "",
    );
    assert!(out.contains("Deployed. 202 Accepted."), "{out}");
    let stack = ns.dir.join("stack.yml");
    std::fs::write(
        &stack,
        "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://[::1]:8081\nfunctions:\n  \
         fc-stack:\n    image: localhost/classic-watchdog:latest\n    labels:\n      team: green\n",
    )
    .unwrap();
    let out = cli.ok(&["deploy", "-f", stack.to_str().unwrap()], "");
    assert!(out.contains("Deployed. 202 Accepted."), "{out}");

    let out = cli.ok(&["list", "-v"], "");
    for (name, image) in [
        ("fc-flags", "localhost/of-watchdog-streaming:latest"),
        ("fc-stack", "localhost/classic-watchdog:latest"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l.contains(image)),
            "{name} in\n{out}"
        );
    }
    let out = cli.ok(&["describe", "fc-flags"], "");
    assert!(
        out.contains("fc-flags") && out.contains("of-watchdog-streaming"),
        "{out}"
    );

    // Invoked: synchronously, and asynchronously with a callback.
    let out = cli.ok(&["invoke", "fc-flags"], "ping");
    assert!(out.contains("body=ping"), "{out}");
    let receiver = Receiver::start(&ns);
    let callback = format!("X-Callback-Url:http://[::1]:{}/done", receiver.port);
    let r = cli.run(&["invoke", "fc-stack", "--async", "-H", &callback], "later");
    assert!(r.ok, "{}\n{}", r.out, r.err);
    assert!(
        format!("{}{}", r.out, r.err).contains("Function submitted asynchronously"),
        "{}\n{}",
        r.out,
        r.err
    );
    let got = receiver
        .next(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no callback\n{}", d.log()));
    assert_eq!(got.header("x-function-status"), Some("200"), "{}", got.head);
    assert!(got.body.contains("body=later"), "{}", got.body);

    let out = cli.ok(&["logs", "fc-flags", "--lines=20", "--tail=false"], "");
    assert!(!out.trim().is_empty(), "logs printed nothing");

    // Secrets and namespaces.
    let out = cli.ok(
        &["secret", "create", "fc-secret", "--from-literal", "s3cr3t"],
        "",
    );
    assert!(out.contains("fc-secret"), "{out}");
    let out = cli.ok(&["secret", "list"], "");
    assert!(
        out.contains("fc-secret") && !out.contains("s3cr3t"),
        "{out}"
    );
    cli.ok(&["secret", "remove", "fc-secret"], "");
    assert!(!cli.ok(&["secret", "list"], "").contains("fc-secret"));
    let out = cli.ok(&["namespace", "list"], "");
    assert!(out.contains("openfaas-fn"), "{out}");

    // Removed, and a second removal is refused.
    for name in ["fc-flags", "fc-stack"] {
        let out = cli.ok(&["remove", name], "");
        assert!(out.contains(name), "{out}");
    }
    let out = cli.ok(&["list"], "");
    assert!(
        !out.contains("fc-flags") && !out.contains("fc-stack"),
        "{out}"
    );
    let r = cli.run(&["remove", "fc-flags"], "");
    assert!(
        !r.ok && r.out.contains("No existing function to remove"),
        "{}\n{}",
        r.out,
        r.err
    );
}
