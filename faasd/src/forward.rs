//! Connections to images that bind their own port (every OpenFaaS watchdog image listens
//! on 8080) instead of taking sockets from LISTEN_FDS.
//!
//! Such an instance's listening socket lives in the container's network namespace, where
//! nothing outside can reach it. faasd keeps the function's own socket (so steering, the
//! accept queue and activation are unchanged), accepts from it, and connects to the image's
//! port through a socket created inside the container's namespace; bytes are then copied
//! both ways. This is a proxy hop that socket passing avoids: `cargo xtask bench` measures
//! what it costs.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::TcpStream, sync::oneshot};

use crate::sockets;

/// How often an instance that has not bound its port yet is tried again.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);

type Reply = oneshot::Sender<io::Result<std::net::TcpStream>>;

/// Makes connections from inside one instance's network namespace: a thread that entered
/// the namespace and connects on request (a thread, because entering a namespace changes
/// the calling thread, which must not be one of the runtime's workers).
#[derive(Debug)]
pub struct Connector {
    tx: std::sync::mpsc::Sender<(u16, Reply)>,
}

impl Connector {
    /// Enters the network namespace of `pid`.
    pub fn new(pid: i32) -> io::Result<Self> {
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        let (tx, rx) = std::sync::mpsc::channel::<(u16, Reply)>();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("connector-{pid}"))
            .spawn(move || {
                // SAFETY: setns on this thread only, with a namespace fd we opened.
                let r = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
                let ok = r == 0;
                let _ = entered_tx.send(if ok {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                });
                if !ok {
                    return;
                }
                drop(netns);
                for (port, reply) in rx {
                    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
                    let r = std::net::TcpStream::connect(v4)
                        .or_else(|_| std::net::TcpStream::connect(v6));
                    let _ = reply.send(r);
                }
            })?;
        entered_rx
            .recv()
            .map_err(|_| io::Error::other("the connector thread ended"))??;
        Ok(Self { tx })
    }

    /// Connects to `port` on the instance's loopback.
    pub async fn connect(&self, port: u16) -> io::Result<TcpStream> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((port, reply))
            .map_err(|_| io::Error::other("the connector thread ended"))?;
        let s = rx
            .await
            .map_err(|_| io::Error::other("the connector thread ended"))??;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        TcpStream::from_std(s)
    }
}

/// Waits until the instance accepts on `port` (or `deadline` passes), calls `ready`, then
/// forwards every connection queued on the function's first socket until aborted.
pub async fn serve(
    sockets: Arc<sockets::Watched>,
    connector: Connector,
    port: u16,
    deadline: Instant,
    ready: impl FnOnce(),
) {
    // The probe's connection is kept and carries the first client.
    let first = loop {
        match connector.connect(port).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(PROBE_INTERVAL).await,
            // The activation task's start timeout reports and handles it.
            Err(_) => return,
        }
    };
    ready();
    let connector = Arc::new(connector);
    let mut spare = Some(first);
    let listener = sockets.first();
    loop {
        let Ok(mut guard) = listener.readable().await else {
            return;
        };
        let accepted = match sockets::accept(guard.get_inner()) {
            Ok(Some((conn, _))) => conn,
            Ok(None) => {
                guard.clear_ready();
                continue;
            }
            Err(e) => {
                tracing::warn!("forwarding: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let upstream = spare.take();
        let connector = connector.clone();
        tokio::spawn(async move {
            let upstream = match upstream {
                Some(u) => Ok(u),
                None => connector.connect(port).await,
            };
            if let Ok(mut upstream) = upstream
                && let Ok(mut client) = tcp_stream(accepted)
            {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

fn tcp_stream(fd: OwnedFd) -> io::Result<TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    TcpStream::from_std(s)
}
