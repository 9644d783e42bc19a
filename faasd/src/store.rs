//! Durable state under the state directory, safe against kill -9 at any moment.
//!
//! One file per function (`functions/<namespace>/<name>.json`) so a deploy writes one small
//! file, not the whole host's state; and `next-address`, the allocation counter. Every write
//! goes to a temporary file that is fsynced, renamed over the old one, and the directory
//! fsynced: a reader sees the old version or the new one, never a torn one.

use std::{
    fs::{self, File},
    io::Write,
    net::Ipv6Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{config::Ipv6Net, spec::FunctionSpec};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A state file does not parse; it is left in place for the operator.
    #[error("state file {path} is corrupt ({source}); move it away to start without it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The function prefix has no addresses left.
    #[error("the function prefix {0} is exhausted")]
    PrefixExhausted(Ipv6Net),
}

/// A deployed function as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionRecord {
    /// What was deployed.
    pub spec: FunctionSpec,
    /// Its address, allocated once and kept for the function's life.
    pub address: Ipv6Addr,
    /// Unix time of the first deploy, seconds.
    pub created_at: u64,
}

/// The state directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// Serialises the address counter's read-increment-write: deploys of different
    /// functions run concurrently, and no address may be handed out twice.
    counter: std::sync::Mutex<()>,
}

const COUNTER_FILE: &str = "next-address";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Opens (creating) the state directory and removes temporaries a crash left behind.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let functions = dir.join("functions");
        fs::create_dir_all(&functions).map_err(io("create", &functions))?;
        let store = Self {
            dir: dir.to_owned(),
            counter: std::sync::Mutex::new(()),
        };
        for ns in read_dir(&functions)? {
            for f in read_dir(&ns)? {
                if f.extension().is_some_and(|e| e == "tmp") {
                    fs::remove_file(&f).map_err(io("remove", &f))?;
                }
            }
        }
        Ok(store)
    }

    /// Every stored function.
    pub fn load(&self) -> Result<Vec<FunctionRecord>, StoreError> {
        let mut out = Vec::new();
        for ns in read_dir(&self.dir.join("functions"))? {
            for f in read_dir(&ns)? {
                if f.extension().is_some_and(|e| e == "json") {
                    let bytes = fs::read(&f).map_err(io("read", &f))?;
                    let rec =
                        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                            path: f.clone(),
                            source,
                        })?;
                    out.push(rec);
                }
            }
        }
        Ok(out)
    }

    fn counter(&self) -> Result<u128, StoreError> {
        let path = self.dir.join(COUNTER_FILE);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().parse::<u128>().unwrap_or(1).max(1)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(1),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    /// Raises the address counter above every address in use (run once at start: should
    /// the counter file have been lost, no address in use is handed out again).
    pub fn raise_counter_above(
        &self,
        prefix: Ipv6Net,
        in_use: impl Iterator<Item = Ipv6Addr>,
    ) -> Result<(), StoreError> {
        let _counter = self.counter.lock().expect("address counter lock");
        let host_mask = u128::MAX >> prefix.len;
        let above_used = in_use
            .filter(|a| prefix.contains(*a))
            .map(|a| (u128::from(a) & host_mask) + 1)
            .max()
            .unwrap_or(1);
        if above_used > self.counter()? {
            write_atomic(
                &self.dir.join(COUNTER_FILE),
                format!("{above_used}\n").as_bytes(),
            )?;
        }
        Ok(())
    }

    /// Allocates the next address of `prefix`. Addresses are never handed out twice: the
    /// counter only grows, and it is durable before the address is returned.
    pub fn allocate_address(&self, prefix: Ipv6Net) -> Result<Ipv6Addr, StoreError> {
        let _counter = self.counter.lock().expect("address counter lock");
        let n = self.counter()?;
        let addr = prefix.nth(n).ok_or(StoreError::PrefixExhausted(prefix))?;
        write_atomic(
            &self.dir.join(COUNTER_FILE),
            format!("{}\n", n + 1).as_bytes(),
        )?;
        Ok(addr)
    }

    /// Writes a function's record.
    pub fn put(&self, rec: &FunctionRecord) -> Result<(), StoreError> {
        let dir = self.dir.join("functions").join(&rec.spec.namespace);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let bytes = serde_json::to_vec_pretty(rec).expect("records always serialize");
        write_atomic(&dir.join(format!("{}.json", rec.spec.name)), &bytes)
    }

    /// Deletes a function's record.
    pub fn remove(&self, namespace: &str, name: &str) -> Result<(), StoreError> {
        let dir = self.dir.join("functions").join(namespace);
        let path = dir.join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// As [`write_atomic`], for secrets: the file is created mode 0600 before anything is
/// written to it, so no other user ever reads the bytes.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// `N` random bytes from the kernel (keys, passwords, call ids).
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != N as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Deployment, FunctionSpec};

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("faasd-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn record(name: &str, address: Ipv6Addr) -> FunctionRecord {
        let (spec, _) = FunctionSpec::from_deployment(Deployment {
            service: name.into(),
            env_process: Some("/bin/true".into()),
            ..Default::default()
        })
        .unwrap();
        FunctionRecord {
            spec,
            address,
            created_at: 1,
        }
    }

    #[test]
    fn records_survive_reopen_and_leftover_temporaries_are_dropped() {
        let d = tempdir("reopen");
        let s = Store::open(&d).unwrap();
        let r = record("a", "fd00:faa5:1::1".parse().unwrap());
        s.put(&r).unwrap();
        // A crash in the middle of a write leaves only a temporary behind.
        fs::write(d.join("functions/openfaas-fn/b.tmp"), b"{half").unwrap();
        let s = Store::open(&d).unwrap();
        assert_eq!(s.load().unwrap(), vec![r]);
        assert!(!d.join("functions/openfaas-fn/b.tmp").exists());
        s.remove("openfaas-fn", "a").unwrap();
        assert!(s.load().unwrap().is_empty());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn addresses_are_never_reused() {
        let d = tempdir("alloc");
        let s = Store::open(&d).unwrap();
        let p: Ipv6Net = "fd00:faa5:1::/48".parse().unwrap();
        let a = s.allocate_address(p).unwrap();
        let b = s.allocate_address(p).unwrap();
        assert_eq!(a, "fd00:faa5:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(b, "fd00:faa5:1::2".parse::<Ipv6Addr>().unwrap());
        // Losing the counter file must not hand out an address still in use.
        fs::remove_file(d.join(COUNTER_FILE)).unwrap();
        s.raise_counter_above(p, [b].into_iter()).unwrap();
        let c = s.allocate_address(p).unwrap();
        assert_eq!(c, "fd00:faa5:1::3".parse::<Ipv6Addr>().unwrap());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let d = tempdir("concurrent");
        let s = Store::open(&d).unwrap();
        let p: Ipv6Net = "fd00:faa5:1::/48".parse().unwrap();
        let all: Vec<Ipv6Addr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    sc.spawn(|| {
                        (0..50)
                            .map(|_| s.allocate_address(p).unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 400);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn exhausted_prefix_is_reported() {
        let d = tempdir("full");
        let s = Store::open(&d).unwrap();
        let p: Ipv6Net = "fd00:faa5:1::/127".parse().unwrap();
        s.allocate_address(p).unwrap();
        assert!(matches!(
            s.allocate_address(p),
            Err(StoreError::PrefixExhausted(_))
        ));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_files_are_named() {
        let d = tempdir("corrupt");
        let s = Store::open(&d).unwrap();
        fs::create_dir_all(d.join("functions/x")).unwrap();
        fs::write(d.join("functions/x/y.json"), b"{").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("y.json"), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }
}
