//! Connections to images that bind their own port (every OpenFaaS watchdog image listens
//! on 8080) instead of taking sockets from LISTEN_FDS.
//!
//! Such an instance's listening socket lives in the container's network namespace, where
//! nothing outside can reach it. faasd keeps the function's own socket (so steering, the
//! accept queue and activation are unchanged), accepts from it, and connects to the image's
//! port through a socket created inside the container's namespace; bytes are then copied
//! both ways. Each instance has its path into its namespace; one accept loop per function
//! hands each connection to the instance carrying the fewest. This is a proxy hop that socket passing avoids: `cargo xtask bench` measures
//! what it costs.
//!
//! An instance is ready once it accepts on its port, or, for an image that says how
//! (OpenFaaS's watchdogs and `com.openfaas.ready.http.path`), once a GET of its readiness
//! path answers 2xx: the watchdogs bind their port before their handler is up. of-watchdog
//! in `http` mode answers that path before the server it forwards to listens, so there the
//! server's port must accept too.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::TcpStream,
    sync::{Notify, oneshot},
};

use crate::sockets;

/// How often an instance that has not bound its port yet is tried again.
const PROBE_INTERVAL: Duration = Duration::from_millis(2);

/// How long one readiness request may take before it is tried again.
const READY_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

type Reply = oneshot::Sender<io::Result<std::net::TcpStream>>;

/// Where and how an instance of an image that binds its own port is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The port the image binds in its network namespace.
    pub port: u16,
    /// The HTTP path that answers 2xx once the instance is ready; `None`: ready once the
    /// port accepts.
    pub ready_path: Option<String>,
    /// A port in the instance that must accept as well before it is ready: of-watchdog's
    /// `upstream_url` in `http` mode.
    pub behind: Option<u16>,
    /// Most connections an instance takes at once (of-watchdog's `max_inflight`, which
    /// answers 429 beyond it); more wait in the function's queue.
    pub max_inflight: Option<u32>,
}

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

/// One ready instance's path: a connector into its namespace, and the connections it
/// carries now.
#[derive(Debug)]
pub struct Path {
    pid: i32,
    connector: Connector,
    port: u16,
    /// The probe's connection, kept for the first client.
    spare: Mutex<Option<TcpStream>>,
    open: Arc<AtomicU32>,
}

