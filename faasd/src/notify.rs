//! The sd_notify socket every function instance gets as NOTIFY_SOCKET. One datagram socket
//! for the host; the kernel stamps each message with the sender's pid (SO_PASSCRED), which
//! routes it to the instance that sent it.

use std::{
    collections::{HashMap, VecDeque},
    io,
    os::{
        fd::AsRawFd,
        unix::{fs::PermissionsExt, net::UnixDatagram},
    },
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::io::unix::AsyncFd;

/// What an instance said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// READY=1.
    Ready,
    /// WATCHDOG=1.
    Watchdog,
    /// STATUS=….
    Status(String),
    /// STOPPING=1.
    Stopping,
}

/// Parses one notify datagram into the notices it carries.
pub fn parse(msg: &[u8]) -> Vec<Notice> {
    String::from_utf8_lossy(msg)
        .lines()
        .filter_map(|l| match l.split_once('=') {
            Some(("READY", "1")) => Some(Notice::Ready),
            Some(("WATCHDOG", "1")) => Some(Notice::Watchdog),
            Some(("STOPPING", "1")) => Some(Notice::Stopping),
            Some(("STATUS", s)) => Some(Notice::Status(s.chars().take(256).collect())),
            _ => None,
        })
        .collect()
}

/// Where the notices of one instance go: called with (sender pid, notice).
#[derive(Clone)]
pub struct NoticeSender(std::sync::Arc<dyn Fn(i32, Notice) + Send + Sync>);

impl NoticeSender {
    /// A sender that calls `f` for every notice.
    pub fn new(f: impl Fn(i32, Notice) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }

    fn send(&self, (pid, n): (i32, Notice)) {
        (self.0)(pid, n);
    }
}

impl std::fmt::Debug for NoticeSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoticeSender")
    }
}

/// How long notices from a pid nobody has registered yet are kept.
const HOLD_FOR: Duration = Duration::from_secs(5);
/// How many such notices are kept at most.
const HOLD_MAX: usize = 256;

/// Routes notices to the task that owns the sending pid.
///
/// A new instance can say READY=1 before faasd has registered its pid (faasd learns the
/// pid from clone3, and the instance may run first), so notices from unknown pids are
/// held for a few seconds and handed over on registration.
#[derive(Debug, Clone, Default)]
pub struct Router {
    inner: Arc<Mutex<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    routes: HashMap<i32, NoticeSender>,
    /// A function's pid → its instance's (its init's): found once in `/proc`, then kept
    /// for as long as the instance is routed (the function lives exactly as long).
    functions: HashMap<i32, i32>,
    held: VecDeque<Held>,
}

/// A notice from a pid nobody has registered yet.
#[derive(Debug)]
struct Held {
    at: Instant,
    sender: i32,
    /// Its parent, grandparent, … (0 past the last), any of which may register instead.
    ancestors: [i32; ANCESTRY],
    notice: Notice,
}

impl Router {
    /// Sends notices from `pid` to `tx` until [`Router::forget`], starting with any that
    /// arrived before this call.
    pub fn register(&self, pid: i32, tx: NoticeSender) {
        let mut r = self.inner.lock().expect("router lock");
        let expired = Instant::now() - HOLD_FOR;
        r.held.retain(|h| {
            if h.sender != pid && (pid <= 1 || !h.ancestors.contains(&pid)) {
                return true;
            }
            if h.at >= expired {
                tx.send((pid, h.notice.clone()));
            }
            false
        });
        r.routes.insert(pid, tx);
    }

    /// Stops routing for `pid`.
    pub fn forget(&self, pid: i32) {
        let mut r = self.inner.lock().expect("router lock");
        r.routes.remove(&pid);
        r.functions.retain(|_, instance| *instance != pid);
    }

    fn route(&self, pid: i32, n: Notice) {
        {
            let r = self.inner.lock().expect("router lock");
            let instance = r.functions.get(&pid).copied().unwrap_or(pid);
            if let Some(tx) = r.routes.get(&instance) {
                tx.send((instance, n));
                return;
            }
        }
        // An instance's pid is its init's; the function itself (or a process it started)
        // is below it. `/proc` is read without the lock.
        let mut above = [0; ANCESTRY];
        for (slot, a) in above.iter_mut().zip(ancestors(pid)) {
            *slot = a;
        }
        let mut r = self.inner.lock().expect("router lock");
        if let Some((i, instance)) = above
            .iter()
            .take_while(|a| **a != 0)
            .enumerate()
            .find(|(_, a)| r.routes.contains_key(a))
        {
            let instance = *instance;
            if i == 0 {
                r.functions.insert(pid, instance);
            }
            r.routes[&instance].send((instance, n));
            return;
        }
        let now = Instant::now();
        while r.held.front().is_some_and(|h| now - h.at > HOLD_FOR) || r.held.len() >= HOLD_MAX {
            r.held.pop_front();
        }
        r.held.push_back(Held {
            at: now,
            sender: pid,
            ancestors: above,
            notice: n,
        });
    }
}

/// How far up a notice's sender is looked for a registered instance: the function is its
/// init's child, and what the function starts is below that.
const ANCESTRY: usize = 3;

