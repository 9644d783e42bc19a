//! Open files: every function socket is one, and the limit (`LimitNOFILE=`) is the most
//! functions a daemon can hold. A deploy checks the headroom before it creates anything, so
//! running out is a clear answer (507 with what to raise), never a half-made function.

use std::sync::atomic::{AtomicU64, Ordering};

use super::DaemonError;

/// Descriptors kept free for everything that is not a function socket (API connections,
/// state files, a container start's handoff).
const RESERVE: u64 = 256;

/// What the daemon's function sockets use against the limit.
#[derive(Debug)]
pub(super) struct Budget {
    /// Descriptors open before any function was restored.
    baseline: u64,
    /// The soft limit when the daemon started (raising it takes a restart).
    limit: u64,
    /// Function sockets held now.
    sockets: AtomicU64,
}

/// Descriptors open now: for status pages, not for every deploy. Since Linux 6.2 the size
/// of `/proc/self/fd` is that number; on older kernels (size 0) its entries are counted,
/// which at 20,000 descriptors costs a scrape some 10 ms.
pub(super) fn open_now() -> u64 {
    match std::fs::metadata("/proc/self/fd") {
        Ok(m) if m.len() > 0 => m.len(),
        _ => std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
    }
}

/// The soft RLIMIT_NOFILE.
pub(super) fn limit() -> u64 {
    // SAFETY: getrlimit writes into the struct we own.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return u64::MAX;
    }
    r.rlim_cur
}

impl Budget {
    pub(super) fn measure() -> Self {
        Self {
            baseline: open_now(),
            limit: limit(),
            sockets: AtomicU64::new(0),
        }
    }

    /// Reserves `n` sockets' worth of descriptors, or says why there is no room. The
    /// reservation is given back when dropped, unless [`Reservation::keep`] was called.
    pub(super) fn reserve(&self, n: usize) -> Result<Reservation<'_>, DaemonError> {
        let n = n as u64;
        let limit = self.limit;
        let mut held = self.sockets.load(Ordering::Relaxed);
        loop {
            let used = self.baseline + held;
            if used + n + RESERVE > limit {
                return Err(DaemonError::NoFiles {
                    wanted: n,
                    used,
                    limit,
                    reserve: RESERVE,
                });
            }
            match self.sockets.compare_exchange_weak(
                held,
                held + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ok(Reservation {
                        budget: self,
                        n: n as usize,
                        kept: false,
                    });
                }
                Err(now) => held = now,
            }
        }
    }

    /// The limit deploys are checked against (read at start).
    pub(super) fn limit(&self) -> u64 {
        self.limit
    }

    /// Gives back what a kept reservation held (the function's sockets are closed).
    pub(super) fn release(&self, n: usize) {
        self.sockets.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

/// Descriptors reserved for one function's sockets.
#[derive(Debug)]
pub(super) struct Reservation<'a> {
    budget: &'a Budget,
    n: usize,
    kept: bool,
}

impl Reservation<'_> {
    /// The function now holds the descriptors; [`Budget::release`] gives them back.
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.budget.release(self.n);
        }
    }
}
