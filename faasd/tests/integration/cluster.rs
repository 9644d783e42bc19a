//! faasd hosts joined through a real etcd cluster: three hosts, each a network namespace
//! with its own etcd member (Debian's `etcd-server`) and its own faasd, on a bridge in a
//! fourth namespace, meshed with real (embedded, userspace) WireGuard.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use faasd::cluster::ClusterStatus;

use crate::harness::{Daemon, Netns, http_get, run};

/// The hosts' LAN addresses: 10.77.0.N.
fn lan(n: usize) -> String {
    format!("10.77.0.{n}")
}

/// Skips (or fails under FAASD_TEST_STRICT) without etcd.
macro_rules! require_etcd {
    () => {
        $crate::require_privileges!();
        if !Path::new("/usr/bin/etcd").exists() {
            crate::harness::skip("no etcd (cargo xtask setup installs etcd-server)");
            return;
        }
    };
}

/// An etcd member, stopped when dropped.
struct Member(Child);

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Plugs `ns` into the LAN's bridge as 10.77.0.`n`.
fn attach(lan_ns: &Netns, ns: &Netns, n: usize) {
    let port = format!("p{n}");
    let ip = |args: &[&str]| run(Command::new("ip").args(args));
    ip(&[
        "-n",
        &ns.name,
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        &port,
        "netns",
        &lan_ns.name,
    ]);
    ip(&[
        "-n",
        &lan_ns.name,
        "link",
        "set",
        &port,
        "master",
        "br0",
        "up",
    ]);
    ip(&[
        "-n",
        &ns.name,
        "addr",
        "add",
        &format!("{}/24", lan(n)),
        "dev",
        "eth1",
    ]);
    ip(&["-n", &ns.name, "link", "set", "eth1", "up"]);
}

/// A laptop on the LAN: wireguard-go set up from `faasd peer add` on one host, stopped
/// (and its control socket removed) when dropped.
struct Laptop {
    ns: Netns,
    wg: Child,
    interface: String,
}

impl Drop for Laptop {
    fn drop(&mut self) {
        let _ = self.wg.kill();
        let _ = self.wg.wait();
        let _ = std::fs::remove_file(faasd::wireguard::uapi::socket_path(&self.interface));
    }
}

impl Laptop {
    /// A laptop that is a peer of `home`'s.
    fn of(c: &Hosts, home: &Daemon) -> Self {
        let ns = Netns::new(&format!("cl-laptop{}", c.seq));
        attach(&c.lan, &ns, 9);
        let interface = format!("wgl{}-{}", std::process::id() % 10_000, c.seq);
        let wg = crate::wireguard::wireguard_go(&ns, &interface);
        let config = home.cli_ok(&["peer", "add", "laptop"]);
        let address = config
            .lines()
            .find_map(|l| l.strip_prefix("Address = "))
            .expect("an Address in the peer's file")
            .to_owned();
        // `wg setconf` takes the wg-quick file without wg-quick's own keys.
        let setconf: String = config
            .lines()
            .filter(|l| !l.starts_with("Address") && !l.starts_with("DNS"))
            .map(|l| format!("{l}\n"))
            .collect();
        let conf = ns.dir.join("wg.conf");
        std::fs::write(&conf, setconf).unwrap();
        let ip = |args: &[&str]| run(Command::new("ip").args(args));
        ip(&[
            "netns",
            "exec",
            &ns.name,
            "wg",
            "setconf",
            &interface,
            conf.to_str().unwrap(),
        ]);
        ip(&["-n", &ns.name, "addr", "add", &address, "dev", &interface]);
        ip(&["-n", &ns.name, "link", "set", &interface, "up"]);
        ip(&[
            "-n",
            &ns.name,
            "-6",
            "route",
            "add",
            "fd00:faa5::/32",
            "dev",
            &interface,
        ]);
        Self { ns, wg, interface }
    }
}

/// Three host namespaces on one bridge, for an etcd member and a faasd each.
struct Hosts {
    hosts: Vec<Netns>,
    lan: Netns,
    /// This set's number among the test process's, for names the machine shares.
    seq: usize,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // A daemon killed with -9 leaves its interface's control socket behind.
        for n in 1..=3 {
            let _ = std::fs::remove_file(faasd::wireguard::uapi::socket_path(&self.interface(n)));
        }
    }
}

static SETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Hosts {
    fn new(tag: &str) -> Self {
        let lan_ns = Netns::new(&format!("{tag}-lan"));
        run(Command::new("ip").args(["-n", &lan_ns.name, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", &lan_ns.name, "link", "set", "br0", "up"]));
        let hosts: Vec<Netns> = (1..=3)
            .map(|n| Netns::new(&format!("{tag}-h{n}")))
            .collect();
        for (i, h) in hosts.iter().enumerate() {
            attach(&lan_ns, h, i + 1);
        }
        Self {
            hosts,
            lan: lan_ns,
            seq: SETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// One etcd cluster, a member on each host, once it answers.
    fn start_members(&self) -> Vec<Option<Member>> {
        let members = (1..=3).map(|n| Some(self.start_member(n, "new"))).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.etcd_healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up:\n{}",
                self.hosts
                    .iter()
                    .map(|h| std::fs::read_to_string(h.dir.join("etcd.log")).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        members
    }

    /// Whether every member answers (asked with etcdctl, an independent client).
    fn etcd_healthy(&self) -> bool {
        let urls: Vec<String> = (1..=3).map(|n| format!("http://{}:2379", lan(n))).collect();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hosts[0].name,
                "etcdctl",
                "--endpoints",
            ])
            .arg(urls.join(","))
            .args(["endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn start_member(&self, n: usize, state: &str) -> Member {
        let h = &self.hosts[n - 1];
        let cluster: Vec<String> = (1..=3)
            .map(|i| format!("m{i}=http://{}:2380", lan(i)))
            .collect();
        let ip = lan(n);
        let log = std::fs::File::create(h.dir.join("etcd.log")).unwrap();
        let mut cmd = Command::new("/usr/bin/etcd");
        cmd.args([
            "--name",
            &format!("m{n}"),
            "--data-dir",
            &h.dir.join("etcd").to_string_lossy(),
            "--listen-client-urls",
            &format!("http://{ip}:2379"),
            "--advertise-client-urls",
            &format!("http://{ip}:2379"),
            "--listen-peer-urls",
            &format!("http://{ip}:2380"),
            "--initial-advertise-peer-urls",
            &format!("http://{ip}:2380"),
            "--initial-cluster",
            &cluster.join(","),
            "--initial-cluster-state",
            state,
            // One token for the cluster (the LAN's name is this test's own).
            "--initial-cluster-token",
            &self.lan.name,
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
        ])
        .stdout(Stdio::null())
        .stderr(log);
        Member(h.spawn(&mut cmd))
    }

    fn endpoints() -> String {
        (1..=3)
            .map(|n| format!("\"http://{}:2379\"", lan(n)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Host `n`'s WireGuard interface.
    fn interface(&self, n: usize) -> String {
        format!("wgc{}-{}-{n}", std::process::id() % 10_000, self.seq)
    }

    /// Starts host `n`'s faasd in the cluster (lease TTL 3 s, functions moved 3 s later).
    fn daemon(&self, n: usize) -> Daemon<'_> {
        Daemon::start_with(&self.hosts[n - 1], &self.config(n, &Self::endpoints(), ""))
    }

    /// Host `n`'s config lines: its interface, its endpoint, and `[cluster]` with these
    /// endpoints, the set's cluster key and `extra` lines.
    fn config(&self, n: usize, endpoints: &str, extra: &str) -> String {
        let key = self.lan.dir.join("cluster.key");
        if !key.exists() {
            use base64::Engine;
            let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            std::fs::write(
                &key,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )
            .unwrap();
        }
        // Interface names are the machine's (their control sockets share /run/wireguard):
        // one of this test's own per host.
        format!(
            "wireguard-interface = \"{}\"\nwireguard-endpoint = \"{}:51820\"\n\
             [cluster]\nendpoints = [{endpoints}]\nname = \"host-{n}\"\nlease-ttl = \"3s\"\n\
             move-after = \"3s\"\nkey-file = {key:?}\n\
             labels = {{ zone = \"z{n}\" }}\n{extra}",
            self.interface(n),
            lan(n),
        )
    }
}

fn status(d: &Daemon) -> ClusterStatus {
    serde_json::from_str(&d.cli_ok(&["cluster", "status", "--json"])).unwrap()
}

/// Polls `status` until `pred` holds (or panics after 20 s with the last one).
fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&ClusterStatus) -> bool) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(d);
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "waited in vain for {what}: {s:#?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn numbers(s: &ClusterStatus) -> BTreeSet<u16> {
    s.hosts.iter().map(|h| h.info.number).collect()
}

/// What `ns`'s own faasd DNS (at `server`) answers for `name`'s AAAA: the addresses, or
/// nothing.
fn aaaa(ns: &Netns, server: std::net::Ipv6Addr, name: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "dig", "+short", "+time=2", "+tries=2",
        ])
        .arg(format!("@{server}"))
        .args(["AAAA", name])
        .output()
        .expect("dig runs (cargo xtask setup installs dnsutils)");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Polls every host's DNS until `name` answers `want` on all (or panics after 20 s).
fn wait_name(c: &Hosts, daemons: &[Daemon], name: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, d) in daemons.iter().enumerate() {
        let server = faasd_common::plan::host_address(status(d).number);
        loop {
            let got = aaaa(&c.hosts[i], server, name);
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "host {} answers {got:?} for {name}, not {want:?}:\n{}",
                i + 1,
                d.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `from`'s namespace reaches the API of the host at `to` over the mesh (a TCP
/// connection to its port 8080).
fn reaches(from: &Netns, to: std::net::Ipv6Addr) -> bool {
    from.run(|| {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((to, 8080)),
            Duration::from_secs(2),
        )
        .is_ok()
    })
}

/// The namespace's addresses and IPv6 routes, for a failure's message.
fn routes(ns: &Netns) -> String {
    let out = |args: &[&str]| {
        let o = Command::new("ip")
            .args(["-n", &ns.name])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let wg = Command::new("wg").arg("show").output().unwrap();
    out(&["-6", "route", "show", "table", "all"])
        + &out(&["-4", "addr"])
        + &String::from_utf8_lossy(&wg.stdout)
        + &String::from_utf8_lossy(&wg.stderr)
}

#[test]
fn hosts_join_mesh_share_names_and_a_host_that_dies_drops_out() {
    require_etcd!();
    // Declared in this order, dropped in the reverse: faasd, etcd, then the namespaces.
    let c = Hosts::new("cl-join");
    let mut members = c.start_members();
    let mut daemons: Vec<Daemon> = (1..=3).map(|n| c.daemon(n)).collect();

    // Every host sees the three, each with a number of its own, never handed out twice.
    let mut seen = BTreeSet::new();
    for d in &daemons {
        let s = wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
        assert_eq!(numbers(&s), BTreeSet::from([1, 2, 3]), "{s:#?}");
        assert!(seen.insert(s.number), "number {} twice", s.number);
        let this = s.hosts.iter().find(|h| h.this).expect("this host listed");
        assert_eq!(this.info.name, s.name);
        assert_eq!(this.prefix, format!("fd00:faa5:{:x}::/48", s.number));
        assert_eq!(s.etcd.len(), 3);
        assert_eq!(
            s.etcd.iter().filter(|m| m.leader).count(),
            1,
            "one leader: {:?}",
            s.etcd
        );
    }
    // Every host reaches every other's API at its own address through the mesh, and the
    // handshakes show in the status.
    for (i, d) in daemons.iter().enumerate() {
        let s = status(d);
        for h in s.hosts.iter().filter(|h| !h.this) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !reaches(&c.hosts[i], h.address) {
                assert!(
                    Instant::now() < deadline,
                    "host {} cannot reach {} ({}) over WireGuard: {:#?}\n{}\n{}",
                    s.name,
                    h.info.name,
                    h.address,
                    status(d),
                    routes(&c.hosts[i]),
                    d.log()
                );
            }
        }
        wait_status(d, "handshakes with both others", |s| {
            s.hosts
                .iter()
                .filter(|h| !h.this)
                .all(|h| h.handshake_secs_ago.is_some())
        });
    }

    // A function on host 3 (its constraint allows no other) has its name on every host,
    // and host 1 calls it over the mesh, waking it from zero there.
    let addr = daemons[2].deploy_hello("hello", &["--constraint", "zone == z3"]);
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());
    wait_status(&daemons[0], "host 3 with one function", |s| {
        s.hosts.iter().map(|h| h.functions).collect::<Vec<_>>() == [0, 0, 1]
    });
    let (code, body) = c.hosts[0]
        .run(|| http_get(std::net::SocketAddr::from((addr, 8080))))
        .unwrap();
    assert_eq!(code, 200, "{body}\n{}", daemons[2].log());
    assert_eq!(daemons[2].describe("hello").state.activations, 1);
    // A laptop, peer of host 1's, resolves the name through host 1 and calls host 3's
    // function: there through host 1, and back the same way.
    let laptop = Laptop::of(&c, &daemons[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while aaaa(
        &laptop.ns,
        faasd_common::plan::host_address(1),
        "hello.faas",
    ) != addr.to_string()
    {
        assert!(
            Instant::now() < deadline,
            "the laptop gets no answer for hello.faas"
        );
    }
    let (code, body) = laptop
        .ns
        .run(|| http_get(std::net::SocketAddr::from((addr, 8080))))
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains(&format!("instance=hello-{}-", daemons[2].pid())),
        "{body}"
    );
    drop(laptop);
    // The name is the cluster's: host 1 cannot deploy another of it.
    let hello = crate::harness::hello_bin();
    let e = daemons[0]
        .cli(&["deploy", "hello", "--command", &hello])
        .unwrap_err();
    assert!(e.contains("exists on host 3"), "{e}");
    // Host 1's gateway calls it as well: /function/hello there answers from host 3.
    let out = daemons[0].cli_ok(&["invoke", "hello", "--data", "x"]);
    assert!(
        out.contains(&format!("instance=hello-{}-", daemons[2].pid())),
        "{out}"
    );

    // Host 3's faasd and etcd member are killed: its lease runs out (3 s), and the others
    // drop it from their view, their mesh and their zone.
    let gone = status(&daemons[2]).number;
    daemons[2].kill9();
    members[2] = None;
    let t0 = Instant::now();
    for d in &daemons[..2] {
        let s = wait_status(d, "host 3 gone", |s| s.hosts.len() == 2);
        assert!(!numbers(&s).contains(&gone), "{s:#?}");
    }
    let dropped_after = t0.elapsed();
    wait_name(&c, &daemons[..2], "hello.faas", "");
    assert!(
        dropped_after >= Duration::from_secs(1),
        "dropped before its lease could expire: {dropped_after:?}"
    );
    // Two of three members still make a quorum: host 3 comes back with its number.
    members[2] = Some(c.start_member(3, "existing"));
    daemons[2].restart();
    let s = wait_status(&daemons[2], "back with its number", |s| {
        s.hosts.len() == 3 && s.registered
    });
    assert_eq!(s.number, gone, "a host keeps its number");
    for d in &daemons[..2] {
        wait_status(d, "host 3 back", |s| s.hosts.len() == 3);
    }
    // Its function's name is back everywhere with it.
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());
}

#[test]
fn without_a_quorum_hosts_keep_serving_and_answering_even_across_a_restart() {
    require_etcd!();
    let c = Hosts::new("cl-quorum");
    let mut members = c.start_members();
    let mut daemons: Vec<Daemon> = (1..=3).map(|n| c.daemon(n)).collect();
    for d in &daemons {
        wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
    }
    let addr = daemons[2].deploy_hello("hello", &["--constraint", "zone == z3"]);
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());

    // Two of three members stop: no quorum. Host 1 still calls host 3's function (woken
    // from zero there), and every host still answers its name.
    members[1] = None;
    members[2] = None;
    let s = wait_status(&daemons[0], "two members unreachable", |s| {
        s.etcd.iter().filter(|m| m.error.is_some()).count() == 2
    });
    assert!(s.etcd[0].error.is_none(), "{:?}", s.etcd);
    let call = || {
        c.hosts[0]
            .run(|| http_get(std::net::SocketAddr::from((addr, 8080))))
            .unwrap()
    };
    let (code, body) = call();
    assert_eq!(code, 200, "{body}");
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());

    // Once a host's registration lapses (its TTL after the last keep-alive etcd took),
    // changes on it wait for etcd, said as such (503).
    for d in [&daemons[0], &daemons[2]] {
        wait_status(d, "the registration lapsed", |s| !s.registered);
    }
    let hello = crate::harness::hello_bin();
    let e = daemons[0]
        .cli(&["deploy", "later", "--command", &hello])
        .unwrap_err();
    assert!(
        e.contains("503") && e.contains("etcd is unreachable"),
        "{e}"
    );
    let e = daemons[2].cli(&["remove", "hello"]).unwrap_err();
    assert!(e.contains("etcd is unreachable"), "{e}");

    // Host 1's faasd restarts meanwhile: it knows its number and the names without etcd.
    daemons[0].kill9();
    daemons[0].restart();
    wait_name(&c, &daemons[..1], "hello.faas", &addr.to_string());
    let (code, body) = call();
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&daemons[0]).number, 1);

    // The members come back: host 1 registers again and sees the three.
    members[1] = Some(c.start_member(2, "existing"));
    members[2] = Some(c.start_member(3, "existing"));
    wait_status(&daemons[0], "registered again", |s| {
        s.registered && s.hosts.len() == 3
    });
    daemons[0].cli_ok(&["deploy", "later", "--command", &hello]);
}

