//! Reading the per-CPU counter arrays without the data plane's lock: each reader holds its
//! own descriptor of the map. [`PerCpuReader::all`] reads every slot with
//! `BPF_MAP_LOOKUP_BATCH`, a handful of syscalls for the whole host, which is what one
//! `/metrics` page and `list` need; [`PerCpuReader::get`] reads one slot, as a function's
//! idle check does.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::sys::{BATCH, BPF_MAP_LOOKUP_BATCH, BatchAttr, bpf};

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
        let mut token = 0u32;
        let mut first = true;
        while (out.len() as u32) < n {
            let want = BATCH.min(n - out.len() as u32);
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { (&raw const token) as u64 },
                out_batch: (&raw mut token) as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: want,
                map_fd: self.fd.as_raw_fd() as u32,
                ..Default::default()
            };
            // SAFETY: the kernel writes at most `count` keys and values into buffers sized
            // for BATCH entries, the batch token into `token` and the count read into `attr`.
            let r = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
            let end = r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
            if r < 0 && !end {
                // Batch lookups unsupported: one call per index instead.
                while (out.len() as u32) < n {
                    out.push(self.get(out.len() as u32));
                }
                break;
            }
            let got = attr.count as usize;
            let stride = W * self.cpus;
            for i in 0..got {
                out.push(self.sum(&values[i * stride..(i + 1) * stride]));
            }
            if end || got == 0 {
                break;
            }
            first = false;
        }
        out.resize(n as usize, [0; W]);
        out
    }
}
