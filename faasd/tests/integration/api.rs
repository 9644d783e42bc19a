//! The API and CLI: shapes, status codes, and clear errors for bad input.

use std::process::Command;

use crate::{
    harness::{Daemon, Netns, Received, Receiver},
    require_privileges,
};

#[test]
fn openfaas_routes_answer_as_faas_cli_expects() {
    require_privileges!();
    let ns = Netns::new("api");
    let d = Daemon::start(&ns);
    assert_eq!(d.api("GET", "/healthz", "").0, 200);
    let (code, info) = d.api("GET", "/system/info", "");
    assert_eq!(code, 200);
    assert!(
        info.contains("\"provider\"") && info.contains("faasd"),
        "{info}"
    );

    let hello = crate::harness::hello_bin();
    let body = format!(
        r#"{{"service":"api-fn","envProcess":"{hello}","labels":{{}},"annotations":{{}}}}"#
    );
    // faas-cli always tries PUT first and needs 404 for an unknown function.
    assert_eq!(d.api("PUT", "/system/functions", &body).0, 404);
    assert_eq!(d.api("POST", "/system/functions", &body).0, 202);
    assert_eq!(d.api("POST", "/system/functions", &body).0, 409);
    assert_eq!(d.api("PUT", "/system/functions", &body).0, 200);

    let (code, list) = d.api("GET", "/system/functions", "");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "api-fn");
    assert_eq!(list[0]["namespace"], "openfaas-fn");
    assert!(
        list[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("fd00:faa5:1::")
    );
    assert_eq!(d.api("GET", "/system/function/api-fn", "").0, 200);
    assert_eq!(d.api("GET", "/system/function/nope", "").0, 404);

    // Scale without the namespace in the body, as faas-cli sends it.
    let (code, _) = d.api(
        "POST",
        "/system/scale-function/api-fn?namespace=openfaas-fn",
        r#"{"serviceName":"api-fn","replicas":1}"#,
    );
    assert_eq!(code, 202);
    d.wait_for("api-fn", "one replica", |s| s.available_replicas == 1);
    let (code, out) = d.api(
        "POST",
        "/function/api-fn.openfaas-fn/some/path?x=1",
        "payload",
    );
    assert_eq!(code, 200, "{out}");
    assert!(
        out.contains("path=/some/path?x=1") && out.contains("payload"),
        "{out}"
    );
    assert_eq!(d.describe("api-fn").invocation_count, 1);

    assert_eq!(
        d.api(
            "DELETE",
            "/system/functions?namespace=openfaas-fn",
            r#"{"functionName":"api-fn"}"#
        )
        .0,
        200
    );
    assert_eq!(
        d.api(
            "DELETE",
            "/system/functions",
            r#"{"functionName":"api-fn"}"#
        )
        .0,
        404
    );
}

