//! The functions' durable state: a snapshot and a journal under the state directory.
//!
//! Every change (a function's record written or deleted, the address counter raised) is
//! appended to `functions.journal` by one committer thread that makes a whole batch durable
//! with one flush before it answers anyone: a 2xx is never sent for a change that is not on
//! disk, and concurrent deploys share the flush. Now and then the journal is folded into
//! `functions.snapshot`. Opening the store replays both; a write that a kill -9 cut short is
//! dropped (it was never acknowledged). A state directory of the earlier layout, one file
//! per function, is taken over the first time.

mod journal;
mod legacy;

use std::{
    net::Ipv6Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
};

use std::os::unix::fs::PermissionsExt;

use serde::{Deserialize, Serialize};

use crate::{config::Ipv6Net, spec::FunctionSpec};
use journal::{Change, Committer, Request, State};

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
    /// A change could not be made durable; the store takes no more until a restart.
    #[error(
        "writing {path}: {source}; the change was not made, and faasd accepts no more \
         changes until the disk is fixed and faasd restarted"
    )]
    Commit {
        /// The journal.
        path: PathBuf,
        /// Why the write failed.
        source: Arc<std::io::Error>,
    },
    /// A state file does not parse; it is left in place for the operator.
    #[error("state file {path} is corrupt ({source}); move it away to start without it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A frame in the middle of a state file fails its checksum: acknowledged data is
    /// damaged, which no crash causes.
    #[error(
        "state file {path} is damaged at byte {offset} (checksum mismatch with valid entries \
         after it); restore it from a backup, or move it away to start without it"
    )]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where the damaged frame starts.
        offset: u64,
    },
    /// The committer thread is gone (faasd is shutting down).
    #[error("the store is closed")]
    Closed,
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

/// The state directory's function store.
#[derive(Debug)]
pub struct Store {
    tx: Option<mpsc::Sender<Request>>,
    committer: Option<JoinHandle<()>>,
    /// The next host number to hand out. Held across the send of its journal entry, so the
    /// journal sees the counter only grow.
    next: Mutex<u128>,
}

const SNAPSHOT_FILE: &str = "functions.snapshot";
const JOURNAL_FILE: &str = "functions.journal";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// An opened store and what it held.
#[derive(Debug)]
pub struct Opened {
    /// The store, for changes from now on.
    pub store: Store,
    /// Every stored function, by namespace and name.
    pub records: Vec<Arc<FunctionRecord>>,
}

/// A change handed to the committer; await [`Commit::durable`] before acknowledging it.
#[derive(Debug)]
#[must_use = "a change is only safe to acknowledge once it is durable"]
pub struct Commit(tokio::sync::oneshot::Receiver<Result<(), StoreError>>);

impl Commit {
    /// Waits until the change is on disk.
    pub async fn durable(self) -> Result<(), StoreError> {
        self.0.await.unwrap_or(Err(StoreError::Closed))
    }

