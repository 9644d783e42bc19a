//! `faasd-bench scale`: what each deployed, idle function costs, at several function
//! counts, so that the cost per function can be seen to stay flat, and the cold start of
//! one function and the DNS query rate among them against among one. Every size gets a fresh daemon and state
//! directory; each cost is also plotted against the count (`scale-*.svg`).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::Bench;

/// One size's figures.
struct Row {
    n: usize,
    deploy_per_s: f64,
    deploy8_per_s: f64,
    rss_per_fn_kib: f64,
    idle_cpu_pct: f64,
    metrics_samples: usize,
    metrics_bytes: usize,
    metrics_ms: f64,
    list_ms: f64,
    restart_ms: f64,
    cold_ms: f64,
    dns_qps: f64,
    /// The same two among one function: the mean of a run right before this size and one
    /// right after, since the machine drifts by more than the 10 % they are compared at
    /// over the minutes a size takes.
    cold_one_ms: f64,
    dns_one: f64,
}

/// DNS queries per second with `n` functions deployed: names spread over all of them.
fn dns_qps(b: &Bench, n: usize) -> Result<f64> {
    let names: Vec<String> = (0..8).map(|k| format!("s{}", k * n / 8)).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    super::dnsperf(None, &super::dns_queries(b, &names)?, 10)?["queries_per_second"]
        .as_f64()
        .context("dnsperf did not run (cargo xtask setup installs it)")
}

/// A cost to plot: file key, title, unit, and how to read it from a row.
type Cost = (&'static str, &'static str, &'static str, fn(&Row) -> f64);

/// The function counts measured by default.
pub const SIZES: [usize; 3] = [1_000, 5_000, 19_000];

/// Scrapes of `/metrics` timed per size; their median is the figure.
const METRICS_SCRAPES: usize = 5;

/// Cold starts timed per size; their median is the figure.
const COLD_RUNS: usize = 100;

/// The median cold start (stopped → first byte) of function `s{i}`, in milliseconds.
fn cold_p50_ms(b: &Bench, i: usize) -> Result<f64> {
    let name = format!("s{i}");
    let d = b.describe(&name)?;
    let addr: std::net::SocketAddr =
        format!("[{}]:8080", d["address"].as_str().context("address")?).parse()?;
    let runs = super::cold_runs(
        b,
        &name,
        addr,
        COLD_RUNS,
        Duration::from_millis(50),
        super::Cold::Process,
    )?;
    Ok(runs.total.p50 as f64 / 1e6)
}

/// The same cold start and DNS rate with one function deployed: the baselines.
fn among_one(b: &mut Bench, faasd: &Path, hello: &Path) -> Result<(f64, f64)> {
    let _ = std::fs::remove_dir_all(b.dir.join("state"));
    b.start_daemon(faasd, "")?;
    b.api("POST", "/system/functions", &deploy_body(hello, 0))?;
    Ok((cold_p50_ms(b, 0)?, dns_qps(b, 1)?))
}

/// Raises this process's open-file limit to its hard limit; the daemon inherits it.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        r.rlim_cur
    }
}

/// Resident memory of a process, in KiB.
pub(super) fn rss_kib(pid: u32) -> Result<u64> {
    proc_field(pid, "VmRSS:")
}

fn proc_field(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("{key} in /proc/{pid}/status"))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn deploy_body(hello: &Path, i: usize) -> String {
    json!({
        "service": format!("s{i}"),
        "envProcess": hello.to_string_lossy(),
        "labels": {"com.openfaas.scale.zero": "true"},
    })
    .to_string()
}

/// Deploys `from..to` with `clients` threads; the rate in deploys per second.
fn deploy(b: &Bench, hello: &Path, from: usize, to: usize, clients: usize) -> Result<f64> {
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                s.spawn(move || -> Result<()> {
                    for i in (from + c..to).step_by(clients) {
                        b.api("POST", "/system/functions", &deploy_body(hello, i))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("deploy thread panicked"))??;
        }
        Ok(())
    })?;
    Ok((to - from) as f64 / t.elapsed().as_secs_f64())
}

fn raw_get(b: &Bench, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&b.socket)?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

