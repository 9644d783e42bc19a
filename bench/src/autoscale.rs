//! Scaling with the load: closed-loop clients against a one-request-at-a-time, CPU-bound
//! function (the sample's `/work/MS` with `HELLO_THREADS=1`), stepped 1 → 2 → 8 → 32 → 64 →
//! 8 → 1, against one fixed instance, four fixed instances (`scale.min=4`, the most the
//! autoscaled one may run) and the autoscaled function (max 4, target 1, proportion 1);
//! the autoscaled function's instances over time (`autoscale-instances.svg`); and the time
//! from a load step to a second instance accepting.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Bench,
    stats::{Summary, percentile},
};

/// Clients per step.
pub const STEPS: [usize; 7] = [1, 2, 8, 32, 64, 8, 1];
/// How long each step lasts.
const STEP: Duration = Duration::from_secs(3);
/// CPU time per request.
const WORK_MS: u64 = 10;
/// Trials of the time to a second instance.
const TRIALS: usize = 10;

/// One request for `/work/WORK_MS` on a new connection; its latency in µs.
fn work(addr: SocketAddr) -> Option<u64> {
    use std::io::{Read, Write};
    let t0 = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET /work/{WORK_MS} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = Vec::new();
    s.read_to_end(&mut body).ok()?;
    body.starts_with(b"HTTP/1.1 200")
        .then(|| t0.elapsed().as_micros() as u64)
}

