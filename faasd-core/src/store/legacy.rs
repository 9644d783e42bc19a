//! Takes over a state directory of the earlier layout: one `functions/<namespace>/<name>.json`
//! per function and the counter in `next-address`.
//!
//! The snapshot is written first and renamed into place whole; only then are the old files
//! removed. A crash in between leaves a snapshot and old files, and the next start only
//! removes the old files: the snapshot is the truth from the moment it exists.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{FunctionRecord, StoreError, io, journal};

const FUNCTIONS_DIR: &str = "functions";
const COUNTER_FILE: &str = "next-address";

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io("list", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    Ok(v)
}

/// Moves the old layout in `dir`, if there is one, into a snapshot at `snapshot`.
pub(super) fn migrate(dir: &Path, snapshot: &Path) -> Result<(), StoreError> {
    let functions = dir.join(FUNCTIONS_DIR);
    if !functions.is_dir() {
        return Ok(());
    }
    let counter = dir.join(COUNTER_FILE);
    if !snapshot.exists() {
        let mut state = journal::State {
            next: match fs::read_to_string(&counter) {
                Ok(s) => s.trim().parse::<u128>().unwrap_or(1).max(1),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
                Err(e) => return Err(io("read", &counter)(e)),
            },
            ..Default::default()
        };
        for ns in read_dir(&functions)? {
            for f in read_dir(&ns)? {
                if f.extension().is_some_and(|e| e == "json") {
                    let bytes = fs::read(&f).map_err(io("read", &f))?;
                    let rec: FunctionRecord =
                        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                            path: f.clone(),
                            source,
                        })?;
                    state.records.insert(rec.spec.id(), Arc::new(rec));
                }
            }
        }
        journal::write_snapshot(snapshot, &state)?;
        tracing::info!(
            "moved {} function records from {} into {}",
            state.records.len(),
            functions.display(),
            snapshot.display()
        );
    }
    fs::remove_dir_all(&functions).map_err(io("remove", &functions))?;
    match fs::remove_file(&counter) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("remove", &counter)(e)),
    }
    crate::durable::sync_dir(dir).map_err(io("fsync", dir))
}
