//! The cross-platform WireGuard configuration protocol ("UAPI"): `set=1` and `get=1`
//! requests of `key=value` lines, ended by an empty line, answered with `errno=N` and an
//! empty line. Userspace implementations (wireguard-go, boringtun) serve it on the unix
//! socket `/var/run/wireguard/<interface>.sock`.
//!
//! faasd's embedded device is reached over a socket pair: boringtun, given a control
//! descriptor, leaves the signals SIGINT and SIGTERM alone (with its own socket it takes
//! them through a signalfd, racing faasd's shutdown for them). faasd then serves the usual
//! socket itself and relays to the device, so `wg show` works as usual.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
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

/// faasd's end of its embedded device's socket pair; one request at a time.
#[derive(Debug)]
pub struct Device {
    stream: Mutex<UnixStream>,
    /// The socket path faasd serves for it.
    path: PathBuf,
}

/// Writes `request` and reads the answer up to its empty line; returns the answer.
fn talk(stream: &UnixStream, request: &str) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    (&*stream).write_all(request.as_bytes())?;
    let mut answer = String::new();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other(
                "the device closed the control stream",
            ));
        }
        answer.push_str(&line);
        if line == "\n" {
            return Ok(answer);
        }
    }
}

impl Device {
    /// faasd's end of the pair, and the path it will serve for the device.
    pub fn new(stream: UnixStream, path: PathBuf) -> Self {
        Self {
            stream: Mutex::new(stream),
            path,
        }
    }

    /// The socket path faasd serves for the device.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one request; the raw answer.
    fn exchange_raw(&self, request: &str) -> Result<String, UapiError> {
        let s = self.stream.lock().expect("control stream lock");
        talk(&s, request).map_err(|source| UapiError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn exchange(&self, request: &str) -> Result<Vec<(String, String)>, UapiError> {
        let answer = self.exchange_raw(request)?;
        let out: Vec<(String, String)> = answer
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        match out.iter().find(|(k, _)| k == "errno") {
            Some((_, v)) if v != "0" => Err(UapiError::Refused(v.parse().unwrap_or(-1))),
            _ => Ok(out),
        }
    }

    /// Applies `lines` (`key=value` each) with one `set` request.
    pub fn set(&self, lines: &[String]) -> Result<(), UapiError> {
        let mut req = String::from("set=1\n");
        for l in lines {
            req.push_str(l);
            req.push('\n');
        }
        req.push('\n');
        self.exchange(&req).map(drop)
    }

    /// The device's state: `key=value` pairs in order (peers follow their `public_key`).
    pub fn get(&self) -> Result<Vec<(String, String)>, UapiError> {
        self.exchange("get=1\n\n")
    }
}

/// Serves the control socket at the device's path, relaying each request to it (a
/// thread; it ends with the process), so `wg` works on the embedded device.
pub fn serve(device: Arc<Device>) -> std::io::Result<()> {
    let path = device.path().to_owned();
    let path = path.as_path();
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    // The directory is the machine's, not the network namespace's: a socket that answers
    // is another interface's of that name (another faasd, a wireguard-go), not a leftover.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "{} answers: another WireGuard interface of that name runs on this machine \
                 (in another network namespace?); give this one another wireguard-interface",
                path.display()
            ),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("wg-control".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut request = String::new();
                let mut reader = BufReader::new(&conn);
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    request.push_str(&line);
                    if line == "\n" {
                        break;
                    }
                }
                if request.is_empty() {
                    continue;
                }
                let answer = device
                    .exchange_raw(&request)
                    .unwrap_or_else(|_| "errno=5\n\n".into());
                let _ = (&conn).write_all(answer.as_bytes());
            }
        })?;
    Ok(())
}