/// Waits until the instance `pid` is ready on `upstream` (or `deadline` passes, which the
/// start's own timeout reports): then it has a path.
pub async fn probe(
    pid: i32,
    connector: Connector,
    upstream: &Upstream,
    deadline: Instant,
) -> Option<Path> {
    let port = upstream.port;
    loop {
        let ready = match connector.connect(port).await {
            // A readiness request's connection is spent; a bare connect's is kept for the
            // first client.
            Ok(s) => match &upstream.ready_path {
                None => Some(Some(s)),
                Some(path) => ready(s, path).await.then_some(None),
            },
            Err(_) => None,
        };
        let ready = match (ready, upstream.behind) {
            (Some(spare), Some(behind)) => connector.connect(behind).await.ok().map(|_| spare),
            (ready, _) => ready,
        };
        if let Some(spare) = ready {
            return Some(Path {
                pid,
                connector,
                port,
                spare: Mutex::new(spare),
                open: Arc::default(),
            });
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Whether `GET path` on `s` answers 2xx.
async fn ready(mut s: TcpStream, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        // The status line is all it takes: `HTTP/1.1 200`.
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await?;
        io::Result::Ok(head)
    };
    match tokio::time::timeout(READY_REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(head)) => head.starts_with(b"HTTP/1.") && head[9] == b'2',
        _ => false,
    }
}

/// The paths of a function's ready instances.
#[derive(Debug)]
pub struct Paths {
    paths: Mutex<Vec<Arc<Path>>>,
    /// Connections an instance carries before the next goes to another (a capacity
    /// target); `None`: no limit.
    limit: Option<u32>,
    /// Connections an instance carries at most; beyond, connections wait in the queue.
    most: Option<u32>,
    /// Instances the function aims for: while fewer have a path and every one is at its
    /// limit, connections wait in the queue for the coming ones.
    wanted: AtomicU32,
    /// Woken when a connection ends, a path comes or the aim changes: what lets a held
    /// connection through.
    changed: Arc<Notify>,
}

impl Paths {
    /// No paths yet; `limit` connections per instance while more instances are coming,
    /// never more than `most`.
    pub fn new(limit: Option<u32>, most: Option<u32>) -> Self {
        Self {
            paths: Mutex::default(),
            limit,
            most,
            wanted: AtomicU32::new(0),
            changed: Arc::default(),
        }
    }

    /// The instances the function aims for now.
    pub fn set_wanted(&self, n: u32) {
        self.wanted.store(n, Ordering::Relaxed);
        self.changed.notify_one();
    }

    /// Adds a ready instance's path.
    pub fn add(&self, path: Path) {
        self.lock().push(Arc::new(path));
        self.changed.notify_one();
    }

    /// Removes an instance's path; says whether any is left.
    pub fn remove(&self, pid: i32) -> bool {
        let mut paths = self.lock();
        paths.retain(|p| p.pid != pid);
        !paths.is_empty()
    }

    /// The connections the instance `pid` carries now (0 without a path).
    pub fn open(&self, pid: i32) -> u32 {
        self.lock()
            .iter()
            .find(|p| p.pid == pid)
            .map_or(0, |p| p.open.load(Ordering::Relaxed))
    }

    /// The path for the next connection: the one carrying the fewest, unless all are at
    /// the limit and another instance is coming, or all carry the most they take.
    fn pick(&self) -> Option<Arc<Path>> {
        let paths = self.lock();
        let least = paths
            .iter()
            .min_by_key(|p| p.open.load(Ordering::Relaxed))?;
        let open = least.open.load(Ordering::Relaxed);
        let full = self.limit.is_some_and(|l| open >= l);
        let coming = (paths.len() as u32) < self.wanted.load(Ordering::Relaxed);
        let at_most = self.most.is_some_and(|m| open >= m);
        (!(at_most || full && coming)).then(|| least.clone())
    }

    /// The path for the next connection, once there is one ([`Paths::pick`]).
    async fn next(&self) -> Arc<Path> {
        loop {
            if let Some(path) = self.pick() {
                return path;
            }
            // A change since the pick left a permit, so none is missed.
            self.changed.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Path>>> {
        self.paths.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Accepts the connections queued on the function's first socket while an instance has a
/// path, and hands each to the one carrying the fewest (so several instances share the
/// load as they share a socket's accept queue when they take it themselves; with a limit,
/// a connection waits for a coming instance rather than crowd a full one), until aborted.
pub async fn serve(sockets: Arc<sockets::Watched>, paths: Arc<Paths>) {
    let listener = sockets.first();
    loop {
        let Ok(mut guard) = listener.readable().await else {
            return;
        };
        // Connections wait in the queue until an instance is ready for them.
        let path = paths.next().await;
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
        let open = Copying::start(path.open.clone(), paths.changed.clone());
        tokio::spawn(async move {
            let _open = open;
            let spare = path.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
            let upstream = match spare {
                Some(u) => Ok(u),
                None => path.connector.connect(path.port).await,
            };
            if let Ok(mut upstream) = upstream
                && let Ok(mut client) = tcp_stream(accepted)
            {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
        });
    }
}

/// One connection counted while it is copied, however its task ends; its end may let a
/// held one through.
struct Copying {
    open: Arc<AtomicU32>,
    changed: Arc<Notify>,
}

impl Copying {
    fn start(open: Arc<AtomicU32>, changed: Arc<Notify>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self { open, changed }
    }
}

impl Drop for Copying {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.changed.notify_one();
    }
}

fn tcp_stream(fd: OwnedFd) -> io::Result<TcpStream> {
    let s = std::net::TcpStream::from(fd);
    s.set_nonblocking(true)?;
    s.set_nodelay(true)?;
    TcpStream::from_std(s)
}