fn measure(b: &mut Bench, faasd: &Path, hello: &Path, n: usize) -> Result<Row> {
    let before = among_one(b, faasd, hello)?;
    println!(
        "    among 1 function, before: cold start {:.2} ms (p50 of {COLD_RUNS}), DNS {:.0} queries/s",
        before.0, before.1
    );
    let _ = std::fs::remove_dir_all(b.dir.join("state"));
    b.start_daemon(faasd, "")?;
    let pid = b.daemon.as_ref().context("daemon")?.id();
    let rss0 = rss_kib(pid)?;
    // Half one client at a time, half with eight.
    let half = n / 2;
    let deploy_per_s = deploy(b, hello, 0, half, 1)?;
    let deploy8_per_s = deploy(b, hello, half, n, 8)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss = rss_kib(pid)?;
    let ticks0 = cpu_ticks(pid)?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let idle_cpu_pct = (cpu_ticks(pid)? - ticks0) as f64 / hz / t.elapsed().as_secs_f64() * 100.0;
    // The median of a few scrapes, as a Prometheus server makes them one after another.
    let mut scrapes = Vec::with_capacity(METRICS_SCRAPES);
    let mut text = String::new();
    for _ in 0..METRICS_SCRAPES {
        let t = Instant::now();
        text = raw_get(b, "/metrics")?;
        scrapes.push(t.elapsed().as_secs_f64() * 1e3);
    }
    scrapes.sort_by(f64::total_cmp);
    let metrics_ms = scrapes[METRICS_SCRAPES / 2];
    let metrics_samples = text
        .lines()
        // Samples of one function: those with its label (host-wide ones are not per function).
        .filter(|l| {
            !l.starts_with('#') && (l.contains("function=\"") || l.contains("function_name=\""))
        })
        .count();
    let t = Instant::now();
    let list = b.api("GET", "/system/functions", "")?;
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    if list.as_array().map(Vec::len) != Some(n) {
        bail!(
            "list shows {:?} functions, not {n}",
            list.as_array().map(Vec::len)
        );
    }
    let dns_qps = dns_qps(b, n)?;
    // One function among n, woken from zero (it stays running afterwards: the restart
    // below then also takes back a live instance).
    let cold_ms = cold_p50_ms(b, n / 2)?;
    // Restart: kill -9, start again; healthy once the API answers with every function
    // restored (each bound in the maps and supervised: the API starts after the restore).
    let t = Instant::now();
    if let Some(mut d) = b.daemon.take() {
        let _ = d.kill();
        let _ = d.wait();
    }
    b.start_daemon(faasd, "")?;
    loop {
        if let Ok(s) = b.api("GET", "/system/status", "")
            && s["functions"].as_u64() == Some(n as u64)
        {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("the restarted daemon did not restore {n} functions within 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let restart_ms = t.elapsed().as_secs_f64() * 1e3;
    let listed = b.api("GET", "/system/functions", "")?;
    if listed.as_array().map(Vec::len) != Some(n) {
        bail!(
            "after the restart, list shows {:?} functions, not {n}",
            listed.as_array().map(Vec::len)
        );
    }
    // The baselines again, after: the figures among n are held against the mean of the
    // run before and this one (see `Row::cold_one_ms`).
    let after = among_one(b, faasd, hello)?;
    println!(
        "    among 1 function, after: cold start {:.2} ms, DNS {:.0} queries/s",
        after.0, after.1
    );
    let (cold_one_ms, dns_one) = ((before.0 + after.0) / 2.0, (before.1 + after.1) / 2.0);
    Ok(Row {
        n,
        deploy_per_s,
        deploy8_per_s,
        rss_per_fn_kib: rss.saturating_sub(rss0) as f64 / n as f64,
        idle_cpu_pct,
        metrics_samples,
        metrics_bytes: text.len(),
        metrics_ms,
        list_ms,
        restart_ms,
        cold_ms,
        dns_qps,
        cold_one_ms,
        dns_one,
    })
}

/// Runs the scale section at each size; prints a table and returns it as JSON.
pub fn run(
    b: &mut Bench,
    faasd: &Path,
    hello: &Path,
    sizes: &[usize],
    out: &Path,
) -> Result<Value> {
    let limit = raise_nofile();
    println!("scale: open-file limit {limit}; sizes {sizes:?}");
    let mut rows = Vec::new();
    for &n in sizes {
        if n as u64 + 500 > limit {
            bail!("{n} functions need {n} sockets; the open-file limit here is {limit}");
        }
        println!("  {n} functions …");
        rows.push(measure(b, faasd, hello, n)?);
    }
    println!(
        "\n| functions | deploy/s (1 client) | deploy/s (8 clients) | RSS per function | idle CPU | /metrics samples per function | /metrics size | /metrics time (p50 of {METRICS_SCRAPES}) | list time | restart until healthy | cold start p50 (among 1) | DNS queries/s (among 1) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} KiB | {:.2} % | {:.1} | {:.1} MB | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} ms ({:.2} ms, {:+.0} %) | {:.0} ({:.0}, {:+.0} %) |",
            r.n,
            r.deploy_per_s,
            r.deploy8_per_s,
            r.rss_per_fn_kib,
            r.idle_cpu_pct,
            r.metrics_samples as f64 / r.n as f64,
            r.metrics_bytes as f64 / 1e6,
            r.metrics_ms,
            r.list_ms,
            r.restart_ms,
            r.cold_ms,
            r.cold_one_ms,
            (r.cold_ms / r.cold_one_ms - 1.0) * 100.0,
            r.dns_qps,
            r.dns_one,
            (r.dns_qps / r.dns_one - 1.0) * 100.0
        );
    }
    let costs: [Cost; 8] = [
        ("rss", "Daemon RSS per function", "KiB", |r| {
            r.rss_per_fn_kib
        }),
        ("idle-cpu", "CPU while every function idles", "%", |r| {
            r.idle_cpu_pct
        }),
        ("deploy", "Time per deploy, one client", "ms", |r| {
            1e3 / r.deploy_per_s
        }),
        ("metrics", "/metrics time per function", "µs", |r| {
            r.metrics_ms * 1e3 / r.n as f64
        }),
        ("list", "list time per function", "µs", |r| {
            r.list_ms * 1e3 / r.n as f64
        }),
        (
            "restart",
            "Restart until healthy, per function",
            "µs",
            |r| r.restart_ms * 1e3 / r.n as f64,
        ),
        ("cold", "Cold start of one function", "ms", |r| r.cold_ms),
        ("dns", "DNS queries per second", "q/s", |r| r.dns_qps),
    ];
    for (key, title, unit, cost) in costs {
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (r.n as f64, cost(r))).collect();
        std::fs::write(
            out.join(format!("scale-{key}.svg")),
            crate::plot::line_svg(title, "functions deployed", unit, &points),
        )?;
    }
    println!("plots: {}/scale-*.svg", out.display());
    let goals = rows.last().map(goals).unwrap_or_default();
    Ok(json!({"sizes": Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "functions": r.n,
                    "deploy_per_s_1_client": r.deploy_per_s,
                    "deploy_per_s_8_clients": r.deploy8_per_s,
                    "rss_per_function_kib": r.rss_per_fn_kib,
                    "idle_cpu_percent_of_one_core": r.idle_cpu_pct,
                    "metrics_samples_per_function": r.metrics_samples as f64 / r.n as f64,
                    "metrics_bytes": r.metrics_bytes,
                    "metrics_ms": r.metrics_ms,
                    "list_ms": r.list_ms,
                    "restart_until_healthy_ms": r.restart_ms,
                    "cold_p50_ms": r.cold_ms,
                    "cold_p50_ms_among_1": r.cold_one_ms,
                    "dns_queries_per_second": r.dns_qps,
                    "dns_queries_per_second_among_1": r.dns_one,
                })
            })
            .collect(),
    ), "goals": goals}))
}

