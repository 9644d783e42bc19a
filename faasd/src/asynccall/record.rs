//! A queued call on disk. `<seq>-<id>.call` holds the request and is written (and
//! fsynced) before the caller gets its 202; `<seq>-<id>.done` holds the function's answer
//! and is written before the `.call` is removed, then kept until the callback is delivered
//! or given up. Each file is one line of JSON, then the body's bytes. `seq` numbers the
//! calls in the order they were accepted, so a restart makes them in that order again.

use std::path::{Path, PathBuf};

use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use super::AsyncError;

/// Names one call's files: its place in the queue and its `X-Call-Id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// Accepted as the `seq`-th call of this state directory.
    pub seq: u64,
    /// The call's `X-Call-Id`.
    pub id: String,
}

/// Which of a call's two files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Accepted, not yet made.
    Call,
    /// Made; its callback not yet delivered.
    Done,
}

impl Stage {
    fn extension(self) -> &'static str {
        match self {
            Self::Call => "call",
            Self::Done => "done",
        }
    }
}

impl Key {
    /// The path of this call's file of `stage` in `dir`.
    pub fn path(&self, dir: &Path, stage: Stage) -> PathBuf {
        dir.join(format!(
            "{:020}-{}.{}",
            self.seq,
            self.id,
            stage.extension()
        ))
    }

    /// The key and stage a file name stands for; `None` for anything else (a write's
    /// temporary file, a file set aside as unreadable).
    pub fn parse(file_name: &str) -> Option<(Self, Stage)> {
        let (stem, ext) = file_name.rsplit_once('.')?;
        let stage = match ext {
            "call" => Stage::Call,
            "done" => Stage::Done,
            _ => return None,
        };
        let (seq, id) = stem.split_once('-')?;
        let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
        (seq.len() == 20 && id_ok).then_some(())?;
        Some((
            Self {
                seq: seq.parse().ok()?,
                id: id.to_owned(),
            },
            stage,
        ))
    }
}

/// What a caller asked for, as it is made later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// The HTTP method.
    pub method: String,
    /// The path below the function, without the leading `/`.
    pub path: String,
    /// The query string, without `?`.
    pub query: Option<String>,
    /// The caller's headers, but for those of its connection to faasd.
    pub headers: Vec<(String, String)>,
    /// Where the answer goes.
    pub callback: Option<String>,
}

/// What the function answered, and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// `name.namespace`, as `X-Function-Name` carries it.
    pub function: String,
    /// The callback's URL.
    pub callback: String,
    /// The function's HTTP status.
    pub status: u16,
    /// Seconds the call took.
    pub seconds: f64,
    /// When it ended, in milliseconds since the Unix epoch: callbacks are retried until
    /// `async-callback-retry-for` after it, across restarts too.
    pub finished_ms: u64,
}

/// Writes `head` and `body` to `path` durably, readable by root only (a call's headers
/// may carry credentials).
pub fn write<T: Serialize>(path: &Path, head: &T, body: &[u8]) -> Result<(), AsyncError> {
    let mut bytes = serde_json::to_vec(head).expect("a record serialises");
    bytes.push(b'\n');
    bytes.extend_from_slice(body);
    faasd_core::durable::write_private(path, &bytes).map_err(|source| AsyncError::Io {
        what: "writing",
        path: path.to_owned(),
        source,
    })
}

/// Reads a file [`write`] wrote.
pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, Bytes), AsyncError> {
    let bytes = std::fs::read(path).map_err(|source| AsyncError::Io {
        what: "reading",
        path: path.to_owned(),
        source,
    })?;
    let newline = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let head = serde_json::from_slice(&bytes[..newline]).map_err(|source| AsyncError::Corrupt {
        path: path.to_owned(),
        source,
    })?;
    let start = (newline + 1).min(bytes.len());
    let body = Bytes::from(bytes).slice(start..);
    Ok((head, body))
}

/// Removes a call's file, durably.
pub fn remove(dir: &Path, key: &Key, stage: Stage) -> Result<(), AsyncError> {
    let path = key.path(dir, stage);
    let io = |source| AsyncError::Io {
        what: "removing",
        path: path.clone(),
        source,
    };
    match std::fs::remove_file(&path) {
        Ok(()) => faasd_core::durable::sync_dir(dir).map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_others_are_not_calls() {
        let k = Key {
            seq: 42,
            id: "00ff".into(),
        };
        let dir = Path::new("/q");
        for stage in [Stage::Call, Stage::Done] {
            let p = k.path(dir, stage);
            let name = p.file_name().unwrap().to_str().unwrap();
            assert_eq!(Key::parse(name), Some((k.clone(), stage)));
        }
        for other in [
            ".00000000000000000042-00ff.call.1-0.tmp",
            "00000000000000000042-00ff.corrupt",
            "42-00ff.call",
            "00000000000000000042-.call",
            "00000000000000000042-zz.call",
        ] {
            assert_eq!(Key::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_record_keeps_its_head_and_every_byte_of_its_body() {
        let dir = std::env::temp_dir().join(format!("faasd-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = Request {
            namespace: "ns".into(),
            function: "f".into(),
            method: "POST".into(),
            path: "a/b".into(),
            query: Some("x=1".into()),
            headers: vec![("x-one".into(), "1".into())],
            callback: None,
        };
        let k = Key {
            seq: 1,
            id: "ab".into(),
        };
        let p = k.path(&dir, Stage::Call);
        for body in [&b""[..], b"\n", b"line\nline\n\0\xff"] {
            write(&p, &r, body).unwrap();
            let (head, got): (Request, Bytes) = read(&p).unwrap();
            assert_eq!(head, r);
            assert_eq!(&got[..], body);
        }
        std::fs::write(&p, b"{not json\nbody").unwrap();
        assert!(matches!(
            read::<Request>(&p),
            Err(AsyncError::Corrupt { .. })
        ));
        remove(&dir, &k, Stage::Call).unwrap();
        remove(&dir, &k, Stage::Call).unwrap();
        assert!(!p.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