/// A CA, and certificates it signed: `etcd` (for 10.77.0.1) and `host-1`, PEM files in
/// `dir` named `<name>.pem` and `<name>.key`.
fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=faasd-test-ca",
    ]);
    openssl(&ca);
    for (name, ext) in [
        (
            "etcd",
            "subjectAltName=IP:10.77.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("host-1", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ]);
    }
}

#[test]
fn a_host_joins_an_etcd_that_asks_for_tls_client_certificates() {
    require_etcd!();
    let c = Hosts::new("cl-tls");
    let h = &c.hosts[0];
    let pki = h.dir.join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    certificates(&pki);
    let file = |f: &str| pki.join(f).to_string_lossy().into_owned();
    let url = format!("https://{}:2379", lan(1));
    let log = std::fs::File::create(h.dir.join("etcd.log")).unwrap();
    let mut cmd = Command::new("/usr/bin/etcd");
    cmd.args(["--name", "m1", "--data-dir"])
        .arg(h.dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "m1=http://127.0.0.1:2380"])
        .args([
            "--cert-file",
            &file("etcd.pem"),
            "--key-file",
            &file("etcd.key"),
        ])
        .args(["--client-cert-auth", "--trusted-ca-file", &file("ca.pem")])
        .stdout(Stdio::null())
        .stderr(log);
    let _member = Member(h.spawn(&mut cmd));
    let endpoints = format!("\"{url}\"");

    // Without a client certificate etcd refuses the connection: the first start, which
    // must claim a number, fails and says why.
    let bare = h.dir.join("bare.toml");
    std::fs::write(
        &bare,
        format!(
            "state-dir = {:?}\nruntime-dir = {:?}\nwireguard = true\n{}",
            h.dir.join("bare-state"),
            h.dir.join("bare-run"),
            c.config(1, &endpoints, &format!("ca = {:?}\n", file("ca.pem")))
        ),
    )
    .unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &h.name])
        .arg(crate::harness::faasd_bin())
        .args(["daemon", "--config"])
        .arg(&bare)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("etcd is unreachable"),
        "{said}"
    );

    // With its certificate and key it joins.
    let d = Daemon::start_with(
        h,
        &c.config(
            1,
            &endpoints,
            &format!(
                "ca = {:?}\ncert = {:?}\nkey = {:?}\n",
                file("ca.pem"),
                file("host-1.pem"),
                file("host-1.key")
            ),
        ),
    );
    let s = wait_status(&d, "registered over TLS", |s| {
        s.registered && s.hosts.len() == 1
    });
    assert_eq!(s.etcd.len(), 1);
    assert!(
        s.etcd[0].error.is_none() && s.etcd[0].leader,
        "{:?}",
        s.etcd
    );
}

