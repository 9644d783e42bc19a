//! One `sock_diag` dump of this network namespace's IPv6 listening TCP and bound UDP
//! sockets: every function socket's queue in a few system calls, where asking each socket
//! takes two (`TCP_INFO` and `SO_MEMINFO`), 38,000 for a page of `/metrics` at 19,000
//! functions. Another dump lists the open connections of every address at once, the
//! load the autoscaler counts (accepted connections live in this namespace, where the
//! function's socket was made).
//!
//! The kernel reports a listener's accept queue and backlog as `idiag_rqueue` and
//! `idiag_wqueue`, a UDP socket's queued bytes as `idiag_rqueue`, and the drop counter in
//! the `INET_DIAG_SKMEMINFO` attribute, the same figures [`crate::sockets::queue_stats`]
//! reads.

use std::{
    collections::HashMap,
    io,
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use faasd_core::spec::Protocol;

use crate::sockets::QueueStats;

/// `SOCK_DIAG_BY_FAMILY`, the request type of `inet_diag_req_v2`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The attribute carrying `SK_MEMINFO_*`.
const INET_DIAG_SKMEMINFO: u16 = 7;
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;
const TCP_LISTEN: u32 = 10;
/// Unconnected UDP sockets are in this state.
const TCP_CLOSE: u32 = 7;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    header: libc::nlmsghdr,
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Message {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

/// The queues of the namespace's sockets, by local address, port and protocol. A key that
/// two sockets share (a function's old and new version during an update) maps to `None`:
/// the caller asks that socket itself.
#[derive(Debug, Default)]
pub struct Queues(HashMap<(Ipv6Addr, u16, Protocol), Option<QueueStats>>);

impl Queues {
    /// The queue of the one socket bound to `addr`, `port` and `protocol`, if there is
    /// exactly one.
    pub fn get(&self, addr: Ipv6Addr, port: u16, protocol: Protocol) -> Option<QueueStats> {
        self.0.get(&(addr, port, protocol)).copied().flatten()
    }
}

/// The open TCP connections of this namespace (established, or closed by the client with
/// the answer still to come), by local address: their local ports and their sockets'
/// inodes, 0 for one still in an accept queue (it has no file yet).
#[derive(Debug, Default)]
pub struct Connections(HashMap<Ipv6Addr, Vec<(u16, u32)>>);

impl Connections {
    /// The connections open to `addr`: (local port, inode).
    pub fn to(&self, addr: Ipv6Addr) -> &[(u16, u32)] {
        self.0.get(&addr).map_or(&[], Vec::as_slice)
    }
}

/// Dumps the open IPv6 TCP connections of this network namespace.
pub fn connections() -> io::Result<Connections> {
    let sock = diag_socket()?;
    let mut open = Connections::default();
    request(
        &sock,
        libc::IPPROTO_TCP as u8,
        1 << TCP_ESTABLISHED | 1 << TCP_CLOSE_WAIT,
        0,
    )?;
    receive(&sock, |m, _| {
        open.0
            .entry(Ipv6Addr::from(m.id.src))
            .or_default()
            .push((u16::from_be(m.id.sport), m.inode));
    })?;
    Ok(open)
}

fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket() returns a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned here only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Dumps the IPv6 TCP listeners and UDP sockets of this network namespace.
pub fn dump() -> io::Result<Queues> {
    let sock = diag_socket()?;
    let mut queues = Queues::default();
    for (protocol, ip_proto, state) in [
        (Protocol::Tcp, libc::IPPROTO_TCP, TCP_LISTEN),
        (Protocol::Udp, libc::IPPROTO_UDP, TCP_CLOSE),
    ] {
        request(
            &sock,
            ip_proto as u8,
            1 << state,
            1 << (INET_DIAG_SKMEMINFO - 1),
        )?;
        receive(&sock, |m, drops| {
            let stats = QueueStats {
                queued: u64::from(m.rqueue),
                limit: if protocol == Protocol::Tcp {
                    u64::from(m.wqueue)
                } else {
                    0
                },
                drops,
            };
            let key = (Ipv6Addr::from(m.id.src), u16::from_be(m.id.sport), protocol);
            queues
                .0
                .entry(key)
                .and_modify(|e| *e = None)
                .or_insert(Some(stats));
        })?;
    }
    Ok(queues)
}

/// Asks for the sockets of `protocol` in the `states` bitmask, with the `ext` attributes.
fn request(sock: &OwnedFd, protocol: u8, states: u32, ext: u8) -> io::Result<()> {
    let req = Request {
        header: libc::nlmsghdr {
            nlmsg_len: size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        family: libc::AF_INET6 as u8,
        protocol,
        ext,
        pad: 0,
        states,
        id: SockId::default(),
    };
    // SAFETY: send reads `size_of::<Request>()` bytes of a struct we own.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            (&raw const req).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads the dump's messages until its end, calling `each` with every socket and its drop
/// counter.
fn receive(sock: &OwnedFd, mut each: impl FnMut(&Message, u64)) -> io::Result<()> {
    // u32s keep the buffer aligned for the headers read from it.
    let mut buf = vec![0u32; 16 * 1024];
    loop {
        // SAFETY: recv writes at most the buffer's length in bytes into it.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 4, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the first n bytes were written by the kernel; u8 has no invalid values.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) };
        let mut at = 0;
        while at + size_of::<libc::nlmsghdr>() <= bytes.len() {
            // SAFETY: in bounds (checked above); read_unaligned needs no alignment.
            let h: libc::nlmsghdr =
                unsafe { std::ptr::read_unaligned(bytes[at..].as_ptr().cast()) };
            let len = h.nlmsg_len as usize;
            if len < size_of::<libc::nlmsghdr>() || at + len > bytes.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "sock_diag: a message runs past what was received",
                ));
            }
            let body = &bytes[at + size_of::<libc::nlmsghdr>()..at + len];
            match i32::from(h.nlmsg_type) {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    // SAFETY: an error message starts with the negative errno.
                    let errno: i32 = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ if body.len() >= size_of::<Message>() => {
                    // SAFETY: in bounds; read_unaligned needs no alignment.
                    let m: Message = unsafe { std::ptr::read_unaligned(body.as_ptr().cast()) };
                    each(&m, drops(&body[size_of::<Message>()..]));
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// `SK_MEMINFO_DROPS` from the attributes after a message (0 when absent).
fn drops(mut attrs: &[u8]) -> u64 {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            break;
        }
        let at = 4 + 4 * libc::SK_MEMINFO_DROPS as usize;
        if kind == INET_DIAG_SKMEMINFO && len >= at + 4 {
            return u64::from(u32::from_ne_bytes(
                attrs[at..at + 4].try_into().expect("four bytes"),
            ));
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    0
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv6Addr, TcpListener, TcpStream, UdpSocket};

    use super::*;
    use crate::sockets::queue_stats;

    #[test]
    fn the_dump_reports_what_each_socket_reports() {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let tcp_port = listener.local_addr().unwrap().port();
        // Two connections left in the accept queue.
        let _clients: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect((Ipv6Addr::LOCALHOST, tcp_port)).unwrap())
            .collect();
        let udp = UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        udp.send_to(b"one", (Ipv6Addr::LOCALHOST, udp_port))
            .unwrap();

        let queues = dump().unwrap();
        let tcp = queues
            .get(Ipv6Addr::LOCALHOST, tcp_port, Protocol::Tcp)
            .unwrap();
        assert_eq!(tcp.queued, 2);
        assert_eq!(tcp, queue_stats(&listener, true).unwrap());
        let datagram = queues
            .get(Ipv6Addr::LOCALHOST, udp_port, Protocol::Udp)
            .unwrap();
        assert!(datagram.queued > 0, "{datagram:?}");
        assert_eq!(datagram, queue_stats(&udp, false).unwrap());
        assert_eq!(
            queues.get(Ipv6Addr::LOCALHOST, udp_port, Protocol::Tcp),
            None,
            "no TCP socket has that port"
        );
    }

    #[test]
    fn open_connections_are_listed_by_local_address_with_their_inodes() {
        let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let first = TcpStream::connect((Ipv6Addr::LOCALHOST, port)).unwrap();
        // The second stays in the accept queue: its server side has no file yet.
        let second = TcpStream::connect((Ipv6Addr::LOCALHOST, port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let open = connections().unwrap();
        // Both ends are local, so the clients' sockets are listed under ::1 too.
        let here = open.to(Ipv6Addr::LOCALHOST);
        let port_of = |s: &TcpStream| s.local_addr().unwrap().port();
        for (s, local_port) in [
            (&first, port_of(&first)),
            (&second, port_of(&second)),
            (&accepted, port),
        ] {
            let entry = (local_port, inode(s.as_raw_fd()));
            assert!(here.contains(&entry), "{entry:?} not in {here:?}");
        }
        assert!(
            here.contains(&(port, 0)),
            "the unaccepted connection has no inode yet"
        );
        let listener_inode = inode(listener.as_raw_fd());
        assert!(
            !here.iter().any(|&(_, i)| i == listener_inode),
            "listeners are left out"
        );
    }

    fn inode(fd: i32) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .unwrap()
            .ino() as u32
    }
}
