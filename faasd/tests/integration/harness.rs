//! Test namespaces, daemons and clients.

use std::{
    io::{Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpStream},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use faasd::status::{FunctionStatus, InstanceInfo};

/// Returns a reason to skip when the machine cannot run privileged tests.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (cargo xtask test runs it as root)".into());
    }
    if !Path::new("/sys/fs/bpf/faasd").exists()
        && std::fs::create_dir_all("/sys/fs/bpf/faasd").is_err()
    {
        return Some("bpffs is not mounted at /sys/fs/bpf (cargo xtask setup mounts it)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("iproute2 (ip) is missing".into());
    }
    None
}

/// Reports why a test cannot run here. Under `FAASD_TEST_STRICT=1` (set by `cargo xtask
/// test`) that is a failure: a skip must never pass for a run.
pub fn skip(why: impl std::fmt::Display) {
    if std::env::var_os("FAASD_TEST_STRICT").is_some_and(|v| v == "1") {
        panic!("cannot run here (FAASD_TEST_STRICT=1): {why}");
    }
    eprintln!("skipped: {why}");
}

/// Skips the calling test (returns from it) with a message when privileges are missing.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if let Some(why) = $crate::harness::skip_reason() {
            $crate::harness::skip(why);
            return;
        }
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made for one test, with `lo` up and the function prefix routed
/// locally; its BPF pins and cgroups go with it.
pub struct Netns {
    pub name: String,
    pub dir: PathBuf,
    pub cgroup_parent: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "faasd-t{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let name: String = name.chars().take(40).collect();
        run(Command::new("ip").args(["netns", "add", &name]));
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        // Not under /tmp: process instances get a private one, and the daemon's runtime
        // directory (the notify socket) must stay in their reach.
        let dir = Path::new(TEST_ROOT).join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup_parent = format!("faasd-test/{name}");
        Self {
            name,
            dir,
            cgroup_parent,
        }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                let ns = std::fs::File::open(&path).unwrap();
                // SAFETY: setns on this thread only, with a namespace fd we own.
                let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Spawns `cmd` inside the namespace. Unlike `ip netns exec`, which mounts a sysfs of
    /// the namespace over /sys (and so hides /sys/fs/bpf), only the network namespace
    /// changes.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        let ns = std::fs::File::open(self.path()).unwrap();
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        drop(ns);
        child
    }

    /// The BPF pin directory the daemon uses in this namespace.
    pub fn pin_dir(&self) -> PathBuf {
        self.run(|| faasd_dataplane::pin_dir(Path::new("/sys/fs/bpf")).unwrap())
    }

    /// Puts `addr` on the namespace's loopback (a client's or the host's address).
    pub fn add_loopback_address(&self, addr: Ipv6Addr) {
        run(Command::new("ip").args([
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/128"),
            "dev",
            "lo",
        ]));
    }

    /// Adds the function prefix's local route (the daemon does this itself).
    pub fn add_local_route(&self, prefix: &str) {
        run(Command::new("ip").args([
            "-n", &self.name, "-6", "route", "replace", "local", prefix, "dev", "lo", "table",
            "local",
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A test may have deleted the namespace itself (and the daemon its pins).
        if self.path().exists() {
            let _ = faasd_dataplane::remove_pins(&self.pin_dir());
        }
        if let Some(root) = faasd::runtime::cgroup::root() {
            kill_cgroup_tree(&root.join(&self.cgroup_parent));
            // The shared parent goes with the last test that used it.
            let _ = std::fs::remove_dir(root.join("faasd-test"));
        }
        // Containers' cgroups in the v1 controllers of a hybrid host (runc removes the
        // instance's own; the parents are the test's).
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            // And process functions' limits: their cgroups below it, children first (the
            // processes are gone with the unified tree's).
            let dir = h.path().join(&self.cgroup_parent);
            if dir.is_dir() {
                remove_tree(&dir, Instant::now() + Duration::from_secs(5));
                let _ = std::fs::remove_dir(h.path().join("faasd-test"));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The shared parent goes with the last test that used it.
        let _ = std::fs::remove_dir(TEST_ROOT);
    }
}

/// Where the namespaces' files live (a tmpfs on these hosts, root's only).
const TEST_ROOT: &str = "/run/faasd-test";

fn kill_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    remove_tree(dir, Instant::now() + Duration::from_secs(5));
}

/// Removes a cgroup and those below it, children first: a cgroup is removable once its
/// processes are gone and it has no child cgroups.
fn remove_tree(dir: &Path, deadline: Instant) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path(), deadline);
            }
        }
    }
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn faasd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_faasd")
}

/// The sample function, built next to the test binaries (`cargo xtask test` builds it).
pub fn hello_bin() -> String {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let hello = profile_dir.join("hello");
    assert!(
        hello.exists(),
        "{} is missing: build it with `cargo build -p hello`",
        hello.display()
    );
    hello.to_string_lossy().into_owned()
}