/// The control plane's promises, checked at the largest size: (key, measured, bound,
/// whether the bound is a floor).
fn goals(r: &Row) -> serde_json::Map<String, Value> {
    let checks = [
        ("deploy_per_s_1_client", r.deploy_per_s, 2_000.0, true),
        ("deploy_per_s_8_clients", r.deploy8_per_s, 5_000.0, true),
        ("rss_per_function_kib", r.rss_per_fn_kib, 4.0, false),
        ("idle_cpu_percent_of_one_core", r.idle_cpu_pct, 0.5, false),
        (
            "metrics_samples_per_function",
            r.metrics_samples as f64 / r.n as f64,
            12.0,
            false,
        ),
        ("metrics_ms", r.metrics_ms, 150.0, false),
        ("restart_until_healthy_ms", r.restart_ms, 1_000.0, false),
        // The same as among one function, within 10 %.
        (
            "cold_among_n_off_among_1",
            (r.cold_ms / r.cold_one_ms - 1.0).abs(),
            0.10,
            false,
        ),
        (
            "dns_among_n_over_among_1",
            r.dns_qps / r.dns_one,
            0.90,
            true,
        ),
    ];
    println!("\ngoals at {} functions:", r.n);
    checks
        .into_iter()
        .map(|(key, measured, bound, floor)| {
            let met = if floor {
                measured >= bound
            } else {
                measured <= bound
            };
            let op = if floor { ">=" } else { "<=" };
            let verdict = if met { "met" } else { "NOT MET" };
            println!("  {key}: {measured:.3} (goal {op} {bound}) {verdict}");
            let goal = if floor { "at_least" } else { "at_most" };
            (
                key.to_owned(),
                json!({goal: bound, "measured": measured, "met": met}),
            )
        })
        .collect()
}
