//! Function logs: each instance's stdout and stderr, one JSON object per line in
//! `<state>/logs/<namespace>/<name>.log` — already the NDJSON shape of OpenFaaS's
//! `/system/logs`, so reading needs no conversion. Files rotate at [`ROTATE_AT`] bytes,
//! keeping one previous file.
//!
//! An instance writes to an [`Output`] file, not to a pipe: a pipe's reader would be faasd,
//! and a function writing after faasd exits would die of SIGPIPE. The file outlives the
//! daemon; faasd tails it, punching holes behind what it has read, and records how far it
//! got in `<file>.offset`; a restarted daemon resumes there, so nothing written meanwhile is
//! lost (a crash between writing a line and recording the offset repeats that line).

use std::{
    fs::File,
    io::{Read, Seek, SeekFrom, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

/// Size at which a log file is rotated.
pub const ROTATE_AT: u64 = 16 << 20;

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Function name.
    pub name: String,
    /// Function namespace.
    pub namespace: String,
    /// Instance id.
    pub instance: String,
    /// RFC 3339 time the line was read.
    pub timestamp: String,
    /// The line, without its newline.
    pub text: String,
}

/// Reads the lines appended to a function's log since the last poll.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    offset: u64,
    instance: Option<String>,
}

impl Follower {
    /// New complete lines (a partly written one waits for the next poll); none while the
    /// log does not exist (nothing written yet, or a moment of rotation).
    pub fn poll(&mut self) -> Vec<LogLine> {
        self.read_new().unwrap_or_default()
    }

    fn read_new(&mut self) -> Option<Vec<LogLine>> {
        let mut f = File::open(&self.path).ok()?;
        let len = f.metadata().ok()?.len();
        if len < self.offset {
            // Rotated: the new file starts from the beginning.
            self.offset = 0;
        }
        if len == self.offset {
            return Some(Vec::new());
        }
        f.seek(SeekFrom::Start(self.offset)).ok()?;
        let mut buf = Vec::new();
        f.take(len - self.offset).read_to_end(&mut buf).ok()?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        self.offset += complete as u64;
        Some(
            String::from_utf8_lossy(&buf[..complete])
                .lines()
                .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
                .filter(|l| self.instance.as_ref().is_none_or(|i| *i == l.instance))
                .collect(),
        )
    }
}

/// The log of one function; clones share it (the daemon's and the supervisor's).
#[derive(Debug, Clone)]
pub struct FunctionLog(Arc<LogInner>);

#[derive(Debug)]
struct LogInner {
    path: PathBuf,
    name: String,
    namespace: String,
    file: Mutex<Option<std::fs::File>>,
}

impl FunctionLog {
    /// The log of `namespace/name` under `state_dir`.
    pub fn new(state_dir: &Path, namespace: &str, name: &str) -> Self {
        Self(Arc::new(LogInner {
            path: state_dir
                .join("logs")
                .join(namespace)
                .join(format!("{name}.log")),
            name: name.into(),
            namespace: namespace.into(),
            file: Mutex::default(),
        }))
    }

    /// Closes the log file until the next line: a stopped function holds no descriptor.
    pub fn close(&self) {
        *self.0.file.lock().expect("log lock") = None;
    }

    /// Appends one line.
    pub fn write(&self, instance: &str, text: &str) {
        let line = LogLine {
            name: self.0.name.clone(),
            namespace: self.0.namespace.clone(),
            instance: instance.into(),
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            text: text.into(),
        };
        let mut bytes = serde_json::to_vec(&line).expect("log lines serialize");
        bytes.push(b'\n');
        let mut guard = self.0.file.lock().expect("log lock");
        if guard
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() >= ROTATE_AT)
        {
            *guard = None;
            let _ = std::fs::rename(&self.0.path, self.0.path.with_extension("log.1"));
        }
        if guard.is_none() {
            if let Some(d) = self.0.path.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            *guard = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.0.path)
                .ok();
        }
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(&bytes)
        {
            tracing::warn!("writing log {}: {e}", self.0.path.display());
        }
    }

    /// The last `tail` lines (all when `None`) of one instance (all when `None`), oldest
    /// first.
    pub fn read(&self, instance: Option<&str>, tail: Option<usize>) -> Vec<LogLine> {
        let mut lines: Vec<LogLine> = [self.0.path.with_extension("log.1"), self.0.path.clone()]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| serde_json::from_str::<LogLine>(l).ok())
                    .filter(|l| instance.is_none_or(|i| i == l.instance))
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Some(t) = tail {
            lines.drain(..lines.len().saturating_sub(t));
        }
        lines
    }

    /// Where new lines will be read from by [`Follower::poll`]: the end of the log now.
    pub fn follow(&self, instance: Option<String>) -> Follower {
        Follower {
            path: self.0.path.clone(),
            offset: std::fs::metadata(&self.0.path).map_or(0, |m| m.len()),
            instance,
        }
    }

    /// Deletes the log files.
    pub fn remove(&self) {
        *self.0.file.lock().expect("log lock") = None;
        let _ = std::fs::remove_file(&self.0.path);
        let _ = std::fs::remove_file(self.0.path.with_extension("log.1"));
    }
}

