//! The journal's bytes on disk and the one thread that writes them.
//!
//! A file is a sequence of frames, one per line: the CRC-32 of the entry's JSON in eight hex
//! digits, a space, the JSON, a newline. The snapshot is the same format, written whole and
//! renamed into place; the journal is appended to. Replaying the snapshot and then the
//! journal gives the state, and replaying a journal over a snapshot that already contains
//! it changes nothing (each entry sets a record, deletes one or raises the counter), which
//! makes compaction safe at every step.
//!
//! The committer thread takes every change waiting in its queue, writes them with one
//! `write`, makes them durable with one `fdatasync` and only then answers each: group commit,
//! so eight concurrent deploys cost about one disk flush, and nothing is acknowledged before
//! it is on disk.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
};

use serde::{Deserialize, Serialize};

use super::{FunctionRecord, StoreError, io};

/// One change, as read back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Entry {
    Put(Box<FunctionRecord>),
    Remove { id: String },
    Allocated { next: u128 },
}

/// One change, as written (borrowing what it writes).
#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
enum EntryRef<'a> {
    Put(&'a FunctionRecord),
    Remove { id: &'a str },
    Allocated { next: u128 },
}

/// A change sent to the committer.
#[derive(Debug)]
pub(super) enum Change {
    Put(Arc<FunctionRecord>),
    Remove(String),
    Allocated(u128),
}

/// The state the files describe.
#[derive(Debug, Default)]
pub(super) struct State {
    pub records: HashMap<String, Arc<FunctionRecord>>,
    /// The address counter: the next host number to hand out.
    pub next: u128,
}

impl State {
    fn apply(&mut self, change: &Change) {
        match change {
            Change::Put(r) => {
                self.records.insert(r.spec.id(), r.clone());
            }
            Change::Remove(id) => {
                self.records.remove(id);
            }
            Change::Allocated(next) => self.next = self.next.max(*next),
        }
    }

    fn apply_entry(&mut self, entry: Entry) {
        let change = match entry {
            Entry::Put(r) => Change::Put(Arc::new(*r)),
            Entry::Remove { id } => Change::Remove(id),
            Entry::Allocated { next } => Change::Allocated(next),
        };
        self.apply(&change);
    }
}

fn frame(out: &mut Vec<u8>, change: &Change) {
    let entry = match change {
        Change::Put(r) => EntryRef::Put(r),
        Change::Remove(id) => EntryRef::Remove { id },
        Change::Allocated(next) => EntryRef::Allocated { next: *next },
    };
    let json = serde_json::to_vec(&entry).expect("store entries always serialize");
    write!(out, "{:08x} ", crc32fast::hash(&json)).expect("writing to a Vec");
    out.extend_from_slice(&json);
    out.push(b'\n');
}

/// Parses one frame (without its newline); `None` if it is damaged.
fn parse(line: &[u8]) -> Option<Result<Entry, serde_json::Error>> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (line[8] == b' ' && crc32fast::hash(json) == crc).then(|| serde_json::from_slice(json))
}

/// What reading a file found.
pub(super) struct Replayed {
    /// Bytes of whole, valid frames from the start.
    pub valid_len: u64,
    /// Frames applied.
    pub entries: usize,
}

/// Applies every frame of `bytes` to `state`. A damaged frame at the end is a write that a
/// crash cut short (it was never acknowledged) and ends the replay; a damaged frame with
/// valid ones after it is damage to acknowledged data, and an error.
pub(super) fn replay(path: &Path, bytes: &[u8], state: &mut State) -> Result<Replayed, StoreError> {
    let mut at = 0usize;
    let mut entries = 0;
    while at < bytes.len() {
        let Some(end) = bytes[at..].iter().position(|b| *b == b'\n') else {
            break;
        };
        match parse(&bytes[at..at + end]) {
            Some(Ok(entry)) => state.apply_entry(entry),
            Some(Err(source)) => {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    source,
                });
            }
            None => {
                let rest = &bytes[at + end + 1..];
                if rest
                    .split(|b| *b == b'\n')
                    .any(|l| matches!(parse(l), Some(Ok(_))))
                {
                    return Err(StoreError::Damaged {
                        path: path.to_owned(),
                        offset: at as u64,
                    });
                }
                break;
            }
        }
        at += end + 1;
        entries += 1;
    }
    Ok(Replayed {
        valid_len: at as u64,
        entries,
    })
}

