//! Scaling with the load: the kernel's accept queues say when work waits, and the steering
//! counters how many new connections arrive, so a running function with `scale.max` above
//! 1 is checked every [`TICK`] while it has instances, and not at all otherwise.
//!
//! - Up: connections waiting in the accept queue of its TCP sockets mean every instance is
//!   busy; it grows by enough instances to take them at `scale.target` connections each
//!   (a burst against a function at zero starts that many at once), up to max.
//! - `rps`: the new connections of the last [`RPS_WINDOW`] need `rate / scale.target`
//!   instances; more are started at once, and waiting work adds one beyond the running.
//! - Down: once nothing has waited (and, for `rps`, the rate needed fewer) for
//!   `faasd.dev/scale-down-delay` and no connection is open (so none is cut), it returns
//!   to what the rate needs, `scale.min`, or one instance (scaling to zero is the idle
//!   stop's).
//! - A crash-looping function does not grow: its failed starts would only multiply.

use std::time::{Duration, Instant};

use faasd_core::spec::{Autoscale, ScaleType};

/// How often a running function's queues are read.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Over how long the new connections are counted for `rps`.
pub(super) const RPS_WINDOW: Duration = Duration::from_secs(1);

/// What the autoscaler keeps between checks.
#[derive(Debug, Default)]
pub(super) struct Autoscaler {
    /// The next check, while the function has instances.
    pub check: Option<Instant>,
    /// Since when nothing has waited (and the rate needed fewer).
    quiet_since: Option<Instant>,
    /// `rps`: the window's start and the connections counted then.
    window: Option<(Instant, u64)>,
    /// `rps`: the instances the last full window's rate needs.
    by_rate: Option<u32>,
}

/// A decision: the new target and why.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decision {
    pub target: u32,
    pub reason: String,
}

/// What the supervisor knows at a check.
#[derive(Debug)]
pub(super) struct Load {
    /// Connections waiting in the accept queues.
    pub queued: u64,
    /// Instances running, not stopping.
    pub running: u32,
    /// Instances starting: each takes waiting work once it runs.
    pub starting: u32,
    /// The current target.
    pub target: u32,
    /// Whether the function is crash-looping.
    pub crashing: bool,
    /// New connections steered to it so far (a counter).
    pub lookups: u64,
}

