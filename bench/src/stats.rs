//! Percentiles of latency samples.

use serde_json::{Value, json};

/// Summary of one series, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Summary {
    pub name: String,
    pub n: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub mean: u64,
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Summary {
    pub fn of(name: &str, samples: &[u64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_unstable();
        Self {
            name: name.to_owned(),
            n: s.len(),
            p50: percentile(&s, 50.0),
            p90: percentile(&s, 90.0),
            p99: percentile(&s, 99.0),
            mean: if s.is_empty() {
                0
            } else {
                s.iter().sum::<u64>() / s.len() as u64
            },
        }
    }

    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "n": self.n, "p50_ns": self.p50, "p90_ns": self.p90, "p99_ns": self.p99, "mean_ns": self.mean})
    }
}

/// The unit a table shows nanosecond samples in.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// Milliseconds, three decimals.
    Ms,
    /// Microseconds, one decimal.
    Us,
}

impl Unit {
    fn show(self, ns: u64) -> String {
        match self {
            Self::Ms => format!("{:.3}", ns as f64 / 1e6),
            Self::Us => format!("{:.1}", ns as f64 / 1e3),
        }
    }
}

/// Prints summaries as an aligned table, with a `p50 / limit` column when `limit` is given.
pub fn print_table(title: &str, unit: Unit, rows: &[Summary], limit: Option<u64>) {
    let ratio_head = if limit.is_some() { "p50 / limit" } else { "" };
    let head = format!(
        "{title:<40} {:>10} {:>10} {:>10} {ratio_head:>12}",
        "p50", "p90", "p99"
    );
    println!("\n{}", head.trim_end());
    for s in rows {
        let ratio = limit.map_or(String::new(), |l| format!("{:.3}", s.p50 as f64 / l as f64));
        let (p50, p90, p99) = (unit.show(s.p50), unit.show(s.p90), unit.show(s.p99));
        let line = format!("{:<40} {p50:>10} {p90:>10} {p99:>10} {ratio:>12}", s.name);
        println!("{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(
            (
                percentile(&v, 50.0),
                percentile(&v, 90.0),
                percentile(&v, 99.0)
            ),
            (50, 90, 99)
        );
        assert_eq!(percentile(&[7], 99.0), 7);
        let s = Summary::of("x", &[3, 1, 2]);
        assert_eq!((s.p50, s.mean), (2, 2));
    }
}