/// Writes the whole state as a snapshot at `path`, atomically.
pub(super) fn write_snapshot(path: &Path, state: &State) -> Result<(), StoreError> {
    let mut out = Vec::new();
    frame(&mut out, &Change::Allocated(state.next));
    let mut ids: Vec<&String> = state.records.keys().collect();
    ids.sort();
    for id in ids {
        frame(&mut out, &Change::Put(state.records[id].clone()));
    }
    crate::durable::write_private(path, &out).map_err(io("write", path))
}

/// A change waiting for the committer, and whom to tell once it is durable.
pub(super) type Request = (
    Change,
    Option<tokio::sync::oneshot::Sender<Result<(), StoreError>>>,
);

/// Compact once the journal holds this many entries and twice as many as there are
/// records: compaction then costs at most one entry's rewrite per entry appended.
pub(super) const COMPACT_AFTER: usize = 4096;

/// Everything the committer thread owns.
pub(super) struct Committer {
    pub journal: File,
    pub journal_path: PathBuf,
    pub snapshot_path: PathBuf,
    pub state: State,
    /// Entries in the journal file now.
    pub entries: usize,
    /// Bytes in the journal file now.
    pub len: u64,
}

impl Committer {
    /// Opens the journal for appending at `valid_len`, cutting off a torn tail.
    pub fn open_journal(path: &Path, valid_len: u64) -> Result<File, StoreError> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io("open", path))?;
        if f.metadata().map_err(io("stat", path))?.len() != valid_len {
            tracing::warn!(
                "{}: dropping an incomplete last write (a crash cut it short; it was never \
                 acknowledged)",
                path.display()
            );
            f.set_len(valid_len).map_err(io("truncate", path))?;
            f.sync_all().map_err(io("fsync", path))?;
        }
        Ok(f)
    }

    /// Serves requests until every sender is gone. After a failed write nothing more is
    /// accepted: what is on disk is then unknown, and only a restart (a replay) knows it.
    pub fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut failed: Option<Arc<std::io::Error>> = None;
        let mut batch: Vec<Request> = Vec::new();
        let mut bytes = Vec::new();
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let result = match &failed {
                Some(e) => Err(e.clone()),
                None => {
                    bytes.clear();
                    for (change, _) in &batch {
                        frame(&mut bytes, change);
                    }
                    let awaited = batch.iter().any(|(_, reply)| reply.is_some());
                    self.append(&bytes, awaited).map_err(Arc::new)
                }
            };
            match &result {
                Ok(()) => {
                    for (change, _) in &batch {
                        self.state.apply(change);
                    }
                    self.entries += batch.len();
                }
                Err(e) => {
                    if failed.is_none() {
                        tracing::error!(
                            "writing {}: {e}; faasd accepts no more changes until it is \
                             restarted",
                            self.journal_path.display()
                        );
                    }
                    failed = Some(e.clone());
                }
            }
            for (_, reply) in batch.drain(..) {
                if let Some(reply) = reply {
                    let _ = reply.send(result.clone().map_err(|source| StoreError::Commit {
                        path: self.journal_path.clone(),
                        source,
                    }));
                }
            }
            if failed.is_none()
                && self.entries > COMPACT_AFTER
                && self.entries > 2 * self.state.records.len()
                && let Err(e) = self.compact()
            {
                // The journal keeps growing; the next compaction tries again.
                tracing::warn!("compacting the store: {e}");
            }
        }
    }

    /// Appends `bytes`, and makes them durable when `flush` (a batch that nobody waits
    /// for, a counter raised before its record, goes to disk with the next one).
    fn append(&mut self, bytes: &[u8], flush: bool) -> std::io::Result<()> {
        let written = self.journal.write_all(bytes).and_then(|()| {
            if flush {
                self.journal.sync_data()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Take back a partial write so that the file ends on a whole frame.
                let _ = self.journal.set_len(self.len);
                Err(e)
            }
        }
    }

    /// Replaces snapshot + journal with a snapshot of the state and an empty journal.
    fn compact(&mut self) -> Result<(), StoreError> {
        write_snapshot(&self.snapshot_path, &self.state)?;
        let path = &self.journal_path;
        self.journal.set_len(0).map_err(io("truncate", path))?;
        self.journal.sync_all().map_err(io("fsync", path))?;
        self.len = 0;
        self.entries = 0;
        Ok(())
    }
}

/// Reads a file that may not exist.
pub(super) fn read_optional(path: &Path) -> Result<Vec<u8>, StoreError> {
    match fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io("read", path)(e)),
    }
}
