//! The listening sockets faasd creates and owns for each function, as systemd owns the
//! sockets of socket-activated services.
//!
//! Each socket is bound to the function's own address and port with `IPV6_FREEBIND` (the
//! address is on no interface) and `SO_REUSEPORT` (a new version's sockets can coexist with
//! the old ones); the `sk_lookup` program assigns it with `NO_REUSEPORT`, so the map decides
//! which one gets the traffic. No ephemeral port is ever taken, so 100k functions fit.
//!
//! Sockets are created blocking. O_NONBLOCK belongs to the open file description, which
//! faasd and the function share: faasd must never depend on it nor change it once a
//! function holds the socket. faasd only waits for readiness (epoll), which works either way.

use std::{
    io,
    net::{Ipv6Addr, SocketAddrV6},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::Arc,
};

use faasd_core::spec::{Port, Protocol};
use tokio::io::unix::AsyncFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as u32,
        )
    })
    .map(drop)
}

/// The kernel's form of `[addr]:port`.
pub(crate) fn sockaddr(addr: Ipv6Addr, port: u16) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = addr.octets();
    sa
}

/// Creates the socket for `port` of the function at `addr`: close-on-exec, bound, and
/// listening (TCP) with `backlog`.
pub fn create(addr: Ipv6Addr, port: &Port, backlog: u32) -> io::Result<OwnedFd> {
    let ty = match port.protocol {
        Protocol::Tcp => libc::SOCK_STREAM,
        Protocol::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: plain syscall; the result is checked and owned at once.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET6, ty | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)?;
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    if port.protocol == Protocol::Udp {
        // Lets a UDP function learn the destination of each datagram.
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
    }
    let sa = sockaddr(addr, port.port);
    // SAFETY: sa is a valid sockaddr_in6 of the stated size.
    cvt(unsafe {
        libc::bind(
            fd,
            (&raw const sa).cast(),
            size_of::<libc::sockaddr_in6>() as u32,
        )
    })?;
    if port.protocol == Protocol::Tcp {
        let backlog = libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX);
        // SAFETY: plain syscall on our socket.
        cvt(unsafe { libc::listen(fd, backlog) })?;
    }
    Ok(sock)
}

