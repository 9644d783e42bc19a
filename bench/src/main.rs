//! `faasd-bench`: the benchmarks behind `cargo xtask bench`.
//!
//! Runs in a network namespace of its own (created and removed here) with a release faasd
//! and the sample function, and measures:
//! - cold activation: first connection to a stopped process function → first response
//!   byte, split into queued → start requested → process running → accepted → first byte;
//! - warm: connect + one request/response through the function's address (sk_lookup), to
//!   the same server on its own bound address (the limit), and through userspace proxies
//!   (systemd-socket-proxyd, socat, HAProxy).
//!
//! - with `--containerd`: cold activation of a container function (first connection →
//!   first byte, split into queued → task created → task started → accepted → first
//!   byte) with runc and, where it works, crun; and the warm path of an image that binds
//!   its own port (faasd forwards) against one that takes its sockets.
//!
//! Prints a table, writes `results.json` and `latency.svg` to `--out`.

mod autoscale;
mod bpf;
mod cluster;
mod flood;
mod lookup;
mod plot;
mod prepared;
mod scale;
mod stats;
mod synflood;
mod warm;
mod xdp;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use stats::{Summary, Unit};

struct Args {
    faasd: PathBuf,
    hello: PathBuf,
    /// The lean reference program of the prepared section (bench/lean).
    lean: PathBuf,
    out: PathBuf,
    cold: usize,
    warm: usize,
    settle: Duration,
    containerd: Option<PathBuf>,
    container_cold: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        faasd: "target/release/faasd".into(),
        hello: "target/release/hello".into(),
        lean: LEAN.into(),
        out: "target/bench".into(),
        cold: 200,
        warm: 2000,
        settle: Duration::from_millis(50),
        containerd: None,
        container_cold: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--faasd" => a.faasd = val()?.into(),
            "--hello" => a.hello = val()?.into(),
            "--lean" => a.lean = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--cold" => a.cold = val()?.parse()?,
            "--warm" => a.warm = val()?.parse()?,
            "--settle-ms" => a.settle = Duration::from_millis(val()?.parse()?),
            "--containerd" => a.containerd = Some(val()?.into()),
            "--container-cold" => a.container_cold = val()?.parse()?,
            "--help" | "-h" => {
                println!(
                    "faasd-bench [--cold N (200)] [--warm N (2000)] [--settle-ms MS (50)] [--out DIR] [--faasd BIN] [--hello BIN] [--lean BIN]\n\
                     \x20           [--containerd SOCKET [--container-cold N (100)]]  (images localhost/hello and localhost/hello-port imported)"
                );
                std::process::exit(0);
            }
            f => bail!("unknown flag {f} (see --help)"),
        }
    }
    if a.cold < 100 || a.container_cold < 100 {
        bail!("--cold and --container-cold must be at least 100 for a meaningful p99");
    }
    Ok(a)
}

/// Where `cargo xtask bench` builds the lean reference program (bench/lean/lean.c).
const LEAN: &str = "target/lean/lean";

fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into our timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The nft script for the bench's table, under which nothing on loopback is tracked (see
/// [`Bench::new`]): it removes the table, and with `on` puts it back whole.
fn untracked_loopback(on: bool) -> String {
    const TABLE: &str = "faasd_bench_untracked";
    let mut script = format!("table inet {TABLE}\ndelete table inet {TABLE}\n");
    if on {
        script += &format!(
            "table inet {TABLE} {{\n  chain out {{\n    type filter hook output priority raw;\n    \
             oifname \"lo\" notrack\n  }}\n}}\n"
        );
    }
    script
}

/// The namespace, the daemon and the helper processes; all removed on drop.
struct Bench {
    netns: String,
    /// Namespaces besides `netns` (the XDP sender's).
    extra_netns: Vec<String>,
    dir: PathBuf,
    daemon: Option<Child>,
    children: Vec<Child>,
    socket: PathBuf,
}