/// The parent, grandparent, … of `pid` (from `/proc`), as far as [`ANCESTRY`].
fn ancestors(pid: i32) -> impl Iterator<Item = i32> {
    std::iter::successors(Some(pid), |p| parent(*p))
        .skip(1)
        .take(ANCESTRY)
}

fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace()
        .nth(1)?
        .parse()
        .ok()
        .filter(|p| *p > 1)
}

/// Binds the notify socket at `path` (replacing a stale one) and serves it forever.
pub fn serve(path: &Path, router: Router) -> io::Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    let sock = UnixDatagram::bind(path)?;
    // Functions run unprivileged; only messages from known pids are acted on.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    sock.set_nonblocking(true)?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a live c_int.
    if unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const one).cast(),
            4,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the socket is moved into the AsyncFd, which alone closes it.
    let afd = unsafe { AsyncFd::register(sock)? };
    Ok(tokio::spawn(async move {
        loop {
            let Ok(mut guard) = afd.readable().await else {
                return;
            };
            while let Some((pid, msg)) = recv_with_pid(afd.get_ref()) {
                for n in parse(&msg) {
                    router.route(pid, n);
                }
            }
            guard.clear_ready();
        }
    }))
}

fn recv_with_pid(sock: &UnixDatagram) -> Option<(i32, Vec<u8>)> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below refers to our own buffers.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg.as_mut_ptr().cast();
    hdr.msg_controllen = size_of_val(&cmsg);
    // SAFETY: as above.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut hdr,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    let mut pid = None;
    // SAFETY: walking the control buffer the kernel filled, with the libc helpers.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                pid = Some(cred.pid);
            } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                // fds sent to us (FDSTORE is not supported): close them.
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let fds = libc::CMSG_DATA(c).cast::<libc::c_int>();
                for i in 0..len / 4 {
                    libc::close(std::ptr::read_unaligned(fds.add(i)));
                }
            }
            c = libc::CMSG_NXTHDR(&hdr, c);
        }
    }
    Some((pid.unwrap_or(0), buf))
}

#[cfg(test)]
mod tests {
    /// A sender into a channel (the tests' receiving end).
    fn channel_sender(tx: mpsc::UnboundedSender<(i32, Notice)>) -> NoticeSender {
        NoticeSender::new(move |pid, n| {
            let _ = tx.send((pid, n));
        })
    }
    use super::*;
    use tokio::sync::mpsc;

    #[test]
    fn parses_the_notices_faasd_acts_on() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=warming up\nWATCHDOG=1\nBOGUS=2\nSTOPPING=1"),
            vec![
                Notice::Ready,
                Notice::Status("warming up".into()),
                Notice::Watchdog,
                Notice::Stopping
            ]
        );
        assert!(parse(b"READY=0").is_empty());
    }

    #[test]
    fn notices_sent_before_registration_are_delivered_on_it() {
        let router = Router::default();
        router.route(42, Notice::Ready);
        router.route(43, Notice::Watchdog);
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.register(42, channel_sender(tx));
        assert_eq!(rx.try_recv().ok(), Some((42, Notice::Ready)));
        assert!(rx.try_recv().is_err(), "only the registered pid's notices");
        router.route(42, Notice::Stopping);
        assert_eq!(rx.try_recv().ok(), Some((42, Notice::Stopping)));
    }

    #[test]
    fn a_child_of_a_registered_pid_is_routed_to_it_before_and_after_registration() {
        // This test process stands for an instance's init, a child of it for the function.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let (me, function) = (std::process::id() as i32, child.id() as i32);
        let router = Router::default();
        router.route(function, Notice::Ready);
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.register(me, channel_sender(tx));
        assert_eq!(
            rx.try_recv().ok(),
            Some((me, Notice::Ready)),
            "held, then handed over"
        );
        router.route(function, Notice::Watchdog);
        assert_eq!(rx.try_recv().ok(), Some((me, Notice::Watchdog)));
        assert_eq!(
            router.inner.lock().unwrap().functions.get(&function),
            Some(&me),
            "the child is known now: no more /proc reads for it"
        );
        router.forget(me);
        assert!(
            router.inner.lock().unwrap().functions.is_empty(),
            "forgotten with it"
        );
        router.route(function, Notice::Ready);
        assert!(rx.try_recv().is_err(), "nothing routed after forget");
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn held_notices_are_bounded() {
        let router = Router::default();
        for pid in 0..(HOLD_MAX as i32 + 10) {
            router.route(pid, Notice::Ready);
        }
        assert_eq!(router.inner.lock().unwrap().held.len(), HOLD_MAX);
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.register(0, channel_sender(tx));
        assert!(rx.try_recv().is_err(), "the oldest were dropped first");
    }

    #[tokio::test]
    async fn messages_reach_the_task_registered_for_the_sender() {
        let dir = std::env::temp_dir().join(format!("faasd-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let router = Router::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        router.register(std::process::id() as i32, channel_sender(tx));
        let task = serve(&path, router).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", &path).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            got.unwrap(),
            Some((std::process::id() as i32, Notice::Ready))
        );
        task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
