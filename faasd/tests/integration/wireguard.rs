//! WireGuard end to end: two network namespaces made by the test, joined only by a veth
//! pair. The host namespace runs faasd with its embedded userspace WireGuard (boringtun); the
//! client namespace runs Debian's wireguard-go, configured from `faasd peer add`'s output,
//! and reaches the host's functions and DNS only through that tunnel.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{Daemon, Netns};

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts Debian's wireguard-go as interface `name` in `ns` and waits for its control
/// socket.
pub(crate) fn wireguard_go(ns: &Netns, name: &str) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "wireguard-go", "-f", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !faasd::wireguard::uapi::socket_path(name).exists() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wireguard-go did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

/// The first of `tools` missing from PATH, if any (the test then skips, saying which).
fn missing(tools: &[&'static str]) -> Option<&'static str> {
    tools.iter().copied().find(|t| !have(t))
}

/// What the test started outside the namespaces: the client's wireguard-go, its control
/// socket, the namespace's resolv.conf, and the host interface's control socket.
struct Outside {
    client: Option<Child>,
    files: Vec<PathBuf>,
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut c) = self.client.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
            if let Some(d) = f.parent()
                && d.starts_with("/etc/netns")
            {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// Interface names unique to this test run (the control sockets share one directory).
fn names() -> (String, String) {
    let n = std::process::id() % 100_000;
    (format!("wgh{n}"), format!("wgc{n}"))
}

/// A client through the tunnel: DNS, an activation, the XDP guard, the peer's traffic; and
/// the Grafana dashboard over the same traffic (`dashboards`).
#[test]
fn a_peer_resolves_and_wakes_a_function_through_the_tunnel() {
    crate::require_privileges!();
    if let Some(tool) = missing(&["wireguard-go", "wg", "dig", "curl"]) {
        crate::harness::skip(format_args!(
            "{tool} is missing (cargo xtask setup installs it)"
        ));
        return;
    }
    let host = Netns::new("wg-host");
    let client = Netns::new("wg-client");
    let (host_if, client_if) = names();
    let mut outside = Outside {
        client: None,
        files: vec![
            faasd::wireguard::uapi::socket_path(&host_if),
            faasd::wireguard::uapi::socket_path(&client_if),
        ],
    };
    // The underlay: one veth pair, 10.99.0.1 (host) – 10.99.0.2 (client).
    let (vh, vc) = (
        format!("vh{}", &host_if[3..]),
        format!("vc{}", &host_if[3..]),
    );
    run(&[
        "ip", "link", "add", &vh, "type", "veth", "peer", "name", &vc,
    ]);
    run(&["ip", "link", "set", &vh, "netns", &host.name]);
    run(&["ip", "link", "set", &vc, "netns", &client.name]);
    run(&[
        "ip",
        "-n",
        &host.name,
        "addr",
        "add",
        "10.99.0.1/24",
        "dev",
        &vh,
    ]);
    run(&["ip", "-n", &host.name, "link", "set", &vh, "up"]);
    run(&[
        "ip",
        "-n",
        &client.name,
        "addr",
        "add",
        "10.99.0.2/24",
        "dev",
        &vc,
    ]);
    run(&["ip", "-n", &client.name, "link", "set", &vc, "up"]);

    let api: std::net::SocketAddr = "[::1]:8094".parse().unwrap();
    let d = Daemon::start_with(
        &host,
        &format!(
            "wireguard-interface = \"{host_if}\"\nwireguard-endpoint = \"10.99.0.1:51820\"\n\
             api = [\"{api}\"]\n"
        ),
    );
    let status = d.cli_ok(&["status"]);
    assert!(status.contains("embedded boringtun"), "{status}");
    // Scraped from before the first packet, so the dashboard's rates see it all.
    let Some(prometheus) = crate::dashboards::Prometheus::scraping(&host, api) else {
        return;
    };
    let addr = d.deploy_hello(
        "hello",
        &[
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=1m",
        ],
    );
    let config = d.cli_ok(&["peer", "add", "laptop"]);
    let field = |key: &str| {
        config
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {config}"))
            .to_owned()
    };
    assert_eq!(field("DNS"), "fd00:faa5:0:100::1");
    assert_eq!(field("AllowedIPs"), "fd00:faa5::/32");
    assert_eq!(field("Endpoint"), "10.99.0.1:51820");
    let address = field("Address");
    assert_eq!(address, "fd00:faa5:0:100::2/128");

    // The client: wireguard-go in the client namespace, set up the way wg-quick would.
    outside.client = Some(wireguard_go(&client, &client_if));
    // `wg setconf` takes the wg-quick file without wg-quick's own keys.
    let setconf: String = config
        .lines()
        .filter(|l| !l.starts_with("Address") && !l.starts_with("DNS"))
        .map(|l| format!("{l}\n"))
        .collect();
    let conf_file = client.dir.join("wg.conf");
    std::fs::write(&conf_file, setconf).unwrap();
    run(&[
        "ip",
        "netns",
        "exec",
        &client.name,
        "wg",
        "setconf",
        &client_if,
        conf_file.to_str().unwrap(),
    ]);
    run(&[
        "ip",
        "-n",
        &client.name,
        "addr",
        "add",
        &address,
        "dev",
        &client_if,
    ]);
    run(&["ip", "-n", &client.name, "link", "set", &client_if, "up"]);
    run(&[
        "ip",
        "-n",
        &client.name,
        "-6",
        "route",
        "add",
        "fd00:faa5::/32",
        "dev",
        &client_if,
    ]);
    // The client resolves through faasd's DNS (ip netns exec mounts this file).
    let resolv = PathBuf::from(format!("/etc/netns/{}/resolv.conf", client.name));
    std::fs::create_dir_all(resolv.parent().unwrap()).unwrap();
    std::fs::write(&resolv, "nameserver fd00:faa5:0:100::1\n").unwrap();
    outside.files.push(resolv);

    // The first packet waits for the handshake.
    let dig = Command::new("ip")
        .args(["netns", "exec", &client.name, "dig", "@fd00:faa5:0:100::1"])
        .args(["+short", "+time=3", "+tries=3", "AAAA", "hello.faas"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&dig.stdout).trim(),
        addr.to_string(),
        "dig: {}",
        String::from_utf8_lossy(&dig.stderr)
    );
    assert!(
        d.describe("hello").state.instances.is_empty(),
        "still stopped"
    );
    let curl = Command::new("ip")
        .args(["netns", "exec", &client.name, "curl", "-sS", "-m", "15"])
        .arg("http://hello.faas:8080/")
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&curl.stdout);
    assert!(
        body.starts_with("Hello from faasd!"),
        "curl: {body} {}\n{}",
        String::from_utf8_lossy(&curl.stderr),
        d.log()
    );
    let s = d.describe("hello");
    assert_eq!(s.state.activations, 1, "the tunnel's connection woke it");
    // XDP on the WireGuard interface: a packet for a function address nobody holds, and
    // one from a source the function denies, are dropped before the stack sees them.
    d.deploy_hello("guarded", &["-a", "faasd.dev/ip-address-deny=any"]);
    let guarded = d.describe("guarded").address;
    for target in [
        "http://[fd00:faa5:1::ffff]:9/".to_owned(),
        format!("http://[{guarded}]:8080/"),
    ] {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.name,
                "curl",
                "-sS",
                "-m",
                "2",
                &target,
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{target} answered");
    }
    let status: serde_json::Value = serde_json::from_str(&d.cli_ok(&["status", "--json"])).unwrap();
    let dp = &status["dataplane"];
    assert_eq!(dp["xdpInterfaces"][0], host_if.as_str());
    // The default hook: tcx, which Linux has since 6.6.
    assert_eq!(dp["guardHook"], "tc", "{dp}");
    assert!(dp["xdpDroppedNoBinding"].as_u64().unwrap() >= 1, "{dp}");
    assert!(dp["xdpDroppedPolicy"].as_u64().unwrap() >= 1, "{dp}");
    assert!(dp["xdpPassed"].as_u64().unwrap() >= 1, "{dp}");
    assert_eq!(d.describe("guarded").state.activations, 0);
    // The peer shows its handshake and traffic.
    let peers: Vec<faasd::wireguard::PeerStatus> =
        serde_json::from_str(&d.cli_ok(&["peer", "list", "--json"])).unwrap();
    assert_eq!(peers.len(), 1);
    assert!(peers[0].last_handshake_secs_ago.is_some(), "{peers:?}");
    assert!(peers[0].rx_bytes > 0 && peers[0].tx_bytes > 0, "{peers:?}");
    // A call through the API too, and the dashboard has something in every panel.
    assert_eq!(d.api("GET", "/function/hello", "").0, 200);
    prometheus.assert_every_panel_has_data();
}

#[test]
fn peers_survive_a_restart_and_the_private_key_stays_private() {
    crate::require_privileges!();
    if !have("wg") {
        crate::harness::skip("wg is missing (cargo xtask setup installs wireguard-tools)");
        return;
    }
    let ns = Netns::new("wg-peers");
    let (name, _) = names();
    let name = format!("{name}p");
    let _outside = Outside {
        client: None,
        files: vec![faasd::wireguard::uapi::socket_path(&name)],
    };
    let mut d = Daemon::start_with(&ns, &format!("wireguard-interface = \"{name}\"\n"));
    let (_, public) = faasd::wireguard::generate_keypair().unwrap();
    let out = d.cli_ok(&["peer", "add", "phone", "--public-key", &public]);
    assert!(
        out.contains("PrivateKey = <"),
        "no private key of ours: {out}"
    );
    let e = d
        .cli(&["peer", "add", "bad", "--public-key", "nonsense"])
        .unwrap_err();
    assert!(
        e.contains("400") && e.contains("not a WireGuard key"),
        "{e}"
    );
    let e = d.cli(&["peer", "add", "phone"]).unwrap_err();
    assert!(e.contains("409"), "{e}");
    let key_file = ns.dir.join("state/wireguard/private.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let private = std::fs::read_to_string(&key_file).unwrap();
    let shown = d.cli_ok(&["status", "--json"]) + &d.cli_ok(&["peer", "list", "--json"]);
    assert!(
        !shown.contains(private.trim()),
        "the host's private key was served"
    );
    d.kill9();
    d.restart();
    let wg = |args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "wg", "show", &name])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        wg(&["peers"]).contains(&public),
        "the peer is configured after a restart"
    );
    assert_eq!(wg(&["listen-port"]).trim(), "51820");
    d.cli_ok(&["peer", "remove", "phone"]);
    assert!(!wg(&["peers"]).contains(&public));
    assert_eq!(d.cli_ok(&["peer", "list", "--json"]).trim(), "[]");
    // SIGTERM stops faasd, WireGuard and all (the embedded device takes no signals).
    d.stop();
}

