//! The raw bpf(2) call, for the commands aya does not offer in the form needed here.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `BPF_MAP_LOOKUP_BATCH`: many entries per call.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries read per batch call.
pub(super) const BATCH: u32 = 4096;

/// The batch operations' attribute.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// bpf(2) with `attr` as its attribute union.
///
/// # Safety
/// Every pointer in `attr` must be valid for what the command reads or writes through it.
pub(super) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> libc::c_long {
    // SAFETY: the caller vouches for the pointers inside `attr`; the size is its own.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) }
}

/// Where a batch lookup is: the kernel's cursor (a bucket or an index, both u32).
#[derive(Default)]
pub(super) struct Cursor {
    token: u32,
    started: bool,
}

/// One `BPF_MAP_LOOKUP_BATCH` call of up to `count` entries from `cursor` into `keys` and
/// `values`, which must hold that many (of the map's key and value sizes). Returns how many
/// came and whether the map is done; `None` if the kernel refuses batch lookups.
///
/// # Safety
/// `keys` and `values` must be valid for `count` of the map's keys and values.
pub(super) unsafe fn lookup_batch(
    map_fd: libc::c_int,
    cursor: &mut Cursor,
    keys: *mut u8,
    values: *mut u8,
    count: u32,
) -> Option<(usize, bool)> {
    let mut attr = BatchAttr {
        in_batch: if cursor.started {
            (&raw const cursor.token) as u64
        } else {
            0
        },
        out_batch: (&raw mut cursor.token) as u64,
        keys: keys as u64,
        values: values as u64,
        count,
        map_fd: map_fd as u32,
        ..Default::default()
    };
    // SAFETY: the caller vouches for the buffers; the cursor and the count are ours.
    let r = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
    let end = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
    if r < 0 && !end {
        return None;
    }
    cursor.started = true;
    let got = attr.count as usize;
    Some((got, end || got == 0))
}

/// Every entry of a hash map, a batch of 4,096 per call; `None` if the kernel refuses batch
/// lookups (the caller then iterates key by key).
pub(super) fn hash_entries<K: aya::Pod, V: aya::Pod>(map: BorrowedFd<'_>) -> Option<Vec<(K, V)>> {
    // SAFETY: Pod types are plain data, for which all zeroes is a valid value.
    let (k0, v0): (K, V) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    let mut keys = vec![k0; BATCH as usize];
    let mut values = vec![v0; BATCH as usize];
    let mut out = Vec::new();
    let mut cursor = Cursor::default();
    loop {
        // SAFETY: both buffers hold BATCH entries of the map's types.
        let (got, done) = unsafe {
            lookup_batch(
                map.as_raw_fd(),
                &mut cursor,
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                BATCH,
            )
        }?;
        out.extend(
            keys[..got]
                .iter()
                .copied()
                .zip(values[..got].iter().copied()),
        );
        if done {
            return Some(out);
        }
    }
}
