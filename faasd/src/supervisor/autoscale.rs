//! Scaling with the load, from what the kernel already knows: a running function that asks
//! for it is checked every [`TICK`] while it has instances, and not at all otherwise.
//!
//! - The load, by `com.openfaas.scale.type`: `capacity` counts the connections open to the
//!   function (accepted or still in its accept queue, from one `sock_diag` dump for the
//!   host); `rps` the new connections the steering program counted over the last
//!   [`WINDOW`]; `cpu` the millicores its instances' cgroups used over that window. It
//!   needs ⌈load ÷ (target × proportion)⌉ instances.
//! - Up to what the load needs, up to max, once two checks in a row saw it (a dump of the
//!   connections is no snapshot: one closing as the next opens can show as two); a burst
//!   against a function at zero starts that many together, at once. With `rps` and `cpu`, work waiting in the accept queue
//!   at every check for [`WAITED`] while every instance is busy adds one more than run.
//! - Down only once the load has needed fewer for `faasd.dev/scale-down-delay`, and then
//!   to the most it needed over the last such delay (so a steady load does not flap),
//!   never below `scale.min` or one instance (zero is the idle stop's). Only instances
//!   that hold no connection are stopped: one still serving a long-lived connection stays.
//! - A crash-looping function does not grow: its failed starts would only multiply.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use faasd_core::spec::{Autoscale, ScaleType};

/// How often a running function's load is read.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// Over how long `rps` and `cpu` measure.
pub(super) const WINDOW: Duration = Duration::from_secs(1);
/// Work counts as waiting once the accept queue has been non-empty at every check for
/// this long: at hundreds of connections a second a check often catches one between its
/// arrival and its accept, which is not waiting.
const WAITED: Duration = Duration::from_millis(50);
/// How soon scaling down is tried again when every extra instance still holds a
/// connection.
const DOWN_RETRY: Duration = Duration::from_millis(200);

/// What the autoscaler keeps between checks.
#[derive(Debug, Default)]
pub(super) struct Autoscaler {
    /// The next check, while the function has instances.
    pub check: Option<Instant>,
    /// `rps` and `cpu`: the window's start and the counter then.
    window: Option<(Instant, u64)>,
    /// `rps` and `cpu`: the last full window's load.
    windowed: Option<f64>,
    /// What the load needed over the last scale-down delay, as a sliding maximum: each
    /// entry needed more than every later one, so the front is the most.
    recent: VecDeque<(Instant, u32)>,
    /// Since when the load has needed fewer instances than the target.
    below_since: Option<Instant>,
    /// Scaling down waits for an instance to let go of its connections until then.
    down_retry: Option<Instant>,
    /// Since when the accept queue has been non-empty at every check.
    queued_since: Option<Instant>,
    /// What the last check needed, when that was more than the target.
    rising: Option<u32>,
}

/// A decision: the new target and why.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Decision {
    pub target: u32,
    pub reason: String,
}

/// What the supervisor knows at a check.
#[derive(Debug, Default)]
pub(super) struct Load {
    /// Connections open to the function: accepted, or waiting in its accept queues.
    pub open: u64,
    /// Connections waiting in the accept queues.
    pub queued: u64,
    /// Instances running, not stopping.
    pub running: u32,
    /// Instances starting.
    pub starting: u32,
    /// The current target.
    pub target: u32,
    /// Whether the function is crash-looping.
    pub crashing: bool,
    /// `rps`: new connections steered to it so far; `cpu`: CPU time its instances used
    /// so far, in µs (counters), when [`Autoscaler::counter_due`] said to read it.
    pub counter: Option<u64>,
}

/// What a load needs.
#[derive(Debug)]
struct Need {
    /// The load, in the scale type's unit.
    load: f64,
    /// Instances.
    instances: u32,
    /// Work waits with every instance busy (`rps`, `cpu`).
    waiting: bool,
}

/// The load a check measured, in the unit of the function's scale type.
#[derive(Debug, PartialEq)]
pub(super) struct Checked {
    /// Open connections, new connections a second, or millicores.
    pub load: f64,
    /// The target to change to, if it should.
    pub decision: Option<Decision>,
}