/// Latencies of `clients` closed-loop clients over `for_`, and the most instances seen;
/// the instances are added to `timeline` as (`base` + seconds into the step, instances).
fn step(
    b: &Bench,
    (name, addr): (&str, SocketAddr),
    clients: usize,
    for_: Duration,
    (base, timeline): (f64, &mut Vec<(f64, f64)>),
) -> Result<(Vec<u64>, usize)> {
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut most = 0;
    std::thread::scope(|s| -> Result<()> {
        for _ in 0..clients {
            let (stop, samples) = (stop.clone(), samples.clone());
            s.spawn(move || {
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(us) = work(addr) {
                        mine.push(us);
                    }
                }
                samples.lock().expect("samples").extend(mine);
            });
        }
        let until = Instant::now() + for_;
        while Instant::now() < until {
            let n = b.describe(name)?["state"]["instances"]
                .as_array()
                .map_or(0, Vec::len);
            most = most.max(n);
            timeline.push((base + t0.elapsed().as_secs_f64(), n as f64));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let samples = std::mem::take(&mut *samples.lock().expect("samples"));
    Ok((samples, most))
}

fn deploy(b: &Bench, name: &str, hello: &Path, labels: Value) -> Result<SocketAddr> {
    let d = b.api(
        "POST",
        "/system/functions",
        &json!({"service": name, "envProcess": hello.to_string_lossy(),
                "envVars": {"HELLO_THREADS": "1"}, "labels": labels,
                "annotations": {"faasd.dev/scale-down-delay": "2s"}})
        .to_string(),
    )?;
    Ok(format!("[{}]:8080", d["address"].as_str().context("address")?).parse()?)
}

fn instances(b: &Bench, name: &str) -> Result<(usize, usize)> {
    let d = b.describe(name)?;
    let all = d["state"]["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ready = all.iter().filter(|i| i["ready"] == true).count();
    Ok((all.len(), ready))
}

/// The whole section; prints its tables and returns `results.json`'s `autoscale`.
pub fn run(b: &mut Bench, hello: &Path, out: &Path) -> Result<Value> {
    let auto = deploy(
        b,
        "auto",
        hello,
        json!({"com.openfaas.scale.max": "4", "com.openfaas.scale.target": "1",
               "com.openfaas.scale.target-proportion": "1"}),
    )?;
    let fixed = deploy(b, "fixed", hello, json!({}))?;
    let four = deploy(b, "four", hello, json!({"com.openfaas.scale.min": "4"}))?;
    let mut rows = Vec::new();
    println!(
        "\nscaling with the load: /work/{WORK_MS} (one request at a time per instance), {:?} per step",
        STEP
    );
    println!(
        "{:>8} {:>24} {:>24} {:>36}",
        "clients",
        "one: req/s p50 p99",
        "four: req/s p50 p99",
        "autoscaled: req/s p50 p99 (instances)"
    );
    let mut timeline = Vec::new();
    let mut ignored = Vec::new();
    let summary = |v: &[u64]| {
        let mut s = v.to_vec();
        s.sort_unstable();
        let r = (
            v.len() as f64 / STEP.as_secs_f64(),
            percentile(&s, 50.0) as f64 / 1000.0,
            percentile(&s, 99.0) as f64 / 1000.0,
        );
        (r, json!({"rps": r.0, "p50_ms": r.1, "p99_ms": r.2}))
    };
    for clients in STEPS {
        let (f, _) = step(b, ("fixed", fixed), clients, STEP, (0.0, &mut ignored))?;
        let (m, _) = step(b, ("four", four), clients, STEP, (0.0, &mut ignored))?;
        // The autoscaled steps end to end, as if nothing ran between them.
        let base = rows.len() as f64 * STEP.as_secs_f64();
        let (a, most) = step(b, ("auto", auto), clients, STEP, (base, &mut timeline))?;
        let ((fr, f50, f99), fixed_json) = summary(&f);
        let ((mr, m50, m99), four_json) = summary(&m);
        let ((ar, a50, a99), mut auto_json) = summary(&a);
        auto_json["most_instances"] = json!(most);
        println!(
            "{clients:>8} {fr:>7.1} {f50:>6.1} {f99:>7.1} ms {mr:>7.1} {m50:>6.1} {m99:>7.1} ms {ar:>7.1} {a50:>6.1} {a99:>7.1} ms ({most})"
        );
        rows.push(json!({
            "clients": clients,
            "fixed": fixed_json,
            "fixed_four": four_json,
            "autoscaled": auto_json,
        }));
    }
    std::fs::write(
        out.join("autoscale-instances.svg"),
        crate::plot::line_svg(
            &format!(
                "Autoscaled instances over time (clients {})",
                STEPS.map(|c| c.to_string()).join(" → ")
            ),
            "seconds of load (the autoscaled function's steps, end to end)",
            "",
            &timeline,
        ),
    )?;
    println!("plot: {}/autoscale-instances.svg", out.display());
    // From a load step to a second instance accepting: one instance idle, then 4 clients.
    let mut times = Vec::new();
    for _ in 0..TRIALS {
        let deadline = Instant::now() + Duration::from_secs(20);
        while instances(b, "auto")?.0 != 1 {
            if Instant::now() > deadline {
                bail!("auto did not return to one instance");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let waited = std::thread::scope(|s| -> Result<Duration> {
            for _ in 0..4 {
                let stop = stop.clone();
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = work(auto);
                    }
                });
            }
            let until = t0 + Duration::from_secs(10);
            let result = loop {
                if instances(b, "auto")?.1 >= 2 {
                    break Ok(t0.elapsed());
                }
                if Instant::now() > until {
                    break Err(anyhow::anyhow!("no second instance within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            stop.store(true, Ordering::Relaxed);
            result
        })?;
        times.push(waited.as_nanos() as u64);
    }
    let second = Summary::of("load step → second instance ready", &times);
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "load step → second instance ready ({TRIALS} trials): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        ms(second.p50),
        ms(second.p90),
        ms(second.p99)
    );
    for f in ["auto", "fixed", "four"] {
        b.api(
            "DELETE",
            "/system/functions",
            &json!({"functionName": f}).to_string(),
        )?;
    }
    let peak = rows
        .iter()
        .map(|r| {
            r["autoscaled"]["rps"].as_f64().unwrap_or(0.0)
                / r["fixed"]["rps"].as_f64().unwrap_or(1.0).max(1e-9)
        })
        .fold(0.0, f64::max);
    // Overload: the heaviest step, where one instance's queue is longest.
    let heaviest = rows
        .iter()
        .max_by_key(|r| r["clients"].as_u64())
        .context("no steps")?;
    let p99 = |k: &str| heaviest[k]["p99_ms"].as_f64().unwrap_or(f64::MAX);
    Ok(json!({
        "work_ms": WORK_MS,
        "step_s": STEP.as_secs(),
        "steps": rows,
        "second_instance": second.to_json(),
        "best_throughput_over_fixed": peak,
        "goals": {
            "second_instance_p50_ms": {"goal": 50.0, "measured": ms(second.p50)},
            "throughput_over_one_instance": {"goal": 1.8, "measured": peak},
            "overload_p99_over_one_instance": {"goal": 1.0, "measured": p99("autoscaled") / p99("fixed")},
        },
    }))
}
