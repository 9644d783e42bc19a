//! The zone's UDP front. An answer the zone gave before, to the same query (every byte but
//! the id), is sent again from memory with the new query's id, as long as the zone has not
//! changed since: the zone bumps a generation on every change, and an answer kept under an
//! older one is not used. One thread per core takes datagrams from the one socket and sends
//! answers, many per system call (recvmmsg, sendmmsg): whichever thread is free takes the
//! next query, so no thread idles while another has a queue (as sockets sharing the port
//! with SO_REUSEPORT would, the kernel spreading a few clients' flows over them unevenly).
//!
//! Everything else (a first query, a name outside the zone, anything odd) is relayed to
//! hickory's server on a loopback socket of its own, and its answer back to the client; an
//! authoritative answer (NOERROR or NXDOMAIN, not truncated) is kept for next time. So the
//! front answers exactly what hickory answers, only sooner.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use hickory_server::proto::{op::ResponseCode, rr::RecordType};

use super::QueryCounts;

/// Datagrams taken or sent per system call.
const BATCH: usize = 32;
/// The largest query kept an answer for (classic DNS's limit; EDNS queries are smaller).
const MAX_KEPT_QUERY: usize = 512;
/// The room for a datagram (the largest EDNS answer faasd's zone makes is far smaller).
const BUFFER: usize = 4096;
/// The socket's receive buffer.
const RECEIVE_BUFFER: usize = 4 << 20;
/// Answers kept per socket; past it the store is emptied (random names cannot grow it).
const MAX_KEPT: usize = 50_000;

/// An answer kept, and for which zone generation.
struct Kept {
    generation: u64,
    /// The answer, its id to be replaced.
    answer: Box<[u8]>,
    kind: Option<RecordType>,
    code: ResponseCode,
}

/// A query relayed to hickory, waiting for its answer.
struct Relayed {
    client: SocketAddr,
    id: [u8; 2],
    /// The query without its id, when its answer may be kept.
    key: Option<Box<[u8]>>,
    generation: u64,
}

/// What the threads of one socket share.
struct Shared {
    socket: UdpSocket,
    relay: UdpSocket,
    behind: SocketAddr,
    kept: RwLock<HashMap<Box<[u8]>, Kept>>,
    relayed: Mutex<RelayTable>,
    generation: Arc<AtomicU64>,
    queries: Arc<QueryCounts>,
}

/// Relayed queries by the id they were given (a wrapping counter: 65,536 at once at most).
struct RelayTable {
    next: u16,
    waiting: HashMap<u16, Relayed>,
}

/// Serves `socket` (UDP, bound) from memory with `workers` threads and through hickory at
/// `behind`; returns once its threads run.
pub(super) fn serve(
    socket: OwnedFd,
    workers: usize,
    behind: SocketAddr,
    generation: Arc<AtomicU64>,
    queries: Arc<QueryCounts>,
) -> std::io::Result<()> {
    crate::sockets::set_blocking(&socket)?;
    // A burst of queries waits here while every thread is busy: the default buffer
    // (about 200 KiB, some hundreds of datagrams) drops them, and the client counts them
    // lost.
    crate::sockets::set_receive_buffer(&socket, RECEIVE_BUFFER)?;
    let relay = UdpSocket::bind(("::1", 0))?;
    let shared = Arc::new(Shared {
        socket: UdpSocket::from(socket),
        relay,
        behind,
        kept: RwLock::default(),
        relayed: Mutex::new(RelayTable {
            next: 0,
            waiting: HashMap::new(),
        }),
        generation,
        queries,
    });
    for _ in 0..workers.max(1) {
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("faasd-dns-udp".into())
            .spawn(move || take_queries(&worker))?;
    }
    std::thread::Builder::new()
        .name("faasd-dns-relay".into())
        .spawn(move || take_answers(&shared))?;
    Ok(())
}