impl Autoscaler {
    /// Checks the load at `now`. `idle` says how many running instances hold no
    /// connection (`None` when that cannot be told); it is asked only before scaling down.
    pub(super) fn check(
        &mut self,
        now: Instant,
        a: &Autoscale,
        (min, max): (u32, u32),
        l: &Load,
        idle: impl FnOnce() -> Option<u32>,
    ) -> Checked {
        let load = match a.kind {
            ScaleType::Capacity => l.open as f64,
            ScaleType::Rps | ScaleType::Cpu => self.windowed(now, a.kind, l.counter),
        };
        self.queued_since = match (l.queued, self.queued_since) {
            (0, _) => None,
            (_, since) => Some(since.unwrap_or(now)),
        };
        let mut need = Need {
            load,
            instances: a.instances_for(load),
            waiting: a.kind != ScaleType::Capacity
                && self.queued_since.is_some_and(|t| now - t >= WAITED),
        };
        if need.waiting {
            // Every instance is busy: one more than run, or the ones starting take it.
            need.instances = need
                .instances
                .max(l.running.saturating_add(l.starting.max(1)));
        }
        let decision = self.decide(now, a, (min, max), l, &need, idle);
        Checked { load, decision }
    }

    /// Whether a check at `now` needs the counter: a window starts or ends.
    pub(super) fn counter_due(&self, now: Instant) -> bool {
        self.window.is_none_or(|(since, _)| now - since >= WINDOW)
    }

    /// `rps` and `cpu`: the load over the last full window of the counter.
    fn windowed(&mut self, now: Instant, kind: ScaleType, counter: Option<u64>) -> f64 {
        let Some(counter) = counter else {
            return self.windowed.unwrap_or(0.0);
        };
        let (since, at) = *self.window.get_or_insert((now, counter));
        // A counter that went back (an instance's cgroup went away with its usage)
        // starts the window again.
        if counter < at {
            self.window = Some((now, counter));
        } else if now - since >= WINDOW {
            let per_second = (counter - at) as f64 / (now - since).as_secs_f64();
            self.window = Some((now, counter));
            self.windowed = Some(match kind {
                // µs of CPU a second → millicores.
                ScaleType::Cpu => per_second / 1000.0,
                _ => per_second,
            });
        }
        self.windowed.unwrap_or(0.0)
    }

    fn decide(
        &mut self,
        now: Instant,
        a: &Autoscale,
        (min, max): (u32, u32),
        l: &Load,
        need: &Need,
        idle: impl FnOnce() -> Option<u32>,
    ) -> Option<Decision> {
        let needed = need.instances;
        let goal = needed.max(min).max(1);
        while self.recent.back().is_some_and(|&(_, n)| n <= goal) {
            self.recent.pop_back();
        }
        self.recent.push_back((now, goal));
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| t + a.scale_down_delay < now)
        {
            self.recent.pop_front();
        }
        if needed > l.target {
            self.below_since = None;
            // A dump of the connections is no snapshot: one closing as the next opens can
            // show as two. So more instances only on what two checks in a row saw (the
            // lesser), unless none runs yet (a burst against a function at zero).
            let seen = match self.rising.replace(needed) {
                _ if l.running == 0 => needed,
                Some(before) => needed.min(before),
                None => return None,
            };
            let want = seen.min(max);
            if l.crashing || want <= l.target {
                return None;
            }
            self.rising = None;
            let why = if need.waiting {
                format!(
                    "{} connection(s) waiting with {} instance(s) running and {} starting",
                    l.queued, l.running, l.starting
                )
            } else {
                format!("{} needs {needed}", describe(a, need.load))
            };
            return Some(Decision {
                target: want,
                reason: format!("{why}: up to {want}"),
            });
        }
        self.rising = None;
        if goal >= l.target {
            self.below_since = None;
            return None;
        }
        let since = *self.below_since.get_or_insert(now);
        let most = self.recent.front().map_or(goal, |&(_, n)| n);
        if now - since < a.scale_down_delay
            || most >= l.target
            || self.down_retry.is_some_and(|t| now < t)
        {
            return None;
        }
        let Some(idle) = idle() else {
            self.down_retry = Some(now + DOWN_RETRY);
            return None;
        };
        // Only idle instances stop.
        let to = most.max(l.target.saturating_sub(idle));
        if to >= l.target {
            self.down_retry = Some(now + DOWN_RETRY);
            return None;
        }
        self.down_retry = None;
        let held = if to > most {
            format!("; {} more hold connections", to - most)
        } else {
            String::new()
        };
        Some(Decision {
            target: to,
            reason: format!(
                "the load needed at most {most} instance(s) for {:?}: down to {to}{held}",
                a.scale_down_delay
            ),
        })
    }
}

