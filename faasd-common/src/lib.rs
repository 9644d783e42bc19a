//! Types shared by faasd's kernel programs and its daemon.
//!
//! Everything here is `no_std` and `#[repr(C)]`: the same bytes are written by the daemon
//! into BPF maps and read by the `sk_lookup` program.
#![no_std]
#![deny(missing_docs)]

use core::net::Ipv6Addr;

#[cfg(feature = "init")]
pub mod init;

/// Names of the BPF maps and program, shared so user space finds what the object defines.
pub mod names {
    /// (address, port, protocol) → socket slot.
    pub const BINDINGS: &str = "BINDINGS";
    /// Socket slot → listening socket (a `SOCKMAP`).
    pub const SOCKETS: &str = "SOCKETS";
    /// Socket slot → per-CPU [`SlotCounters`](super::SlotCounters).
    pub const SLOT_STATS: &str = "SLOT_STATS";
    /// [`GlobalCounter`](super::GlobalCounter) index → per-CPU count.
    pub const GLOBAL_STATS: &str = "GLOBAL_STATS";
    /// The `sk_lookup` program.
    pub const SK_LOOKUP: &str = "faasd_sk_lookup";
    /// Socket slot → 1 when the slot's function has a source policy.
    pub const POLICY_SLOTS: &str = "POLICY_SLOTS";
    /// [`PolicySource`](super::PolicySource) prefixes a slot allows (LPM trie).
    pub const POLICY_ALLOW: &str = "POLICY_ALLOW";
    /// [`PolicySource`](super::PolicySource) prefixes a slot denies (LPM trie).
    pub const POLICY_DENY: &str = "POLICY_DENY";
    /// Socket slot → per-CPU count of lookups refused by the policy.
    pub const POLICY_DROPS: &str = "POLICY_DROPS";
    /// The function prefixes XDP guards (LPM trie of IPv6 addresses).
    pub const XDP_PREFIXES: &str = "XDP_PREFIXES";
    /// [`XdpCounter`](super::XdpCounter) index → per-CPU count.
    pub const XDP_STATS: &str = "XDP_STATS";
    /// The XDP program for devices without a link-layer header (WireGuard, TUN).
    pub const XDP_L3: &str = "faasd_xdp_l3";
    /// The XDP program for Ethernet devices.
    pub const XDP_L2: &str = "faasd_xdp_l2";
    /// The same guard as a tc program, for devices without a link-layer header.
    pub const TC_L3: &str = "faasd_tc_l3";
    /// The same guard as a tc program, for Ethernet devices.
    pub const TC_L2: &str = "faasd_tc_l2";
    /// Function cgroup id → [`EgressRule`](super::EgressRule).
    pub const EGRESS_RULES: &str = "EGRESS_RULES";
    /// [`PolicySource`](super::PolicySource) destination prefixes a rule allows (LPM trie).
    pub const EGRESS_ALLOW: &str = "EGRESS_ALLOW";
    /// [`PolicySource`](super::PolicySource) destination prefixes a rule denies (LPM trie).
    pub const EGRESS_DENY: &str = "EGRESS_DENY";
    /// [`egress_refused_key`](super::egress_refused_key) → per-CPU count of refusals.
    pub const EGRESS_REFUSED: &str = "EGRESS_REFUSED";
    /// Index 0: the cgroup level of function cgroups.
    pub const EGRESS_CONFIG: &str = "EGRESS_CONFIG";
    /// The egress programs, one per hook: TCP/UDP `connect` and unconnected UDP `sendmsg`,
    /// for IPv4 and IPv6 sockets.
    pub const EGRESS_PROGRAMS: [&str; 4] = [
        "faasd_egress_connect4",
        "faasd_egress_connect6",
        "faasd_egress_sendmsg4",
        "faasd_egress_sendmsg6",
    ];
}

/// How many (address, port, protocol) bindings, and so sockets, one host can hold.
pub const MAX_BINDINGS: u32 = 1 << 17;

/// `bpf_sk_assign` flag: use the selected socket as is, even when it shares its address
/// and port with others through SO_REUSEPORT (as an old and a new version of a function do).
pub const SK_ASSIGN_NO_REUSEPORT: u64 = 1 << 1;

/// IP protocol numbers as `sk_lookup` reports them.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// Key of the bindings map: the destination a connection or datagram is addressed to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingKey {
    /// IPv6 address as four words in network byte order, exactly as `bpf_sk_lookup.local_ip6`.
    pub addr: [u32; 4],
    /// Port in host byte order, as `bpf_sk_lookup.local_port`.
    pub port: u16,
    /// [`proto::TCP`] or [`proto::UDP`].
    pub protocol: u8,
    /// Always zero: keeps the key free of uninitialised padding, which would break hashing.
    pub pad: u8,
}

