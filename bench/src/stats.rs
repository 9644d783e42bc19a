//! Percentiles of latency samples, and medians of figures with their confidence.

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

/// The median of some figures (the upper one of an even count).
pub fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// A 95 % confidence interval for the median of the distribution `figures` were drawn
/// from, by order statistics alone (no assumption about its shape): the `k`-th smallest
/// and `k`-th largest figure, with `k` the largest rank such that fewer than `k` of `n`
/// draws fall below the median with a chance of at most 2.5 %. `None` below six figures.
pub fn median_ci95(mut figures: Vec<f64>) -> Option<(f64, f64)> {
    let n = figures.len();
    figures.sort_by(f64::total_cmp);
    // P(X < k) for X ~ Binomial(n, 1/2), summed term by term.
    let mut term = 0.5f64.powi(n as i32);
    let mut below = 0.0;
    let mut k = 0;
    while k < n / 2 && below + term <= 0.025 {
        below += term;
        term *= (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    (k > 0).then(|| (figures[k - 1], figures[n - k]))
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

    #[test]
    fn median_confidence_by_order_statistics() {
        let v: Vec<f64> = (1..=30).map(f64::from).collect();
        assert_eq!(median(v.clone()), 16.0);
        // Ranks 10 and 21 of 30 (the binomial tables' values).
        assert_eq!(median_ci95(v), Some((10.0, 21.0)));
        assert_eq!(
            median_ci95((1..=6).map(f64::from).collect()),
            Some((1.0, 6.0))
        );
        assert_eq!(median_ci95((1..=5).map(f64::from).collect()), None);
    }
}
