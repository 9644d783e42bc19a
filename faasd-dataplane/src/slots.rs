//! Socket slots: indexes into the SOCKMAP, reused after removal. Every operation is
//! O(log n), so deploying the 100,000th function costs what the first did.

use std::collections::BTreeSet;

/// The slots in use and free.
#[derive(Debug)]
pub(super) struct Slots {
    /// Slots below this have been handed out at some point.
    next: u32,
    /// Slots below `next` that are free again.
    free: BTreeSet<u32>,
    /// How many there may be.
    limit: u32,
}

impl Default for Slots {
    fn default() -> Self {
        Self::with_limit(faasd_common::MAX_BINDINGS)
    }
}

impl Slots {
    /// At most `limit` slots, numbered from 0.
    pub(super) fn with_limit(limit: u32) -> Self {
        Self {
            next: 0,
            free: BTreeSet::new(),
            limit,
        }
    }

    pub(super) fn take(&mut self) -> Option<u32> {
        if let Some(s) = self.free.pop_first() {
            return Some(s);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Marks a slot the pinned map already uses as taken.
    pub(super) fn claim(&mut self, slot: u32) {
        while self.next <= slot {
            self.free.insert(self.next);
            self.next += 1;
        }
        self.free.remove(&slot);
    }

    pub(super) fn release(&mut self, slot: u32) {
        if slot < self.next {
            self.free.insert(slot);
        }
    }

    /// Slots in use.
    pub(super) fn used(&self) -> usize {
        self.next as usize - self.free.len()
    }

    /// One past the highest slot ever handed out: what a counter pass must read.
    pub(super) fn high_water(&self) -> u32 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::Slots;

    #[test]
    fn slots_are_reused_lowest_first_and_claims_are_respected() {
        let mut s = Slots::default();
        assert_eq!((s.take(), s.take(), s.take()), (Some(0), Some(1), Some(2)));
        s.release(1);
        assert_eq!(s.used(), 2);
        assert_eq!(s.take(), Some(1));
        // After a restart the pinned map says slot 5 is in use.
        let mut s = Slots::default();
        s.claim(5);
        let taken: Vec<_> = (0..6).map(|_| s.take().unwrap()).collect();
        assert_eq!(taken, [0, 1, 2, 3, 4, 6]);
        assert_eq!(s.high_water(), 7);
    }

    #[test]
    fn slots_run_out_at_the_map_size() {
        let mut s = Slots::default();
        s.claim(faasd_common::MAX_BINDINGS - 1);
        for _ in 0..faasd_common::MAX_BINDINGS - 1 {
            assert!(s.take().is_some());
        }
        assert_eq!(s.take(), None);
    }
}