impl BindingKey {
    /// The key for `addr`:`port` over `protocol`.
    pub fn new(addr: Ipv6Addr, port: u16, protocol: u8) -> Self {
        let o = addr.octets();
        let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        Self {
            addr: [word(0), word(4), word(8), word(12)],
            port,
            protocol,
            pad: 0,
        }
    }

    /// The address this key matches.
    pub fn ipv6(&self) -> Ipv6Addr {
        let mut o = [0u8; 16];
        for (i, w) in self.addr.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        Ipv6Addr::from(o)
    }
}

/// Per-socket-slot counters, one copy per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    /// Lookups that matched this slot's binding.
    pub lookups: u64,
    /// Lookups the program assigned to the slot's socket.
    pub steered: u64,
    /// Lookups that matched a binding whose socket is missing or could not take the connection.
    pub no_socket: u64,
}

/// What the XDP program did with a packet, indexes into `XDP_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpCounter {
    /// Packets for a function address and port with a binding, from an allowed source.
    Passed = 0,
    /// Packets for a function-prefix address and port that no binding holds: dropped.
    DroppedNoBinding = 1,
    /// Packets from a source the function's policy denies: dropped.
    DroppedPolicy = 2,
    /// Packets not for the function prefix, or not TCP/UDP: left to the stack.
    NotForFunctions = 3,
}

impl XdpCounter {
    /// Number of entries in `XDP_STATS`.
    pub const COUNT: u32 = 4;
}

/// How many function prefixes XDP can guard.
pub const MAX_XDP_PREFIXES: u32 = 64;

/// Key data of the policy tries: a socket slot, then a client address. A prefix of
/// `POLICY_SLOT_BITS + n` bits matches the slot exactly and the first `n` bits of the address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicySource {
    /// The socket slot.
    pub slot: u32,
    /// IPv6 address as four words in network byte order, like [`BindingKey::addr`].
    pub addr: [u32; 4],
}

/// Bits of [`PolicySource::slot`] at the front of every policy prefix.
pub const POLICY_SLOT_BITS: u32 = 32;

/// How many allow (and, separately, deny) prefixes one host can hold.
pub const MAX_POLICY_PREFIXES: u32 = 1 << 16;

/// Host-wide counters of the `sk_lookup` program, indexes into `GLOBAL_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalCounter {
    /// IPv6 lookups that matched no binding and fell through to the normal socket lookup.
    Miss = 0,
    /// IPv4 lookups (including IPv4-mapped clients): function addresses are IPv6 only, so
    /// these are never steered and fall through.
    Ipv4Passed = 1,
}

impl GlobalCounter {
    /// Number of entries in `GLOBAL_STATS`.
    pub const COUNT: u32 = 2;
}

/// What a function may connect to, by the cgroup its instances run in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    /// An [`EgressMode`] value.
    pub mode: u32,
    /// The rule's key in the prefix tries (the `slot` of [`PolicySource`]).
    pub id: u32,
    /// [`EGRESS_HAS_ALLOW`] and [`EGRESS_HAS_DENY`].
    pub lists: u32,
    /// Explicit padding.
    pub pad: u32,
}

/// Key of `EGRESS_REFUSED`: a rule's id and an [`EgressReason`].
pub fn egress_refused_key(id: u32, reason: u32) -> u64 {
    (u64::from(id) << 2) | u64::from(reason)
}

/// [`EgressRule::lists`]: the rule has allowed prefixes.
pub const EGRESS_HAS_ALLOW: u32 = 1;
/// [`EgressRule::lists`]: the rule has denied prefixes.
pub const EGRESS_HAS_DENY: u32 = 2;
/// How many egress rules (running functions) and how many prefixes of each list a host holds.
pub const MAX_EGRESS_RULES: u32 = 1 << 16;

/// Where a function may connect to (`faasd.dev/egress`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressMode {
    /// Anywhere (the prefix lists still apply).
    All = 0,
    /// Only inside the platform prefix `fd00:faa5::/32`: other functions, faasd's DNS.
    Faas = 1,
    /// Nowhere but its own loopback.
    None = 2,
}

/// Why a connection was refused, indexes into [`EgressRule::refused`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressReason {
    /// The mode is `none`.
    None = 0,
    /// The mode is `faas` and the destination is outside the platform.
    Faas = 1,
    /// The destination is in the deny list and not in the allow list.
    Denied = 2,
}

impl EgressReason {
    /// Number of reasons.
    pub const COUNT: usize = 3;
    /// Every reason, in index order, with its label in `/metrics`.
    pub const ALL: [(EgressReason, &'static str); 3] = [
        (EgressReason::None, "none"),
        (EgressReason::Faas, "faas"),
        (EgressReason::Denied, "denied"),
    ];
}

/// The address plan of `fd00:faa5::/32` (see DESIGN.md, "Addressing").
pub mod plan {
    use core::net::Ipv6Addr;