#[test]
fn bad_input_gets_a_400_that_says_what_is_wrong() {
    require_privileges!();
    let ns = Netns::new("bad");
    let d = Daemon::start(&ns);
    let hello = crate::harness::hello_bin();
    let cases = [
        (
            format!(r#"{{"service":"Bad_Name","envProcess":"{hello}"}}"#),
            "DNS label",
        ),
        (
            format!(r#"{{"service":"f","envProcess":"{hello}","sevrice":"x"}}"#),
            "unknown field `sevrice`",
        ),
        (
            format!(
                r#"{{"service":"f","envProcess":"{hello}","annotations":{{"faasd.dev/ports":"http=0"}}}}"#
            ),
            "port 0",
        ),
        (
            format!(
                r#"{{"service":"f","envProcess":"{hello}","annotations":{{"faasd.dev/ports":"a=80,b=80"}}}}"#
            ),
            "listed twice",
        ),
        (
            format!(
                r#"{{"service":"f","envProcess":"{hello}","annotations":{{"faasd.dev/portz":"x"}}}}"#
            ),
            "unknown faasd setting",
        ),
        (
            r#"{"service":"f","envProcess":"/no/such/program"}"#.to_owned(),
            "no such executable",
        ),
        (
            r#"{"service":"f","image":"Library/Nginx:latest"}"#.to_owned(),
            "path components are lowercase",
        ),
        (
            format!(r#"{{"service":"f","envProcess":"{hello}","limits":{{"memory":"1Kb"}}}}"#),
            "is not a size",
        ),
        (
            format!(r#"{{"service":"f","envProcess":"{hello}","secrets":["nope"]}}"#),
            "nope",
        ),
        ("{not json".to_owned(), "invalid request body"),
    ];
    for (body, expect) in cases {
        let (code, msg) = d.api("POST", "/system/functions", &body);
        assert_eq!(code, 400, "{body} -> {msg}");
        assert!(
            msg.contains(expect),
            "{body}: expected {expect:?} in {msg:?}"
        );
    }
    assert!(
        d.api("GET", "/system/functions", "").1.trim() == "[]",
        "nothing was created"
    );
    let e = d.cli(&["scale", "ghost", "1"]).unwrap_err();
    assert!(e.contains("not found"), "{e}");
    // Scaling stays within com.openfaas.scale.min and .max; zero is always allowed.
    d.deploy_hello(
        "bounded",
        &[
            "-l",
            "com.openfaas.scale.min=2",
            "-l",
            "com.openfaas.scale.max=3",
        ],
    );
    for (replicas, expect) in [
        ("1", "below com.openfaas.scale.min (2)"),
        ("4", "exceeds com.openfaas.scale.max (3)"),
    ] {
        let e = d.cli(&["scale", "bounded", replicas]).unwrap_err();
        assert!(e.contains(expect), "{replicas}: {e}");
    }
    d.cli_ok(&["scale", "bounded", "3"]);
    d.wait_for("bounded", "three instances", |s| s.available_replicas == 3);
    d.cli_ok(&["scale", "bounded", "0"]);
    d.wait_for("bounded", "scale to zero", |s| s.replicas == 0);
}

/// One request to the TCP API in the namespace; (status, headers and body).
fn tcp_request(ns: &Netns, path: &str, auth: Option<&str>) -> (u16, String) {
    ns.run(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("[::1]:8081").unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        // One write: a refusal may come (and the socket close) after the first line.
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, resp)
    })
}

#[test]
fn the_tcp_api_asks_for_basic_auth_on_system_routes_only() {
    require_privileges!();
    let ns = Netns::new("api-auth");
    let d = Daemon::start_with(&ns, "api = [\"[::1]:8081\"]\n");
    d.deploy_hello("open", &[]);
    // No credentials, an empty bearer token (faas-cli before login), a wrong password.
    for auth in [None, Some("Bearer "), Some("Basic YWRtaW46d3Jvbmc=")] {
        let (code, resp) = tcp_request(&ns, "/system/functions", auth);
        assert_eq!(code, 401, "{auth:?}: {resp}");
        assert!(
            resp.to_lowercase().contains("www-authenticate: basic"),
            "{resp}"
        );
    }
    let password = std::fs::read_to_string(ns.dir.join("state/auth/basic-auth-password")).unwrap();
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(ns.dir.join("state/auth/basic-auth-password"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);
    use base64::Engine;
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"))
    );
    let (code, resp) = tcp_request(&ns, "/system/functions", Some(&good));
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("\"open\""), "{resp}");
    // Open routes: health and invocation.
    assert_eq!(tcp_request(&ns, "/healthz", None).0, 200);
    let (code, resp) = tcp_request(&ns, "/function/open", None);
    assert_eq!(code, 200, "{resp}");
    assert!(resp.contains("Hello from faasd!"));
    // The unix socket asks for nothing: its permissions are the guard.
    assert_eq!(d.api("GET", "/system/functions", "").0, 200);
}

#[test]
fn metrics_parse_for_promtool_and_move_with_traffic() {
    require_privileges!();
    let ns = Netns::new("metrics");
    let d = Daemon::start_with(&ns, "dns = [\"[::1]:5353\"]\n");
    let addr = d.deploy_hello(
        "counted",
        &["--annotation", "faasd.dev/latency-histograms=true"],
    );
    d.deploy_hello("plain", &[]);
    // Two DNS answers: one name that exists, one that does not.
    for name in ["counted.faas", "missing.faas"] {
        let out = ns
            .spawn(
                Command::new("dig")
                    .args(["@::1", "-p", "5353", "+short", "AAAA", name])
                    .stdout(std::process::Stdio::piped()),
            )
            .wait_with_output()
            .expect("dig runs");
        assert!(out.status.success(), "dig {name}");
    }
    let (code, _) = d.api("POST", "/function/counted", "hi");
    assert_eq!(code, 200);
    let (code, _) = ns
        .run(|| crate::harness::http_get(std::net::SocketAddr::from((addr, 8080))))
        .unwrap();
    assert_eq!(code, 200);
    // The activation's latency is published just after the instance starts: wait for it.
    let labels = "function=\"counted\",namespace=\"openfaas-fn\"";
    let count_line = format!("faasd_function_activation_seconds_count{{{labels}}} 1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let (code, text) = d.api("GET", "/metrics", "");
        assert_eq!(code, 200);
        if text.lines().any(|l| l == count_line) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert_eq!(
        value(&format!("faasd_function_activations_total{{{labels}}}")),
        1.0
    );
    assert_eq!(
        value(&format!(
            "faasd_function_activation_seconds_count{{{labels}}}"
        )),
        1.0
    );
    assert!(
        value(&format!(
            "faasd_socket_lookups_total{{{labels},socket=\"http\""
        )) >= 2.0
    );
    assert_eq!(
        value(
            "gateway_function_invocation_total{function_name=\"counted.openfaas-fn\",code=\"200\"}"
        ),
        1.0
    );
    assert_eq!(
        value("gateway_service_count{function_name=\"counted.openfaas-fn\"}"),
        1.0
    );
    // The activation's phases add up to the whole (the host's only activation).
    let phase = |p: &str| {
        value(&format!(
            "faasd_activation_phase_seconds_sum{{phase=\"{p}\"}}"
        ))
    };
    let whole = value("faasd_activation_seconds_sum ");
    assert!(
        (phase("runtime") + phase("init") - whole).abs() < 1e-6,
        "runtime {} + init {} != {whole}",
        phase("runtime"),
        phase("init")
    );
    // The host-wide histograms count every activation, whether or not a function keeps
    // its own.
    assert_eq!(value("faasd_activation_seconds_count "), 1.0);
    assert!(value("faasd_activation_phase_seconds_count{phase=\"runtime\"}") >= 1.0);
    // A function that keeps no histograms costs twelve samples: six per socket, five of
    // its own, and OpenFaaS's service count (no invocation has a code yet).
    let plain = text
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.contains("function=\"plain\"")
                    || l.contains("function_name=\"plain.openfaas-fn\""))
        })
        .count();
    assert_eq!(plain, 12, "{text}");
    assert_eq!(
        value("faasd_dns_queries_total{type=\"AAAA\",rcode=\"NOERROR\"}"),
        1.0
    );
    assert_eq!(
        value("faasd_dns_queries_total{type=\"AAAA\",rcode=\"NXDOMAIN\"}"),
        1.0
    );
    // The API's own requests, by route template: the deploy went through the socket.
    assert!(
        value(
            "provider_http_requests_total{code=\"202\",method=\"POST\",path=\"/system/functions\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            "provider_http_requests_total{code=\"200\",method=\"POST\",path=\"/function/{target}\"}"
        ),
        1.0
    );
    // The format itself, checked by Prometheus's own tool when it is there.
    if Command::new("promtool").arg("--version").output().is_err() {
        crate::harness::skip(
            "promtool is missing (cargo xtask setup installs Debian's prometheus): the \
             format is not checked",
        );
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    // promtool parses everything, then lints names; the one name it objects to is
    // OpenFaaS's own, kept for its dashboards.
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let unexpected: Vec<&str> = said
        .lines()
        .filter(|l| {
            !l.trim().is_empty()
                && *l
                    != "gateway_service_count non-histogram and non-summary metrics should not have \"_count\" suffix"
        })
        .collect();
    assert!(unexpected.is_empty(), "promtool: {said}");
}

#[test]
fn accept_queue_depth_and_overflows_are_reported() {
    require_privileges!();
    let ns = Netns::new("queue");
    let d = Daemon::start_with(&ns, "backlog = 2\n");
    // An instance that holds the socket and never accepts: connections pile up.
    d.cli_ok(&[
        "deploy",
        "stuck",
        "--command",
        "/bin/sleep 60",
        "-l",
        "com.openfaas.scale.min=1",
    ]);
    d.wait_for("stuck", "its instance", |s| s.available_replicas == 1);
    let addr = d.describe("stuck").address;
    // More connections than the backlog holds: the extra SYNs are dropped.
    let _pending: Vec<std::net::TcpStream> = ns.run(|| {
        (0..8)
            .filter_map(|_| {
                std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from((addr, 8080)),
                    std::time::Duration::from_millis(200),
                )
                .ok()
            })
            .collect()
    });
    let (_, text) = d.api("GET", "/metrics", "");
    let value = |series: &str| -> u64 {
        let prefix =
            format!("{series}{{function=\"stuck\",namespace=\"openfaas-fn\",socket=\"http\"");
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    let limit = text
        .lines()
        .find_map(|l| l.strip_prefix("faasd_socket_queue_limit "))
        .unwrap_or_else(|| panic!("no faasd_socket_queue_limit in\n{text}"));
    assert_eq!(limit, "2");
    assert!(value("faasd_socket_queued") >= 1, "{text}");
    assert!(value("faasd_socket_queue_overflows_total") >= 1, "{text}");
    // describe shows the same numbers.
    let c = &d.describe("stuck").counters[0];
    assert_eq!(c.queue_limit, 2);
    assert!(c.queued >= 1 && c.queue_drops >= 1, "{c:?}");
}

#[test]
fn logs_follow_streams_new_lines_and_since_filters() {
    require_privileges!();
    let ns = Netns::new("logs-follow");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello("chatty", &[]);
    // Nothing has happened at this time or later.
    let later = humantime::format_rfc3339(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    );
    let (code, body) = d.api(
        "GET",
        &format!("/system/logs?name=chatty&since={later}"),
        "",
    );
    assert_eq!((code, body.trim()), (200, ""));
    let (code, body) = d.api("GET", "/system/logs?name=chatty&since=yesterday", "");
    assert_eq!(code, 400, "{body}");
    // A followed answer stays open and carries what the function writes afterwards.
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
    write!(
        s,
        "GET /system/logs?name=chatty&follow=true HTTP/1.1\r\nHost: faasd\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let (code, _) = ns
        .run(|| crate::harness::http_get(std::net::SocketAddr::from((addr, 8080))))
        .unwrap();
    assert_eq!(code, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen = String::new();
    while !seen.contains("hello: instance") {
        assert!(std::time::Instant::now() < deadline, "followed log: {seen}");
        let mut buf = [0u8; 4096];
        if let Ok(n) = s.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.contains("application/x-ndjson"), "{seen}");

    // `faasd logs -f` on a function that has written nothing yet (its log does not
    // exist) waits for the first lines rather than ending.
    let quiet = d.deploy_hello("quiet", &[]);
    let mut cli = std::process::Command::new(crate::harness::faasd_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["logs", "-f", "quiet"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(cli.try_wait().unwrap().is_none(), "logs -f ended at once");
    let (code, _) = ns
        .run(|| crate::harness::http_get(std::net::SocketAddr::from((quiet, 8080))))
        .unwrap();
    assert_eq!(code, 200);
    // Should the lines never come, this ends the wait (the read below sees the end).
    let pid = cli.id() as i32;
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(15));
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut out = std::io::BufReader::new(cli.stdout.take().unwrap());
    let mut line = String::new();
    let mut got = String::new();
    while !got.contains("hello: instance") {
        line.clear();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            break;
        }
        got.push_str(&line);
    }
    let _ = cli.kill();
    let _ = cli.wait();
    assert!(got.contains("hello: instance"), "logs -f printed: {got}");
}

#[test]
fn an_async_call_answers_202_and_posts_the_result_to_the_callback() {
    require_privileges!();
    let ns = Netns::new("async");
    let d = Daemon::start(&ns);
    d.deploy_hello("later", &[]);
    let receiver = Receiver::start(&ns);
    let port = receiver.port;
    let (code, _) = d.api_with_headers(
        "POST",
        "/async-function/later",
        &format!("X-Callback-Url: http://[::1]:{port}/done\r\n"),
        "ping",
    );
    assert_eq!(code, 202);
    let Received { head, body } = receiver
        .next(std::time::Duration::from_secs(20))
        .expect("a callback within 20 s");
    assert!(head.starts_with("post /done "), "{head}");
    assert!(head.contains("x-function-status: 200"), "{head}");
    assert!(
        head.contains("x-function-name: later.openfaas-fn"),
        "{head}"
    );
    assert!(head.contains("x-call-id: "), "{head}");
    assert!(body.contains("you sent 4 bytes: ping"), "{body}");
    assert_eq!(
        d.describe("later").state.activations,
        1,
        "it woke the function"
    );
    // An unknown function is refused at once.
    assert_eq!(d.api("POST", "/async-function/nobody", "x").0, 404);
}

#[test]
fn a_call_to_a_function_that_cannot_start_gets_a_502_with_the_reason() {
    require_privileges!();
    let ns = Netns::new("crashcall");
    let d = Daemon::start(&ns);
    d.cli_ok(&["deploy", "broken", "--command", "/bin/false"]);
    // The call waits while faasd retries, then gets the function's last error instead of
    // hanging in the accept queue.
    let (code, body) = d.api("POST", "/function/broken", "");
    assert_eq!(code, 502, "{body}");
    assert!(
        body.contains("cannot start") && body.contains("exited"),
        "{body}"
    );
}

/// 2,000 deployed, stopped functions cause no supervisor wake-up at all: their cost while
/// idle is memory, not CPU.
#[test]
fn idle_functions_cause_no_wakeups() {
    crate::require_privileges!();
    let ns = Netns::new("wakeups");
    let d = Daemon::start(&ns);
    let hello = crate::harness::hello_bin();
    for i in 0..2_000 {
        let body = serde_json::json!({
            "service": format!("idle-{i}"),
            "envProcess": hello,
            "labels": {"com.openfaas.scale.zero": "true"},
        });
        let (code, text) = d.api("POST", "/system/functions", &body.to_string());
        assert!((200..300).contains(&code), "deploy {i}: {code} {text}");
    }
    let wakeups = || d.metric("faasd_supervisor_wakeups_total");
    let before = wakeups();
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(wakeups(), before, "idle supervisors woke up");
    // Each waits in the parking lot, with no task of its own.
    assert_eq!(d.metric("faasd_functions_parked"), 2_000);
    // And one of them still wakes on its first connection.
    let addr = d.describe("idle-1999").address;
    let (code, _) = ns
        .run(|| crate::harness::http_get(std::net::SocketAddr::from((addr, 8080))))
        .unwrap();
    assert_eq!(code, 200);
    assert!(wakeups() > before);
    assert_eq!(d.metric("faasd_functions_parked"), 1_999);
}
