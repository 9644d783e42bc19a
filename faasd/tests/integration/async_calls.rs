//! `/async-function` calls kept on disk: made at least once across a kill -9 and once
//! across a clean restart, always with the same `X-Call-Id`; callbacks tried again until
//! they are taken or their time is up; bad callbacks and a full queue refused at the edge.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crate::{
    harness::{Daemon, Netns, Received, Receiver},
    require_privileges,
};

/// A port on the namespace's loopback where nothing listens.
fn free_port(ns: &Netns) -> u16 {
    ns.run(|| {
        let l = std::net::TcpListener::bind("[::1]:0").unwrap();
        l.local_addr().unwrap().port()
    })
}

/// Queues calls of `path` with the bodies `call-<i>` for each `i` in `calls`, their answers
/// going to `[::1]:<port>`.
fn queue(d: &Daemon, path: &str, calls: std::ops::Range<usize>, port: u16) {
    for i in calls {
        let (code, body) = d.api_with_headers(
            "POST",
            path,
            &format!("X-Callback-Url: http://[::1]:{port}/done\r\n"),
            &format!("call-{i}"),
        );
        assert_eq!(code, 202, "call {i}: {body}");
    }
}

/// Which call a callback answers (the body it was made with), and the `X-Call-Id` it
/// carries, which must be the one the function was called with.
fn answered(c: &Received) -> (String, String) {
    assert_eq!(c.header("x-function-status"), Some("200"), "{c:?}");
    let id = c.header("x-call-id").expect("an X-Call-Id").to_owned();
    assert!(
        c.body.contains(&format!("call-id={id}\n")),
        "the function was called with another id than the callback's: {c:?}"
    );
    let call = c
        .body
        .split("bytes: ")
        .nth(1)
        .and_then(|s| s.lines().next())
        .unwrap_or_else(|| panic!("no call body in {c:?}"));
    (call.to_owned(), id)
}

/// The callbacks `r` gets until `n` calls have one and then `quiet` passes without more:
/// for each call, the ids its callbacks carried.
fn callbacks(
    r: &Receiver,
    n: usize,
    within: Duration,
    quiet: Duration,
) -> BTreeMap<String, Vec<String>> {
    let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let deadline = Instant::now() + within;
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let c = r.next(left).unwrap_or_else(|| {
            panic!(
                "callbacks for {} of {n} calls within {within:?}: {got:?}",
                got.len()
            )
        });
        let (call, id) = answered(&c);
        got.entry(call).or_default().push(id);
    }
    while let Some(c) = r.next(quiet) {
        let (call, id) = answered(&c);
        got.entry(call).or_default().push(id);
    }
    got
}