impl Bench {
    fn new(out: &Path) -> Result<Self> {
        let netns = format!("faasd-bench-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &netns])
            .status()?
            .success();
        if !ok {
            bail!("ip netns add {netns} failed (run as root)");
        }
        let b = Self {
            dir: out.join("run"),
            netns,
            extra_netns: Vec::new(),
            daemon: None,
            children: Vec::new(),
            socket: PathBuf::new(),
        };
        let _ = std::fs::remove_dir_all(&b.dir);
        std::fs::create_dir_all(&b.dir)?;
        Command::new("ip")
            .args(["-n", &b.netns, "link", "set", "lo", "up"])
            .status()?;
        let ns = std::fs::File::open(format!("/run/netns/{}", b.netns))?;
        // SAFETY: setns on this single-threaded process; children inherit the namespace.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        // faasd's NAT for calls out (there while an instance that may call out runs) turns
        // connection tracking on in its namespace, and faasd takes its function addresses
        // out of it. The direct servers and the proxies are reached over loopback here:
        // loopback is untracked too, so that no path pays for tracking that another does
        // not. (The DNS section takes it away where nothing tracks.)
        b.untrack_loopback(true)?;
        Ok(b)
    }

    /// Takes the bench's loopback table away, or puts it back.
    fn untrack_loopback(&self, on: bool) -> Result<()> {
        nft(&self.netns, &untracked_loopback(on))
    }

    /// Waits (up to 20 s) until faasd's status says its NAT for calls out is installed,
    /// or not.
    fn wait_for_nat(&self, installed: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.api("GET", "/system/status", "")?;
            if (status["hostNat"] == "installed") == installed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "faasd's NAT for calls out was not {} within 20 s (status: egress {}); \
                     its log is in {}",
                    if installed { "installed" } else { "removed" },
                    status["egress"],
                    self.dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A namespace of the bench's besides its own, with `lo` up; removed on drop.
    fn add_netns(&mut self, suffix: &str) -> Result<String> {
        let name = format!("{}-{suffix}", self.netns);
        ip(&["netns", "add", &name])?;
        self.extra_netns.push(name.clone());
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    fn spawn(&mut self, cmd: &mut Command) -> Result<()> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{cmd:?}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Deploys the sample as the process function `hello`; returns its address.
    fn deploy_hello(&self, hello: &Path) -> Result<SocketAddr> {
        let deployed = self.api(
            "POST",
            "/system/functions",
            &json!({"service": "hello", "envProcess": hello.to_string_lossy()}).to_string(),
        )?;
        Ok(format!(
            "[{}]:8080",
            deployed["address"].as_str().context("address")?
        )
        .parse()?)
    }

    /// Starts the daemon (stopping a running one first) with extra config lines.
    fn start_daemon(&mut self, faasd: &Path, extra_config: &str) -> Result<()> {
        if let Some(d) = self.daemon.take() {
            stop(d);
        }
        let config = self.dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "state-dir = {:?}\nruntime-dir = {:?}\ndata-dir = {:?}\ncgroup-parent = \"faasd-bench\"\nstop-timeout = \"2s\"\nwireguard = false\ndns = [\"[::1]:53\"]\nzone-file = {:?}\n{extra_config}",
                self.dir.join("state"),
                self.dir.join("rt"),
                self.dir.join("data"),
                // The DNS peers serve the same zone.
                self.dir.join("faas.zone"),
            ),
        )?;
        self.socket = self.dir.join("rt/faasd.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))?;
        let child = Command::new(faasd)
            .args(["daemon", "--stop-functions-on-exit", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "faasd did not start; see {}",
                    self.dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// The daemon's pin directory (`<bpffs>/faasd/netns-<inode>`).
    fn pin_dir(&self) -> Result<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/run/netns/{}", self.netns))?.ino();
        Ok(PathBuf::from(format!("/sys/fs/bpf/faasd/netns-{ino}")))
    }

    /// One API call over the unix socket.
    fn api(&self, method: &str, path: &str, body: &str) -> Result<Value> {
        api_call(&self.socket, method, path, body)
    }

    fn describe(&self, name: &str) -> Result<Value> {
        self.api("GET", &format!("/system/function/{name}"), "")
    }

    /// The timing of `name`'s activation that began at or after `t0`. The daemon may
    /// answer the response before it publishes the activation, so this waits for it.
    fn activation_since(&self, name: &str, t0: u64) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let t = &self.describe(name)?["state"]["lastActivation"];
            if t["requestedNs"].as_u64().unwrap_or(0) >= t0 {
                return Ok(t.clone());
            }
            if Instant::now() > deadline {
                bail!("no activation recorded after the connection at {t0}");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Waits (up to 30 s) until `name` has an instance prepared.
    fn wait_prepared(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.describe(name)?;
            if d["state"]["prepared"].is_string() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} prepared no instance: {}", d["state"]);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn scale_and_wait(&self, name: &str, replicas: u64) -> Result<()> {
        self.api(
            "POST",
            &format!("/system/scale-function/{name}"),
            &format!(r#"{{"replicas":{replicas}}}"#),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let d = self.describe(name)?;
            if d["replicas"] == replicas && d["availableReplicas"] == replicas {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} did not reach {replicas} replicas: {}", d["state"]);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Runs `ip` with `args`; an error if it fails.
fn ip(args: &[&str]) -> Result<()> {
    let ok = Command::new("ip").args(args).status()?.success();
    if !ok {
        bail!("ip {}", args.join(" "));
    }
    Ok(())
}

/// Moves this thread into network namespace `netns` and returns the index of `interface`
/// there (an index means something only in its namespace).
pub(crate) fn enter_netns(netns: &str, interface: &str) -> Result<u32> {
    let ns = std::fs::File::open(format!("/run/netns/{netns}"))?;
    // SAFETY: setns on this thread only, with a namespace fd we own.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => bail!("no interface {interface} in {netns}"),
        index => Ok(index),
    }
}

/// Loads an nftables ruleset into `netns`.
pub(crate) fn nft(netns: &str, rules: &str) -> Result<()> {
    let file = std::env::temp_dir().join(format!("faasd-bench-{netns}.nft"));
    std::fs::write(&file, rules)?;
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f"])
        .arg(&file)
        .output()?;
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        bail!("nft in {netns}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Runs `args` in `netns`; their output.
pub(crate) fn in_netns(netns: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "{args:?} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGTERM, a grace period, SIGKILL.
/// One API call over a daemon's unix socket (HTTP/1.0: the answer ends with the
/// connection); the answer's JSON, or an error with its status line and body.
fn api_call(socket: &Path, method: &str, path: &str, body: &str) -> Result<Value> {
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
    {
        bail!("{method} {path} on {}: {head} {body}", socket.display());
    }
    Ok(serde_json::from_str(body).unwrap_or(Value::Null))
}

fn stop(mut c: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = c.kill();
    let _ = c.wait();
}

impl Drop for Bench {
    fn drop(&mut self) {
        // The daemon first: it deletes its containers on the way out.
        if let Some(d) = self.daemon.take() {
            stop(d);
        }
        for c in self.children.drain(..).rev() {
            stop(c);
        }
        if let Ok(m) = std::fs::metadata(format!("/run/netns/{}", self.netns)) {
            use std::os::unix::fs::MetadataExt;
            let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/faasd/netns-{}", m.ino()));
        }
        for root in [
            "/sys/fs/cgroup/unified/faasd-bench",
            "/sys/fs/cgroup/faasd-bench",
        ] {
            let _ = std::fs::write(format!("{root}/cgroup.kill"), "1");
            let _ = Command::new("find")
                .args([root, "-mindepth", "1", "-depth", "-type", "d", "-delete"])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir(root);
        }
        for ns in self.extra_netns.iter().chain(std::iter::once(&self.netns)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// One request on a new connection; returns (connect start, first byte, accepted_ns header).
fn request(addr: SocketAddr) -> Result<(u64, u64, Option<u64>)> {
    let t0 = monotonic_ns();
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    // A function that cannot start leaves the connection queued: fail, do not hang.
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let t_first = monotonic_ns();
    let mut rest = Vec::with_capacity(512);
    s.read_to_end(&mut rest)?;
    let text = String::from_utf8_lossy(&rest);
    let accepted = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Accepted-Ns: "))
        .and_then(|v| v.trim().parse().ok());
    Ok((t0, t_first, accepted))
}

fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: "))
        .unwrap_or("unknown")
        .to_owned();
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("PRETTY_NAME=")
                .map(|v| v.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    json!({"cpu": cpu, "cores": cores, "memory": mem, "kernel": kernel, "os": os,
           "faasd_commit": commit, "cpuid_us": cpuid_us(), "wakeup_us": wakeup_us()})
}

/// How long a thread blocked on one core takes to run after another core wakes it (µs,
/// median of 200 wakeups, each after 2 ms idle, so that the woken core sleeps): every
/// connection's path has such wakeups, the client's, the server's and faasd's. Both
/// threads are the measurement's own, pinned to cores 0 and 1; the bench's main thread,
/// whose affinity its children inherit, is left as it was. `None` on a single core.
fn wakeup_us() -> Option<f64> {
    use std::sync::mpsc;
    fn pin(cpu: usize) -> bool {
        // SAFETY: a zeroed cpu_set_t with one bit set, for the calling thread only.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
        }
    }
    let (to_sleeper, woken) = mpsc::channel::<Instant>();
    let (report, reports) = mpsc::channel::<Duration>();
    let sleeper = std::thread::spawn(move || {
        if pin(1) {
            while let Ok(sent) = woken.recv() {
                let _ = report.send(sent.elapsed());
            }
        }
    });
    let waker = std::thread::spawn(move || -> Option<Vec<f64>> {
        if !pin(0) {
            return None;
        }
        let mut samples = Vec::new();
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(2));
            to_sleeper.send(Instant::now()).ok()?;
            samples.push(reports.recv().ok()?.as_secs_f64() * 1e6);
        }
        Some(samples)
    });
    let samples = waker.join().ok()?;
    let _ = sleeper.join();
    let mut samples = samples?;
    samples.sort_by(f64::total_cmp);
    Some(samples[samples.len() / 2])
}

/// What one CPUID instruction costs here (µs, the median of 9 rounds of 100): on a virtual
/// machine it traps to the hypervisor, and every glibc program's start issues them (the
/// CPU features and cache sizes its loader probes). `None` off x86_64.
#[cfg(target_arch = "x86_64")]
fn cpuid_us() -> Option<f64> {
    let mut rounds: Vec<f64> = (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..100 {
                // Leaf 4 (cache parameters), one of those glibc's start asks for.
                std::hint::black_box(std::arch::x86_64::__cpuid_count(4, 0));
            }
            t.elapsed().as_secs_f64() * 1e6 / 100.0
        })
        .collect();
    rounds.sort_by(f64::total_cmp);
    Some(rounds[rounds.len() / 2])
}

#[cfg(not(target_arch = "x86_64"))]
fn cpuid_us() -> Option<f64> {
    None
}

/// What a section run alone (`faasd-bench scale|autoscale …`) is given.
struct Section {
    faasd: PathBuf,
    hello: PathBuf,
    /// `--lean` of the prepared section.
    lean: PathBuf,
    out: PathBuf,
    /// `--sizes` of the scale section.
    sizes: Vec<usize>,
    /// `--containerd` of the prepared section.
    containerd: Option<PathBuf>,
}

/// `faasd-bench SECTION [--sizes N,N,…] [--out DIR] [--faasd BIN] [--hello BIN]`: only one
/// section (`--sizes`: the scale section's); writes `SECTION.json` in the output directory.
fn section_main(name: &str) -> Result<()> {
    let mut a = Section {
        faasd: "target/release/faasd".into(),
        hello: "target/release/hello".into(),
        lean: LEAN.into(),
        out: "target/bench".into(),
        sizes: scale::SIZES.to_vec(),
        containerd: None,
    };
    let mut it = std::env::args().skip(2);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" if name == "scale" => {
                a.sizes = val()?
                    .split(',')
                    .map(|n| n.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--containerd" if name == "prepared" => a.containerd = Some(val()?.into()),
            "--lean" if name == "prepared" => a.lean = val()?.into(),
            "--faasd" => a.faasd = val()?.into(),
            "--hello" => a.hello = val()?.into(),
            "--out" => a.out = val()?.into(),
            f => bail!(
                "unknown flag {f}: faasd-bench {name} [--sizes 1000,5000,19000 (scale)] \
                 [--containerd SOCKET (prepared)] [--lean BIN (prepared)] [--out DIR] \
                 [--faasd BIN] [--hello BIN]"
            ),
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let out = std::fs::canonicalize(&a.out)?;
    let faasd = std::fs::canonicalize(&a.faasd).context("--faasd")?;
    let hello = std::fs::canonicalize(&a.hello).context("--hello")?;
    let machine = machine();
    println!("machine: {machine}");
    let mut b = Bench::new(&out)?;
    let section = match name {
        "scale" => scale::run(&mut b, &faasd, &hello, &a.sizes, &out)?,
        "cluster" => cluster::run(&faasd, &hello, &out)?,
        "prepared" => {
            let config = a
                .containerd
                .as_ref()
                .map(|c| format!("containerd = {c:?}\n"));
            let lean = prepared::Lean::find(&a.lean)?;
            let section = prepared::run(&mut b, &faasd, &hello, &lean, config.as_deref())?;
            let (process, container) = prepared::prepared_p50s(&section);
            let (thawed, thawed_container) = prepared::thaw_p50s(&section);
            println!(
                "\nprepared cold p50: process {:?} ms, container {:?} ms; frozen: process \
                 {:?} ms, container {:?} ms",
                process.map(ms),
                container.map(ms),
                thawed.map(ms),
                thawed_container.map(ms)
            );
            section
        }
        "xdp" => {
            let sender = xdp::sender_namespace(&mut b)?;
            let config = format!("xdp-interfaces = [\"{}\"]\n", xdp::INTERFACE);
            b.start_daemon(&faasd, &config)?;
            println!("XDP: the guard against the stack on one flood, 3 s a round");
            xdp::drop_rate(&mut b, &faasd, &config, &sender, 3)?
        }
        "dns" => {
            b.start_daemon(&faasd, "")?;
            b.deploy_hello(&hello)?;
            println!("DNS: dnsperf against the .faas zone");
            dns_qps(&mut b, &["hello"])?
        }
        "warm" => {
            b.start_daemon(&faasd, "")?;
            let fn_addr = b.deploy_hello(&hello)?;
            b.scale_and_wait("hello", 1)?;
            let r = warm::anatomy(&mut b, &hello, fn_addr, 2000);
            drop(b);
            warm::cleanup();
            r?
        }
        "lookup" => {
            b.start_daemon(&faasd, "")?;
            let fn_addr = b.deploy_hello(&hello)?;
            println!("sk_lookup program cost by bindings in the map");
            let mut fake = lookup::FakeBindings::new(&b)?;
            let costs = lookup::cost_by_bindings(&b, fn_addr, &mut fake)?;
            println!("SYN flood at 100,000 bindings: steered, and with no program");
            let syn_flood = synflood::run(&mut b, fn_addr);
            fake.clear()?;
            json!({
                "by_bindings": costs.iter().map(lookup::LookupCost::to_json).collect::<Vec<_>>(),
                "syn_flood": syn_flood?,
            })
        }
        _ => {
            b.start_daemon(&faasd, "")?;
            autoscale::run(&mut b, &hello, &out)?
        }
    };
    let results = json!({"machine": machine, name: section});
    let file = out.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string_pretty(&results)?)?;
    println!("\nresults: {}", file.display());
    Ok(())
}

fn main() -> Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(warm::WITH_FILTER) {
        return warm::exec_with_filter(&argv[2..]);
    }
    if let Some(
        name @ ("scale" | "autoscale" | "cluster" | "lookup" | "dns" | "xdp" | "prepared" | "warm"),
    ) = argv.get(1).map(String::as_str)
    {
        return section_main(name);
    }
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let faasd = std::fs::canonicalize(&args.faasd).context("--faasd")?;
    let hello = std::fs::canonicalize(&args.hello).context("--hello")?;
    let lean = prepared::Lean::find(&args.lean)?;
    let machine = machine();
    println!("machine: {machine}");

    let mut b = Bench::new(&out)?;
    let sender = xdp::sender_namespace(&mut b)?;
    let containerd_config = args
        .containerd
        .as_ref()
        .map(|c| format!("containerd = {c:?}\n"))
        .unwrap_or_default()
        + &format!("xdp-interfaces = [\"{}\"]\n", xdp::INTERFACE);
    b.start_daemon(&faasd, &containerd_config)?;
    let fn_addr = b.deploy_hello(&hello)?;

    // Cold activations: with calls out (the default, `all`: the instance joins a prepared
    // network namespace), and without (`faasd.dev/egress=none`: a new one with only lo).
    println!("cold activation: {} runs", args.cold);
    let process_cold = cold_runs(&b, "hello", fn_addr, args.cold, args.settle, Cold::Process)?;
    let cold = process_cold.total.clone();
    let total = process_cold.samples.clone();
    let closed = b.api(
        "POST",
        "/system/functions",
        &json!({"service": "hello-closed", "envProcess": hello.to_string_lossy(),
                "annotations": {"faasd.dev/egress": "none"}})
        .to_string(),
    )?;
    let closed_addr: SocketAddr =
        format!("[{}]:8080", closed["address"].as_str().context("address")?).parse()?;
    println!("cold activation without calls out: {} runs", args.cold);
    let closed_cold = cold_runs(
        &b,
        "hello-closed",
        closed_addr,
        args.cold,
        args.settle,
        Cold::Process,
    )?;
    b.api(
        "DELETE",
        "/system/functions",
        &json!({"functionName": "hello-closed"}).to_string(),
    )?;

    // Warm paths.
    // Every path gets its own server process, identical to the function's, so each server
    // handles one request per round like the function does: a server shared by several
    // paths would stay hotter in cache and flatter its paths.
    b.scale_and_wait("hello", 1)?;
    let mut server = |port: u16| -> Result<SocketAddr> {
        b.spawn(Command::new(&hello).env("PORT", port.to_string()))?;
        let a: SocketAddr = format!("[::1]:{port}").parse()?;
        wait_listening(a)?;
        Ok(a)
    };
    let direct = server(9001)?;
    // A server reached through an address of the function prefix that has no binding: the
    // same routing as the faasd path, without steering (the program misses).
    server(9011)?;
    let unbound_prefix_addr: SocketAddr = "[fd00:faa5:1::ffff]:9011".parse()?;
    let proxyd_upstream = server(9012)?;
    let socat_upstream = server(9013)?;
    let haproxy_upstream = server(9014)?;
    let mut paths: Vec<(&str, SocketAddr)> = vec![
        (DIRECT, direct),
        (FAASD, fn_addr),
        ("direct, via a function-prefix address", unbound_prefix_addr),
    ];
    let proxyd = Path::new("/lib/systemd/systemd-socket-proxyd");
    if proxyd.exists() {
        // proxyd does not parse bracketed IPv6 literals; `localhost` reaches its server over
        // 127.0.0.1 (the server listens dual-stack).
        b.spawn(
            Command::new("systemd-socket-activate")
                .args(["-l", "[::1]:9002"])
                .arg(proxyd)
                .arg(format!("localhost:{}", proxyd_upstream.port())),
        )?;
        paths.push(("systemd-socket-proxyd", "[::1]:9002".parse()?));
    }
    b.spawn(Command::new("socat").args([
        "TCP6-LISTEN:9003,bind=[::1],fork,reuseaddr".to_owned(),
        format!("TCP6:{socat_upstream}"),
    ]))?;
    paths.push(("socat", "[::1]:9003".parse()?));
    let haproxy_cfg = out.join("run/haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend f\n  bind [::1]:9004\n  default_backend b\nbackend b\n  server s1 {haproxy_upstream}\n"
        ),
    )?;
    b.spawn(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg),
    )?;
    paths.push(("haproxy", "[::1]:9004".parse()?));
    for (_, a) in &paths {
        wait_listening(*a)?;
    }
    println!("warm: {} rounds over {} paths", args.warm, paths.len());
    // The program's own cost, as cloudflare/tubular measures it: BPF_STATS_RUN_TIME.
    let program_id = b.api("GET", "/system/status", "")?["dataplane"]["programId"].as_u64();
    let stats = BpfStats::enable()?;
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); paths.len()];
    for round in 0..args.warm + 200 {
        // Start each round at a different path so no path always follows the same one.
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let (name, a) = &paths[i];
            let (t0, _, _) = request(*a).with_context(|| format!("{name}, round {round}"))?;
            let t1 = monotonic_ns();
            if round >= 200 {
                samples[i].push(t1 - t0);
            }
        }
    }
    let program_cost = program_id.and_then(program_run_time);
    drop(stats);
    let [steered, unsteered, direct_blocks] = steering_ab(&b, fn_addr, direct, args.warm)?;
    let warm: Vec<Summary> = paths
        .iter()
        .zip(&samples)
        .map(|((n, _), s)| Summary::of(n, s))
        .collect();
    let by_name = |n: &str| {
        warm.iter()
            .find(|s| s.name == n)
            .expect("every path is measured")
    };
    let limit = by_name(DIRECT).p50;
    let steered_counters = b.describe("hello")?["counters"].clone();
    let containers = match &args.containerd {
        Some(_) => Some(containers(&mut b, &faasd, &containerd_config, &args)?),
        None => None,
    };
    let with_containerd = args
        .containerd
        .is_some()
        .then_some(containerd_config.as_str());
    let mut prepared = prepared::starts(&mut b, &faasd, &hello, &lean, with_containerd)?;
    // The sections below need `hello` again, in a daemon of the first kind.
    b.start_daemon(&faasd, &containerd_config)?;
    let fn_addr = b.deploy_hello(&hello)?;
    println!("DNS: dnsperf against the .faas zone");
    let dns = dns_qps(&mut b, &["hello"])?;
    println!("sk_lookup program cost by bindings in the map");
    let mut fake = lookup::FakeBindings::new(&b)?;
    let by_bindings = lookup::cost_by_bindings(&b, fn_addr, &mut fake)?;
    println!("SYN flood at 100,000 bindings: steered, and with no program");
    let syn_flood = synflood::run(&mut b, fn_addr);
    fake.clear()?;
    let syn_flood = syn_flood?;
    println!("XDP: the guard against the stack on one flood, 3 s a round");
    let xdp = xdp::drop_rate(&mut b, &faasd, &containerd_config, &sender, 3)?;
    let autoscale = autoscale::run(&mut b, &hello, &out)?;
    let cluster = cluster::run(&faasd, &hello, &out)?;
    println!("scale: cost per function at {:?} functions", scale::SIZES);
    let scale = scale::run(&mut b, &faasd, &hello, &scale::SIZES, &out)?;
    // Last: a thousand prepared functions leave the kernel minutes of namespace teardown.
    prepared["idle_cost"] = prepared::idle_costs(&mut b, &faasd, &hello, with_containerd)?;
    drop(b);

    // Report.
    let phases = process_cold.phases.clone();
    stats::print_table("cold activation (ms)", Unit::Ms, &process_cold.rows(), None);
    stats::print_table(
        "cold activation without calls out, faasd.dev/egress=none (ms)",
        Unit::Ms,
        &closed_cold.rows(),
        None,
    );
    stats::print_table("warm connect+request (µs)", Unit::Us, &warm, Some(limit));
    let faasd_p50 = by_name(FAASD).p50 as f64;
    let proxies: Vec<Value> = PROXIES
        .iter()
        .filter(|n| warm.iter().any(|s| s.name == **n))
        .map(|n| json!({"path": n, "faasd_p50_over_proxy_p50": faasd_p50 / by_name(n).p50 as f64}))
        .collect();
    let program = program_cost.map(|(runs, ns)| json!({"runs": runs, "ns_per_run": ns}));
    let ab = [
        Summary::of("direct server", &direct_blocks),
        Summary::of("function socket, steered", &steered),
        Summary::of("function socket, binding removed", &unsteered),
    ];
    stats::print_table(
        "in blocks of 100 requests (µs)",
        Unit::Us,
        &ab,
        Some(ab[0].p50),
    );
    match program_cost {
        Some((runs, ns)) => println!(
            "\nsk_lookup program: {ns:.0} ns per run over {runs} runs (BPF_STATS_RUN_TIME)"
        ),
        None => println!("\nsk_lookup program: run time unavailable (bpftool missing?)"),
    }
    // One entry per goal of the speed issue, so that every run compares with its table; a
    // goal this bench cannot measure yet says why instead of a number.
    let container_cold = containers
        .as_ref()
        .and_then(|c| c["cold_runc"]["total"]["p50_ns"].as_u64())
        .map(ms);
    let (prepared_cold, prepared_container_cold) = prepared::prepared_p50s(&prepared);
    let (thawed, thawed_container) = prepared::thaw_p50s(&prepared);
    let lean = prepared::lean_p50s(&prepared);
    let sk_lookup = by_bindings
        .iter()
        .find(|c| c.bindings == 100_000)
        .map(|c| c.test_run - c.empty);
    let goals = json!({
        "container_cold_p50_ms": {
            "goal": 10.0,
            "measured": prepared_container_cold.map(ms),
            "how": "prepared (faasd.dev/prepare)",
            "unprepared": container_cold,
            "frozen": thawed_container.map(ms),
        },
        "cold_p50_ms": {
            "goal": 1.0,
            "measured": prepared_cold.map(ms),
            "how": "prepared (faasd.dev/prepare)",
            "unprepared": ms(cold.p50),
            "frozen": thawed.map(ms),
            "exec_floor": prepared["exec_floor"]["p50_ns"].as_u64().map(ms),
            "lean_program": {
                "prepared": lean.cold.map(ms),
                "exec_floor": lean.floor.map(ms),
                "exec_floor_glibc": lean.glibc_floor.map(ms),
            },
        },
        "warm_over_limit": {"goal": 1.02, "measured": faasd_p50 / limit as f64},
        "warm_over_proxies": {"goal": 0.5, "measured": proxies},
        "dns_over_best_peer": {
            "goal": 1.0,
            "measured": over_best_peer(&dns, &dns),
            "how": "no instance calling out (nothing tracks connections)",
            "while_calling_out": over_best_peer(&dns, &dns["while_calling_out"]),
        },
        "sk_lookup_ns": {
            "goal": 100.0,
            "measured": sk_lookup,
            "syn_flood_steered_over_no_program": {
                "goal": "0.98 to 1.02",
                "measured": syn_flood["steered_over_no_program"],
                "ci95": syn_flood["steered_over_no_program_ci95"],
            },
        },
        "xdp_drop_mpps": {
            "goal": "the guard's own ceiling, at least 3x the stack's",
            "measured": xdp["program"]["ceiling_mpps"],
            "over_stack": xdp["program_over_stack"],
            "whole_receive_side_over_stack": xdp["guard_xdp"]["receive_side_over_stack"],
            "whole_receive_side_over_stack_tc": xdp["guard_tc"]["receive_side_over_stack"],
        },
    });
    println!("\ngoals: {}", serde_json::to_string_pretty(&goals)?);
    let results = json!({
        "machine": machine,
        "runs": {"cold": args.cold, "warm_rounds": args.warm},
        "cold": cold.to_json(),
        "cold_phases": phases.iter().map(Summary::to_json).collect::<Vec<_>>(),
        "cold_egress_none": closed_cold.total.to_json(),
        "cold_egress_none_phases": closed_cold.phases.iter().map(Summary::to_json).collect::<Vec<_>>(),
        "warm": warm.iter().map(|s| { let mut j = s.to_json(); j["ratio_to_limit"] = json!(s.p50 as f64 / limit as f64); j }).collect::<Vec<_>>(),
        "steered_counters": steered_counters,
        "sk_lookup_program": program,
        "blocks_of_100": ab.iter().map(Summary::to_json).collect::<Vec<_>>(),
        "goals": goals,
        "containers": containers,
        "prepared": prepared,
        "dns": dns,
        "xdp_unbound_flood": xdp,
        "autoscale": autoscale,
        "cluster": cluster,
        "scale": scale,
        "sk_lookup_ns_per_run_by_bindings": by_bindings
            .iter()
            .map(lookup::LookupCost::to_json)
            .collect::<Vec<_>>(),
        "syn_flood": syn_flood,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let mut series: Vec<(&str, &[u64])> = paths
        .iter()
        .map(|(n, _)| *n)
        .zip(samples.iter().map(Vec::as_slice))
        .collect();
    series.push(("cold activation", &total));
    std::fs::write(
        out.join("latency.svg"),
        plot::cdf_svg("Latency: connect → response (CDF, log scale)", &series),
    )?;
    println!(
        "\nwrote {} and {}",
        out.join("results.json").display(),
        out.join("latency.svg").display()
    );
    Ok(())
}

/// The same faasd-owned socket, reached with the binding in the map (steered) and with the
/// binding deleted, so the kernel's normal lookup finds the socket by its bound address; and
/// the direct server, measured the same way. Blocks of 100 consecutive requests rotate, so
/// drift affects every arm alike and each server is as warm as the others.
fn steering_ab(
    b: &Bench,
    fn_addr: SocketAddr,
    direct: SocketAddr,
    rounds: usize,
) -> Result<[Vec<u64>; 3]> {
    let SocketAddr::V6(v6) = fn_addr else {
        bail!("function addresses are IPv6")
    };
    // BindingKey: 16 address bytes, the port in host order, the protocol, a zero pad byte.
    let mut key: Vec<u8> = v6.ip().octets().to_vec();
    key.extend_from_slice(&v6.port().to_ne_bytes());
    key.extend_from_slice(&[6, 0]);
    let key: Vec<String> = key.iter().map(|k| format!("{k:02x}")).collect();
    let map = b.pin_dir()?.join("BINDINGS");
    let slot = b.describe("hello")?["counters"][0]["slot"]
        .as_u64()
        .context("slot")? as u32;
    let bpftool = |args: &[&str]| -> Result<()> {
        let out = Command::new("bpftool")
            .args(["map"])
            .args(args)
            .output()
            .context("bpftool")?;
        if !out.status.success() {
            bail!(
                "bpftool map {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    let map = map.to_string_lossy();
    let mut delete = vec!["delete", "pinned", &map, "key", "hex"];
    delete.extend(key.iter().map(String::as_str));
    let value: Vec<String> = slot
        .to_ne_bytes()
        .iter()
        .map(|v| format!("{v:02x}"))
        .collect();
    let mut update = vec!["update", "pinned", &map, "key", "hex"];
    update.extend(key.iter().map(String::as_str));
    update.extend(["value", "hex"]);
    update.extend(value.iter().map(String::as_str));
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for block in 0..rounds.div_ceil(100) * 3 {
        // 0: steered, 1: binding removed, 2: the direct server, in blocks of 100.
        let arm = block % 3;
        if arm == 1 {
            bpftool(&delete)?;
        }
        let target = if arm == 2 { direct } else { fn_addr };
        for _ in 0..100 {
            let (t0, _, _) = request(target)?;
            samples[arm].push(monotonic_ns() - t0);
        }
        if arm == 1 {
            bpftool(&update)?;
        }
    }
    Ok(samples)
}

const DIRECT: &str = "direct (own bound address)";
const FAASD: &str = "faasd (sk_lookup)";
const PROXIES: &[&str] = &["systemd-socket-proxyd", "socat", "haproxy"];

/// (run count, average ns per run) of a BPF program, from bpftool.
fn program_run_time(id: u64) -> Option<(u64, f64)> {
    let (cnt, ns) = program_totals(id)?;
    (cnt > 0).then(|| (cnt, ns as f64 / cnt as f64))
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Cold activations of one function: totals and their phases.
struct ColdRuns {
    total: Summary,
    samples: Vec<u64>,
    phases: Vec<Summary>,
}

impl ColdRuns {
    fn rows(&self) -> Vec<Summary> {
        std::iter::once(&self.total)
            .chain(&self.phases)
            .cloned()
            .collect()
    }

    fn to_json(&self) -> Value {
        json!({
            "total": self.total.to_json(),
            "phases": self.phases.iter().map(Summary::to_json).collect::<Vec<_>>(),
        })
    }
}

/// What a cold start begins from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cold {
    /// A process function with nothing of it running.
    Process,
    /// A container function with nothing of it in containerd.
    Container,
    /// Either, with its instance prepared (`faasd.dev/prepare`): the start is the
    /// hand-over and the exec.
    Prepared,
}

/// `runs` times: scale `name` to zero, wait `settle` (and, prepared, for the next
/// instance to be prepared), connect and time the first byte, then split the time with
/// the daemon's timestamps and the function's X-Accepted-Ns. A container's split has the
/// task's creation and start in place of "running".
fn cold_runs(
    b: &Bench,
    name: &str,
    addr: SocketAddr,
    runs: usize,
    settle: Duration,
    kind: Cold,
) -> Result<ColdRuns> {
    let container = kind == Cold::Container;
    let mut total = Vec::new();
    let mut cuts: Vec<Vec<u64>> = Vec::new();
    for i in 0..runs {
        b.scale_and_wait(name, 0)?;
        if kind == Cold::Prepared {
            b.wait_prepared(name)?;
        }
        // The kernel tears the stopped instance's namespaces down asynchronously; a function
        // woken after being idle finds that long done.
        std::thread::sleep(settle);
        let (t0, t_first, accepted) = request(addr)?;
        let t = b.activation_since(name, t0)?;
        let at = |k: &str| t[k].as_u64().unwrap_or(0);
        let accepted = accepted.context("the function did not report X-Accepted-Ns")?;
        // faasd sees a process's exec succeed when the CLOEXEC pipe closes; the function may
        // accept before faasd's thread runs to notice. That phase then ends at the accept.
        let mut points = vec![t0, at("requestedNs")];
        if container {
            points.extend([at("taskCreatedNs"), at("taskStartedNs").min(accepted)]);
        } else {
            points.push(at("runningNs").min(accepted));
        }
        points.extend([accepted, t_first]);
        if points.windows(2).any(|w| w[0] > w[1]) {
            bail!("{name} run {i}: timestamps out of order: {points:?}");
        }
        total.push(t_first - t0);
        cuts.resize(points.len() - 1, Vec::new());
        for (c, w) in cuts.iter_mut().zip(points.windows(2)) {
            c.push(w[1] - w[0]);
        }
    }
    let names: &[&str] = if container {
        &[
            "queued → start requested",
            "start requested → task created",
            "task created → task started",
            "task started → accepted",
            "accepted → first byte",
        ]
    } else {
        &[
            "queued → start requested",
            "start requested → running",
            "running → accepted",
            "accepted → first byte",
        ]
    };
    Ok(ColdRuns {
        total: Summary::of("cold activation", &total),
        samples: total,
        phases: names
            .iter()
            .zip(&cuts)
            .map(|(n, v)| Summary::of(n, v))
            .collect(),
    })
}

/// The container benchmarks: cold activation with runc (and crun, by restarting the daemon
/// with it, where it works), and the warm path of a forwarded image against one that takes
/// its sockets.
fn containers(b: &mut Bench, faasd: &Path, config: &str, args: &Args) -> Result<Value> {
    let deploy = |name: &str, image: &str, min: u32| -> Result<SocketAddr> {
        let d = b.api(
            "POST",
            "/system/functions",
            &json!({"service": name, "image": image,
                    "labels": {"com.openfaas.scale.min": min.to_string()}})
            .to_string(),
        )?;
        Ok(format!("[{}]:8080", d["address"].as_str().context("address")?).parse()?)
    };
    let sockets = deploy("hello-oci", "localhost/hello:latest", 0)?;
    let forwarded = deploy("hello-port", "localhost/hello-port:latest", 0)?;
    println!(
        "container cold activation (runc): {} runs",
        args.container_cold
    );
    let runc = cold_runs(
        b,
        "hello-oci",
        sockets,
        args.container_cold,
        args.settle,
        Cold::Container,
    )?;
    stats::print_table(
        "container cold activation, runc (ms)",
        Unit::Ms,
        &runc.rows(),
        None,
    );

    // Warm: the same program in two images, one handed its sockets, one forwarded to.
    b.scale_and_wait("hello-oci", 1)?;
    b.scale_and_wait("hello-port", 1)?;
    let paths = [
        ("container, sockets passed", sockets),
        ("container, forwarded to its port", forwarded),
    ];
    let mut samples = vec![Vec::new(); paths.len()];
    for round in 0..args.warm + 200 {
        for k in 0..paths.len() {
            let i = (round + k) % paths.len();
            let (t0, _, _) = request(paths[i].1)?;
            if round >= 200 {
                samples[i].push(monotonic_ns() - t0);
            }
        }
    }
    let warm: Vec<Summary> = paths
        .iter()
        .zip(&samples)
        .map(|((n, _), s)| Summary::of(n, s))
        .collect();
    let ratio = warm[1].p50 as f64 / warm[0].p50 as f64;
    stats::print_table(
        "container warm connect+request (µs)",
        Unit::Us,
        &warm,
        Some(warm[0].p50),
    );
    println!("forwarding costs {ratio:.2}× socket passing (p50)");

    // crun: refuses some cgroup layouts (a hybrid v1/v2 host); reported, not fatal.
    println!("container cold activation (crun): trying");
    b.start_daemon(faasd, &format!("{config}oci-runtime = \"crun\"\n"))?;
    let crun = match cold_runs(
        b,
        "hello-oci",
        sockets,
        args.container_cold,
        args.settle,
        Cold::Container,
    ) {
        Ok(r) => {
            stats::print_table(
                "container cold activation, crun (ms)",
                Unit::Ms,
                &r.rows(),
                None,
            );
            r.to_json()
        }
        Err(e) => {
            let why = b
                .describe("hello-oci")
                .ok()
                .and_then(|d| d["state"]["lastError"].as_str().map(str::to_owned))
                .unwrap_or_else(|| e.to_string());
            println!("crun: not measured here: {why}");
            json!({"error": why})
        }
    };
    Ok(json!({
        "cold_runc": runc.to_json(),
        "cold_crun": crun,
        "cold_runs": args.container_cold,
        "warm": warm.iter().map(Summary::to_json).collect::<Vec<_>>(),
        "forwarded_over_sockets_p50": ratio,
    }))
}

/// Rounds of dnsperf per server in the DNS section, taking turns.
const DNS_ROUNDS: usize = 3;
/// Seconds of one round.
const DNS_ROUND_S: u32 = 5;

/// Queries per second faasd's zone answers, against Knot DNS and NSD (Debian's) with the
/// same zone (the file faasd writes), each alone in a namespace of its own with as many
/// threads or processes as cores, measured the same way ([`dnsperf`]) in [`DNS_ROUNDS`]
/// rounds that take turns (one server's round, then the next's), so that what the VM
/// does meanwhile falls on all of them; each is given its median round.
///
/// faasd is measured on a host where no instance calls out, so that nothing tracks
/// connections in its namespace, as nothing does in the peers'; then again while the
/// first of `functions` runs and may call out, so that faasd's NAT has tracking on for
/// every packet of the host (loopback untracked by the bench's table, as faasd's own
/// DNS address is by faasd's).
fn dns_qps(b: &mut Bench, functions: &[&str]) -> Result<Value> {
    let queries = dns_queries(b, functions)?;
    let zone = b.dir.join("faas.zone");
    wait_for_zone(&zone, functions)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut peers = Vec::new();
    for peer in ["knot", "nsd"] {
        match dns_peer(b, peer, &zone, cores) {
            Ok(ns) => peers.push((peer, Ok(ns), Vec::new())),
            Err(e) => {
                println!("  {peer}: not measured: {e:#}");
                peers.push((peer, Err(format!("{e:#}")), Vec::new()));
            }
        }
    }
    b.wait_for_nat(false)?;
    let mut own = Vec::new();
    for round in 1..=DNS_ROUNDS {
        println!("  round {round} of {DNS_ROUNDS}: faasd, no instance calling out:");
        b.untrack_loopback(false)?;
        let faasd = dnsperf(None, &queries, DNS_ROUND_S);
        b.untrack_loopback(true)?;
        own.push(faasd?);
        for (peer, ns, rounds) in &mut peers {
            if let Ok(ns) = ns {
                println!("  round {round} of {DNS_ROUNDS}: {peer} (same zone, same queries):");
                rounds.push(dnsperf(Some(ns), &queries, DNS_ROUND_S)?);
            }
        }
    }
    b.scale_and_wait(functions[0], 1)?;
    b.wait_for_nat(true)?;
    let mut calling_out = Vec::new();
    for round in 1..=DNS_ROUNDS {
        println!(
            "  round {round} of {DNS_ROUNDS}: faasd, while {} may call out:",
            functions[0]
        );
        calling_out.push(dnsperf(None, &queries, DNS_ROUND_S)?);
    }
    let mut out = median_round(own);
    out["while_calling_out"] = median_round(calling_out);
    out["peers"] = peers
        .into_iter()
        .map(|(peer, ns, rounds)| {
            let result = match ns {
                Ok(_) => median_round(rounds),
                Err(e) => json!({ "error": e }),
            };
            (peer.to_owned(), result)
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    println!(
        "  medians: faasd {}, while calling out {}, {}",
        out["queries_per_second"],
        out["while_calling_out"]["queries_per_second"],
        out["peers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(p, r)| format!("{p} {}", r["queries_per_second"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(out)
}

/// Waits (up to 10 s) until faasd's zone file names every one of `functions`: the peers
/// load it once, when they start.
fn wait_for_zone(zone: &Path, functions: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(zone).unwrap_or_default();
        if functions
            .iter()
            .all(|f| text.lines().any(|l| l.starts_with(&format!("{f} "))))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "faasd's zone file {} does not name {functions:?} after 10 s",
                zone.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The round of median queries a second among `rounds` (dnsperf's figures), with every
/// round's rate under `rounds_qps`.
fn median_round(mut rounds: Vec<Value>) -> Value {
    let qps = |r: &Value| r["queries_per_second"].as_f64().unwrap_or(0.0);
    let all: Vec<f64> = rounds.iter().map(qps).collect();
    rounds.sort_by(|a, b| qps(a).total_cmp(&qps(b)));
    let mut median = rounds.get(rounds.len() / 2).cloned().unwrap_or(Value::Null);
    if median.is_object() {
        median["rounds_qps"] = json!(all);
    }
    median
}

/// The query mix, written for dnsperf: AAAA of each of `functions` in both name forms, an
/// NXDOMAIN, the SOA.
fn dns_queries(b: &Bench, functions: &[&str]) -> Result<PathBuf> {
    let queries = b.dir.join("queries.txt");
    let mut text: String = functions
        .iter()
        .map(|f| format!("{f}.faas AAAA\n{f}.openfaas-fn.faas AAAA\n"))
        .collect();
    text.push_str("nope.faas AAAA\nfaas SOA\n");
    std::fs::write(&queries, text)?;
    Ok(queries)
}

/// faasd's queries a second (`faasd`: the DNS section or a measurement in it) over the
/// best peer's, when faasd and a peer were measured.
fn over_best_peer(dns: &Value, faasd: &Value) -> Option<f64> {
    let best = dns["peers"]
        .as_object()?
        .values()
        .filter_map(|p| p["queries_per_second"].as_f64())
        .fold(None, |m: Option<f64>, q| Some(m.map_or(q, |m| m.max(q))))?;
    Some(faasd["queries_per_second"].as_f64()? / best)
}

/// Starts Knot DNS (`knot`) or NSD (`nsd`) on `[::1]:53` in a new namespace, serving the
/// zone file `zone` (response rate limiting off); returns the namespace.
fn dns_peer(b: &mut Bench, peer: &str, zone: &Path, cores: usize) -> Result<String> {
    let ns = b.add_netns(peer)?;
    let dir = b.dir.join(peer);
    std::fs::create_dir_all(&dir)?;
    let config = dir.join(format!("{peer}.conf"));
    let (program, args): (&str, Vec<String>) = match peer {
        "knot" => {
            std::fs::write(
                &config,
                format!(
                    "server:\n  listen: ::1@53\n  udp-workers: {cores}\n  tcp-workers: 1\n  \
                     background-workers: 1\n  rundir: {d}\n  user: root:root\n\
                     database:\n  storage: {d}/db\n\
                     log:\n  - target: stderr\n    any: warning\n\
                     zone:\n  - domain: faas\n    file: {z}\n    storage: {d}\n    \
                     journal-content: none\n    zonefile-sync: -1\n",
                    d = dir.display(),
                    z = zone.display()
                ),
            )?;
            ("knotd", vec!["-c".into(), config.display().to_string()])
        }
        _ => {
            std::fs::write(
                &config,
                format!(
                    "server:\n  ip-address: ::1\n  port: 53\n  username: \"\"\n  \
                     server-count: {cores}\n  rrl-ratelimit: 0\n  verbosity: 0\n  \
                     pidfile: {d}/nsd.pid\n  zonelistfile: {d}/zone.list\n  \
                     xfrdfile: {d}/xfrd.state\n  database: \"\"\n\
                     remote-control:\n  control-enable: no\n\
                     zone:\n  name: faas\n  zonefile: {z}\n",
                    d = dir.display(),
                    z = zone.display()
                ),
            )?;
            (
                "nsd",
                vec!["-d".into(), "-c".into(), config.display().to_string()],
            )
        }
    };
    b.spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(&args),
    )?;
    // Answering once the SOA comes back.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dig = Command::new("ip")
            .args([
                "netns", "exec", &ns, "dig", "@::1", "+short", "+time=1", "+tries=1",
            ])
            .args(["SOA", "faas"])
            .output()?;
        if dig.status.success() && !dig.stdout.is_empty() {
            return Ok(ns);
        }
        if Instant::now() > deadline {
            bail!(
                "{program} did not answer within 10 s (its config: {})",
                config.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// dnsperf for `seconds` against `[::1]:53` (in namespace `ns`, or the bench's): 4
/// clients, 2 threads, 256 queries outstanding, the names in `queries` over and over.
fn dnsperf(ns: Option<&str>, queries: &Path, seconds: u32) -> Result<Value> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dnsperf"]);
            c
        }
        None => Command::new("dnsperf"),
    };
    let out = match cmd
        .args([
            "-s", "::1", "-p", "53", "-c", "4", "-T", "2", "-q", "256", "-d",
        ])
        .arg(queries)
        .arg("-l")
        .arg(seconds.to_string())
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            println!("dnsperf not available ({e}); skipped");
            return Ok(json!({"error": e.to_string()}));
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    let qps = field("Queries per second:").context("dnsperf printed no rate")?;
    let lost = field("Queries lost:").unwrap_or(0.0);
    let latency = field("Average Latency (s):").unwrap_or(0.0);
    println!(
        "  {qps:.0} queries/s, {lost:.0} lost, average latency {:.0} µs",
        latency * 1e6
    );
    Ok(json!({"queries_per_second": qps, "lost": lost, "average_latency_us": latency * 1e6}))
}

/// `kernel.bpf_stats_enabled` turned on while this lives, and put back as it was when it
/// goes, however the bench ends.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<Self> {
        let before = std::fs::read_to_string(BPF_STATS).unwrap_or_else(|_| "0".into());
        std::fs::write(BPF_STATS, "1").context("enabling BPF run-time stats")?;
        Ok(Self(before.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

/// (run count, total run time in ns) of a BPF program, from bpftool.
fn program_totals(id: u64) -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "--json"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    // bpftool leaves both fields out for a program that has not run since statistics
    // were turned on: that is zero runs, not an error.
    let field = |k: &str| v[k].as_u64().unwrap_or(0);
    Some((field("run_cnt"), field("run_time_ns")))
}
