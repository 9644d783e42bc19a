//! `faasd-bench prepared`: cold starts from a prepared instance (`faasd.dev/prepare`)
//! beside the same function unprepared, for processes and (with containerd) images, and
//! what prepared idle functions cost: host memory, kernel slab, processes, faasd's and
//! containerd's resident memory, per function. Then the tier between running and stopped:
//! connections to a frozen function (`faasd.dev/freeze-after`), thawed by the connection,
//! and the memory a frozen instance keeps.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Cold, Summary, Unit, cold_runs, request, stats};

/// Cold starts timed per kind.
const RUNS: usize = 100;
/// Prepared process functions whose idle cost is measured.
pub const PROCESS_FUNCTIONS: usize = 1_000;
/// Prepared container functions whose idle cost is measured (each holds a containerd shim).
pub const CONTAINER_FUNCTIONS: usize = 100;

/// The lean reference program (bench/lean/lean.c) in its two builds: static against musl
/// (`--lean`), and dynamic against glibc beside it (`lean-glibc`), the same program with
/// glibc's start in front of `main`.
pub struct Lean {
    pub musl: PathBuf,
    pub glibc: PathBuf,
}

impl Lean {
    /// Both builds from the musl one's path, as absolute paths; a missing one says how to
    /// build it.
    pub fn find(musl: &Path) -> Result<Self> {
        let glibc = musl.with_file_name("lean-glibc");
        let absolute = |path: &Path| {
            std::fs::canonicalize(path).with_context(|| {
                format!(
                    "the lean reference program {}: build it with `cargo xtask bench` \
                     (bench/lean/lean.c, by musl-gcc -static from Debian's musl-tools as \
                     lean, and by cc as lean-glibc beside it)",
                    path.display()
                )
            })
        };
        Ok(Self {
            musl: absolute(musl)?,
            glibc: absolute(&glibc)?,
        })
    }
}

/// A field of /proc/meminfo, in KiB.
fn meminfo(key: &str) -> Result<u64> {
    std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{key} in /proc/meminfo"))
}

/// Processes on the host.
fn processes() -> Result<usize> {
    Ok(std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count())
}

/// Resident memory (KiB) of every process whose command name is `comm`.
fn rss_of(comm: &str) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (name.trim() == comm).then(|| super::scale::rss_kib(pid).unwrap_or(0))
        })
        .sum()
}

/// What the host holds now, for a difference.
struct Snapshot {
    available_kib: u64,
    slab_kib: u64,
    processes: usize,
    faasd_kib: u64,
    containerd_kib: u64,
    shims_kib: u64,
}

impl Snapshot {
    fn take(daemon: u32) -> Result<Self> {
        // Freed pages of earlier runs settle first.
        std::thread::sleep(Duration::from_secs(2));
        Ok(Self {
            available_kib: meminfo("MemAvailable:")?,
            slab_kib: meminfo("Slab:")?,
            processes: processes()?,
            faasd_kib: super::scale::rss_kib(daemon)?,
            containerd_kib: rss_of("containerd"),
            shims_kib: rss_of("containerd-shim"),
        })
    }

    /// Per function, from `before` to `self` over `n` functions.
    fn per_function(&self, before: &Self, n: usize) -> Value {
        let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
        json!({
            "functions": n,
            "host_memory_kib": per(before.available_kib, self.available_kib),
            "kernel_slab_kib": per(self.slab_kib, before.slab_kib),
            "processes": (self.processes as f64 - before.processes as f64) / n as f64,
            "faasd_rss_kib": per(self.faasd_kib, before.faasd_kib),
            "containerd_rss_kib": per(self.containerd_kib, before.containerd_kib),
            "shim_rss_kib": per(self.shims_kib, before.shims_kib),
        })
    }
}

/// Deploys `name` from `body` (a deployment's JSON fields); its address on port 8080.
fn deploy(b: &Bench, body: Value) -> Result<SocketAddr> {
    let d = b.api("POST", "/system/functions", &body.to_string())?;
    Ok(format!("[{}]:8080", d["address"].as_str().context("address")?).parse()?)
}

fn remove(b: &Bench, name: &str) -> Result<()> {
    b.api(
        "DELETE",
        "/system/functions",
        &json!({"functionName": name}).to_string(),
    )?;
    Ok(())
}