/// The load, in words.
pub(super) fn describe(a: &Autoscale, load: f64) -> String {
    let per = a.per_instance();
    match a.kind {
        ScaleType::Capacity => format!("{load} connection(s) open at {per} per instance"),
        ScaleType::Rps => format!("{load:.1} new connections a second at {per} per instance"),
        ScaleType::Cpu => format!("{load:.0} millicores at {per} per instance"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auto(kind: ScaleType, target: u32, delay: Duration) -> Autoscale {
        Autoscale {
            kind,
            target,
            proportion_milli: 1000,
            scale_down_delay: delay,
        }
    }

    fn load(open: u64, running: u32, target: u32) -> Load {
        Load {
            open,
            running,
            target,
            ..Load::default()
        }
    }

    const ALL_IDLE: fn() -> Option<u32> = || Some(u32::MAX);

    #[test]
    fn open_connections_set_the_instances_up_to_max_and_quiet_brings_them_back() {
        let a = auto(ScaleType::Capacity, 2, Duration::from_secs(1));
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        let target = |s: &mut Autoscaler, t, bounds, l: &Load| {
            s.check(t, &a, bounds, l, ALL_IDLE)
                .decision
                .map(|d| d.target)
        };
        // 5 open at 2 per instance: 3, once a second check sees it too.
        assert_eq!(target(&mut s, t0, (0, 8), &load(5, 1, 1)), None);
        assert_eq!(target(&mut s, t0 + TICK, (0, 8), &load(5, 1, 1)), Some(3));
        // A spike one check saw is not followed: the lesser of two.
        assert_eq!(target(&mut s, t0, (0, 8), &load(9, 1, 1)), None);
        assert_eq!(target(&mut s, t0 + TICK, (0, 8), &load(3, 1, 1)), Some(2));
        // Never past max.
        assert_eq!(target(&mut s, t0, (0, 3), &load(50, 1, 1)), None);
        assert_eq!(target(&mut s, t0 + TICK, (0, 3), &load(50, 1, 1)), Some(3));
        // Already there: nothing to do.
        assert_eq!(target(&mut s, t0, (0, 3), &load(50, 3, 3)), None);
        // A burst at zero: as many as it takes at once, the starting one included.
        let mut burst = load(6, 0, 1);
        burst.starting = 1;
        assert_eq!(target(&mut s, t0, (0, 8), &burst), Some(3));
        // Fewer needed, but not for long enough.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(target(&mut s, t1, (0, 3), &load(0, 3, 3)), None);
        let t2 = t1 + Duration::from_millis(500);
        // Midway the load needed 2: that is as far as it goes down after the delay.
        assert_eq!(target(&mut s, t2, (0, 3), &load(3, 3, 3)), None);
        let t3 = t1 + Duration::from_secs(1);
        assert_eq!(target(&mut s, t3, (0, 3), &load(0, 3, 3)), Some(2));
        // Then on to one (zero is the idle stop's) a delay later, or to min.
        assert_eq!(target(&mut s, t3, (0, 3), &load(0, 2, 2)), None);
        let t4 = t3 + Duration::from_secs(1);
        assert_eq!(target(&mut s, t4, (0, 3), &load(0, 2, 2)), Some(1));
        let mut s = Autoscaler::default();
        target(&mut s, t1, (2, 3), &load(0, 3, 3));
        assert_eq!(target(&mut s, t4, (2, 3), &load(0, 3, 3)), Some(2));
    }

    #[test]
    fn the_target_proportion_fills_an_instance_early() {
        let mut a = auto(ScaleType::Capacity, 10, Duration::from_secs(1));
        a.proportion_milli = 500;
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        s.check(t0, &a, (0, 8), &load(12, 1, 1), ALL_IDLE);
        let c = s.check(t0 + TICK, &a, (0, 8), &load(12, 1, 1), ALL_IDLE);
        assert_eq!(c.load, 12.0);
        // 12 at 10 × 0.5 per instance: 3.
        assert_eq!(c.decision.unwrap().target, 3);
    }

    #[test]
    fn instances_holding_connections_and_crash_loops_hold_the_target() {
        let a = auto(ScaleType::Capacity, 1, Duration::from_millis(1));
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        // 4 running, the load needs 1, but only one instance is idle: down to 3.
        let busy = load(1, 4, 4);
        assert_eq!(s.check(t0, &a, (0, 4), &busy, || Some(1)).decision, None);
        let t1 = t0 + Duration::from_secs(1);
        let d = s.check(t1, &a, (0, 4), &busy, || Some(1)).decision.unwrap();
        assert_eq!(d.target, 3);
        assert!(d.reason.contains("2 more hold connections"), "{}", d.reason);
        // None idle: it waits, and looks again only after a while.
        let held = load(1, 3, 3);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(s.check(t2, &a, (0, 4), &held, || Some(0)).decision, None);
        let t3 = t2 + TICK;
        assert_eq!(s.check(t3, &a, (0, 4), &held, || Some(0)).decision, None);
        let asked = std::cell::Cell::new(false);
        let idle_now = || {
            asked.set(true);
            Some(3)
        };
        assert_eq!(
            s.check(t3 + TICK, &a, (0, 4), &held, idle_now).decision,
            None
        );
        assert!(!asked.get(), "asked again before the retry");
        // Unknown: no stop either.
        let t4 = t3 + DOWN_RETRY;
        assert_eq!(s.check(t4, &a, (0, 4), &held, || None).decision, None);
        // Once they let go, down it goes.
        let t5 = t4 + DOWN_RETRY;
        let d = s.check(t5, &a, (0, 4), &held, || Some(3)).decision.unwrap();
        assert_eq!(d.target, 1);
        // A crash loop does not grow.
        let mut crashing = load(9, 1, 1);
        crashing.crashing = true;
        assert_eq!(s.check(t0, &a, (0, 4), &crashing, ALL_IDLE).decision, None);
    }

    #[test]
    fn rps_and_cpu_follow_their_counters_over_a_window() {
        let a = auto(ScaleType::Rps, 10, Duration::from_secs(1));
        let mut s = Autoscaler::default();
        let t0 = Instant::now();
        let at = |counter: u64, target: u32| Load {
            counter: Some(counter),
            ..load(0, target, target)
        };
        assert_eq!(s.check(t0, &a, (0, 8), &at(0, 1), ALL_IDLE).decision, None);
        // 35 new connections in a second at 10 each: 4 instances.
        let t1 = t0 + Duration::from_secs(1);
        let c = s.check(t1, &a, (0, 8), &at(35, 1), ALL_IDLE);
        assert_eq!((c.load, c.decision), (35.0, None), "seen once");
        let c = s.check(t1 + TICK, &a, (0, 8), &at(35, 1), ALL_IDLE);
        assert_eq!(c.decision.unwrap().target, 4);
        // Waiting work with every instance busy: one more than run, once it has waited
        // at every check for a while.
        let mut waiting = at(35, 4);
        (waiting.queued, waiting.running) = (3, 4);
        assert_eq!(s.check(t1, &a, (0, 8), &waiting, ALL_IDLE).decision, None);
        let d = s.check(t1 + TICK, &a, (0, 8), &waiting, ALL_IDLE).decision;
        assert_eq!(d, None, "not yet waited long enough");
        assert_eq!(
            s.check(t1 + WAITED, &a, (0, 8), &waiting, ALL_IDLE)
                .decision,
            None
        );
        let d = s
            .check(t1 + WAITED + TICK, &a, (0, 8), &waiting, ALL_IDLE)
            .decision;
        assert_eq!(d.unwrap().target, 5);
        // The rate drops to 12 a second: 2 instances, once it has for the delay.
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(s.check(t2, &a, (0, 8), &at(47, 5), ALL_IDLE).decision, None);
        let t3 = t2 + Duration::from_secs(1);
        let d = s
            .check(t3, &a, (0, 8), &at(59, 5), ALL_IDLE)
            .decision
            .unwrap();
        assert_eq!(d.target, 2);

        // cpu: 1.5 s of CPU in a second is 1,500 millicores; at 500 each, 3 instances.
        let a = auto(ScaleType::Cpu, 500, Duration::from_secs(1));
        let mut s = Autoscaler::default();
        s.check(t0, &a, (0, 8), &at(7_000_000, 1), ALL_IDLE);
        s.check(t1, &a, (0, 8), &at(8_500_000, 1), ALL_IDLE);
        let c = s.check(t1 + TICK, &a, (0, 8), &at(8_500_000, 1), ALL_IDLE);
        assert_eq!(c.load, 1500.0);
        assert_eq!(c.decision.unwrap().target, 3);
        // A counter that goes back (an instance's cgroup removed) restarts the window.
        let c = s.check(t2, &a, (0, 8), &at(100, 3), ALL_IDLE);
        assert_eq!((c.load, c.decision), (1500.0, None));
    }
}
