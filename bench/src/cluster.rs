//! Three hosts in a cluster: each a network namespace with an etcd member (Debian's
//! `etcd-server`) and a faasd, on a bridge in a fourth, meshed over the embedded
//! WireGuard. Measured: how long a deploy through host 1 that the scheduler places on
//! host 3 takes until the API answers, the other hosts answer its name and host 1 reaches
//! it (from the request to a DNS answer on hosts 1 and 2, and to a connection from host 1
//! accepted at its address); how long a running function is unavailable when its host is
//! killed (until it answers again from the host it moved to); and how long a dead host's
//! names outlive it on the others (its lease).

use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::{fd::AsRawFd, unix::net::UnixStream, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{ip, stats::Summary};

/// Functions deployed one after another, each timed.
const TRIALS: usize = 30;
/// The hosts' lease TTL.
const LEASE_TTL_S: u64 = 3;
/// How long after a dead host's lease expired its functions move.
const MOVE_AFTER_S: u64 = 3;

/// The namespaces, members and daemons, removed when dropped.
struct Lab {
    lan: String,
    hosts: Vec<String>,
    dir: PathBuf,
    /// etcd members, then faasd daemons, by host.
    members: Vec<Option<Child>>,
    daemons: Vec<Option<Child>>,
}

/// Host `n`'s WireGuard interface (its control socket is the machine's: a name of its own).
fn interface(n: usize) -> String {
    format!("wgb{}-{n}", std::process::id() % 10_000)
}

fn lan_addr(n: usize) -> String {
    format!("10.78.0.{n}")
}

/// Spawns `cmd` in network namespace `ns` (only the network namespace: bpffs stays).
fn spawn_in(ns: &str, cmd: &mut Command, log: &Path) -> Result<Child> {
    let f = std::fs::File::open(format!("/run/netns/{ns}"))?;
    let fd = f.as_raw_fd();
    let log = std::fs::File::create(log)?;
    // SAFETY: setns is async-signal-safe; the namespace fd outlives the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    drop(f);
    Ok(child)
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let opened = path.clone();
    std::thread::spawn(move || -> Result<T> {
        let f_ns = std::fs::File::open(&opened)?;
        // SAFETY: setns on this thread only, with a namespace fd we own.
        if unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("a thread in {path} panicked"))?
}

impl Lab {
    fn new(out: &Path) -> Result<Self> {
        let tag = std::process::id();
        let mut lab = Self {
            lan: format!("faasd-bcl-{tag}-lan"),
            hosts: (1..=3).map(|n| format!("faasd-bcl-{tag}-h{n}")).collect(),
            dir: out.join("cluster"),
            members: Vec::new(),
            daemons: Vec::new(),
        };
        let _ = std::fs::remove_dir_all(&lab.dir);
        std::fs::create_dir_all(&lab.dir)?;
        ip(&["netns", "add", &lab.lan])?;
        ip(&["-n", &lab.lan, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.lan, "link", "set", "br0", "up"])?;
        for (i, h) in lab.hosts.iter().enumerate() {
            let n = i + 1;
            let port = format!("h{n}");
            ip(&["netns", "add", h])?;
            ip(&["-n", h, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", h, "link", "add", "eth1", "type", "veth", "peer", "name", &port, "netns",
                &lab.lan,
            ])?;
            ip(&["-n", &lab.lan, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                h,
                "addr",
                "add",
                &format!("{}/24", lan_addr(n)),
                "dev",
                "eth1",
            ])?;
            ip(&["-n", h, "link", "set", "eth1", "up"])?;
        }
        let initial: Vec<String> = (1..=3)
            .map(|n| format!("m{n}=http://{}:2380", lan_addr(n)))
            .collect();
        for n in 1..=3 {
            let a = lan_addr(n);
            let mut cmd = Command::new("/usr/bin/etcd");
            cmd.args(["--name", &format!("m{n}")])
                .arg("--data-dir")
                .arg(lab.dir.join(format!("etcd{n}")))
                .args(["--listen-client-urls", &format!("http://{a}:2379")])
                .args(["--advertise-client-urls", &format!("http://{a}:2379")])
                .args(["--listen-peer-urls", &format!("http://{a}:2380")])
                .args(["--initial-advertise-peer-urls", &format!("http://{a}:2380")])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-token", &lab.lan])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"]);
            let log = lab.dir.join(format!("etcd{n}.log"));
            lab.members
                .push(Some(spawn_in(&lab.hosts[n - 1], &mut cmd, &log)?));
        }
        Ok(lab)
    }

    fn start_daemon(&mut self, faasd: &Path, n: usize) -> Result<()> {
        let dir = self.dir.join(format!("h{n}"));
        std::fs::create_dir_all(&dir)?;
        let endpoints: Vec<String> = (1..=3)
            .map(|i| format!("\"http://{}:2379\"", lan_addr(i)))
            .collect();
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state-dir = {:?}\nruntime-dir = {:?}\ndata-dir = {:?}\n\
                 cgroup-parent = \"faasd-bench-cluster/h{n}\"\nstop-timeout = \"2s\"\n\
                 wireguard-interface = \"{}\"\nwireguard-endpoint = \"{}:51820\"\n\
                 [cluster]\nendpoints = [{}]\nname = \"h{n}\"\nlease-ttl = \"{LEASE_TTL_S}s\"\n\
                 move-after = \"{MOVE_AFTER_S}s\"\nlabels = {{ zone = \"z{n}\" }}\n",
                dir.join("state"),
                dir.join("rt"),
                dir.join("data"),
                interface(n),
                lan_addr(n),
                endpoints.join(", "),
            ),
        )?;
        let mut cmd = Command::new(faasd);
        cmd.args(["daemon", "--stop-functions-on-exit", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn");
        let child = spawn_in(&self.hosts[n - 1], &mut cmd, &dir.join("daemon.log"))?;
        while self.daemons.len() < n {
            self.daemons.push(None);
        }
        self.daemons[n - 1] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(self.socket(n)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "faasd on host {n} did not start; see {}",
                    dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn socket(&self, n: usize) -> PathBuf {
        self.dir.join(format!("h{n}/rt/faasd.sock"))
    }

    /// One API call to host `n` over its unix socket; the answer's JSON.
    fn api(&self, n: usize, method: &str, path: &str, body: &str) -> Result<Value> {
        crate::api_call(&self.socket(n), method, path, body)
    }

    fn hosts_seen(&self, n: usize) -> Result<usize> {
        Ok(self.api(n, "GET", "/system/cluster", "")?["hosts"]
            .as_array()
            .map_or(0, Vec::len))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in self.daemons.iter_mut().chain(self.members.iter_mut()) {
            if let Some(mut c) = c.take() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let _ = c.wait();
            }
        }
        // A killed daemon leaves its WireGuard control socket behind.
        for n in 1..=3 {
            let _ = std::fs::remove_file(format!("/run/wireguard/{}.sock", interface(n)));
        }
        for h in &self.hosts {
            if let Ok(m) = std::fs::metadata(format!("/run/netns/{h}")) {
                use std::os::unix::fs::MetadataExt;
                let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/faasd/netns-{}", m.ino()));
            }
        }
        // Instances outlive a killed daemon (by design): they go with their cgroups.
        for root in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let dir = format!("{root}/faasd-bench-cluster");
            let _ = std::fs::write(format!("{dir}/cgroup.kill"), "1");
            // The kill is asynchronous: a cgroup is removable once its processes are gone.
            for _ in 0..40 {
                let _ = Command::new("find")
                    .args([&dir, "-mindepth", "1", "-depth", "-type", "d", "-delete"])
                    .stderr(Stdio::null())
                    .status();
                if std::fs::remove_dir(&dir).is_ok() || !Path::new(&dir).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for ns in self.hosts.iter().chain(std::iter::once(&self.lan)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// An AAAA query for `name`.
fn aaaa_query(name: &str, id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 28, 0, 1]);
    q
}

/// Whether the DNS server at `server` answers `name` with `addr` now.
fn answers(sock: &UdpSocket, server: SocketAddr, name: &str, addr: Ipv6Addr) -> bool {
    static ID: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let id = ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if sock.send_to(&aaaa_query(name, id), server).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let Ok((n, _)) = sock.recv_from(&mut buf) else {
        return false;
    };
    let resp = &buf[..n];
    let octets = addr.octets();
    n > 12 && resp[3] & 0x0f == 0 && resp.windows(16).any(|w| w == octets)
}

/// Polls from host `n`'s namespace until `check` holds (every millisecond, for up to
/// 10 s); the time it took since `t0`.
fn until_in(ns: &str, t0: Instant, check: impl Fn() -> bool + Send + 'static) -> Result<Duration> {
    until_in_for(ns, t0, Duration::from_secs(10), check)
}

/// As [`until_in`], for up to `limit`.
fn until_in_for(
    ns: &str,
    t0: Instant,
    limit: Duration,
    check: impl Fn() -> bool + Send + 'static,
) -> Result<Duration> {
    in_ns(ns, move || {
        let deadline = t0 + limit;
        while !check() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(t0.elapsed())
    })?
    .with_context(|| format!("not within {limit:?}"))
}

/// The section; prints its table and returns `results.json`'s `cluster`.
pub fn run(faasd: &Path, hello: &Path, out: &Path) -> Result<Value> {
    if !Path::new("/usr/bin/etcd").exists() {
        bail!("no etcd (cargo xtask setup installs etcd-server)");
    }
    let mut lab = Lab::new(out)?;
    for n in 1..=3 {
        lab.start_daemon(faasd, n)?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (1..=3).any(|n| lab.hosts_seen(n).unwrap_or(0) < 3) {
        if Instant::now() > deadline {
            bail!("the three hosts did not see each other within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dns = |n: usize| SocketAddr::from((faasd_common::plan::host_address(n as u16), 53));
    let (mut to_answer, mut to_dns, mut to_reach) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..TRIALS {
        let name = format!("f{i}");
        let t0 = Instant::now();
        // Through host 1, placed on host 3 by the scheduler (the constraint admits no other).
        let d = lab.api(
            1,
            "POST",
            "/system/functions",
            &json!({
                "service": name,
                "envProcess": hello.to_string_lossy(),
                "constraints": ["zone == z3"],
            })
            .to_string(),
        )?;
        to_answer.push(t0.elapsed().as_nanos() as u64);
        let addr: Ipv6Addr = d["address"].as_str().context("address")?.parse()?;
        let fqdn = format!("{name}.faas");
        let mut slowest = Duration::ZERO;
        for n in [1, 2] {
            let (server, fqdn) = (dns(n), fqdn.clone());
            let took = until_in(&lab.hosts[n - 1], t0, move || {
                let Ok(s) = UdpSocket::bind("[::]:0") else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
                answers(&s, server, &fqdn, addr)
            })?;
            slowest = slowest.max(took);
        }
        to_dns.push(slowest.as_nanos() as u64);
        let reach = until_in(&lab.hosts[0], t0, move || {
            TcpStream::connect_timeout(&SocketAddr::from((addr, 8080)), Duration::from_millis(50))
                .is_ok()
        })?;
        to_reach.push(reach.as_nanos() as u64);
    }
    // A running function's host (2) dies: how long until it answers again, from host 3.
    lab.api(
        1,
        "POST",
        "/system/functions",
        &json!({
            "service": "mover",
            "envProcess": hello.to_string_lossy(),
            "constraints": ["zone != z1"],
            "labels": {"com.openfaas.scale.min": "1"},
        })
        .to_string(),
    )?;
    let mover: Ipv6Addr = lab.api(2, "GET", "/system/function/mover", "")?["address"]
        .as_str()
        .context("address")?
        .parse()?;
    let answers_http = move || {
        let Ok(mut s) =
            TcpStream::connect_timeout(&SocketAddr::from((mover, 8080)), Duration::from_millis(50))
        else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n");
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r.starts_with("HTTP/1.1 200")
    };
    until_in(&lab.hosts[0], Instant::now(), answers_http)?;
    if let Some(mut c) = lab.daemons[1].take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let t0 = Instant::now();
    let outage = until_in_for(&lab.hosts[0], t0, Duration::from_secs(30), answers_http)?;
    // Host 3 dies: how long its names outlive it on host 1 (the lease; the constraint
    // keeps them from moving).
    let probe = "f0.faas";
    let probe_addr: Ipv6Addr = lab.api(3, "GET", "/system/function/f0", "")?["address"]
        .as_str()
        .context("address")?
        .parse()?;
    if let Some(mut c) = lab.daemons[2].take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    let t0 = Instant::now();
    let server = dns(1);
    let gone = until_in(&lab.hosts[0], t0, move || {
        let Ok(s) = UdpSocket::bind("[::]:0") else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        !answers(&s, server, probe, probe_addr)
    })?;
    let dns_s = Summary::of("deploy → its name answers on hosts 1 and 2", &to_dns);
    let reach_s = Summary::of("deploy → host 1 connects to it", &to_reach);
    let answer_s = Summary::of(
        "deploy through host 1 → the API answers (placed, running)",
        &to_answer,
    );
    let ms = |ns: u64| ns as f64 / 1e6;
    println!("\ncluster: three hosts, etcd 3.4, embedded WireGuard, {TRIALS} deploys");
    for s in [&answer_s, &dns_s, &reach_s] {
        println!(
            "  {:<55} p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms",
            s.name,
            ms(s.p50),
            ms(s.p90),
            ms(s.p99)
        );
    }
    println!(
        "  a running function whose host was killed answers again, from another host, after \
         {:.2} s (lease TTL {LEASE_TTL_S} s + move-after {MOVE_AFTER_S} s)",
        outage.as_secs_f64()
    );
    println!(
        "  a killed host's names answer on the others for {:.2} s more (lease TTL {LEASE_TTL_S} s)",
        gone.as_secs_f64()
    );
    Ok(json!({
        "trials": TRIALS,
        "lease_ttl_s": LEASE_TTL_S,
        "move_after_s": MOVE_AFTER_S,
        "deploy_answered": answer_s.to_json(),
        "outage_when_its_host_dies_s": outage.as_secs_f64(),
        "name_on_every_host": dns_s.to_json(),
        "reachable_from_another_host": reach_s.to_json(),
        "dead_host_names_outlive_it_s": gone.as_secs_f64(),
    }))
}