/// What a call to `addr`'s port 8080 from `ns` answers with: the body of a 200, or why
/// there was none.
fn call(ns: &Netns, addr: std::net::Ipv6Addr) -> Result<String, String> {
    ns.run(|| {
        let a = std::net::SocketAddr::from((addr, 8080));
        let mut s = std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        use std::io::{Read, Write};
        write!(s, "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut out = String::new();
        s.read_to_string(&mut out).map_err(|e| e.to_string())?;
        if out.starts_with("HTTP/1.1 200") {
            Ok(out)
        } else {
            Err(out)
        }
    })
}

/// Deploys the sample function through `d`, wherever it is placed; its address.
fn deploy_through(d: &Daemon, name: &str, extra: &[&str]) -> std::net::Ipv6Addr {
    let hello = crate::harness::hello_bin();
    let mut args = vec!["deploy", name, "--command", &hello];
    args.extend_from_slice(extra);
    let out = d.cli_ok(&args);
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("Deployed {name}.openfaas-fn at ")))
        .unwrap_or_else(|| panic!("no address in {out:?}"))
        .parse()
        .unwrap()
}

/// Every function of the cluster, as `d` lists them.
fn list(d: &Daemon) -> Vec<faasd::status::FunctionStatus> {
    serde_json::from_str(&d.cli_ok(&["list", "--json"])).unwrap()
}

