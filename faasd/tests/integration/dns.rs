//! The `.faas` zone answered by the daemon over real UDP and TCP, queried with `dig`.

use std::process::Command;

use crate::harness::{Daemon, Netns};

/// `dig` inside the test namespace against the daemon's DNS address; `+short` answers.
fn dig(ns: &Netns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "dig", "@::1", "-p", "53", "+time=2", "+tries=2",
        ])
        .args(args)
        .output()
        .expect("dig runs (cargo xtask setup installs dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status of an answer (`NOERROR`, `NXDOMAIN`, `REFUSED`, …).
fn status(ns: &Netns, args: &[&str]) -> String {
    let mut a = vec!["+noall", "+comments"];
    a.extend_from_slice(args);
    let text = dig(ns, &a);
    text.split("status: ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
        .to_owned()
}

fn short(ns: &Netns, args: &[&str]) -> String {
    let mut a = vec!["+short"];
    a.extend_from_slice(args);
    dig(ns, &a).trim().to_owned()
}

fn serial(ns: &Netns) -> u64 {
    short(ns, &["SOA", "faas"])
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .expect("an SOA with a serial")
}

macro_rules! require_dig {
    () => {
        $crate::require_privileges!();
        if Command::new("dig").arg("-v").output().is_err() {
            crate::harness::skip("dig is missing (cargo xtask setup installs dnsutils)");
            return;
        }
    };
}

#[test]
fn functions_have_aaaa_records_over_udp_and_tcp_and_the_apex_is_complete() {
    require_dig!();
    let ns = Netns::new("dns-zone");
    // A host whose resolv.conf names only faasd itself: nothing to forward to.
    let resolv = ns.dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver ::1\n").unwrap();
    let d = Daemon::start_with(
        &ns,
        &format!("dns = [\"[::1]:53\"]\nresolv-conf = {resolv:?}\n"),
    );
    let hello = d.deploy_hello("hello", &[]);
    d.cli_ok(&[
        "deploy",
        "api",
        "-n",
        "dev",
        "--command",
        &crate::harness::hello_bin(),
    ]);
    let api: faasd::status::FunctionStatus =
        serde_json::from_str(&d.cli_ok(&["describe", "api", "-n", "dev", "--json"])).unwrap();
    let api = api.address;
    for transport in ["+notcp", "+tcp"] {
        assert_eq!(
            short(&ns, &[transport, "AAAA", "hello.faas"]),
            hello.to_string()
        );
        assert_eq!(
            short(&ns, &[transport, "AAAA", "hello.openfaas-fn.faas"]),
            hello.to_string()
        );
        assert_eq!(
            short(&ns, &[transport, "AAAA", "api.dev.faas"]),
            api.to_string()
        );
        // Only the default namespace has the short name.
        assert_eq!(status(&ns, &[transport, "AAAA", "api.faas"]), "NXDOMAIN");
    }
    assert_eq!(short(&ns, &["NS", "faas"]), "ns.faas.");
    assert_eq!(short(&ns, &["AAAA", "ns.faas"]), "fd00:faa5:0:100::1");
    let soa = short(&ns, &["SOA", "faas"]);
    assert!(soa.starts_with("ns.faas. hostmaster.faas. "), "{soa}");
    // A name that does not exist: NXDOMAIN, with the SOA in the authority section.
    let nx = dig(&ns, &["AAAA", "nope.faas"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("AUTHORITY: 1") && nx.contains("SOA"), "{nx}");
    assert!(nx.contains("flags: qr aa"), "authoritative: {nx}");
    // A name without the asked type: NOERROR with no answer and the SOA (NODATA).
    let nodata = dig(&ns, &["A", "hello.faas"]);
    assert!(nodata.contains("status: NOERROR"), "{nodata}");
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("AUTHORITY: 1"),
        "{nodata}"
    );
    // A namespace's name exists as the parent of its functions' names.
    assert_eq!(status(&ns, &["AAAA", "dev.faas"]), "NOERROR");
    assert_eq!(status(&ns, &["AAAA", "nope.dev.faas"]), "NXDOMAIN");
    assert_eq!(status(&ns, &["AAAA", "x.hello.faas"]), "NXDOMAIN");
    // Outside the zone with no resolver to forward to: REFUSED, over both transports
    // (tests/integration/egress.rs forwards to a real one).
    assert_eq!(status(&ns, &["A", "example.com"]), "REFUSED");
    assert_eq!(status(&ns, &["+tcp", "A", "example.com"]), "REFUSED");
}

/// Queries that repeat byte for byte but for the id (`+nocookie`: dig's cookie is new each
/// run) are answered again from the UDP front's memory, counted like any, and never after
/// the zone changed.
#[test]
fn repeated_queries_are_answered_from_memory_until_the_zone_changes() {
    require_dig!();
    let ns = Netns::new("dns-kept");
    // Nothing to forward to (faasd is the only resolver named): outside names are refused.
    let resolv = ns.dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver ::1\n").unwrap();
    let d = Daemon::start_with(
        &ns,
        &format!("dns = [\"[::1]:53\"]\nresolv-conf = {resolv:?}\n"),
    );
    let aaaa = |name: &str| short(&ns, &["+nocookie", "AAAA", name]);
    let first = d.deploy_hello("kept", &[]);
    for _ in 0..5 {
        assert_eq!(aaaa("kept.faas"), first.to_string());
    }
    let answered = || d.metric(r#"faasd_dns_queries_total{type="AAAA",rcode="NOERROR"}"#);
    assert_eq!(answered(), 5, "every answer counted, the kept ones too");
    // Each of the front's sockets (one per core, up to 8) keeps its own: the first query
    // each one takes goes to the zone, the rest are sent again.
    let sockets = std::thread::available_parallelism().map_or(1, |n| n.get().min(8)) as u64;
    let kept = d.metric("faasd_dns_answers_from_memory_total");
    assert!(
        kept >= 5u64.saturating_sub(sockets) && (1..=4).contains(&kept),
        "{kept} of 5 answers sent again from memory, with {sockets} socket(s)"
    );
    // Removed: the kept answer goes with the change.
    d.cli_ok(&["remove", "kept"]);
    assert_eq!(status(&ns, &["+nocookie", "AAAA", "kept.faas"]), "NXDOMAIN");
    assert_eq!(status(&ns, &["+nocookie", "AAAA", "kept.faas"]), "NXDOMAIN");
    // Back at another address: the kept NXDOMAIN goes too.
    d.deploy_hello("other", &[]);
    let second = d.deploy_hello("kept", &[]);
    assert_ne!(first, second);
    assert_eq!(aaaa("kept.faas"), second.to_string());
    assert_eq!(aaaa("kept.openfaas-fn.faas"), second.to_string());
    // Names outside the zone are never kept: refused each time.
    for _ in 0..2 {
        assert_eq!(status(&ns, &["+nocookie", "A", "example.com"]), "REFUSED");
    }
}

#[test]
fn records_follow_deploy_and_remove_and_are_rebuilt_after_a_restart() {
    require_dig!();
    let ns = Netns::new("dns-change");
    let zone_file = ns.dir.join("faas.zone");
    let mut d = Daemon::start_with(
        &ns,
        &format!("dns = [\"[::1]:53\"]\nzone-file = {zone_file:?}\n"),
    );
    assert_eq!(status(&ns, &["AAAA", "comes.faas"]), "NXDOMAIN");
    let s0 = serial(&ns);
    let addr = d.deploy_hello("comes", &[]);
    assert_eq!(short(&ns, &["AAAA", "comes.faas"]), addr.to_string());
    let s1 = serial(&ns);
    assert!(s1 > s0, "serial {s0} → {s1}");
    // The file is written by a thread of its own, shortly after the change.
    let written = |want: &dyn Fn(&str) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&zone_file).unwrap_or_default();
            if want(&text) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    written(&|t| t.contains(&format!("comes IN AAAA {addr}")));
    d.kill9();
    d.restart();
    assert_eq!(short(&ns, &["AAAA", "comes.faas"]), addr.to_string());
    assert!(serial(&ns) > s1, "the serial rises across restarts");
    d.cli_ok(&["remove", "comes"]);
    assert_eq!(status(&ns, &["AAAA", "comes.faas"]), "NXDOMAIN");
    written(&|t| !t.contains("comes") && t.contains("SOA"));
}

#[test]
fn the_default_address_is_bound_before_it_exists_and_answers_once_it_does() {
    require_dig!();
    let ns = Netns::new("dns-freebind");
    let d = Daemon::start(&ns);
    let addr = d.deploy_hello("late", &[]);
    // What wg-faas does when it comes up: the host address appears.
    ns.add_loopback_address(faasd_common::plan::HOST_ADDRESS);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "dig",
            "@fd00:faa5:0:100::1",
            "+short",
            "AAAA",
        ])
        .arg("late.faas")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        addr.to_string()
    );
}