/// The sample function linked statically, as the images carry it (`cargo xtask test`
/// builds it with them).
pub fn static_hello_bin() -> String {
    let exe = std::env::current_exe().unwrap();
    let target_dir = exe.ancestors().nth(3).unwrap();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let hello = target_dir.join(triple).join("release/hello");
    assert!(
        hello.exists(),
        "{} is missing: build it with `cargo xtask image`",
        hello.display()
    );
    hello.to_string_lossy().into_owned()
}

/// The faasd CLI with none of the caller's settings: an OPENFAAS_URL in the environment of
/// whoever runs the tests must not send them to a real faasd.
fn cli_command() -> Command {
    let mut cmd = Command::new(faasd_bin());
    for var in [
        "OPENFAAS_URL",
        "OPENFAAS_CONFIG",
        "FAASD_USER",
        "FAASD_PASSWORD",
        "FAASD_SOCKET",
    ] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A faasd daemon running in a test namespace.
pub struct Daemon<'a> {
    pub ns: &'a Netns,
    child: Option<Child>,
    pub socket: PathBuf,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl<'a> Daemon<'a> {
    pub fn start(ns: &'a Netns) -> Self {
        Self::start_with(ns, "")
    }

    /// Starts the daemon with extra TOML config lines. WireGuard is off unless they turn it
    /// on: its control sockets live in one directory for every namespace, so parallel
    /// tests would share the name `wg-faas`.
    pub fn start_with(ns: &'a Netns, extra_config: &str) -> Self {
        Self::start_with_env(ns, extra_config, &[])
    }

    /// As [`Daemon::start_with`], with extra environment variables for the daemon.
    pub fn start_with_env(ns: &'a Netns, extra_config: &str, env: &[(&str, &str)]) -> Self {
        let config = ns.dir.join("config.toml");
        let wireguard = if extra_config.contains("wireguard") {
            ""
        } else {
            "wireguard = false\n"
        };
        std::fs::write(
            &config,
            format!(
                "state-dir = {:?}\nruntime-dir = {:?}\ndata-dir = {:?}\ncgroup-parent = {:?}\nstop-timeout = \"2s\"\n{wireguard}{extra_config}",
                ns.dir.join("state"),
                ns.dir.join("run"),
                ns.dir.join("data"),
                ns.cgroup_parent,
            ),
        )
        .unwrap();
        let mut d = Self {
            ns,
            child: None,
            socket: ns.dir.join("run/faasd.sock"),
            config,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.ns.dir.join("daemon.log"))
            .unwrap();
        let mut cmd = Command::new(faasd_bin());
        cmd.args(["daemon", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(self.ns.spawn(&mut cmd));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("faasd exited ({status}) during start:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "faasd did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.ns.dir.join("daemon.log")).unwrap_or_default()
    }

    /// Stops the daemon gracefully (SIGTERM) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("faasd ignored SIGTERM:\n{}", self.log());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Kills the daemon with SIGKILL (and reaps it, also when it is already dead).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            c.wait().unwrap();
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon running").id() as i32
    }

    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Runs the faasd CLI against this daemon; returns stdout, or stderr on failure.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = cli_command()
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs the faasd CLI inside the test namespace (to reach a TCP API there) with extra
    /// environment variables; returns whether it succeeded, stdout and stderr.
    pub fn remote_cli(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let mut cmd = cli_command();
        cmd.args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = self.ns.spawn(&mut cmd).wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        self.cli(args)
            .unwrap_or_else(|e| panic!("faasd {args:?}: {e}\ndaemon log:\n{}", self.log()))
    }

    pub fn describe(&self, name: &str) -> FunctionStatus {
        serde_json::from_str(&self.cli_ok(&["describe", name, "--json"])).unwrap()
    }

    /// Deploys the sample function with extra `deploy` arguments; returns its address.
    pub fn deploy_hello(&self, name: &str, extra: &[&str]) -> Ipv6Addr {
        let hello = hello_bin();
        let mut args = vec!["deploy", name, "--command", &hello];
        args.extend_from_slice(extra);
        self.cli_ok(&args);
        self.describe(name).address
    }

    /// Deploys the sample function kept running (`scale.min=1`) and waits for its first
    /// instance to be ready; returns its address and that instance.
    pub fn deploy_running(&self, name: &str, extra: &[&str]) -> (Ipv6Addr, InstanceInfo) {
        let mut args = vec!["-l", "com.openfaas.scale.min=1"];
        args.extend_from_slice(extra);
        let addr = self.deploy_hello(name, &args);
        let s = self.wait_for(name, "its first instance", |s| s.available_replicas == 1);
        (addr, s.state.instances[0].clone())
    }

    /// Updates a function deployed with [`Daemon::deploy_running`] to a new version of the
    /// sample function (kept running), with extra `deploy` arguments.
    pub fn update_running(&self, name: &str, extra: &[&str]) {
        let hello = hello_bin();
        let mut args = vec!["deploy", name, "--update", "--command", &hello];
        args.extend_from_slice(&["-l", "com.openfaas.scale.min=1"]);
        args.extend_from_slice(extra);
        self.cli_ok(&args);
    }

    /// Polls the function's logs until `pred` holds (or panics after 15 s with them).
    pub fn wait_for_log(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.cli_ok(&["logs", name]);
            if pred(&log) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: waited in vain for {what} in its logs:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `describe` until `pred` holds (or panics after 15 s with the last state).
    pub fn wait_for(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&FunctionStatus) -> bool,
    ) -> FunctionStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = self.describe(name);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: waited in vain for {what}; last state {:#?}\n{}",
                s.state,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a raw HTTP request to the API socket; returns (status, body).
    pub fn api(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        self.api_with_headers(method, path, "", body)
    }

    /// Waits (up to 10 s) until `faasd status` says what `pred` looks for; returns it.
    pub fn wait_for_status(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.cli_ok(&["status"]);
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "faasd status shows no {what} within 10 s:\n{status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of one series of `/metrics`, named with its labels as the page writes
    /// them (`faasd_async_queued{stage="call"}`).
    pub fn metric(&self, series: &str) -> u64 {
        let (_, text) = self.api("GET", "/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    }

    /// As [`Daemon::api`], with extra header lines (each ending in CRLF).
    pub fn api_with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &str,
        body: &str,
    ) -> (u16, String) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        // One write: the daemon may answer (a 404, say) and close after the head alone,
        // and a request written in pieces would then meet a closed socket.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: faasd\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        parse_response(&resp)
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn parse_response(resp: &str) -> (u16, String) {
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// The body of a chunked HTTP/1.1 response (a streamed one, such as `/metrics`).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// One HTTP GET of `/` over a new connection (call inside the namespace).
pub fn http_get(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    http_get_path(addr, "/")
}

/// One HTTP GET of `path` over a new connection (call inside the namespace).
pub fn http_get_path(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// One HTTP/1.1 request with `body` (sent when not empty); (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    // One write, as in [`Daemon::api_with_headers`].
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(parse_response(&resp))
}

/// An HTTP server on the loopback of a test namespace that answers 200 to every request
/// and keeps what it got (the requests faasd's async calls POST their results with).
pub struct Receiver {
    /// Its port on `[::1]`.
    pub port: u16,
    got: std::sync::mpsc::Receiver<Received>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// One request a [`Receiver`] got: its head (request line and headers, lowercased) and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: String,
}

impl Received {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }
}

impl Receiver {
    pub fn start(ns: &Netns) -> Self {
        Self::start_on(ns, 0)
    }

    /// As [`Receiver::start`], on `port` (0: any free one).
    pub fn start_on(ns: &Netns, port: u16) -> Self {
        let listener = ns.run(|| std::net::TcpListener::bind(("::1", port)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, got) = std::sync::mpsc::channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(r) = receive(conn) {
                            let _ = tx.send(r);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { port, got, stop }
    }

    /// The next request, if one comes within `within`.
    pub fn next(&self, within: Duration) -> Option<Received> {
        self.got.recv_timeout(within).ok()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn receive(conn: TcpStream) -> Option<Received> {
    use std::io::BufRead;
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut r = std::io::BufReader::new(conn.try_clone().ok()?);
    let mut head = String::new();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_lowercase());
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    let _ = (&conn).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(Received {
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The `instance=` a hello response names.
pub fn instance_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("instance="))
        .unwrap_or_else(|| panic!("no instance in {body:?}"))
        .to_owned()
}

/// Whether `pid` is a live process (a zombie waiting for its reaper does not count: an
/// instance orphaned by a previous daemon is reaped by init, not by the test).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// The one child of an instance's init (faasd's pid 1 of the instance): the function.
pub fn function_below(init: i32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).unwrap();
    children
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pid {init} has not one child, the function: {children:?}"))
}

/// Waits up to `secs` seconds for `pid` to be gone; panics with `why` otherwise.
pub fn wait_gone(pid: i32, secs: u64, why: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} still runs: {}", why());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the kernel says the processes of the cgroup at `dir` are frozen.
pub fn cgroup_frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|e| e.lines().any(|l| l == "frozen 1"))
}

/// Waits up to 5 s for the kernel to say the cgroup at `dir` is frozen.
pub fn wait_cgroup_frozen(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cgroup_frozen(dir) {
        assert!(
            Instant::now() < deadline,
            "the kernel did not freeze {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ctr` in faasd's containerd namespace.
pub fn ctr(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "faasd"])
        .args(args)
        .output()
        .expect("ctr runs");
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A value of the cgroup `pid` is in: `v1_file` of the v1 `controller` on a hybrid host,
/// `v2_file` on a cgroup v2 host.
pub fn cgroup_value(pid: i32, controller: &str, v1_file: &str, v2_file: &str) -> Option<String> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v1 = Path::new("/sys/fs/cgroup").join(controller);
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.split(',').any(|c| c == controller) {
            format!("{}{path}/{v1_file}", v1.display())
        } else if controllers.is_empty() && !v1.exists() {
            format!("/sys/fs/cgroup{path}/{v2_file}")
        } else {
            continue;
        };
        return std::fs::read_to_string(file)
            .ok()
            .map(|v| v.trim().to_owned());
    }
    None
}