/// A non-blocking socket of faasd's own services (DNS) bound to `addr` even before the
/// address exists on an interface (FREEBIND), listening if it is a stream socket.
pub fn bind_any(addr: std::net::SocketAddr, ty: libc::c_int) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain syscall; the result is checked and owned at once.
    let fd =
        cvt(unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let r = match addr {
        std::net::SocketAddr::V6(a) => {
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
            setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, 1)?;
            let sa = sockaddr(*a.ip(), a.port());
            // SAFETY: sa is a valid sockaddr_in6 of the stated size.
            unsafe {
                libc::bind(
                    fd,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        }
        std::net::SocketAddr::V4(a) => {
            setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_FREEBIND, 1)?;
            // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sa is a valid sockaddr_in of the stated size.
            unsafe {
                libc::bind(
                    fd,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
        }
    };
    cvt(r)?;
    if ty == libc::SOCK_STREAM {
        // SAFETY: plain syscall on our socket.
        cvt(unsafe { libc::listen(fd, 1024) })?;
    }
    Ok(sock)
}

/// Whether a socket is a stream (TCP) socket.
pub fn is_stream(fd: &impl AsRawFd) -> io::Result<bool> {
    let mut ty: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ty`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut ty).cast(),
            &mut len,
        )
    })?;
    Ok(ty == libc::SOCK_STREAM)
}

/// Makes a socket non-blocking; only for sockets no function shares (accept mode).
pub fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    set_blocking_mode(fd, false)
}

/// Makes a socket's calls block (a thread of its own waits on it).
pub fn set_blocking(fd: &impl AsRawFd) -> io::Result<()> {
    set_blocking_mode(fd, true)
}

/// Gives `fd` a receive buffer of `bytes`: past `net.core.rmem_max` where faasd may
/// (CAP_NET_ADMIN), else as large as that allows.
pub fn set_receive_buffer(fd: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = fd.as_raw_fd();
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
        .or_else(|_| setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes))
}

fn set_blocking_mode(fd: &impl AsRawFd, blocking: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let flags = if blocking {
        flags & !libc::O_NONBLOCK
    } else {
        flags | libc::O_NONBLOCK
    };
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// Whether a connection (TCP) or datagram (UDP) is waiting on the socket.
pub fn pending(fd: &impl AsRawFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLIN != 0 }
}

/// What waits on a function socket, as the kernel counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Connections in the accept queue (TCP); bytes in the receive queue (UDP).
    pub queued: u64,
    /// The accept queue's limit, the listen backlog (TCP; 0 for UDP).
    pub limit: u64,
    /// What the socket dropped because its queue was full: SYNs beyond the backlog (TCP),
    /// datagrams beyond the receive buffer (UDP). Counted since the socket was made.
    pub drops: u64,
}

/// The queue of a listening TCP (`stream`) or a UDP socket: TCP_INFO of a listener carries
/// the accept queue's length and limit, SO_MEMINFO the socket's drop counter.
pub fn queue_stats(fd: &impl AsRawFd, stream: bool) -> io::Result<QueueStats> {
    // SO_MEMINFO fills one u32 per SK_MEMINFO_* index; DROPS is the last of them.
    let mut meminfo = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into the array.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    let drops = u64::from(meminfo[libc::SK_MEMINFO_DROPS as usize]);
    if !stream {
        return Ok(QueueStats {
            queued: u64::from(meminfo[libc::SK_MEMINFO_RMEM_ALLOC as usize]),
            limit: 0,
            drops,
        });
    }
    // SAFETY: tcp_info is plain old data; zeroed is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    })?;
    // For a listener the kernel reports the accept queue in these two fields.
    Ok(QueueStats {
        queued: u64::from(info.tcpi_unacked),
        limit: u64::from(info.tcpi_sacked),
        drops,
    })
}

/// The address family of a socket (`AF_UNIX`, `AF_INET6`, …).
pub fn family(fd: &impl AsRawFd) -> io::Result<libc::c_int> {
    // SAFETY: sockaddr_storage is plain old data; zeroed is a valid value.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into the storage.
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) })?;
    Ok(libc::c_int::from(sa.ss_family))
}

/// The local address a socket is bound to, if it is an IPv6 socket.
pub fn local_addr(fd: &impl AsRawFd) -> io::Result<SocketAddrV6> {
    // SAFETY: getsockname fills at most `len` bytes of our zeroed struct.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as above.
    cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) })?;
    if i32::from(sa.sin6_family) != libc::AF_INET6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an IPv6 socket",
        ));
    }
    Ok(from_sockaddr(&sa))
}

/// The address a kernel `sockaddr_in6` holds.
pub(crate) fn from_sockaddr(sa: &libc::sockaddr_in6) -> SocketAddrV6 {
    SocketAddrV6::new(
        sa.sin6_addr.s6_addr.into(),
        u16::from_be(sa.sin6_port),
        0,
        0,
    )
}

/// Accepts one pending connection without blocking; `None` when none is waiting.
pub fn accept(fd: &impl AsRawFd) -> io::Result<Option<(OwnedFd, SocketAddrV6)>> {
    // SAFETY: accept4 fills at most `len` bytes of our zeroed struct.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: as above; the returned fd is owned at once.
    let r = unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            (&raw mut sa).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: r is a fresh descriptor.
    let conn = unsafe { OwnedFd::from_raw_fd(r) };
    Ok(Some((conn, from_sockaddr(&sa))))
}

/// A function's sockets registered with tokio's reactor. The descriptors stay owned by
/// the shared list, which this holds until every registration is gone.
#[derive(Debug)]
pub struct Watched {
    // Declared first: the registrations are dropped before the descriptors can close.
    fds: Vec<AsyncFd<RawFd>>,
    _sockets: Arc<[OwnedFd]>,
}

impl Watched {
    /// Registers every socket of `sockets`.
    pub fn new(sockets: &Arc<[OwnedFd]>) -> io::Result<Self> {
        let fds = sockets
            .iter()
            // SAFETY: the descriptors stay open while `_sockets` holds them, which is for
            // as long as these registrations exist (they are dropped first).
            .map(|s| unsafe { AsyncFd::register(s.as_raw_fd()) }.map_err(io::Error::from))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            fds,
            _sockets: sockets.clone(),
        })
    }

    /// The registrations, in the sockets' order.
    pub fn fds(&self) -> &[AsyncFd<RawFd>] {
        &self.fds
    }

    /// The first socket (the one forwarding accepts on).
    pub fn first(&self) -> &AsyncFd<RawFd> {
        &self.fds[0]
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    #[test]
    fn a_receive_buffer_is_as_large_as_asked_or_as_the_host_allows() {
        let s = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let asked = 4 << 20;
        super::set_receive_buffer(&s, asked).unwrap();
        let mut got: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `got`.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw mut got).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0);
        // SAFETY: no arguments, no failure.
        let allowed = if unsafe { libc::geteuid() } == 0 {
            asked
        } else {
            let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap();
            asked.min(max.trim().parse().unwrap())
        };
        // The kernel reports twice what it was given (the rest is for its bookkeeping).
        assert!(got as usize >= 2 * allowed, "{got} for {allowed} asked");
    }
}