/// Kills the process on drop (a daemon started outside the harness).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_dns_socket_passed_by_systemd_is_served_instead_of_binding() {
    require_dig!();
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::harness::skip("systemd-socket-activate is missing (Debian's systemd package)");
        return;
    }
    let ns = Netns::new("dns-systemd");
    let config = ns.dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state-dir = {:?}\nruntime-dir = {:?}\ndata-dir = {:?}\ncgroup-parent = {:?}\nwireguard = false\n",
            ns.dir.join("state"),
            ns.dir.join("run"),
            ns.dir.join("data"),
            ns.cgroup_parent
        ),
    )
    .unwrap();
    // As faasd.socket does: the socket is systemd's, named `dns`; faasd starts with the
    // first connection, which waits in the socket's queue meanwhile.
    let _daemon = Killed(
        ns.spawn(
            Command::new("systemd-socket-activate")
                .args(["-l", "[::1]:53", "--fdname=dns"])
                .arg(crate::harness::faasd_bin())
                .args(["daemon", "--config"])
                .arg(&config)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()),
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Command::new("ip")
        .args(["netns", "exec", &ns.name, "ss", "-Htln", "sport = :53"])
        .output()
        .map(|o| o.stdout.is_empty())
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on :53"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let answer = short(&ns, &["+tcp", "+time=10", "AAAA", "ns.faas"]);
    assert_eq!(answer, "fd00:faa5:0:100::1");
}