    /// As [`Commit::durable`], from a thread that is not running async code.
    #[cfg(test)]
    pub fn wait(self) -> Result<(), StoreError> {
        self.0.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl Store {
    /// Opens (creating) the store in `dir` and returns it with every stored function.
    pub fn open(dir: &Path) -> Result<Opened, StoreError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        // Records hold functions' environments, and logs and secrets live here too: the
        // owner's alone, as systemd's StateDirectoryMode=0700 makes it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("restrict", dir))?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let journal_path = dir.join(JOURNAL_FILE);
        legacy::migrate(dir, &snapshot_path)?;
        let mut state = State {
            next: 1,
            ..State::default()
        };
        let snapshot = journal::read_optional(&snapshot_path)?;
        let read = journal::replay(&snapshot_path, &snapshot, &mut state)?;
        if read.valid_len != snapshot.len() as u64 {
            // Snapshots are renamed into place whole, so this is damage, not a crash.
            return Err(StoreError::Damaged {
                path: snapshot_path,
                offset: read.valid_len,
            });
        }
        let bytes = journal::read_optional(&journal_path)?;
        let read = journal::replay(&journal_path, &bytes, &mut state)?;
        let journal = Committer::open_journal(&journal_path, read.valid_len)?;
        let mut records: Vec<Arc<FunctionRecord>> = state.records.values().cloned().collect();
        records.sort_by(|a, b| {
            (&a.spec.namespace, &a.spec.name).cmp(&(&b.spec.namespace, &b.spec.name))
        });
        let next = state.next;
        let committer = Committer {
            journal,
            journal_path,
            snapshot_path,
            state,
            entries: read.entries,
            len: read.valid_len,
        };
        let (tx, rx) = mpsc::channel();
        let committer = std::thread::Builder::new()
            .name("faasd-store".into())
            .spawn(move || committer.run(rx))
            .map_err(io("start the committer for", dir))?;
        Ok(Opened {
            store: Self {
                tx: Some(tx),
                committer: Some(committer),
                next: Mutex::new(next),
            },
            records,
        })
    }

    fn send(&self, change: Change) -> Commit {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx {
            // A send fails only when the committer is gone; the dropped reply says Closed.
            let _ = tx.send((change, Some(reply)));
        }
        Commit(rx)
    }

    /// Raises the address counter above every address in use (run once at start: a store
    /// of the earlier layout may have lost its counter file, and no address in use may be
    /// handed out again).
    pub fn raise_counter_above(
        &self,
        prefix: Ipv6Net,
        in_use: impl Iterator<Item = Ipv6Addr>,
    ) -> Commit {
        let mut next = self.next.lock().expect("address counter lock");
        let host_mask = u128::MAX >> prefix.len;
        let above_used = in_use
            .filter(|a| prefix.contains(*a))
            .map(|a| (u128::from(a) & host_mask) + 1)
            .max()
            .unwrap_or(1);
        *next = (*next).max(above_used);
        self.send(Change::Allocated(*next))
    }

    /// Allocates the next address of `prefix`. Addresses are never handed out twice: the
    /// counter only grows, and its new value is journalled before the record that uses
    /// the address (and so is durable with it).
    pub fn allocate_address(&self, prefix: Ipv6Net) -> Result<Ipv6Addr, StoreError> {
        let mut next = self.next.lock().expect("address counter lock");
        let addr = prefix
            .nth(*next)
            .ok_or(StoreError::PrefixExhausted(prefix))?;
        *next += 1;
        if let Some(tx) = &self.tx {
            let _ = tx.send((Change::Allocated(*next), None));
        }
        Ok(addr)
    }

    /// Writes a function's record.
    pub fn put(&self, rec: Arc<FunctionRecord>) -> Commit {
        self.send(Change::Put(rec))
    }

    /// Deletes a function's record.
    pub fn remove(&self, namespace: &str, name: &str) -> Commit {
        self.send(Change::Remove(format!("{namespace}/{name}")))
    }
}

impl Drop for Store {
    /// Lets the committer finish what it was given.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(c) = self.committer.take() {
            let _ = c.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Deployment, FunctionSpec};
    use std::fs;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("faasd-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn record(name: &str, address: Ipv6Addr) -> Arc<FunctionRecord> {
        let (spec, _) = FunctionSpec::from_deployment(Deployment {
            service: name.into(),
            env_process: Some("/bin/true".into()),
            ..Default::default()
        })
        .unwrap();
        Arc::new(FunctionRecord {
            spec,
            address,
            created_at: 1,
        })
    }

    fn names(records: &[Arc<FunctionRecord>]) -> Vec<&str> {
        records.iter().map(|r| r.spec.name.as_str()).collect()
    }

