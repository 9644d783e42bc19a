//! Scaling with the load (`com.openfaas.scale.type=capacity`): the kernel's accept queues
//! say when work waits, so a running function with `scale.max` above 1 is checked every
//! [`TICK`] while it has instances, and not at all otherwise.
//!
//! - Up: connections waiting in the accept queue of its TCP sockets mean every instance is
//!   busy; it grows by enough instances to take them at `scale.target` connections each
//!   (a burst against a function at zero starts that many at once), up to max.
//! - Down: once nothing has waited for `faasd.dev/scale-down-delay` and no connection is
//!   open (so none is cut), it returns to `scale.min`, or one instance (scaling to zero
//!   is the idle stop's).
//! - A crash-looping function does not grow: its failed starts would only multiply.

use std::time::{Duration, Instant};

use faasd_core::spec::Autoscale;

/// How often a running function's queues are read.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// What the autoscaler keeps between checks.
#[derive(Debug, Default)]
pub(super) struct Autoscaler {
    /// The next check, while the function has instances.
    pub check: Option<Instant>,
    /// Since when nothing has waited.
    quiet_since: Option<Instant>,
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
        if load.queued > 0 {
            self.quiet_since = None;
            if load.crashing {
                return None;
            }
            // Running instances are busy (work waits); starting ones will take some of it.
            let needed = load.queued.div_ceil(u64::from(a.target)) as u32;
            let want = load
                .running
                .saturating_add(needed.max(load.starting))
                .min(max);
            return (want > load.target).then(|| Decision {
                target: want,
                reason: format!(
                    "{} connection(s) waiting with {} instance(s) running and {} starting: \
                     up to {want}",
                    load.queued, load.running, load.starting
                ),
            });
        }
        let quiet = *self.quiet_since.get_or_insert(now);
        let floor = min.max(1);
        if load.target <= floor || now - quiet < a.scale_down_delay || open() {
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
        }
    }

    const CLOSED: fn() -> bool = || false;

    #[test]
    fn waiting_work_adds_instances_up_to_max_and_quiet_brings_them_back() {
        let a = Autoscale {
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
}
