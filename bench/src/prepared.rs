//! `faasd-bench prepared`: cold starts from a prepared instance (`faasd.dev/prepare`)
//! beside the same function unprepared, for processes and (with containerd) images, and
//! what prepared idle functions cost: host memory, kernel slab, processes, faasd's and
//! containerd's resident memory, per function.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Bench, Cold, Unit, cold_runs, stats};

/// Cold starts timed per kind.
const RUNS: usize = 100;
/// Prepared process functions whose idle cost is measured.
pub const PROCESS_FUNCTIONS: usize = 1_000;
/// Prepared container functions whose idle cost is measured (each holds a containerd shim).
pub const CONTAINER_FUNCTIONS: usize = 100;

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

/// The section: `containerd`, the daemon's configuration line naming containerd, if any.
pub fn run(b: &mut Bench, faasd: &Path, hello: &Path, containerd: Option<&str>) -> Result<Value> {
    b.start_daemon(faasd, containerd.unwrap_or(""))?;
    let process = json!({"service": "hp", "envProcess": hello.to_string_lossy()});
    let process_cold = side_by_side(b, "hp", &process, Cold::Process, "process")?;
    let process_cost = idle_cost(b, "pp", PROCESS_FUNCTIONS, |i| {
        json!({"service": format!("pp{i}"), "envProcess": hello.to_string_lossy(),
               "annotations": {"faasd.dev/prepare": "true"}})
    })?;
    let (container_cold, container_cost) = match containerd {
        Some(_) => {
            let image = json!({"service": "hc", "image": "localhost/hello:latest"});
            let cold = side_by_side(b, "hc", &image, Cold::Container, "container")?;
            let cost = idle_cost(b, "cp", CONTAINER_FUNCTIONS, |i| {
                json!({"service": format!("cp{i}"), "image": "localhost/hello:latest",
                       "annotations": {"faasd.dev/prepare": "true"}})
            })?;
            (cold, cost)
        }
        None => (Value::Null, Value::Null),
    };
    Ok(json!({
        "process_cold": process_cold,
        "process_idle_cost": process_cost,
        "container_cold": container_cold,
        "container_idle_cost": container_cost,
    }))
}

/// The medians (ns) of a section's prepared cold starts: (process, container).
pub fn prepared_p50s(section: &Value) -> (Option<u64>, Option<u64>) {
    let p50 = |k: &str| section[k]["prepared"]["total"]["p50_ns"].as_u64();
    (p50("process_cold"), p50("container_cold"))
}