/// Waits until `n` functions whose names start with `prefix` all have an instance
/// prepared.
fn wait_all_prepared(b: &Bench, prefix: &str, n: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    loop {
        let list = b.api("GET", "/system/functions", "")?;
        let ready = list
            .as_array()
            .context("function list")?
            .iter()
            .filter(|f| f["name"].as_str().is_some_and(|s| s.starts_with(prefix)))
            .filter(|f| f["state"]["prepared"].is_string())
            .count();
        if ready >= n {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{ready} of {n} {prefix}* functions prepared after 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The idle cost of `n` prepared functions made by `body(i)`, named `prefix{i}`.
fn idle_cost(b: &Bench, prefix: &str, n: usize, body: impl Fn(usize) -> Value) -> Result<Value> {
    let daemon = b.daemon.as_ref().context("no daemon")?.id();
    let before = Snapshot::take(daemon)?;
    for i in 0..n {
        deploy(b, body(i))?;
    }
    wait_all_prepared(b, prefix, n)?;
    let after = Snapshot::take(daemon)?;
    for i in 0..n {
        remove(b, &format!("{prefix}{i}"))?;
    }
    let cost = after.per_function(&before, n);
    println!("{n} prepared {prefix}* functions, each: {cost}");
    Ok(cost)
}

/// Cold starts of `name` unprepared and of `name`-prep prepared, from deployments `body`.
fn side_by_side(b: &Bench, name: &str, body: &Value, kind: Cold, what: &str) -> Result<Value> {
    let plain = deploy(b, body.clone())?;
    let mut prep_body = body.clone();
    let prep_name = format!("{name}-prep");
    prep_body["service"] = json!(prep_name);
    prep_body["annotations"] = json!({"faasd.dev/prepare": "true"});
    let prep = deploy(b, prep_body)?;
    let settle = Duration::from_millis(50);
    println!("{what} cold activation: {RUNS} runs, unprepared then prepared");
    let unprepared = cold_runs(b, name, plain, RUNS, settle, kind)?;
    let prepared = cold_runs(b, &prep_name, prep, RUNS, settle, Cold::Prepared)?;
    stats::print_table(
        &format!("{what} cold activation, unprepared (ms)"),
        Unit::Ms,
        &unprepared.rows(),
        None,
    );
    stats::print_table(
        &format!("{what} cold activation, prepared (ms)"),
        Unit::Ms,
        &prepared.rows(),
        None,
    );
    remove(b, name)?;
    remove(b, &prep_name)?;
    Ok(json!({"unprepared": unprepared.to_json(), "prepared": prepared.to_json()}))
}

/// Resident memory (KiB) of the processes in a cgroup v2 directory.
fn cgroup_rss_kib(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|p| p.trim().parse::<u32>().ok())
        .map(|pid| super::scale::rss_kib(pid).unwrap_or(0))
        .sum()
}

/// The cgroup v2 root (unified, on a hybrid host).
fn cgroup_root() -> Option<&'static Path> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|r| r.join("cgroup.procs").exists())
}

/// Connections to `name` while it is frozen: each waits for the freeze (and `settle`),
/// then times connect to first byte, the thaw included. `cgroup`: where the instance's
/// processes are, for the memory a frozen instance keeps.
fn thaw_runs(
    b: &Bench,
    name: &str,
    addr: SocketAddr,
    cgroup: impl Fn(&Value) -> Option<std::path::PathBuf>,
) -> Result<Value> {
    let mut total = Vec::new();
    let mut frozen_kib = Vec::new();
    // The first connection starts it; every later one finds it frozen.
    request(addr)?;
    for i in 0..RUNS {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let d = loop {
            let d = b.describe(name)?;
            if d["state"]["frozen"] == true {
                break d;
            }
            if std::time::Instant::now() > deadline {
                bail!("{name} run {i}: not frozen: {}", d["state"]);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        std::thread::sleep(Duration::from_millis(50));
        if let Some(dir) = cgroup(&d) {
            frozen_kib.push(cgroup_rss_kib(&dir) * 1024);
        }
        let (t0, first, _) = request(addr)?;
        total.push(first - t0);
    }
    let thaw = Summary::of("connection to a frozen function", &total);
    let memory = Summary::of("resident memory of a frozen instance (bytes)", &frozen_kib);
    stats::print_table(
        &format!("{name}: connect to first byte, frozen (ms)"),
        Unit::Ms,
        std::slice::from_ref(&thaw),
        None,
    );
    println!(
        "{name}: a frozen instance keeps {} KiB resident (p50)",
        memory.p50 / 1024
    );
    let reclaim = cgroup_root().is_some_and(|r| {
        std::fs::read_to_string(r.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.contains("memory"))
    });
    Ok(json!({
        "thaw": thaw.to_json(),
        "frozen_rss_bytes": memory.to_json(),
        "memory_reclaim_available": reclaim,
    }))
}

/// The floor of any start that execs `program`: a plain parent (no namespaces, no
/// cgroup, no daemon) that waits for the first connection on a listening socket, then
/// execs the program with it (LISTEN_FDS) from a vfork (no page tables copied, as
/// posix_spawn does), timed connect to first byte.
fn exec_floor_runs(program: &Path, label: &str) -> Result<Summary> {
    use std::{ffi::CString, os::fd::AsRawFd};
    let addr: SocketAddr = "[::1]:9041".parse()?;
    let program = CString::new(program.to_string_lossy().as_bytes())?;
    let mut total = Vec::new();
    for _ in 0..RUNS {
        let socket = super::warm::faasd_like_socket(addr)?;
        let raw = socket.as_raw_fd();
        let program = program.clone();
        let starter = std::thread::spawn(move || -> Result<i32> {
            // Everything the child touches is made before the fork: it may not allocate.
            let fds = c"LISTEN_FDS=1";
            let names = c"LISTEN_FDNAMES=http";
            let mut pid_var = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
            let argv = [program.as_ptr(), std::ptr::null()];
            let env = [
                fds.as_ptr(),
                names.as_ptr(),
                pid_var.as_ptr().cast(),
                std::ptr::null(),
            ];
            let mut pfd = libc::pollfd {
                fd: raw,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one descriptor we own, for at most 10 s; then a vfork whose
            // child makes only async-signal-safe calls on memory prepared before it and
            // ends in execve or _exit, never returning while it borrows this thread.
            unsafe {
                if libc::poll(&mut pfd, 1, 10_000) != 1 {
                    bail!("no connection came");
                }
                #[allow(deprecated)]
                let pid = libc::vfork();
                if pid == 0 {
                    // LISTEN_PID is the child's own pid, written in place.
                    let mut digits = [0u8; 12];
                    let (mut n, mut len) = (libc::getpid() as u32, 0);
                    while n > 0 || len == 0 {
                        digits[len] = b'0' + (n % 10) as u8;
                        n /= 10;
                        len += 1;
                    }
                    for k in 0..len {
                        pid_var[11 + k] = digits[len - 1 - k];
                    }
                    libc::dup2(raw, 3);
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                    libc::dup2(null, 1);
                    libc::dup2(null, 2);
                    libc::execve(program.as_ptr(), argv.as_ptr(), env.as_ptr());
                    libc::_exit(127);
                }
                Ok(pid)
            }
        });
        let (t0, first, _) = request(addr)?;
        total.push(first - t0);
        let pid = starter.join().expect("the starter thread")?;
        // SAFETY: kills and reaps the child this run started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        drop(socket);
    }
    Ok(Summary::of(label, &total))
}

/// A daemon over a state of its own: what earlier sections deployed (up to 19,000
/// functions) would otherwise come back with it, and with them their descriptors.
fn fresh_daemon(b: &mut Bench, faasd: &Path, containerd: Option<&str>) -> Result<()> {
    let _ = std::fs::remove_dir_all(b.dir.join("state"));
    b.start_daemon(faasd, containerd.unwrap_or(""))
}

/// The starts: the exec floor, cold from stopped (unprepared and prepared) and from
/// frozen, for processes and, with containerd (`containerd`: the daemon's configuration
/// line naming it), images. Processes twice: the sample, and `lean`, a program whose own
/// start costs next to nothing (static, musl: no loader, no CPU probing), so that faasd's
/// part of a start reads apart from the program's; the floor also for `lean` built against
/// glibc, which is what glibc's start costs here. A handful of functions: it may run among
/// the other sections.
pub fn starts(
    b: &mut Bench,
    faasd: &Path,
    hello: &Path,
    lean: &Lean,
    containerd: Option<&str>,
) -> Result<Value> {
    fresh_daemon(b, faasd, containerd)?;
    println!("the floor: {RUNS} plain vfork+exec starts on the first connection, each program");
    let floor = exec_floor_runs(hello, "hello (Rust, glibc)")?;
    let lean_floor = exec_floor_runs(&lean.musl, "lean (C, static musl)")?;
    let lean_glibc_floor = exec_floor_runs(&lean.glibc, "lean (C, glibc)")?;
    stats::print_table(
        "the floor: a plain parent vforks and execs the program on the first connection (ms)",
        Unit::Ms,
        &[floor.clone(), lean_floor.clone(), lean_glibc_floor.clone()],
        None,
    );
    let process = json!({"service": "hp", "envProcess": hello.to_string_lossy()});
    let process_cold = side_by_side(b, "hp", &process, Cold::Process, "process")?;
    let lean_body = json!({"service": "lp", "envProcess": lean.musl.to_string_lossy()});
    let lean_cold = side_by_side(b, "lp", &lean_body, Cold::Process, "lean process")?;
    let root = cgroup_root().context("no cgroup v2 hierarchy")?;
    let frozen_body = |mut body: Value, name: &str| {
        body["service"] = json!(name);
        body["annotations"] = json!({"faasd.dev/freeze-after": "100ms"});
        body
    };
    let addr = deploy(b, frozen_body(process.clone(), "hf"))?;
    println!("process: {RUNS} connections to it frozen");
    let fn_cgroup = root.join("faasd-bench/openfaas-fn/hf");
    let process_thaw = thaw_runs(b, "hf", addr, |_| Some(fn_cgroup.clone()))?;
    remove(b, "hf")?;
    let (container_cold, container_thaw) = match containerd {
        Some(_) => {
            let image = json!({"service": "hc", "image": "localhost/hello:latest"});
            let cold = side_by_side(b, "hc", &image, Cold::Container, "container")?;
            let addr = deploy(b, frozen_body(image.clone(), "cf"))?;
            println!("container: {RUNS} connections to it frozen");
            let thaw = thaw_runs(b, "cf", addr, |d| {
                let id = d["state"]["instances"][0]["id"].as_str()?;
                Some(root.join("faasd-bench").join(id))
            })?;
            remove(b, "cf")?;
            (cold, thaw)
        }
        None => (Value::Null, Value::Null),
    };
    Ok(json!({
        "exec_floor": floor.to_json(),
        "lean_exec_floor": lean_floor.to_json(),
        "lean_glibc_exec_floor": lean_glibc_floor.to_json(),
        "process_cold": process_cold,
        "lean_cold": lean_cold,
        "container_cold": container_cold,
        "process_frozen": process_thaw,
        "container_frozen": container_thaw,
    }))
}

/// What prepared idle functions cost: 1,000 process functions and, with containerd, 100
/// images. Run it last: the kernel takes minutes to tear their namespaces down after they
/// go, slowing whatever comes next.
pub fn idle_costs(
    b: &mut Bench,
    faasd: &Path,
    hello: &Path,
    containerd: Option<&str>,
) -> Result<Value> {
    fresh_daemon(b, faasd, containerd)?;
    let process = idle_cost(b, "pp", PROCESS_FUNCTIONS, |i| {
        json!({"service": format!("pp{i}"), "envProcess": hello.to_string_lossy(),
               "annotations": {"faasd.dev/prepare": "true"}})
    })?;
    let container = match containerd {
        Some(_) => idle_cost(b, "cp", CONTAINER_FUNCTIONS, |i| {
            json!({"service": format!("cp{i}"), "image": "localhost/hello:latest",
                   "annotations": {"faasd.dev/prepare": "true"}})
        })?,
        None => Value::Null,
    };
    Ok(json!({"process": process, "container": container}))
}

/// Both, as the section run alone (`faasd-bench prepared`) reports them.
pub fn run(
    b: &mut Bench,
    faasd: &Path,
    hello: &Path,
    lean: &Lean,
    containerd: Option<&str>,
) -> Result<Value> {
    let mut starts = starts(b, faasd, hello, lean, containerd)?;
    starts["idle_cost"] = idle_costs(b, faasd, hello, containerd)?;
    Ok(starts)
}

/// The medians (ns) of a section's prepared cold starts: (process, container).
pub fn prepared_p50s(section: &Value) -> (Option<u64>, Option<u64>) {
    let p50 = |k: &str| section[k]["prepared"]["total"]["p50_ns"].as_u64();
    (p50("process_cold"), p50("container_cold"))
}

/// The lean program's medians (ns).
pub struct LeanP50s {
    /// Started from stopped and prepared.
    pub cold: Option<u64>,
    /// Its exec floor, built static against musl (as it is started) and against glibc.
    pub floor: Option<u64>,
    pub glibc_floor: Option<u64>,
}

/// The lean program's medians in a section.
pub fn lean_p50s(section: &Value) -> LeanP50s {
    LeanP50s {
        cold: section["lean_cold"]["prepared"]["total"]["p50_ns"].as_u64(),
        floor: section["lean_exec_floor"]["p50_ns"].as_u64(),
        glibc_floor: section["lean_glibc_exec_floor"]["p50_ns"].as_u64(),
    }
}

/// The medians (ns) of a section's connections to frozen functions: (process, container).
pub fn thaw_p50s(section: &Value) -> (Option<u64>, Option<u64>) {
    let p50 = |k: &str| section[k]["thaw"]["p50_ns"].as_u64();
    (p50("process_frozen"), p50("container_frozen"))
}
