//! Reading the per-CPU counter arrays without the data plane's lock: each reader holds its
//! own descriptor of the map. [`PerCpuReader::all`] reads every slot with
//! `BPF_MAP_LOOKUP_BATCH`, a handful of syscalls for the whole host, which is what one
//! `/metrics` page and `list` need; [`PerCpuReader::get`] reads one slot, as a function's
//! idle check does.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::sys::{BATCH, Cursor, bpf, lookup_batch};

/// bpf(2) commands used here.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// A read-only view of a per-CPU array whose values are `W` u64 counters, summed over CPUs.
#[derive(Debug)]
pub struct PerCpuReader<const W: usize> {
    fd: OwnedFd,
    cpus: usize,
}

impl<const W: usize> PerCpuReader<W> {
    /// A reader over its own duplicate of `map`'s descriptor.
    pub fn new(map: impl AsFd, cpus: usize) -> std::io::Result<Self> {
        Ok(Self {
            fd: map.as_fd().try_clone_to_owned()?,
            cpus,
        })
    }

    fn sum(&self, values: &[u64]) -> [u64; W] {
        let mut out = [0u64; W];
        for cpu in values.chunks_exact(W) {
            for (o, v) in out.iter_mut().zip(cpu) {
                *o += v;
            }
        }
        out
    }

    /// The counters of one index (zeros if it cannot be read).
    pub fn get(&self, index: u32) -> [u64; W] {
        let mut values = vec![0u64; W * self.cpus];
        let mut attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            key: (&raw const index) as u64,
            value: values.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: BPF_MAP_LOOKUP_ELEM reads the key and writes one value per possible CPU
        // into `values`, which holds exactly that many.
        if unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } < 0 {
            return [0; W];
        }
        self.sum(&values)
    }

    /// The counters of indexes `0..n`, in a few batch calls.
    pub fn all(&self, n: u32) -> Vec<[u64; W]> {
        let mut out = Vec::with_capacity(n as usize);
        let mut keys = vec![0u32; BATCH as usize];
        let mut values = vec![0u64; BATCH as usize * W * self.cpus];
        let mut cursor = Cursor::default();
        while (out.len() as u32) < n {
            let want = BATCH.min(n - out.len() as u32);
            // SAFETY: both buffers hold BATCH entries of this map's key and value sizes.
            let batch = unsafe {
                lookup_batch(
                    self.fd.as_raw_fd(),
                    &mut cursor,
                    keys.as_mut_ptr().cast(),
                    values.as_mut_ptr().cast(),
                    want,
                )
            };
            let Some((got, done)) = batch else {
                // Batch lookups unsupported: one call per index instead.
                while (out.len() as u32) < n {
                    out.push(self.get(out.len() as u32));
                }
                break;
            };
            let stride = W * self.cpus;
            for i in 0..got {
                out.push(self.sum(&values[i * stride..(i + 1) * stride]));
            }
            if done {
                break;
            }
        }
        out.resize(n as usize, [0; W]);
        out
    }
}
