//! Calls out from process functions, in a host namespace running faasd behind a second
//! namespace that plays the internet: HTTP on IPv4 and IPv6 and an authoritative DNS
//! server (NSD) that the host's resolv.conf names, with no route back to anything of
//! faasd's (instance addresses reach it only masqueraded as the host's).

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener},
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{
    harness::{Daemon, Netns, http_get_path, run},
    require_privileges,
};

/// The uplink between the host and the internet.
pub const HOST4: &str = "10.99.0.2";
pub const INTERNET4: &str = "10.99.0.1";
pub const HOST6: &str = "2001:db8:99::2";
pub const INTERNET6: &str = "2001:db8:99::1";
/// faasd's DNS, on the host's loopback.
pub const DNS: &str = "fd00:faa5:0:100::1";

/// The internet: a namespace linked to the host's, its HTTP server and NSD.
pub struct Internet {
    ns: Netns,
    stop: Arc<AtomicBool>,
    _nsd: Nsd,
}

impl Internet {
    /// Links `host` to a new namespace, routes the host's defaults through it, and starts
    /// an HTTP server (answering with the peer's address) and NSD for `example.test`.
    pub fn new(host: &Netns) -> Self {
        let ns = Netns::new("inet");
        run(Command::new("ip").args([
            "-n", &host.name, "link", "add", "up0", "type", "veth", "peer", "name", "down0",
            "netns", &ns.name,
        ]));
        for (n, link, v4, v6) in [
            (&host.name, "up0", HOST4, HOST6),
            (&ns.name, "down0", INTERNET4, INTERNET6),
        ] {
            run(Command::new("ip").args([
                "-n",
                n,
                "addr",
                "add",
                &format!("{v4}/24"),
                "dev",
                link,
            ]));
            run(Command::new("ip").args([
                "-n",
                n,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                link,
                "nodad",
            ]));
            run(Command::new("ip").args(["-n", n, "link", "set", link, "up"]));
        }
        run(Command::new("ip").args([
            "-n", &host.name, "route", "add", "default", "via", INTERNET4,
        ]));
        run(Command::new("ip").args([
            "-n", &host.name, "-6", "route", "add", "default", "via", INTERNET6,
        ]));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = ns.run(|| TcpListener::bind("[::]:80").expect("bind [::]:80"));
        listener.set_nonblocking(true).unwrap();
        let flag = stop.clone();
        std::thread::spawn(move || serve(listener, &flag));
        let _nsd = start_nsd(&ns);
        Self { ns, stop, _nsd }
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answers every request with the address it came from.
fn serve(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let mut line = String::new();
                let _ = BufReader::new(&s).read_line(&mut line);
                let body = format!("internet saw {}\n", peer.ip().to_canonical());
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The NSD process, killed and reaped when dropped.
struct Nsd(Child);

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// NSD, authoritative for `example.test` (`www` → the internet's addresses), on the
/// internet's addresses.
fn start_nsd(ns: &Netns) -> Nsd {
    let dir = ns.dir.join("nsd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("example.test.zone"),
        format!(
            "$ORIGIN example.test.\n$TTL 60\n\
             @ IN SOA ns hostmaster 1 3600 600 86400 60\n\
             @ IN NS ns\nns IN A {INTERNET4}\n\
             www IN A {INTERNET4}\nwww IN AAAA {INTERNET6}\n"
        ),
    )
    .unwrap();
    let conf = dir.join("nsd.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  ip-address: {INTERNET4}\n  ip-address: {INTERNET6}\n  port: 53\n  \
             username: \"\"\n  chroot: \"\"\n  zonesdir: {dir:?}\n  database: \"\"\n  \
             pidfile: {pid:?}\n  xfrdfile: {xfrd:?}\n  zonelistfile: {list:?}\n  \
             logfile: {log:?}\n  verbosity: 1\n\
             remote-control:\n  control-enable: no\n\
             zone:\n  name: example.test\n  zonefile: example.test.zone\n",
            pid = dir.join("nsd.pid"),
            xfrd = dir.join("xfrd.state"),
            list = dir.join("zone.list"),
            log = dir.join("nsd.log"),
        ),
    )
    .unwrap();
    // Killed when dropped, also when the wait below fails.
    let nsd = Nsd(ns.spawn(Command::new("nsd").args(["-d", "-c"]).arg(&conf)));
    // Ready once it answers over UDP.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answers = || {
        ns.run(|| {
            Command::new("dig")
                .args(["+short", "+time=1", "+tries=1"])
                .arg(format!("@{INTERNET4}"))
                .args(["www.example.test", "A"])
                .output()
        })
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(INTERNET4))
    };
    while !answers() {
        assert!(
            Instant::now() < deadline,
            "NSD did not answer:\n{}",
            std::fs::read_to_string(dir.join("nsd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nsd
}

/// Skips (a failure under FAASD_TEST_STRICT) without NSD.
pub fn nsd_missing() -> bool {
    let missing = Command::new("nsd").arg("-v").output().is_err();
    if missing {
        crate::harness::skip("nsd is missing (cargo xtask setup installs it)");
    }
    missing
}

/// A host with faasd, its DNS on the host's loopback and resolv.conf naming the internet.
pub fn host() -> Netns {
    let host = Netns::new("egress");
    host.add_loopback_address(DNS.parse().unwrap());
    host
}

pub fn config(host: &Netns, extra: &str) -> String {
    let resolv = host.dir.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {INTERNET4}\n")).unwrap();
    format!("dns = [\"[{DNS}]:53\"]\nresolv-conf = {resolv:?}\n{extra}")
}

/// GET `path` on a function and return the body.
pub fn call(d: &Daemon, addr: Ipv6Addr, path: &str) -> String {
    let (code, body) =
        d.ns.run(|| http_get_path(SocketAddr::from((addr, 8080)), path))
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", d.log()));
    assert_eq!(code, 200, "{path}: {body}");
    body
}

/// Fails with the daemon's log.
pub fn expect(d: &Daemon, ok: bool, what: &str) {
    assert!(ok, "{what}\ndaemon log:\n{}", d.log());
}

#[test]
fn a_function_calls_the_internet_the_host_and_other_functions_by_name() {
    require_privileges!();
    if nsd_missing() {
        return;
    }
    let host = host();
    let internet = Internet::new(&host);
    let d = Daemon::start_with(&host, &config(&host, ""));
    let caller = d.deploy_hello("caller", &[]);
    let callee = d.deploy_hello("callee", &["--label", "com.openfaas.scale.zero=true"]);
    let _ = &internet.ns;

    // The outside world over IPv4 and IPv6, masqueraded as the host.
    let v4 = call(&d, caller, &format!("/connect/{INTERNET4}:80"));
    expect(&d, v4.contains(&format!("internet saw {HOST4}")), &v4);
    let v6 = call(&d, caller, &format!("/connect/[{INTERNET6}]:80"));
    expect(&d, v6.contains(&format!("internet saw {HOST6}")), &v6);

    // A name outside faas., through faasd's DNS and the host's resolver (NSD here).
    let resolved = call(&d, caller, "/resolve/www.example.test");
    expect(
        &d,
        resolved.contains(INTERNET4) && resolved.contains(INTERNET6),
        &resolved,
    );
    let by_name = call(&d, caller, "/connect/www.example.test:80");
    expect(&d, by_name.contains("internet saw"), &by_name);

    // Another function by name: resolved by faasd's zone, woken from zero by steering.
    expect(
        &d,
        d.describe("callee").state.instances.is_empty(),
        "callee runs before it is called",
    );
    let named = call(&d, caller, "/connect/callee:8080");
    expect(
        &d,
        named.contains(&format!("connected to [{callee}]:8080"))
            && named.contains("Hello from faasd"),
        &named,
    );
    let qualified = call(&d, caller, "/resolve/callee.openfaas-fn.faas");
    expect(&d, qualified.contains(&callee.to_string()), &qualified);
    let by_address = call(&d, caller, &format!("/connect/[{callee}]:8080"));
    expect(&d, by_address.contains("Hello from faasd"), &by_address);

    // A service bound on the host's own address.
    let service = host.run(|| TcpListener::bind(format!("{HOST4}:7070")).unwrap());
    let accepted = std::thread::spawn(move || {
        let (mut s, _) = service.accept().unwrap();
        s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhost service\n")
            .unwrap();
    });
    let local = call(&d, caller, &format!("/connect/{HOST4}:7070"));
    accepted.join().unwrap();
    expect(&d, local.contains("host service"), &local);

    // Ingress does not change: nothing new reaches an instance's own address, not even
    // from the host (a closed port would refuse at once; the packet never gets there).
    let routes = String::from_utf8(
        Command::new("ip")
            .args(["-n", &host.name, "-6", "route", "show", "table", "local"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let instance: Ipv6Addr = routes
        .lines()
        .find(|l| l.contains("dev fxs"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no instance route in:\n{routes}"));
    let probe = host.run(|| {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from((instance, 8080)),
            Duration::from_secs(1),
        )
    });
    expect(
        &d,
        probe
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
        &format!("a connection from the host to [{instance}]:8080: {probe:?}"),
    );

    // /etc/hosts names the function itself.
    let me = call(&d, caller, "/resolve/caller");
    expect(&d, me.contains(&caller.to_string()), &me);

    // The calls to the caller's socket (from the host) went untracked both ways, while the
    // instance's own calls above, which need tracking for their replies, still worked.
    let listed = String::from_utf8(
        Command::new("ip")
            .args(["netns", "exec", &host.name, "nft", "list", "chain", "inet"])
            .args(["faasd_egress", "untracked_out"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let counts: Vec<u64> = listed
        .split("packets ")
        .skip(1)
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    expect(
        &d,
        counts.len() == 2 && counts.iter().all(|&n| n > 0),
        &format!("untracked packets to and from function addresses:\n{listed}"),
    );
}

/// Whether faasd's NAT table is in the namespace.
fn nat_table(host: &Netns) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &host.name, "nft", "list", "table", "inet"])
        .arg("faasd_egress")
        .output()
        .unwrap()
        .status
        .success()
}

/// How many host ends of instance links are in the namespace.
fn host_ends(host: &Netns) -> usize {
    let out = Command::new("ip")
        .args(["-n", &host.name, "-o", "link", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with("fxs"))
        })
        .count()
}

#[test]
fn the_host_nat_is_there_only_while_an_instance_may_call_out() {
    require_privileges!();
    if nsd_missing() {
        return;
    }
    let host = host();
    let internet = Internet::new(&host);
    let _ = &internet.ns;
    let d = Daemon::start_with(&host, &config(&host, "egress-nat-idle = \"2s\"\n"));
    // The pool's linked namespaces, made ahead, do not bring it in: looked at as soon as
    // they are there, before an idle period could have taken it away again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host_ends(&host) < 4 {
        assert!(
            Instant::now() < deadline,
            "the pool was not filled:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    expect(
        &d,
        !nat_table(&host),
        "the NAT is there with only the pool's namespaces",
    );
    let nat_is = |installed: bool| {
        let status = d.wait_for_status("the host's NAT state", |s| {
            s.lines().any(|l| {
                l.starts_with("egress")
                    && l.contains(if installed {
                        "host NAT installed"
                    } else {
                        "host NAT not installed"
                    })
            })
        });
        expect(
            &d,
            nat_table(&host) == installed,
            &format!("the table is there: {}, status:\n{status}", !installed),
        );
        // The API's field says the same.
        let (_, body) = d.api("GET", "/system/status", "");
        let host_nat =
            serde_json::from_str::<serde_json::Value>(&body).expect("status JSON")["hostNat"]
                .clone();
        let want = if installed { "installed" } else { "absent" };
        expect(
            &d,
            host_nat == want,
            &format!("status hostNat {host_nat}, expected {want:?}"),
        );
    };

    // A function that cannot call out runs without it.
    let closed = d.deploy_hello("closed", &["--annotation", "faasd.dev/egress=none"]);
    let caller = d.deploy_hello("caller", &[]);
    nat_is(false);
    let hello = call(&d, closed, "/");
    expect(&d, hello.contains("Hello from faasd"), &hello);
    nat_is(false);

    // The first instance that may call out is masqueraded from its first packet.
    let v4 = call(&d, caller, &format!("/connect/{INTERNET4}:80"));
    expect(&d, v4.contains(&format!("internet saw {HOST4}")), &v4);
    nat_is(true);

    // Its instance gone for egress-nat-idle, the table goes; the next one brings it back.
    d.cli_ok(&["remove", "caller"]);
    nat_is(false);
    let caller = d.deploy_hello("caller", &[]);
    let v6 = call(&d, caller, &format!("/connect/[{INTERNET6}]:80"));
    expect(&d, v6.contains(&format!("internet saw {HOST6}")), &v6);
    nat_is(true);
}

#[test]
fn egress_none_and_denied_prefixes_are_refused_at_once_and_counted() {
    require_privileges!();
    if nsd_missing() {
        return;
    }
    let host = host();
    let internet = Internet::new(&host);
    let mut d = Daemon::start_with(&host, &config(&host, ""));
    let _ = &internet.ns;
    let closed = d.deploy_hello("closed", &["--annotation", "faasd.dev/egress=none"]);
    let picky = d.deploy_hello(
        "picky",
        &[
            "--annotation",
            &format!("faasd.dev/egress-deny={INTERNET4}/32"),
        ],
    );
    let inside = d.deploy_hello("inside", &["--annotation", "faasd.dev/egress=faas"]);

    let started = Instant::now();
    let refused = call(&d, closed, &format!("/connect/{INTERNET4}:80"));
    expect(&d, refused.contains("Operation not permitted"), &refused);
    let udp = call(&d, closed, &format!("/udp/[{INTERNET6}]:53"));
    expect(&d, udp.contains("Operation not permitted"), &udp);
    expect(
        &d,
        started.elapsed() < Duration::from_secs(3),
        &format!("refusals took {:?}", started.elapsed()),
    );

    let denied = call(&d, picky, &format!("/connect/{INTERNET4}:80"));
    expect(&d, denied.contains("Operation not permitted"), &denied);
    let other = call(&d, picky, &format!("/connect/[{INTERNET6}]:80"));
    expect(&d, other.contains("internet saw"), &other);

    let outside = call(&d, inside, &format!("/connect/[{INTERNET6}]:80"));
    expect(&d, outside.contains("Operation not permitted"), &outside);
    let function = call(&d, inside, &format!("/connect/[{picky}]:8080"));
    expect(&d, function.contains("Hello from faasd"), &function);

    // One rule for each of the three running functions (none is plain `all`).
    let status = d.cli_ok(&["status"]);
    expect(
        &d,
        status.lines().any(|l| {
            l.starts_with("egress") && l.contains("default all") && l.contains("3 rule(s) in force")
        }),
        &status,
    );
    let (_, metrics) = d.api("GET", "/metrics", "");
    for (f, reason, n) in [
        ("closed", "none", 2),
        ("picky", "denied", 1),
        ("inside", "faas", 1),
    ] {
        let line = format!(
            "faasd_egress_refused_total{{function=\"{f}\",namespace=\"openfaas-fn\",reason=\"{reason}\"}} {n}"
        );
        let why = format!("no {line} in:\n{}", egress_lines(&metrics));
        expect(&d, metrics.contains(&line), &why);
    }

    // The rules are the kernel's: they hold while no daemon runs, and the next daemon
    // keeps them and their counts.
    d.kill9();
    let down = call(&d, closed, &format!("/connect/{INTERNET4}:80"));
    expect(&d, down.contains("Operation not permitted"), &down);
    d.restart();
    let after = call(&d, closed, &format!("/connect/{INTERNET4}:80"));
    expect(&d, after.contains("Operation not permitted"), &after);
    let (_, metrics) = d.api("GET", "/metrics", "");
    let line = "faasd_egress_refused_total{function=\"closed\",namespace=\"openfaas-fn\",\
                reason=\"none\"} 4";
    let why = format!("no {line} in:\n{}", egress_lines(&metrics));
    expect(&d, metrics.contains(line), &why);

    // An update with another policy takes over the cgroup with its own rule: `closed`,
    // opened up, calls out; `picky`, closed down, is refused.
    d.cli_ok(&[
        "deploy",
        "closed",
        "--update",
        "--command",
        &crate::harness::hello_bin(),
    ]);
    let opened = call(&d, closed, &format!("/connect/{INTERNET4}:80"));
    expect(&d, opened.contains("internet saw"), &opened);
    d.cli_ok(&[
        "deploy",
        "picky",
        "--update",
        "--command",
        &crate::harness::hello_bin(),
        "--annotation",
        "faasd.dev/egress=none",
    ]);
    let shut = call(&d, picky, &format!("/connect/[{INTERNET6}]:80"));
    expect(&d, shut.contains("Operation not permitted"), &shut);
}

fn egress_lines(metrics: &str) -> String {
    metrics
        .lines()
        .filter(|l| l.contains("egress"))
        .collect::<Vec<_>>()
        .join("\n")
}