/// The query type, from the question after the 12-byte header; `None` if it cannot be
/// read.
fn query_type(query: &[u8]) -> Option<RecordType> {
    let mut at = 12;
    loop {
        let len = usize::from(*query.get(at)?);
        if len == 0 {
            break;
        }
        // A compressed name is no question a client sends.
        if len & 0xc0 != 0 {
            return None;
        }
        at += 1 + len;
    }
    let t = query.get(at + 1..at + 3)?;
    Some(RecordType::from(u16::from_be_bytes([t[0], t[1]])))
}

/// Whether an answer may be sent again for the same query: the zone's own (authoritative),
/// NOERROR or NXDOMAIN, and whole.
fn keepable(answer: &[u8]) -> Option<ResponseCode> {
    if answer.len() < 12 || answer[2] & 0x80 == 0 || answer[2] & 0x04 == 0 || answer[2] & 0x02 != 0
    {
        return None;
    }
    match answer[3] & 0x0f {
        0 => Some(ResponseCode::NoError),
        3 => Some(ResponseCode::NXDomain),
        _ => None,
    }
}

/// The worker: takes queries in batches, answers what it can from memory, relays the rest.
fn take_queries(s: &Shared) {
    let mut bufs = vec![[0u8; BUFFER]; BATCH];
    let mut out: Vec<(SocketAddr, Vec<u8>)> = Vec::with_capacity(BATCH);
    loop {
        let got = match recv_batch(&s.socket, &mut bufs) {
            Ok(got) => got,
            Err(e) => {
                tracing::warn!("DNS over UDP: receiving: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        let generation = s.generation.load(Ordering::Acquire);
        let mut answered = [false; BATCH];
        {
            let kept = s.kept.read().expect("dns lock");
            for (i, (len, from)) in got.iter().enumerate() {
                let query = &bufs[i][..*len];
                if query.len() < 12 || query.len() > MAX_KEPT_QUERY {
                    continue;
                }
                if let Some(k) = kept.get(&query[2..])
                    && k.generation == generation
                {
                    let mut answer = k.answer.to_vec();
                    answer[..2].copy_from_slice(&query[..2]);
                    s.queries.count_from_memory(k.kind, k.code);
                    out.push((*from, answer));
                    answered[i] = true;
                }
            }
        }
        for (i, (len, from)) in got.iter().enumerate() {
            if !answered[i] {
                relay(s, &bufs[i][..*len], *from, generation);
            }
        }
        if !out.is_empty() {
            if let Err(e) = send_batch(&s.socket, &out) {
                tracing::debug!("DNS over UDP: sending: {e}");
            }
            out.clear();
        }
    }
}

/// Sends `query` on to hickory under an id of the relay's own.
fn relay(s: &Shared, query: &[u8], client: SocketAddr, generation: u64) {
    if query.len() < 2 {
        return;
    }
    let id = {
        let mut t = s.relayed.lock().expect("dns lock");
        let id = t.next;
        t.next = t.next.wrapping_add(1);
        t.waiting.insert(
            id,
            Relayed {
                client,
                id: [query[0], query[1]],
                key: (query.len() >= 12 && query.len() <= MAX_KEPT_QUERY)
                    .then(|| query[2..].into()),
                generation,
            },
        );
        id
    };
    let mut q = query.to_vec();
    q[..2].copy_from_slice(&id.to_be_bytes());
    if let Err(e) = s.relay.send_to(&q, s.behind) {
        tracing::debug!("DNS over UDP: relaying to the zone: {e}");
    }
}

/// The relay's other half: hickory's answers, back to their clients, kept when they may be.
fn take_answers(s: &Shared) {
    let mut buf = [0u8; BUFFER];
    loop {
        let (len, from) = match s.relay.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("DNS over UDP: the zone's answers: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
        };
        if from != s.behind || len < 12 {
            continue;
        }
        let answer = &mut buf[..len];
        let Some(relayed) = s
            .relayed
            .lock()
            .expect("dns lock")
            .waiting
            .remove(&u16::from_be_bytes([answer[0], answer[1]]))
        else {
            continue;
        };
        answer[..2].copy_from_slice(&relayed.id);
        let _ = s.socket.send_to(answer, relayed.client);
        if let (Some(key), Some(code)) = (relayed.key, keepable(answer)) {
            let kind = query_type(answer);
            let mut kept = s.kept.write().expect("dns lock");
            if kept.len() >= MAX_KEPT {
                kept.clear();
            }
            kept.insert(
                key,
                Kept {
                    generation: relayed.generation,
                    answer: answer.into(),
                    kind,
                    code,
                },
            );
        }
    }
}

/// Waits for at least one datagram and takes up to `bufs.len()`: each one's length and
/// sender.
fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [[u8; BUFFER]],
) -> std::io::Result<Vec<(usize, SocketAddr)>> {
    // SAFETY: plain data; all-zero is a valid value of each.
    let mut addrs: Vec<libc::sockaddr_in6> = vec![unsafe { std::mem::zeroed() }; bufs.len()];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs = headers(&mut iovs, &mut addrs);
    // SAFETY: every header points into buffers and addresses that outlive the call.
    let n = unsafe {
        libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            msgs.len() as u32,
            libc::MSG_WAITFORONE,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(msgs[..n as usize]
        .iter()
        .zip(&addrs)
        .map(|(m, a)| {
            (
                m.msg_len as usize,
                SocketAddr::V6(crate::sockets::from_sockaddr(a)),
            )
        })
        .collect())
}

/// One message header per buffer and address, for recvmmsg and sendmmsg; they point into
/// both, which must outlive the call they are used in.
fn headers(iovs: &mut [libc::iovec], addrs: &mut [libc::sockaddr_in6]) -> Vec<libc::mmsghdr> {
    iovs.iter_mut()
        .zip(addrs.iter_mut())
        .map(|(iov, addr)| {
            // SAFETY: plain data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in6).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in6>() as u32;
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect()
}

/// Sends each datagram to its address, as many per system call as the kernel takes.
fn send_batch(socket: &UdpSocket, out: &[(SocketAddr, Vec<u8>)]) -> std::io::Result<()> {
    let mut addrs: Vec<libc::sockaddr_in6> = out
        .iter()
        .map(|(to, _)| match to {
            SocketAddr::V6(a) => crate::sockets::sockaddr(*a.ip(), a.port()),
            // The front serves IPv6 sockets only; a v4 sender reaches one mapped.
            SocketAddr::V4(a) => crate::sockets::sockaddr(a.ip().to_ipv6_mapped(), a.port()),
        })
        .collect();
    let mut iovs: Vec<libc::iovec> = out
        .iter()
        .map(|(_, b)| libc::iovec {
            iov_base: b.as_ptr().cast_mut().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut msgs = headers(&mut iovs, &mut addrs);
    let mut sent = 0;
    while sent < msgs.len() {
        // SAFETY: the headers point into buffers and addresses that outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs[sent..].as_mut_ptr(),
                (msgs.len() - sent) as u32,
                0,
            )
        };
        if n <= 0 {
            return Err(std::io::Error::last_os_error());
        }
        sent += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hello.faas AAAA`, id 0x1234, RD.
    const QUERY: &[u8] =
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05hello\x04faas\x00\x00\x1c\x00\x01";

    #[test]
    fn the_question_type_is_read_and_odd_names_are_not() {
        assert_eq!(query_type(QUERY), Some(RecordType::AAAA));
        assert_eq!(query_type(&QUERY[..20]), None);
        let mut compressed = QUERY.to_vec();
        compressed[12] = 0xc0;
        assert_eq!(query_type(&compressed), None);
    }

    #[test]
    fn only_whole_authoritative_answers_are_kept() {
        let mut a = QUERY.to_vec();
        a[2] = 0x84; // QR, AA
        a[3] = 0x00;
        assert_eq!(keepable(&a), Some(ResponseCode::NoError));
        a[3] = 0x03;
        assert_eq!(keepable(&a), Some(ResponseCode::NXDomain));
        a[3] = 0x05; // REFUSED
        assert_eq!(keepable(&a), None);
        a[3] = 0x00;
        a[2] = 0x80; // not authoritative: forwarded
        assert_eq!(keepable(&a), None);
        a[2] = 0x86; // truncated
        assert_eq!(keepable(&a), None);
        assert_eq!(keepable(QUERY), None, "a query is no answer");
    }
}
