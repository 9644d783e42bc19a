//! Function logs: each instance's stdout and stderr, one JSON object per line in
//! `<state>/logs/<namespace>/<name>.log` — already the NDJSON shape of OpenFaaS's
//! `/system/logs`, so reading needs no conversion. Files rotate at [`ROTATE_AT`] bytes,
//! keeping one previous file.

use std::{
    io::Write,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

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

/// The log of one function.
#[derive(Debug, Clone)]
pub struct FunctionLog {
    path: PathBuf,
    name: String,
    namespace: String,
    file: Arc<Mutex<Option<std::fs::File>>>,
}

impl FunctionLog {
    /// The log of `namespace/name` under `state_dir`.
    pub fn new(state_dir: &Path, namespace: &str, name: &str) -> Self {
        Self {
            path: state_dir
                .join("logs")
                .join(namespace)
                .join(format!("{name}.log")),
            name: name.into(),
            namespace: namespace.into(),
            file: Arc::default(),
        }
    }

    /// Appends one line.
    pub fn write(&self, instance: &str, text: &str) {
        let line = LogLine {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            instance: instance.into(),
            timestamp: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            text: text.into(),
        };
        let mut bytes = serde_json::to_vec(&line).expect("log lines serialize");
        bytes.push(b'\n');
        let mut guard = self.file.lock().expect("log lock");
        if guard
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() >= ROTATE_AT)
        {
            *guard = None;
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
        }
        if guard.is_none() {
            if let Some(d) = self.path.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            *guard = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(&bytes)
        {
            tracing::warn!("writing log {}: {e}", self.path.display());
        }
    }

    /// Copies lines from an instance's output pipe into the log until the pipe closes.
    pub fn capture(&self, instance: String, pipe: OwnedFd) {
        let log = self.clone();
        tokio::spawn(async move {
            let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) else {
                return;
            };
            let mut lines = BufReader::new(rx).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                log.write(&instance, &l);
            }
        });
    }

    /// The last `tail` lines (all when `None`), oldest first.
    pub fn read(&self, tail: Option<usize>) -> Vec<LogLine> {
        let mut lines: Vec<LogLine> = [self.path.with_extension("log.1"), self.path.clone()]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|s| {
                s.lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        if let Some(t) = tail {
            lines.drain(..lines.len().saturating_sub(t));
        }
        lines
    }

    /// Deletes the log files.
    pub fn remove(&self) {
        *self.file.lock().expect("log lock") = None;
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(self.path.with_extension("log.1"));
    }
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
        let tail = log.read(Some(2));
        assert_eq!(
            tail.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["line 3", "line 4"]
        );
        assert_eq!(tail[0].name, "f");
        assert_eq!(log.read(None).len(), 5);
        log.remove();
        assert!(log.read(None).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
