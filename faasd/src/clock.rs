//! The one clock that activation timings use.

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC is system-wide, so the benchmark can
/// compare these with its own readings).
pub fn monotonic_ns() -> u64 {
    // SAFETY: clock_gettime writes into our timespec.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