/// Waits until `series` of `/metrics` is `want`.
fn wait_metric(d: &Daemon, series: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = d.metric(series);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {v}, not {want}, after 30 s:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn queue_files(ns: &Netns) -> Vec<String> {
    std::fs::read_dir(ns.dir.join("state/async"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn calls_queued_before_a_kill_9_are_all_answered_after_the_restart() {
    require_privileges!();
    let ns = Netns::new("asynckill");
    let mut d = Daemon::start(&ns);
    d.deploy_hello("later", &[]);
    // Nobody takes the callbacks yet: three calls are made and their answers wait for a
    // receiver; three more are still being made (each takes 10 s) when faasd is killed.
    let port = free_port(&ns);
    queue(&d, "/async-function/later", 0..3, port);
    queue(&d, "/async-function/later/sleep/10000", 3..6, port);
    wait_metric(&d, r#"faasd_async_queued{stage="callback"}"#, 3);
    assert_eq!(d.metric(r#"faasd_async_queued{stage="call"}"#), 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.metric("faasd_async_callback_retries_total") == 0 {
        assert!(Instant::now() < deadline, "no callback was tried again");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.kill9();

    let receiver = Receiver::start_on(&ns, port);
    d.restart();
    let got = callbacks(
        &receiver,
        6,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    let calls: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        calls,
        ["call-0", "call-1", "call-2", "call-3", "call-4", "call-5"]
    );
    let mut ids: Vec<&String> = Vec::new();
    for (call, seen) in &got {
        assert!(
            seen.iter().all(|id| id == &seen[0]),
            "{call} came back with several ids: {seen:?}"
        );
        ids.push(&seen[0]);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "calls share an id: {got:?}");
    wait_metric(&d, r#"faasd_async_queued{stage="callback"}"#, 0);
    assert_eq!(d.metric(r#"faasd_async_queued{stage="call"}"#), 0);
    assert!(
        d.metric(r#"faasd_async_callbacks_total{result="delivered"}"#) >= 6,
        "{}",
        d.log()
    );
    assert_eq!(
        queue_files(&ns),
        Vec::<String>::new(),
        "the queue kept files"
    );
}

#[test]
fn a_clean_restart_makes_and_delivers_each_call_once() {
    require_privileges!();
    let ns = Netns::new("asyncstop");
    let mut d = Daemon::start(&ns);
    d.deploy_hello("later", &[]);
    let receiver = Receiver::start(&ns);
    // Delivered before the stop: not sent again after it.
    queue(&d, "/async-function/later", 0..3, receiver.port);
    let before = callbacks(
        &receiver,
        3,
        Duration::from_secs(30),
        Duration::from_millis(200),
    );
    assert!(before.values().all(|ids| ids.len() == 1), "{before:?}");
    // Being made at the stop: made again after it, and answered once.
    queue(&d, "/async-function/later/sleep/3000", 3..6, receiver.port);
    wait_metric(&d, "faasd_async_accepted_total", 6);
    d.stop();
    d.restart();
    let after = callbacks(
        &receiver,
        3,
        Duration::from_secs(60),
        Duration::from_secs(3),
    );
    let calls: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(calls, ["call-3", "call-4", "call-5"], "{after:?}");
    for (call, ids) in &after {
        assert_eq!(ids.len(), 1, "{call} answered {} times", ids.len());
    }
    wait_metric(&d, r#"faasd_async_queued{stage="callback"}"#, 0);
}

#[test]
fn callbacks_give_up_after_their_time_and_bad_input_is_refused_at_once() {
    require_privileges!();
    let ns = Netns::new("asyncbad");
    let d = Daemon::start_with(
        &ns,
        "async-callback-retry-for = \"3s\"\nasync-queue-limit = 2\n",
    );
    d.deploy_hello("later", &[]);
    for (url, says) in [
        ("https://[::1]:1/", "only http:// callbacks"),
        ("not a url", "not a URL"),
    ] {
        let (code, body) = d.api_with_headers(
            "POST",
            "/async-function/later",
            &format!("X-Callback-Url: {url}\r\n"),
            "x",
        );
        assert_eq!(code, 400, "{url}: {body}");
        assert!(body.contains(says), "{url}: {body}");
    }
    assert_eq!(d.metric("faasd_async_accepted_total"), 0);

    // Nobody ever listens: tried again for 3 s, then given up and removed.
    let port = free_port(&ns);
    queue(&d, "/async-function/later", 0..1, port);
    wait_metric(&d, r#"faasd_async_callbacks_total{result="given_up"}"#, 1);
    assert!(d.metric("faasd_async_callback_retries_total") >= 1);
    wait_metric(&d, r#"faasd_async_queued{stage="callback"}"#, 0);
    assert!(d.log().contains("gave up its callback"), "{}", d.log());

    // Two calls fill the queue; the third is refused and says which setting to raise.
    queue(&d, "/async-function/later/sleep/5000", 1..3, port);
    let (code, body) = d.api("POST", "/async-function/later", "x");
    assert_eq!(code, 507, "{body}");
    assert!(body.contains("async-queue-limit"), "{body}");
    assert_eq!(d.metric("faasd_async_accepted_total"), 3);
}
