//! The connections a function and each of its instances hold, which is the load `capacity`
//! counts and what keeps an instance from being stopped.
//!
//! They come from one `sock_diag` dump of the namespace (accepted sockets live here, where
//! the function's socket was made), shared by every supervisor that asks within [`FRESH`]:
//! at the autoscaler's 10 ms tick many functions share one dump instead of each reading
//! the host's connection table.

use std::{
    collections::HashSet,
    net::Ipv6Addr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use faasd_core::spec::{Port, Protocol};

use crate::sockdiag::{self, Connections};

/// A dump younger than this is reused.
const FRESH: Duration = Duration::from_millis(5);

static LATEST: Mutex<Option<(Instant, Arc<Connections>)>> = Mutex::new(None);

/// The inodes of the connections open to the function's TCP ports (0 for each still in
/// the accept queue), or `None` when the dump failed (the caller must then assume they
/// are open).
pub(super) fn open(addr: Ipv6Addr, ports: &[Port]) -> Option<Vec<u32>> {
    let all = latest()?;
    let tcp: Vec<u16> = ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port)
        .collect();
    Some(
        all.to(addr)
            .iter()
            .filter(|(port, _)| tcp.contains(port))
            .map(|&(_, inode)| inode)
            .collect(),
    )
}

fn latest() -> Option<Arc<Connections>> {
    let mut latest = LATEST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, c)) = latest.as_ref()
        && at.elapsed() < FRESH
    {
        return Some(c.clone());
    }
    match sockdiag::connections() {
        Ok(c) => {
            let c = Arc::new(c);
            *latest = Some((Instant::now(), c.clone()));
            Some(c)
        }
        Err(e) => {
            tracing::warn!("listing open connections (sock_diag): {e}");
            None
        }
    }
}

/// How many of the connections `inodes` the processes of an instance (`pid` and its
/// descendants) hold, or `None` when their descriptors cannot be read.
pub(super) fn held_by(pid: i32, inodes: &[u32]) -> Option<usize> {
    let wanted: HashSet<u32> = inodes.iter().copied().filter(|&i| i != 0).collect();
    let mut held = 0;
    let mut tree = vec![pid];
    let mut next = 0;
    while let Some(&p) = tree.get(next) {
        next += 1;
        let fds = std::fs::read_dir(format!("/proc/{p}/fd")).ok()?;
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = socket_inode(&target.to_string_lossy())
                && wanted.contains(&inode)
            {
                held += 1;
            }
        }
        tree.extend(children(p));
    }
    Some(held)
}

/// `socket:[N]` → N.
fn socket_inode(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn connections_are_counted_per_port_and_found_in_their_holder() {
        let l = TcpListener::bind("[::1]:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = [Port {
            name: "t".into(),
            port,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(open(Ipv6Addr::LOCALHOST, &ports), Some(vec![]));
        let _client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        std::thread::sleep(FRESH);
        let queued = open(Ipv6Addr::LOCALHOST, &ports).unwrap();
        assert_eq!(queued, [0], "one connection, not yet accepted");
        let (accepted, _) = l.accept().unwrap();
        std::thread::sleep(FRESH);
        let inodes = open(Ipv6Addr::LOCALHOST, &ports).unwrap();
        assert_eq!(inodes.len(), 1);
        let me = std::process::id() as i32;
        assert_eq!(held_by(me, &inodes), Some(1), "this process holds it");
        // A child holds what it inherited; the parent still counts its own.
        // SAFETY: the child only sleeps and exits; it touches no state of the parent's.
        let child = unsafe { libc::fork() };
        if child == 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            held_by(me, &inodes),
            Some(2),
            "the child's copy is found under it"
        );
        assert_eq!(held_by(child, &inodes), Some(1));
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        drop(accepted);
        assert_eq!(held_by(me, &inodes), Some(0), "closed: held by nobody");
    }
}