impl Autoscaler {
    /// The decision at `now`, if the target should change. `open` says whether a
    /// connection is still open; it is asked only when the answer matters.
    pub(super) fn check(
        &mut self,
        now: Instant,
        a: &Autoscale,
        (min, max): (u32, u32),
        load: &Load,
        open: impl FnOnce() -> bool,
    ) -> Option<Decision> {
        let by_rate = match a.kind {
            ScaleType::Capacity => None,
            ScaleType::Rps => {
                let (since, at) = *self.window.get_or_insert((now, load.lookups));
                if now - since >= RPS_WINDOW {
                    let rate = load.lookups.saturating_sub(at) as f64 / (now - since).as_secs_f64();
                    self.window = Some((now, load.lookups));
                    self.by_rate = Some((rate / f64::from(a.target)).ceil() as u32);
                }
                self.by_rate
            }
        };
        let up = |want: u32, why: String| {
            let want = want.min(max);
            (want > load.target).then_some(Decision {
                target: want,
                reason: format!("{why}: up to {want}"),
            })
        };
        if load.queued > 0 {
            self.quiet_since = None;
            if load.crashing {
                return None;
            }
            let why = format!(
                "{} connection(s) waiting with {} instance(s) running and {} starting",
                load.queued, load.running, load.starting
            );
            // Running instances are busy (work waits); starting ones will take some of it.
            let needed = match a.kind {
                ScaleType::Capacity => load.queued.div_ceil(u64::from(a.target)) as u32,
                ScaleType::Rps => 1,
            };
            let want = load.running.saturating_add(needed.max(load.starting));
            return up(want.max(by_rate.unwrap_or(0)), why);
        }
        if let Some(n) = by_rate
            && n > load.target
            && !load.crashing
        {
            self.quiet_since = None;
            return up(
                n,
                format!(
                    "new connections at {n} instance(s)' worth of {} a second each",
                    a.target
                ),
            );
        }
        let floor = min.max(1).max(by_rate.unwrap_or(0));
        if load.target <= floor {
            self.quiet_since = None;
            return None;
        }
        let quiet = *self.quiet_since.get_or_insert(now);
        if now - quiet < a.scale_down_delay || open() {
            return None;
        }
        self.quiet_since = Some(now);
        Some(Decision {
            target: floor,
            reason: format!(
                "nothing waited for {:?} and no connection is open: down to {floor}",
                a.scale_down_delay
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(queued: u64, running: u32, target: u32) -> Load {
        Load {
            queued,
            running,
            starting: 0,
            target,
            crashing: false,
            lookups: 0,
        }
    }

    const CLOSED: fn() -> bool = || false;

    #[test]
    fn waiting_work_adds_instances_up_to_max_and_quiet_brings_them_back() {
        let a = Autoscale {
            kind: ScaleType::Capacity,
            target: 2,
            scale_down_delay: Duration::from_secs(1),
        };
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        // 5 waiting at 2 per instance: 3 more than the one running.
        let d = s.check(t0, &a, (0, 8), &load(5, 1, 1), CLOSED).unwrap();
        assert_eq!(d.target, 4);
        // Never past max.
        let d = s.check(t0, &a, (0, 3), &load(50, 1, 1), CLOSED).unwrap();
        assert_eq!(d.target, 3);
        // Already there: nothing to do.
        assert_eq!(s.check(t0, &a, (0, 3), &load(50, 3, 3), CLOSED), None);
        // At zero, the starting instance takes the connection that woke it: no more.
        let mut waking = load(1, 0, 1);
        waking.starting = 1;
        assert_eq!(s.check(t0, &a, (0, 3), &waking, CLOSED), None);
        // A burst at zero: as many as it takes at once.
        let mut burst = load(6, 0, 1);
        burst.starting = 1;
        assert_eq!(s.check(t0, &a, (0, 8), &burst, CLOSED).unwrap().target, 3);
        // Quiet, but not for long enough.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(s.check(t1, &a, (0, 3), &load(0, 3, 3), CLOSED), None);
        assert_eq!(
            s.check(
                t1 + Duration::from_millis(500),
                &a,
                (0, 3),
                &load(0, 3, 3),
                CLOSED
            ),
            None
        );
        // Quiet for the delay: back to one (zero is the idle stop's), or min.
        let d = s
            .check(
                t1 + Duration::from_secs(1),
                &a,
                (0, 3),
                &load(0, 3, 3),
                CLOSED,
            )
            .unwrap();
        assert_eq!(d.target, 1);
        let mut s = Autoscaler::default();
        s.check(t1, &a, (2, 3), &load(0, 3, 3), CLOSED);
        let d = s
            .check(
                t1 + Duration::from_secs(2),
                &a,
                (2, 3),
                &load(0, 3, 3),
                CLOSED,
            )
            .unwrap();
        assert_eq!(d.target, 2);
    }

    #[test]
    fn an_open_connection_or_a_crash_loop_holds_the_target() {
        let a = Autoscale {
            kind: ScaleType::Capacity,
            target: 1,
            scale_down_delay: Duration::from_millis(1),
        };
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        let busy = load(0, 3, 3);
        s.check(t0, &a, (0, 4), &busy, || true);
        assert_eq!(
            s.check(t0 + Duration::from_secs(1), &a, (0, 4), &busy, || true),
            None
        );
        let mut crashing = load(9, 1, 1);
        crashing.crashing = true;
        assert_eq!(s.check(t0, &a, (0, 4), &crashing, CLOSED), None);
    }

    #[test]
    fn rps_follows_the_rate_of_new_connections() {
        let a = Autoscale {
            kind: ScaleType::Rps,
            target: 10,
            scale_down_delay: Duration::from_secs(1),
        };
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        let at = |lookups: u64, target: u32| Load {
            lookups,
            ..load(0, target, target)
        };
        assert_eq!(s.check(t0, &a, (0, 8), &at(0, 1), CLOSED), None);
        // 35 new connections in a second at 10 each: 4 instances.
        let t1 = t0 + Duration::from_secs(1);
        let d = s.check(t1, &a, (0, 8), &at(35, 1), CLOSED).unwrap();
        assert_eq!(d.target, 4);
        // The rate drops to 12 a second: 2 instances, once quiet for the delay.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(s.check(t2, &a, (0, 8), &at(47, 4), CLOSED), None);
        let t3 = t2 + Duration::from_secs(1);
        let d = s.check(t3, &a, (0, 8), &at(59, 4), CLOSED).unwrap();
        assert_eq!(d.target, 2);
    }
}