#[test]
fn an_interface_the_operator_made_is_adopted_and_configured() {
    crate::require_privileges!();
    if let Some(tool) = missing(&["wireguard-go", "wg"]) {
        crate::harness::skip(format_args!(
            "{tool} is missing (cargo xtask setup installs it)"
        ));
        return;
    }
    let ns = Netns::new("wg-adopt");
    let (name, _) = names();
    let name = format!("{name}a");
    // What a wg-faas.service running wireguard-go leaves: the interface and its socket.
    let _outside = Outside {
        client: Some(wireguard_go(&ns, &name)),
        files: vec![faasd::wireguard::uapi::socket_path(&name)],
    };
    let mut d = Daemon::start_with(&ns, &format!("wireguard-interface = \"{name}\"\n"));
    let status = d.cli_ok(&["status"]);
    assert!(status.contains(&format!("{name} (adopted")), "{status}");
    // faasd configures it through wireguard-control's userspace backend; `wg`, another
    // client of the same control socket, sees the result.
    let (_, public) = faasd::wireguard::generate_keypair().unwrap();
    let config = d.cli_ok(&["peer", "add", "desk", "--public-key", &public]);
    let host_key = config
        .lines()
        .find_map(|l| l.strip_prefix("PublicKey = "))
        .unwrap_or_else(|| panic!("no host key in {config}"))
        .to_owned();
    let show = || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "wg", "show", &name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = show();
    assert!(shown.contains("listening port: 51820"), "{shown}");
    assert!(
        shown.contains(&format!("public key: {host_key}")),
        "{shown}"
    );
    assert!(shown.contains(&format!("peer: {public}")), "{shown}");
    assert!(
        shown.contains("allowed ips: fd00:faa5:0:100::2/128"),
        "{shown}"
    );
    // Read back through the library, and removed through it.
    let peers: Vec<faasd::wireguard::PeerStatus> =
        serde_json::from_str(&d.cli_ok(&["peer", "list", "--json"])).unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert!(peers[0].last_handshake_secs_ago.is_none(), "{peers:?}");
    d.cli_ok(&["peer", "remove", "desk"]);
    assert!(
        !show().contains(&public),
        "the peer stayed on the interface"
    );
    let addrs = Command::new("ip")
        .args(["-n", &ns.name, "-6", "addr", "show", "dev", &name])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&addrs.stdout).contains("fd00:faa5:0:100::1/64"));
    // faasd stops; the operator's interface stays theirs.
    d.stop();
    let still = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", &name])
        .status()
        .unwrap()
        .success();
    assert!(still, "faasd removed an interface it did not make");
}
