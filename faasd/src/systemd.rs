//! faasd as a systemd service, speaking the protocol it gives its functions: sockets passed
//! by socket activation (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID: the API's unix socket as
//! `api`, the DNS sockets as `dns`, and the function sockets faasd stored), and sd_notify
//! messages (READY=1, STATUS=, WATCHDOG=1, STOPPING=1, and FDSTORE=1 to keep the function
//! sockets in systemd's fd store, so a restart loses no queued connection). Without
//! systemd (no NOTIFY_SOCKET), every message is a no-op.

use std::{
    collections::HashMap,
    io,
    net::SocketAddrV6,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        linux::net::SocketAddrExt,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

use sendfd::SendWithFd;

/// The first descriptor systemd passes.
const LISTEN_FDS_START: RawFd = 3;

/// The fd store name prefix of function sockets.
const FUNCTION_FD_PREFIX: &str = "fn.";

/// The sockets passed to this process, with their names (`unknown` when unnamed), taken
/// once: the variables are removed so no child inherits them.
pub fn take_listen_fds() -> Vec<(String, OwnedFd)> {
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: RawFd = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // SAFETY: the process is single-threaded here (called first thing in the daemon).
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    if !ours || n <= 0 {
        return Vec::new();
    }
    let mut names = names.split(':');
    (0..n)
        .map(|i| {
            let fd = LISTEN_FDS_START + i;
            // SAFETY: systemd passed these descriptors to us; each is owned once, here.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            // Ours from now on: not inherited by function instances.
            // SAFETY: fcntl on a descriptor we own.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            let name = names.next().filter(|n| !n.is_empty()).unwrap_or("unknown");
            (name.to_owned(), owned)
        })
        .collect()
}

/// Function sockets systemd kept in its fd store, by what they are bound to, with their
/// store names.
#[derive(Debug, Default)]
pub struct StoredSockets(HashMap<(SocketAddrV6, bool), (String, OwnedFd)>);

impl StoredSockets {
    /// Takes the function sockets out of what systemd passed; returns them and the rest.
    pub fn split(passed: Vec<(String, OwnedFd)>) -> (Self, Vec<(String, OwnedFd)>) {
        let mut stored = HashMap::new();
        let mut rest = Vec::new();
        for (name, fd) in passed {
            if !name.starts_with(FUNCTION_FD_PREFIX) {
                rest.push((name, fd));
                continue;
            }
            // Identified by what they are bound to, not by their name: a socket is the
            // function's exactly when its address, port and type are.
            match (
                crate::sockets::local_addr(&fd),
                crate::sockets::is_stream(&fd),
            ) {
                (Ok(addr), Ok(stream)) => {
                    stored.insert((addr, stream), (name, fd));
                }
                _ => tracing::warn!("fd store: {name} is not an IPv6 socket; dropped"),
            }
        }
        (Self(stored), rest)
    }

    /// The stored socket bound to `addr` (a stream socket when `stream`), if any.
    pub fn take(&mut self, addr: SocketAddrV6, stream: bool) -> Option<OwnedFd> {
        self.0.remove(&(addr, stream)).map(|(_, fd)| fd)
    }

    /// The store names of what is left, closing the sockets.
    pub fn drain_names(&mut self) -> Vec<String> {
        self.0.drain().map(|(_, (name, _))| name).collect()
    }
}

/// What faasd got from its service manager: the manager to notify, and the function
/// sockets it kept.
#[derive(Debug, Default)]
pub struct Service {
    /// The manager (a no-op without systemd).
    pub manager: Manager,
    /// Function sockets from the fd store, taken as functions are restored.
    pub stored: std::sync::Mutex<StoredSockets>,
}

/// The fd store name of a function socket (unique per function, port and protocol).
pub fn function_fd_name(namespace: &str, name: &str, port: u16, protocol: &str) -> String {
    format!("{FUNCTION_FD_PREFIX}{namespace}.{name}.{port}.{protocol}")
}

/// The service manager, when there is one.
#[derive(Debug, Default)]
pub struct Manager {
    socket: Option<SocketAddr>,
    watchdog: Option<Duration>,
}

impl Manager {
    /// The manager named by NOTIFY_SOCKET and WATCHDOG_USEC (for this pid), taken once: the
    /// variables are removed so function instances do not inherit them.
    pub fn from_env() -> Self {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|s| match s.strip_prefix('@') {
                Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name).ok(),
                None => SocketAddr::from_pathname(&s).ok(),
            });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        // SAFETY: called while the process is single-threaded.
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
            std::env::remove_var("WATCHDOG_USEC");
            std::env::remove_var("WATCHDOG_PID");
        }
        Self { socket, watchdog }
    }

    /// Whether a service manager listens.
    pub fn present(&self) -> bool {
        self.socket.is_some()
    }

    /// How often the manager wants WATCHDOG=1, if it watches.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (newline-separated assignments) with `fds` attached.
    fn send(&self, state: &str, fds: &[RawFd]) -> io::Result<()> {
        let Some(addr) = &self.socket else {
            return Ok(());
        };
        let sock = UnixDatagram::unbound()?;
        sock.connect_addr(addr)?;
        let sent = sock.send_with_fd(state.as_bytes(), fds)?;
        if sent != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to NOTIFY_SOCKET",
            ));
        }
        Ok(())
    }

    /// Sends a state change (`READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1`).
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state, &[]) {
            tracing::warn!("sd_notify {state:?}: {e}");
        }
    }

    /// Keeps `fds` in the fd store under `name`, replacing what was stored under it.
    pub fn store_fds(&self, name: &str, fds: &[BorrowedFd<'_>]) {
        if !self.present() {
            return;
        }
        self.remove_fds(name);
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if let Err(e) = self.send(&format!("FDSTORE=1\nFDNAME={name}"), &raw) {
            tracing::warn!(
                "fd store: keeping {name}: {e} (is FileDescriptorStoreMax= set in the unit?)"
            );
        }
    }

    /// Drops what the fd store holds under `name`.
    pub fn remove_fds(&self, name: &str) {
        if let Err(e) = self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), &[]) {
            tracing::warn!("fd store: dropping {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use sendfd::RecvWithFd;

    use super::*;

    #[test]
    fn messages_and_descriptors_reach_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("faasd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let manager = Manager {
            socket: Some(SocketAddr::from_pathname(&path).unwrap()),
            watchdog: None,
        };
        let mut buf = [0u8; 256];
        let mut fds = [0; 4];

        manager.notify("READY=1\nSTATUS=serving");
        let (n, nfds) = receiver.recv_with_fd(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
        assert_eq!(nfds, 0);

        // Storing first drops the old entry, then sends the socket itself.
        let socket = std::net::TcpListener::bind("[::1]:0").unwrap();
        let name = function_fd_name("openfaas-fn", "hello", 8080, "tcp");
        manager.store_fds(&name, &[socket.as_fd()]);
        let (n, _) = receiver.recv_with_fd(&mut buf, &mut fds).unwrap();
        assert_eq!(
            &buf[..n],
            format!("FDSTOREREMOVE=1\nFDNAME={name}").as_bytes()
        );
        let (n, nfds) = receiver.recv_with_fd(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], format!("FDSTORE=1\nFDNAME={name}").as_bytes());
        assert_eq!(nfds, 1);
        // SAFETY: the descriptor just received is ours.
        let got = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        let addr = crate::sockets::local_addr(&got).unwrap();
        assert_eq!(
            std::net::SocketAddr::V6(addr),
            socket.local_addr().unwrap(),
            "the same socket came through"
        );

        // Stored sockets are found again by what they are bound to.
        let (mut stored, rest) = StoredSockets::split(vec![
            (name.clone(), got),
            ("api".into(), OwnedFd::from(receiver)),
        ]);
        assert_eq!(rest.len(), 1);
        assert!(stored.take(addr, false).is_none(), "not a datagram socket");
        assert!(stored.take(addr, true).is_some());
        assert!(stored.drain_names().is_empty(), "nothing else was stored");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