    /// The platform prefix, routed to `wg-faas`.
    pub const PLATFORM_PREFIX: (Ipv6Addr, u8) =
        (Ipv6Addr::new(0xfd00, 0xfaa5, 0, 0, 0, 0, 0, 0), 32);
    /// This host's default function prefix (host number 1).
    pub const DEFAULT_FUNCTION_PREFIX: (Ipv6Addr, u8) =
        (Ipv6Addr::new(0xfd00, 0xfaa5, 1, 0, 0, 0, 0, 0), 48);
    /// The host's address on the WireGuard network.
    pub const HOST_ADDRESS: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xfaa5, 0, 0x100, 0, 0, 0, 1);

    /// Host `n`'s function prefix, `fd00:faa5:N::/48` (host 1's is the default).
    pub const fn host_prefix(n: u16) -> (Ipv6Addr, u8) {
        (Ipv6Addr::new(0xfd00, 0xfaa5, n, 0, 0, 0, 0, 0), 48)
    }

    /// Host `n`'s network of its own, `fd00:faa5:0:1NN::/64` with NN = n − 1 in hex: its
    /// address and the WireGuard peers it gave addresses to, so peers' addresses are
    /// unique across a cluster and replies to them find their home host. Host 1's is
    /// `fd00:faa5:0:100::/64`, the single host's.
    pub const fn host_network(n: u16) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd00,
            0xfaa5,
            0,
            0x100u16.wrapping_add(n).wrapping_sub(1),
            0,
            0,
            0,
            0,
        )
    }

    /// The `index`th address (from 1) the scheduler gives a function it places on host
    /// `n` for the first time: `fd00:faa5:N:1::<index>`, apart from the addresses the host
    /// gives its own functions (`fd00:faa5:N::/64`) and its egress range.
    pub const fn placed_address(n: u16, index: u64) -> Ipv6Addr {
        let bits = ((0xfd00_u128) << 112)
            | ((0xfaa5_u128) << 96)
            | ((n as u128) << 80)
            | (1_u128 << 64)
            | index as u128;
        Ipv6Addr::from_bits(bits)
    }

    /// Host `n`'s own address (DNS and the API), the first of its network.
    pub const fn host_address(n: u16) -> Ipv6Addr {
        let s = host_network(n).segments();
        Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 1)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding (BindingKey's pad byte is explicit).
    unsafe impl aya::Pod for super::BindingKey {}
    // SAFETY: three u64 fields, no padding.
    unsafe impl aya::Pod for super::SlotCounters {}
    // SAFETY: five u32 fields, no padding.
    unsafe impl aya::Pod for super::PolicySource {}
    // SAFETY: four u32 fields, no padding.
    unsafe impl aya::Pod for super::EgressRule {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trips_address() {
        let a: Ipv6Addr = "fd00:faa5:1::2a".parse().unwrap();
        let k = BindingKey::new(a, 8080, proto::TCP);
        assert_eq!(k.ipv6(), a);
        assert_eq!(core::mem::size_of::<BindingKey>(), 20);
    }

    #[test]
    fn key_words_are_network_order_in_memory() {
        // The kernel hands the program local_ip6 as words whose memory bytes are the octets.
        let k = BindingKey::new("fd00:faa5::1".parse().unwrap(), 1, proto::UDP);
        assert_eq!(k.addr[0].to_ne_bytes(), [0xfd, 0x00, 0xfa, 0xa5]);
        assert_eq!(k.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
    }
}

/// How a container instance receives its sockets: faasd bind-mounts a directory holding a
/// unix socket and the activation shim into the container; the shim, its entrypoint,
/// connects and receives the sockets in one message with SCM_RIGHTS, their names (joined by
/// `:`) as the payload, then places them at fd 3.. and execs the image's command.
pub mod handoff {
    /// The directory faasd mounts its files under inside a container.
    pub const DIR: &str = "/.faasd";
    /// The shim binary, mounted read-only.
    pub const SHIM: &str = "/.faasd/shim";
    /// The per-instance directory holding [`SOCKET`].
    pub const RUN_DIR: &str = "/.faasd/run";
    /// The socket the shim receives the function's sockets from.
    pub const SOCKET: &str = "/.faasd/run/handoff.sock";
    /// The directory holding faasd's notify socket.
    pub const NOTIFY_DIR: &str = "/.faasd/notify";
    /// Most sockets one message carries (a function has at most this many ports).
    pub const MAX_FDS: usize = 32;
    /// Longest payload: the names of [`MAX_FDS`] sockets.
    pub const MAX_PAYLOAD: usize = 4096;
}