/// Longest line kept whole; longer output is split.
const MAX_LINE: usize = 16 << 10;

/// The output file of one instance, read by faasd as it grows.
#[derive(Debug)]
pub struct Output {
    path: PathBuf,
    file: File,
    offset: u64,
    partial: Vec<u8>,
}

impl Output {
    /// Creates the output file of a new instance; returns it and the descriptor the
    /// instance writes to (append-only, so concurrent writers never overwrite each other).
    pub fn create(path: PathBuf) -> std::io::Result<(Self, File)> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let file = File::open(&path)?;
        Ok((
            Self {
                path,
                file,
                offset: 0,
                partial: Vec::new(),
            },
            writer,
        ))
    }

    /// Opens the output of an instance that outlived the previous daemon, at the first
    /// byte that daemon had not read.
    pub fn reopen(path: PathBuf) -> std::io::Result<Self> {
        let file = File::open(&path)?;
        let offset = std::fs::read_to_string(offset_path(&path))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            path,
            file,
            offset,
            partial: Vec::new(),
        })
    }

    /// Copies complete new lines into `log`.
    pub fn drain(&mut self, log: &FunctionLog, instance: &str) {
        let mut buf = Vec::new();
        if self.file.seek(SeekFrom::Start(self.offset)).is_err()
            || self.file.read_to_end(&mut buf).is_err()
        {
            return;
        }
        if buf.is_empty() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|b| *b == b'\n') {
            log.write(
                instance,
                &String::from_utf8_lossy(&self.partial[start..start + nl]),
            );
            start += nl + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE {
            log.write(instance, &String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
        let consumed = self.offset - self.partial.len() as u64;
        write_offset(&offset_path(&self.path), consumed);
        self.release(consumed);
    }

    /// Gives the storage of what has been read back to the filesystem.
    fn release(&self, consumed: u64) {
        let done = consumed & !4095;
        if done > 0 {
            // SAFETY: fallocate on our own descriptor; punching a hole keeps the size.
            unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    done as libc::off_t,
                )
            };
        }
    }

    /// Reads what is left (the instance has ended) and deletes the file.
    pub fn finish(mut self, log: &FunctionLog, instance: &str) {
        self.drain(log, instance);
        if !self.partial.is_empty() {
            log.write(instance, &String::from_utf8_lossy(&self.partial));
        }
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(offset_path(&self.path));
    }
}

/// Records how far an instance's output has been read: in place, at a fixed width, so
/// the file never shrinks. Truncating it at every read would free its block each time,
/// and on a filesystem mounted with `discard` (a runtime directory that is no tmpfs) the
/// kernel then discards that block synchronously, with the daemon's thread waiting.
fn write_offset(path: &Path, consumed: u64) {
    use std::os::unix::fs::FileExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .and_then(|f| f.write_all_at(format!("{consumed:020}\n").as_bytes(), 0));
    if let Err(e) = written {
        tracing::debug!("recording the output offset in {}: {e}", path.display());
    }
}

fn offset_path(path: &Path) -> PathBuf {
    path.with_extension("offset")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_tail_keeps_the_newest() {
        let dir = std::env::temp_dir().join(format!("faasd-logs-{}", std::process::id()));
        let log = FunctionLog::new(&dir, "ns", "f");
        for i in 0..5 {
            log.write("i1", &format!("line {i}"));
        }
        let tail = log.read(None, Some(2));
        assert_eq!(
            tail.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        assert_eq!(tail[0].name, "f");
        assert_eq!(log.read(None, None).len(), 5);
        log.remove();
        assert!(log.read(None, None).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_is_tailed_across_a_reopen_without_loss() {
        let dir = std::env::temp_dir().join(format!("faasd-output-{}", std::process::id()));
        let log = FunctionLog::new(&dir, "ns", "f");
        let (mut out, mut w) = Output::create(dir.join("out/i1")).unwrap();
        w.write_all(&vec![b'x'; 5000]).unwrap();
        w.write_all(b"\nfirst\nsec").unwrap();
        out.drain(&log, "i1");
        assert_eq!(log.read(None, None).len(), 2, "only complete lines");
        // The offset is written in place at a fixed width: the file never shrinks.
        let offset = std::fs::read_to_string(offset_path(&dir.join("out/i1"))).unwrap();
        assert_eq!((offset.len(), offset.trim()), (21, "00000000000000005007"));
        // A new daemon: the consumed part is a hole, reading resumes at the partial line.
        drop(out);
        w.write_all(b"ond\n").unwrap();
        let mut out = Output::reopen(dir.join("out/i1")).unwrap();
        out.drain(&log, "i1");
        let texts: Vec<String> = log.read(None, None).into_iter().map(|l| l.text).collect();
        assert_eq!(texts.len(), 3);
        assert!(texts[2].ends_with("ond"), "{texts:?}");
        let offset = std::fs::read_to_string(offset_path(&dir.join("out/i1"))).unwrap();
        assert_eq!(offset, "00000000000000005014\n");
        w.write_all(b"no newline").unwrap();
        out.finish(&log, "i1");
        assert_eq!(log.read(None, None).last().unwrap().text, "no newline");
        assert!(!dir.join("out/i1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
