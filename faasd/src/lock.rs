//! One daemon per state directory and per network namespace: a second daemon would
//! take over the first one's API socket and fight it over the pinned maps.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

/// Errors taking a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another faasd (pid {pid}) already uses {what}; stop it first")]
    Held {
        /// What the lock protects.
        what: String,
        /// The holder, as it wrote itself into the lock file.
        pid: String,
    },
    /// The lock file could not be opened.
    #[error("lock file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// An exclusive lock held until dropped (the kernel releases it if the process dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the lock at `path`, protecting `what`, without waiting.
pub fn acquire(path: &Path, what: &str) -> Result<Lock, LockError> {
    let io = |source| LockError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(LockError::Held {
            what: what.into(),
            pid: pid.trim().to_owned(),
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(Lock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let path = std::env::temp_dir().join(format!("faasd-lock-{}", std::process::id()));
        let held = acquire(&path, "the test").unwrap();
        // flock locks belong to the open file, so a second open in this process conflicts.
        match acquire(&path, "the test") {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("expected Held, got {other:?}"),
        }
        drop(held);
        assert!(acquire(&path, "the test").is_ok());
        std::fs::remove_file(&path).unwrap();
    }
}