/// The functions a host runs itself (the cluster's list through it says which).
fn local_functions(d: &Daemon) -> Vec<String> {
    let this = status(d).number;
    list(d)
        .into_iter()
        .filter(|f| f.host == Some(this))
        .map(|f| f.name)
        .collect()
}

/// Polls until a call from `ns` to `addr` is answered by an instance of `d`'s.
fn wait_answered_by(ns: &Netns, addr: std::net::Ipv6Addr, d: &Daemon, within: Duration) {
    let deadline = Instant::now() + within;
    let want = format!("instance=hello-{}-", d.pid());
    loop {
        let got = call(ns, addr);
        if got.as_ref().is_ok_and(|b| b.contains(&want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} is not answered by pid {} within {within:?}: {got:?}\n{}",
            d.pid(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_function_deployed_anywhere_runs_where_placed_and_moves_off_a_dead_host() {
    require_etcd!();
    let c = Hosts::new("cl-move");
    let mut members = c.start_members();
    let mut daemons: Vec<Daemon> = (1..=3).map(|n| c.daemon(n)).collect();
    for d in &daemons {
        wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
    }
    let hello = crate::harness::hello_bin();
    // Host 2 carries one function already, so a function that may not run on host 1 goes
    // to host 3, the least loaded of those its constraint admits; deployed through host 2.
    daemons[1].cli_ok(&[
        "deploy",
        "filler",
        "--command",
        &hello,
        "--constraint",
        "zone == z2",
    ]);
    let addr = deploy_through(&daemons[1], "hello", &["--constraint", "zone != z1"]);
    assert_eq!(
        addr.segments()[..4],
        [0xfd00, 0xfaa5, 3, 1],
        "the address comes from host 3's range for placed functions"
    );
    assert_eq!(local_functions(&daemons[2]), ["hello"]);
    assert_eq!(local_functions(&daemons[1]), ["filler"]);
    let s = status(&daemons[0]);
    assert_eq!(
        s.hosts.iter().map(|h| h.functions).collect::<Vec<_>>(),
        [0, 1, 1],
        "{s:#?}"
    );
    assert!(s.scheduler.is_some(), "{s:#?}");
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());
    // Called from host 1, from zero; then from a laptop of host 1's.
    wait_answered_by(&c.hosts[0], addr, &daemons[2], Duration::from_secs(10));
    assert_eq!(daemons[2].describe("hello").state.activations, 1);
    // Host 1's API answers for it from host 3: describe with its live state, its log,
    // and a scale carried out there.
    let far = daemons[0].describe("hello");
    assert_eq!((far.host, far.state.activations), (Some(3), 1), "{far:?}");
    let log = daemons[0].cli_ok(&["logs", "hello"]);
    assert!(!log.trim().is_empty(), "no log lines through host 1");
    assert_eq!(log, daemons[2].cli_ok(&["logs", "hello"]));
    daemons[0].cli_ok(&["scale", "hello", "2"]);
    daemons[2].wait_for("hello", "two instances after a scale through host 1", |s| {
        s.available_replicas == 2
    });
    daemons[0].cli_ok(&["scale", "hello", "0"]);
    {
        let laptop = Laptop::of(&c, &daemons[0]);
        wait_answered_by(&laptop.ns, addr, &daemons[2], Duration::from_secs(10));
    }

    // Host 3's faasd and etcd member are killed: after its lease (3 s) and move-after (3 s)
    // the function answers again at the same address, now from host 2.
    let t0 = Instant::now();
    daemons[2].kill9();
    members[2] = None;
    wait_answered_by(&c.hosts[0], addr, &daemons[1], Duration::from_secs(25));
    let outage = t0.elapsed();
    eprintln!(
        "cluster: hello unavailable for {outage:?} after its host was killed (TTL 3 s + move-after 3 s)"
    );
    assert!(
        outage >= Duration::from_secs(3),
        "moved before the dead host's lease could expire: {outage:?}"
    );
    let mut listed = local_functions(&daemons[1]);
    listed.sort();
    assert_eq!(listed, ["filler", "hello"]);
    assert_eq!(daemons[1].describe("hello").address, addr);
    wait_name(&c, &daemons[..2], "hello.faas", &addr.to_string());

    // Host 3 comes back: it does not serve what moved, and reaches it on host 2.
    members[2] = Some(c.start_member(3, "existing"));
    daemons[2].restart();
    wait_status(&daemons[2], "host 3 registered again", |s| {
        s.registered && s.hosts.len() == 3
    });
    wait_answered_by(&c.hosts[2], addr, &daemons[1], Duration::from_secs(10));
    assert_eq!(local_functions(&daemons[2]), Vec::<String>::new());
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());
    // Removed through host 3, it leaves host 2 and every zone.
    daemons[2].cli_ok(&["remove", "hello"]);
    wait_name(&c, &daemons, "hello.faas", "");
    assert_eq!(local_functions(&daemons[1]), ["filler"]);
}

#[test]
fn a_host_cut_off_stops_serving_before_its_functions_move() {
    require_etcd!();
    let c = Hosts::new("cl-cut");
    let _members = c.start_members();
    let daemons: Vec<Daemon> = (1..=3).map(|n| c.daemon(n)).collect();
    for d in &daemons {
        wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
    }
    // On host 2 (the first its constraint admits), kept running.
    let addr = deploy_through(
        &daemons[0],
        "hello",
        &[
            "--constraint",
            "zone != z1",
            "-l",
            "com.openfaas.scale.min=1",
        ],
    );
    assert_eq!(local_functions(&daemons[1]), ["hello"]);
    wait_answered_by(&c.hosts[0], addr, &daemons[1], Duration::from_secs(10));

    // Host 2's link is cut, nothing killed: it stops serving hello before host 3 serves
    // it, never both at once.
    let cut = Instant::now();
    run(Command::new("ip").args(["-n", &c.hosts[1].name, "link", "set", "eth1", "down"]));
    let mut stopped = None;
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let on_host_2 = !local_functions(&daemons[1]).is_empty();
        if !on_host_2 && stopped.is_none() {
            stopped = Some(cut.elapsed());
        }
        let answered_by_3 = call(&c.hosts[0], addr)
            .is_ok_and(|b| b.contains(&format!("instance=hello-{}-", daemons[2].pid())));
        if answered_by_3 {
            assert!(
                !on_host_2 && !local_functions(&daemons[1]).contains(&"hello".to_owned()),
                "host 3 serves hello while cut-off host 2 still does:\n{}",
                daemons[1].log()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hello did not move off the cut-off host:\n{}\n---\n{}",
            daemons[1].log(),
            daemons[2].log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let moved = cut.elapsed();
    let stopped = stopped.expect("host 2 stopped first");
    eprintln!(
        "cluster: cut-off host stopped serving after {stopped:?}, another served after {moved:?}"
    );
    // The cut-off host's own namespace no longer reaches an instance of its own.
    assert!(
        call(&c.hosts[1], addr).is_err_and(|e| !e.contains("instance=")),
        "host 2 still answers for hello"
    );

    // The link comes back: host 2 registers again and leaves hello to host 3.
    run(Command::new("ip").args(["-n", &c.hosts[1].name, "link", "set", "eth1", "up"]));
    wait_status(&daemons[1], "host 2 registered again", |s| s.registered);
    wait_answered_by(&c.hosts[1], addr, &daemons[2], Duration::from_secs(15));
    assert_eq!(local_functions(&daemons[1]), Vec::<String>::new());
}

#[test]
fn the_etcd_leader_killed_during_deploys_loses_none_and_gives_no_address_twice() {
    require_etcd!();
    let c = Hosts::new("cl-leader");
    let mut members = c.start_members();
    // Host 1 takes two functions at most.
    let daemons: Vec<Daemon> = (1..=3)
        .map(|n| match n {
            1 => Daemon::start_with(
                &c.hosts[0],
                &c.config(1, &Hosts::endpoints(), "capacity = 2\n"),
            ),
            n => c.daemon(n),
        })
        .collect();
    for d in &daemons {
        wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
    }
    let leader = status(&daemons[0])
        .etcd
        .iter()
        .position(|m| m.leader)
        .expect("a leader");
    // Deploys through host 1 one after another, each tried again (as a client would)
    // while it is refused; the leader is killed after the fifth.
    let hello = crate::harness::hello_bin();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..24 {
        if i == 5 {
            members[leader] = None;
        }
        let name = format!("f{i}");
        loop {
            match daemons[0].cli(&["deploy", &name, "--command", &hello]) {
                Ok(_) => break,
                // Refused only while etcd elects a new leader, and said so; a try that
                // went through although its answer was lost finds its own record.
                Err(e) => {
                    assert!(e.contains("etcd"), "{name}: {e}");
                    assert!(Instant::now() < deadline, "{name}: still refused: {e}");
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        acknowledged.push(name);
    }
    eprintln!("cluster: 24 deploys acknowledged, {refused} tries refused during the election");
    // Every acknowledged deploy runs on some host, each at an address of its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    let by_host = loop {
        let mut found = std::collections::BTreeMap::new();
        for (i, d) in daemons.iter().enumerate() {
            for f in local_functions(d) {
                found.insert(f.clone(), (i + 1, d.describe(&f).address));
            }
        }
        if acknowledged.iter().all(|n| found.contains_key(n)) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged deploys missing: {:?}",
            acknowledged
                .iter()
                .filter(|n| !found.contains_key(*n))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Any host lists them all, each with the host that runs it.
    let everywhere = list(&daemons[2]);
    for (name, (host, _)) in &by_host {
        let f = everywhere.iter().find(|f| &f.name == name).expect("listed");
        assert_eq!(f.host, Some(*host as u16), "{name}");
    }
    let addresses: BTreeSet<std::net::Ipv6Addr> = by_host.values().map(|(_, a)| *a).collect();
    assert_eq!(
        addresses.len(),
        by_host.len(),
        "an address given twice: {by_host:?}"
    );
    let hosts: BTreeSet<usize> = by_host.values().map(|(h, _)| *h).collect();
    assert!(hosts.len() >= 2, "placed on one host only: {by_host:?}");
    let on_host_1 = by_host.values().filter(|(h, _)| *h == 1).count();
    assert!(
        on_host_1 <= 2,
        "host 1 took {on_host_1}, past its capacity of 2"
    );

    // Host 1 is drained: its functions move to the others, keeping their addresses, and
    // new ones go elsewhere; undone, it takes new ones again.
    let out = daemons[1].cli_ok(&["cluster", "drain", "--host", "1"]);
    assert!(out.contains("host 1 drained"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !local_functions(&daemons[0]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "host 1 keeps {:?}",
            local_functions(&daemons[0])
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (name, (_, addr)) in &by_host {
        let f = list(&daemons[0])
            .into_iter()
            .find(|f| &f.name == name)
            .expect("listed");
        assert_eq!(f.address, *addr, "{name} kept its address");
        assert_ne!(f.host, Some(1), "{name}");
    }
    assert!(status(&daemons[0]).hosts[0].draining);
    let on = deploy_through(&daemons[0], "after-drain", &[]);
    assert_ne!(on.segments()[2], 1, "placed on the drained host");
    daemons[0].cli_ok(&["cluster", "drain", "--undo"]);
    deploy_through(&daemons[0], "after-undo", &[]);
    assert!(local_functions(&daemons[0]).contains(&"after-undo".to_owned()));
    // Full: a function only host 1 admits fits once more, then is refused, saying why.
    deploy_through(&daemons[0], "second", &["--constraint", "zone == z1"]);
    let e = daemons[0]
        .cli(&[
            "deploy",
            "third",
            "--command",
            &hello,
            "--constraint",
            "zone == z1",
        ])
        .unwrap_err();
    assert!(e.contains("full"), "{e}");
}

#[test]
fn secrets_are_sealed_in_etcd_and_reach_the_host_that_runs_the_function() {
    require_etcd!();
    let c = Hosts::new("cl-secret");
    let _members = c.start_members();
    let daemons: Vec<Daemon> = (1..=3).map(|n| c.daemon(n)).collect();
    for d in &daemons {
        wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
    }
    let value = "s3cret-value-42";
    daemons[0].cli_ok(&["secret", "create", "db", "--from-literal", value]);
    // Every host's store has it (host 1's when the create answers).
    assert!(
        daemons[0]
            .cli_ok(&["secret", "list"])
            .contains("db    openfaas-fn"),
        "{}",
        daemons[0].cli_ok(&["secret", "list"])
    );
    for d in &daemons[1..] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.cli_ok(&["secret", "list"]).contains("db") {
            assert!(Instant::now() < deadline, "the secret did not reach a host");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // etcd holds it sealed: nowhere in faasd's keys is the value in clear.
    let dump = Command::new("ip")
        .args(["netns", "exec", &c.hosts[0].name, "etcdctl", "--endpoints"])
        .arg(format!("http://{}:2379", lan(1)))
        .args(["get", "--prefix", "/faasd/"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("/faasd/v1/secrets/openfaas-fn/db"), "{dump}");
    assert!(dump.contains("\"sealed\""), "{dump}");
    assert!(
        !dump.contains(value),
        "the value is in etcd in clear:\n{dump}"
    );
    // A function placed on host 3, deployed through host 2, reads it.
    let addr = deploy_through(
        &daemons[1],
        "reader",
        &["--secret", "db", "--constraint", "zone == z3"],
    );
    let (code, body) = c.hosts[0]
        .run(|| {
            crate::harness::http_get_path(std::net::SocketAddr::from((addr, 8080)), "/secret/db")
        })
        .unwrap();
    assert_eq!((code, body.trim()), (200, value));
    // An update whose constraint no longer admits host 3 moves it to host 2, at its
    // address; the secret is there as well.
    let hello = crate::harness::hello_bin();
    daemons[0].cli_ok(&[
        "deploy",
        "reader",
        "--update",
        "--command",
        &hello,
        "--secret",
        "db",
        "--constraint",
        "zone == z2",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_functions(&daemons[1]) != ["reader"] || !local_functions(&daemons[2]).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the update did not move reader to host 2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = c.hosts[0].run(|| {
            crate::harness::http_get_path(std::net::SocketAddr::from((addr, 8080)), "/secret/db")
        });
        if got
            .as_ref()
            .is_ok_and(|(code, body)| *code == 200 && body.trim() == value)
        {
            break;
        }
        assert!(Instant::now() < deadline, "reader on host 2: {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Updated and removed through another host, everywhere.
    daemons[2].cli_ok(&["secret", "create", "db", "--update", "--from-literal", "v2"]);
    // (A running instance keeps the copy it started with; the next one gets the store's.)
    let stored = c.hosts[2].dir.join("state/secrets/openfaas-fn/db");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&stored).unwrap_or_default() != "v2" {
        assert!(Instant::now() < deadline, "the update did not reach host 3");
        std::thread::sleep(Duration::from_millis(50));
    }
    daemons[1].cli_ok(&["remove", "reader"]);
    daemons[1].cli_ok(&["secret", "remove", "db"]);
    for d in &daemons {
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.cli_ok(&["secret", "list"]).contains("db") {
            assert!(Instant::now() < deadline, "the secret stayed on a host");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let e = daemons[0].cli(&["secret", "remove", "db"]).unwrap_err();
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn a_function_spread_over_two_hosts_is_served_by_both_and_by_one_when_the_other_dies() {
    require_etcd!();
    let c = Hosts::new("cl-spread");
    let _members = c.start_members();
    let mut daemons: Vec<Daemon> = (1..=3).map(|n| c.daemon(n)).collect();
    for d in &daemons {
        wait_status(d, "three hosts", |s| s.hosts.len() == 3 && s.registered);
    }
    // Two replicas, on the two hosts its constraint admits: host 2 (its host, which the
    // others route to) and host 3.
    let addr = deploy_through(
        &daemons[0],
        "hello",
        &[
            "-l",
            "com.openfaas.scale.min=2",
            "-a",
            "faasd.dev/spread=true",
            "--constraint",
            "zone != z1",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while local_functions(&daemons[2]) != ["hello"] {
        assert!(Instant::now() < deadline, "no replica on host 3");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(local_functions(&daemons[1]), ["hello"]);
    let f = list(&daemons[0])
        .into_iter()
        .find(|f| f.name == "hello")
        .unwrap();
    assert_eq!(f.host, Some(2));
    // Each host that runs it serves its address itself; host 1 reaches host 2's.
    wait_answered_by(&c.hosts[1], addr, &daemons[1], Duration::from_secs(10));
    wait_answered_by(&c.hosts[2], addr, &daemons[2], Duration::from_secs(10));
    wait_answered_by(&c.hosts[0], addr, &daemons[1], Duration::from_secs(10));
    wait_name(&c, &daemons, "hello.faas", &addr.to_string());

    // Host 2's faasd is killed: host 3's replica serves everyone once host 2's lease
    // expired (no move-after: it runs already).
    let t0 = Instant::now();
    daemons[1].kill9();
    wait_answered_by(&c.hosts[0], addr, &daemons[2], Duration::from_secs(15));
    eprintln!(
        "cluster: a spread function answered from its other host {:?} after one was killed",
        t0.elapsed()
    );
    let f = list(&daemons[0])
        .into_iter()
        .find(|f| f.name == "hello")
        .unwrap();
    assert_eq!(f.host, Some(3));
    wait_name(&c, &daemons[..1], "hello.faas", &addr.to_string());
}
