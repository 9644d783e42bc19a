//! The cross-platform WireGuard configuration protocol ("UAPI") over the unix socket
//! `/var/run/wireguard/<interface>.sock` that userspace implementations (boringtun,
//! wireguard-go) serve: `set=1` and `get=1` requests of `key=value` lines, ended by an empty
//! line, answered with `errno=N`.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

/// Errors of the protocol.
#[derive(Debug, thiserror::Error)]
pub enum UapiError {
    /// The socket could not be reached or broke.
    #[error("WireGuard control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The device refused the request.
    #[error("WireGuard device refused the configuration (errno {0})")]
    Refused(i32),
}

/// Where a userspace device named `interface` listens.
pub fn socket_path(interface: &str) -> PathBuf {
    Path::new("/var/run/wireguard").join(format!("{interface}.sock"))
}

fn exchange(path: &Path, request: &str) -> Result<Vec<(String, String)>, UapiError> {
    let io = |source| UapiError::Io {
        path: path.to_owned(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(request.as_bytes()).map_err(io)?;
    let mut out = Vec::new();
    for line in BufReader::new(s).lines() {
        let line = line.map_err(io)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    match out.iter().find(|(k, _)| k == "errno") {
        Some((_, v)) if v != "0" => Err(UapiError::Refused(v.parse().unwrap_or(-1))),
        _ => Ok(out),
    }
}

/// Applies `lines` (`key=value` each) with one `set` request.
pub fn set(path: &Path, lines: &[String]) -> Result<(), UapiError> {
    let mut req = String::from("set=1\n");
    for l in lines {
        req.push_str(l);
        req.push('\n');
    }
    req.push('\n');
    exchange(path, &req).map(drop)
}

/// The device's state: `key=value` pairs in order (peers follow their `public_key`).
pub fn get(path: &Path) -> Result<Vec<(String, String)>, UapiError> {
    exchange(path, "get=1\n\n")
}