    #[test]
    fn records_survive_reopen() {
        let d = tempdir("reopen");
        let Opened {
            store: s,
            records: loaded,
        } = Store::open(&d).unwrap();
        assert!(loaded.is_empty());
        let a = record("a", "fd00:faa5:1::1".parse().unwrap());
        s.put(a.clone()).wait().unwrap();
        s.put(record("b", "fd00:faa5:1::2".parse().unwrap()))
            .wait()
            .unwrap();
        s.remove("openfaas-fn", "b").wait().unwrap();
        drop(s);
        let Opened {
            records: loaded, ..
        } = Store::open(&d).unwrap();
        assert_eq!(loaded, vec![a]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn addresses_are_never_reused() {
        let d = tempdir("alloc");
        let p: Ipv6Net = "fd00:faa5:1::/48".parse().unwrap();
        let s = Store::open(&d).unwrap().store;
        let a = s.allocate_address(p).unwrap();
        let b = s.allocate_address(p).unwrap();
        assert_eq!(a, "fd00:faa5:1::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(b, "fd00:faa5:1::2".parse::<Ipv6Addr>().unwrap());
        // Durable with the next acknowledged change, even one about another function.
        s.remove("openfaas-fn", "none").wait().unwrap();
        drop(s);
        let s = Store::open(&d).unwrap().store;
        assert_eq!(
            s.allocate_address(p).unwrap(),
            "fd00:faa5:1::3".parse::<Ipv6Addr>().unwrap()
        );
        // An address in use that the counter does not cover is skipped too.
        s.raise_counter_above(p, ["fd00:faa5:1::9".parse().unwrap()].into_iter())
            .wait()
            .unwrap();
        assert_eq!(
            s.allocate_address(p).unwrap(),
            "fd00:faa5:1::a".parse::<Ipv6Addr>().unwrap()
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn concurrent_changes_are_all_durable_and_never_share_an_address() {
        let d = tempdir("concurrent");
        let p: Ipv6Net = "fd00:faa5:1::/48".parse().unwrap();
        let s = Store::open(&d).unwrap().store;
        let all: Vec<Ipv6Addr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..8)
                .map(|t| {
                    let s = &s;
                    sc.spawn(move || {
                        (0..50)
                            .map(|i| {
                                let addr = s.allocate_address(p).unwrap();
                                s.put(record(&format!("f{t}-{i}"), addr)).wait().unwrap();
                                addr
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let unique: std::collections::BTreeSet<_> = all.iter().collect();
        assert_eq!(unique.len(), 400);
        drop(s);
        let Opened {
            records: loaded, ..
        } = Store::open(&d).unwrap();
        assert_eq!(loaded.len(), 400);
        let stored: std::collections::BTreeSet<_> = loaded.iter().map(|r| r.address).collect();
        assert_eq!(stored, all.iter().copied().collect());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn exhausted_prefix_is_reported() {
        let d = tempdir("full");
        let s = Store::open(&d).unwrap().store;
        let p: Ipv6Net = "fd00:faa5:1::/127".parse().unwrap();
        s.allocate_address(p).unwrap();
        assert!(matches!(
            s.allocate_address(p),
            Err(StoreError::PrefixExhausted(_))
        ));
        drop(s);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_write_cut_short_is_dropped_and_the_journal_goes_on() {
        let d = tempdir("torn");
        let s = Store::open(&d).unwrap().store;
        let a = record("a", "fd00:faa5:1::1".parse().unwrap());
        s.put(a.clone()).wait().unwrap();
        drop(s);
        // What a kill -9 in the middle of a write leaves: part of a frame.
        let journal = d.join(JOURNAL_FILE);
        let mut bytes = fs::read(&journal).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(b"0badc0de {\"put\":{\"sp");
        fs::write(&journal, &bytes).unwrap();
        let Opened {
            store: s,
            records: loaded,
        } = Store::open(&d).unwrap();
        assert_eq!(loaded, vec![a.clone()]);
        assert_eq!(fs::metadata(&journal).unwrap().len(), whole as u64);
        let b = record("b", "fd00:faa5:1::2".parse().unwrap());
        s.put(b.clone()).wait().unwrap();
        drop(s);
        assert_eq!(Store::open(&d).unwrap().records, vec![a, b]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn damage_before_acknowledged_entries_is_an_error_that_names_the_file() {
        let d = tempdir("damaged");
        let s = Store::open(&d).unwrap().store;
        s.put(record("a", "fd00:faa5:1::1".parse().unwrap()))
            .wait()
            .unwrap();
        s.put(record("b", "fd00:faa5:1::2".parse().unwrap()))
            .wait()
            .unwrap();
        drop(s);
        let journal = d.join(JOURNAL_FILE);
        let mut bytes = fs::read(&journal).unwrap();
        let at = bytes.iter().position(|b| *b == b'"').unwrap();
        bytes[at + 1] ^= 0x20;
        fs::write(&journal, &bytes).unwrap();
        let e = Store::open(&d).unwrap_err();
        assert!(matches!(e, StoreError::Damaged { .. }), "{e}");
        assert!(e.to_string().contains(JOURNAL_FILE), "{e}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_folds_the_journal_into_the_snapshot() {
        let d = tempdir("compact");
        let s = Store::open(&d).unwrap().store;
        let keep = record("keep", "fd00:faa5:1::1".parse().unwrap());
        s.put(keep.clone()).wait().unwrap();
        // Many changes of one record: the journal outgrows the state many times over.
        for _ in 0..journal::COMPACT_AFTER + 10 {
            s.put(record("churn", "fd00:faa5:1::2".parse().unwrap()))
                .wait()
                .unwrap();
        }
        s.remove("openfaas-fn", "churn").wait().unwrap();
        drop(s);
        let journal_len = fs::metadata(d.join(JOURNAL_FILE)).unwrap().len();
        assert!(d.join(SNAPSHOT_FILE).exists());
        assert!(
            journal_len < 100 * 1024,
            "journal still {journal_len} bytes"
        );
        let Opened {
            records: loaded, ..
        } = Store::open(&d).unwrap();
        assert_eq!(names(&loaded), ["keep"]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_earlier_layout_is_taken_over() {
        let d = tempdir("legacy");
        let a = record("a", "fd00:faa5:1::7".parse().unwrap());
        fs::create_dir_all(d.join("functions/openfaas-fn")).unwrap();
        fs::write(
            d.join("functions/openfaas-fn/a.json"),
            serde_json::to_vec_pretty(&*a).unwrap(),
        )
        .unwrap();
        fs::write(d.join("next-address"), "8\n").unwrap();
        let p: Ipv6Net = "fd00:faa5:1::/48".parse().unwrap();
        let Opened {
            store: s,
            records: loaded,
        } = Store::open(&d).unwrap();
        assert_eq!(loaded, vec![a.clone()]);
        assert!(!d.join("functions").exists() && !d.join("next-address").exists());
        assert_eq!(
            s.allocate_address(p).unwrap(),
            "fd00:faa5:1::8".parse::<Ipv6Addr>().unwrap()
        );
        drop(s);
        assert_eq!(Store::open(&d).unwrap().records, vec![a]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_of_the_earlier_layout_is_named_and_kept() {
        let d = tempdir("corrupt");
        fs::create_dir_all(d.join("functions/x")).unwrap();
        fs::write(d.join("functions/x/y.json"), b"{").unwrap();
        let e = Store::open(&d).unwrap_err().to_string();
        assert!(e.contains("y.json"), "{e}");
        assert!(d.join("functions/x/y.json").exists());
        fs::remove_dir_all(&d).unwrap();
    }
}
