//! The Grafana dashboard (`packaging/grafana/faasd.json`) against a live daemon: Debian's
//! `prometheus` scrapes it every second while a test makes traffic, and every expression of
//! every panel must return data (`promtool query instant`, the dashboard's variables set as
//! Grafana sets them for all functions). The tunnel test (`wireguard::`) runs it, since its
//! traffic touches every panel: a WireGuard peer, DNS, activations, steering, XDP drops.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::harness::Netns;

/// Where Prometheus listens inside the test's namespace.
const LISTEN: &str = "[::1]:9099";

/// A Prometheus server in a test namespace, stopped (and its data gone with the
/// namespace's directory) on drop.
pub struct Prometheus {
    child: Child,
    ns: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus in `ns` scraping faasd's `/metrics` at `target` every second, and
    /// waits for its first good scrape; `None` (the test skips) without prometheus.
    pub fn scraping(ns: &Netns, target: SocketAddr) -> Option<Self> {
        for program in ["prometheus", "promtool"] {
            if Command::new(program).arg("--version").output().is_err() {
                crate::harness::skip(format!(
                    "{program} is missing (cargo xtask setup installs Debian's prometheus)"
                ));
                return None;
            }
        }
        let dir = ns.dir.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: faasd\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Self {
            child,
            ns: ns.name.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.query("up == 1").is_none_or(|v| v.is_empty()) {
            assert!(
                Instant::now() < deadline,
                "Prometheus did not scrape {target} within 30 s:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        Some(p)
    }

    /// The samples `expr` evaluates to now whose value is a number; `None` when the
    /// server cannot be asked (not up yet) or refuses the expression.
    fn query(&self, expr: &str) -> Option<Vec<f64>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "promtool", "query", "instant"])
            .args(["-o", "json"])
            .arg(format!("http://{LISTEN}"))
            .arg(expr)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
        Some(
            samples
                .iter()
                .filter_map(|s| s["value"][1].as_str()?.parse::<f64>().ok())
                .filter(|v| !v.is_nan())
                .collect(),
        )
    }

    /// Asserts that every expression of the dashboard returns at least one number, waiting
    /// up to 30 s for the scrapes that follow the test's traffic.
    pub fn assert_every_panel_has_data(&self) {
        let panels = expressions();
        assert!(
            panels.len() >= 20,
            "the dashboard lost its panels: {panels:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let empty: Vec<&(String, String)> = panels
                .iter()
                .filter(|(_, expr)| self.query(expr).is_none_or(|v| v.is_empty()))
                .collect();
            if empty.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} dashboard expression(s) return no data:\n{}",
                empty.len(),
                empty
                    .iter()
                    .map(|(title, expr)| format!("  {title}: {expr}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Every panel's expressions, with the panel's title, the variables set as Grafana sets
/// them for all functions and a one-minute rate window.
fn expressions() -> Vec<(String, String)> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/grafana/faasd.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap().to_owned();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$function", ".*");
            out.push((title.clone(), expr));
        }
    }
    out
}
