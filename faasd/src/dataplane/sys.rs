//! The raw bpf(2) call, for the commands aya does not offer in the form needed here.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_MAP_LOOKUP_BATCH`: many entries per call.
pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries read per batch call.
pub(super) const BATCH: u32 = 4096;

/// The batch operations' attribute.
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub in_batch: u64,
    pub out_batch: u64,
    pub keys: u64,
    pub values: u64,
    pub count: u32,
    pub map_fd: u32,
    pub elem_flags: u64,
    pub flags: u64,
}

/// bpf(2) with `attr` as its attribute union.
///
/// # Safety
/// Every pointer in `attr` must be valid for what the command reads or writes through it.
pub(super) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> libc::c_long {
    // SAFETY: the caller vouches for the pointers inside `attr`; the size is its own.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) }
}

/// Every entry of a hash map, a batch of 4,096 per call; `None` if the kernel refuses batch
/// lookups (the caller then iterates key by key).
pub(super) fn hash_entries<K: aya::Pod, V: aya::Pod>(map: BorrowedFd<'_>) -> Option<Vec<(K, V)>> {
    // SAFETY: Pod types are plain data, for which all zeroes is a valid value.
    let (k0, v0): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut keys = vec![k0; BATCH as usize];
    let mut values = vec![v0; BATCH as usize];
    let mut out = Vec::new();
    // A hash map's batch cursor is a bucket index.
    let mut token = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const token) as u64 },
            out_batch: (&raw mut token) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: the kernel writes at most `count` keys and values into buffers sized for
        // BATCH entries of these types, the cursor into `token`, the count into `attr`.
        let r = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let end = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
        if r < 0 && !end {
            return None;
        }
        let got = attr.count as usize;
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        if end || got == 0 {
            return Some(out);
        }
        first = false;
    }
}
