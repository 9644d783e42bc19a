//! A flood (UDP datagrams or TCP SYNs) that costs its sender as little as a userspace sender
//! can: whole Ethernet frames built once and written with sendmmsg to an AF_PACKET socket that skips the qdisc,
//! from one thread per core in the sender's namespace. Over a veth the receiving side's
//! work runs on the sending CPU, so what a flood reaches is the cost of the whole path
//! per packet: the cheaper the receiver's drop, the more packets a second.

use std::{
    net::Ipv6Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Frames per sendmmsg.
const BATCH: usize = 64;

/// What each frame of a flood carries.
#[derive(Clone, Copy)]
pub enum Segment {
    /// A UDP datagram with an 18-byte payload.
    Udp,
    /// A TCP SYN with an MSS option, as a client's first packet.
    TcpSyn,
}

/// Where a flood goes and comes from.
#[derive(Clone)]
pub struct Flood {
    /// The sender's namespace.
    pub netns: String,
    /// The sender's interface there.
    pub interface: String,
    /// Its MAC address and the receiver's.
    pub from_mac: [u8; 6],
    pub to_mac: [u8; 6],
    pub from: Ipv6Addr,
    pub to: Ipv6Addr,
    pub port: u16,
    pub segment: Segment,
}

/// An interface's MAC address, from `ip -n NS link show IF`.
pub fn mac(netns: &str, interface: &str) -> Result<[u8; 6]> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "link", "show", interface])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .with_context(|| format!("no MAC address for {interface} in {netns}: {text}"))?;
    let bytes: Vec<u8> = hex
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{hex} is not a MAC address"))
}

impl Flood {
    /// One frame: Ethernet, IPv6 and the segment, with a correct checksum.
    pub fn frame(&self) -> Vec<u8> {
        let source_port = 40000u16.to_be_bytes();
        let (next_header, mut segment, check_at) = match self.segment {
            Segment::Udp => {
                let mut udp = Vec::new();
                udp.extend_from_slice(&source_port);
                udp.extend_from_slice(&self.port.to_be_bytes());
                udp.extend_from_slice(&26u16.to_be_bytes());
                udp.extend_from_slice(&[0, 0]);
                udp.extend_from_slice(&[0u8; 18]);
                (17u8, udp, 6)
            }
            Segment::TcpSyn => {
                let mut tcp = Vec::new();
                tcp.extend_from_slice(&source_port);
                tcp.extend_from_slice(&self.port.to_be_bytes());
                tcp.extend_from_slice(&1u32.to_be_bytes()); // sequence
                tcp.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment
                tcp.extend_from_slice(&[6 << 4, 0x02]); // 24-byte header, SYN
                tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
                tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                tcp.extend_from_slice(&[2, 4]); // MSS option
                tcp.extend_from_slice(&1440u16.to_be_bytes());
                (6u8, tcp, 16)
            }
        };
        let length = segment.len() as u16;
        let check = checksum(self.from, self.to, next_header, &segment);
        segment[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
        let mut f = Vec::with_capacity(14 + 40 + segment.len());
        f.extend_from_slice(&self.to_mac);
        f.extend_from_slice(&self.from_mac);
        f.extend_from_slice(&0x86ddu16.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&length.to_be_bytes());
        f.extend_from_slice(&[next_header, 64]);
        f.extend_from_slice(&self.from.octets());
        f.extend_from_slice(&self.to.octets());
        f.extend_from_slice(&segment);
        f
    }

    /// Sends for `how_long` from `threads` threads; the frames sent.
    pub fn run(&self, threads: usize, how_long: Duration) -> Result<u64> {
        let frame = self.frame();
        let deadline = Instant::now() + how_long;
        std::thread::scope(|s| {
            let senders: Vec<_> = (0..threads)
                .map(|_| s.spawn(|| send(&self.netns, &self.interface, &frame, deadline)))
                .collect();
            senders
                .into_iter()
                .map(|t| t.join().map_err(|_| anyhow::anyhow!("a sender panicked"))?)
                .sum()
        })
    }
}

/// The Internet checksum of a UDP or TCP segment over IPv6 (RFC 8200's pseudo-header):
/// zero is sent as all ones, which UDP needs and TCP accepts.
fn checksum(from: Ipv6Addr, to: Ipv6Addr, next_header: u8, segment: &[u8]) -> u16 {
    let length = segment.len() as u32;
    let words = from.octets().into_iter().chain(to.octets());
    let words = words
        .chain(length.to_be_bytes())
        .chain([0, 0, 0, next_header]);
    let mut sum = ones_sum(&words.collect::<Vec<u8>>()) + ones_sum(segment);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// The sum of big-endian 16-bit words, an odd last byte padded with zero.
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum()
}

/// One sender: joins `netns`, writes `frame` to `interface` in batches until `deadline`.
fn send(netns: &str, interface: &str, frame: &[u8], deadline: Instant) -> Result<u64> {
    let index = crate::enter_netns(netns, interface)?;
    // Protocol 0: this socket sends only.
    // SAFETY: plain syscall; the result is checked and owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: an int option of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    // SAFETY: plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = (libc::ETH_P_IPV6 as u16).to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr().cast_mut().cast(),
        iov_len: frame.len(),
    };
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            // SAFETY: plain data; all-zero is a valid value.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (&raw mut to).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = &raw mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: the headers point at the frame and address, alive across the call.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(segment: Segment) -> Vec<u8> {
        Flood {
            netns: String::new(),
            interface: String::new(),
            from_mac: [2, 0, 0, 0, 0, 1],
            to_mac: [2, 0, 0, 0, 0, 2],
            from: "fd00:beef::2".parse().unwrap(),
            to: "fd00:faa5:1::fffe".parse().unwrap(),
            port: 9,
            segment,
        }
        .frame()
    }

    /// Summing the pseudo-header and the segment with its checksum gives all ones.
    fn assert_checksum_holds(f: &[u8], next_header: u8) {
        let length = u16::from_be_bytes([f[18], f[19]]);
        assert_eq!(usize::from(length), f.len() - 54);
        assert_eq!(f[20], next_header);
        let mut sum: u32 = 0;
        for w in f[22..54].chunks(2).chain(f[54..].chunks(2)) {
            sum += u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        sum += u32::from(length) + u32::from(next_header);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn the_udp_frame_is_ipv6_udp_with_a_valid_checksum() {
        let f = frame(Segment::Udp);
        assert_eq!(f.len(), 14 + 40 + 8 + 18);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_checksum_holds(&f, 17);
    }

    #[test]
    fn the_syn_frame_is_a_tcp_syn_with_a_valid_checksum() {
        let f = frame(Segment::TcpSyn);
        assert_eq!(f.len(), 14 + 40 + 24);
        // Destination port, then a 24-byte header with only SYN set.
        assert_eq!(&f[56..58], &9u16.to_be_bytes());
        assert_eq!(&f[66..68], &[6 << 4, 0x02]);
        assert_checksum_holds(&f, 6);
    }
}
