//! faasd's `sk_lookup` program: steers a connection (or datagram) for a function's address,
//! port and protocol into the listening socket faasd created for it, unless the function's
//! source policy refuses the client (systemd's IPAddressAllow/IPAddressDeny: an allowed
//! prefix wins, then a denied one, and anything else is allowed). Anything that matches no
//! binding passes through untouched, so the rest of the host behaves as before.
//!
//! Beside it, the guard (below, as XDP and as tc programs) and the egress programs: on the
//! cgroup that holds the functions' cgroups, they decide each `connect` and unconnected UDP send of a function by
//! its rule (`faasd.dev/egress` and its prefix lists), and count what they refuse.
//!
//! Rare events (a binding whose socket is gone, a count that found its map full) are
//! logged with aya-log, at most once a second per CPU, never on the path a packet that
//! goes well takes; faasd reads them into its log and `faasd status`.
#![no_std]
#![no_main]

use core::ptr::read_volatile;

use aya_ebpf::{
    EbpfContext,
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    bindings::{sk_action::SK_DROP, sk_action::SK_PASS},
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_ns},
    macros::{cgroup_sock_addr, classifier, map, sk_lookup, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, SockMap, lpm_trie::Key},
    programs::{SkLookupContext, SockAddrContext, TcContext, XdpContext},
};
use faasd_common::{
    BindingKey, EGRESS_HAS_ALLOW, EGRESS_HAS_DENY, EgressMode, EgressReason, EgressRule,
    GlobalCounter, MAX_BINDINGS, MAX_EGRESS_RULES, MAX_POLICY_PREFIXES, MAX_XDP_PREFIXES,
    POLICY_SLOT_BITS, PolicySource, SK_ASSIGN_NO_REUSEPORT, SlotCounters, XdpCounter,
    egress_refused_key, proto,
};

const AF_INET6: u32 = 10;

#[map(name = "BINDINGS")]
static BINDINGS: HashMap<BindingKey, u32> = HashMap::pinned(MAX_BINDINGS, 0);

#[map(name = "SOCKETS")]
static SOCKETS: SockMap = SockMap::pinned(MAX_BINDINGS, 0);

#[map(name = "SLOT_STATS")]
static SLOT_STATS: PerCpuArray<SlotCounters> = PerCpuArray::pinned(MAX_BINDINGS, 0);

#[map(name = "GLOBAL_STATS")]
static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(GlobalCounter::COUNT, 0);

#[map(name = "POLICY_SLOTS")]
static POLICY_SLOTS: Array<u32> = Array::pinned(MAX_BINDINGS, 0);

#[map(name = "POLICY_ALLOW")]
static POLICY_ALLOW: LpmTrie<PolicySource, u8> = LpmTrie::pinned(MAX_POLICY_PREFIXES, 0);

#[map(name = "POLICY_DENY")]
static POLICY_DENY: LpmTrie<PolicySource, u8> = LpmTrie::pinned(MAX_POLICY_PREFIXES, 0);

#[map(name = "POLICY_DROPS")]
static POLICY_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(MAX_BINDINGS, 0);

#[map(name = "XDP_PREFIXES")]
static XDP_PREFIXES: LpmTrie<[u32; 4], u8> = LpmTrie::pinned(MAX_XDP_PREFIXES, 0);

#[map(name = "XDP_STATS")]
static XDP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(XdpCounter::COUNT, 0);

#[map(name = "EGRESS_RULES")]
static EGRESS_RULES: HashMap<u64, EgressRule> = HashMap::pinned(MAX_EGRESS_RULES, 0);

#[map(name = "EGRESS_ALLOW")]
static EGRESS_ALLOW: LpmTrie<PolicySource, u8> = LpmTrie::pinned(MAX_EGRESS_RULES, 0);

#[map(name = "EGRESS_DENY")]
static EGRESS_DENY: LpmTrie<PolicySource, u8> = LpmTrie::pinned(MAX_EGRESS_RULES, 0);

#[map(name = "EGRESS_REFUSED")]
static EGRESS_REFUSED: PerCpuHashMap<u64, u64> = PerCpuHashMap::pinned(MAX_EGRESS_RULES, 0);

#[map(name = "EGRESS_CONFIG")]
static EGRESS_CONFIG: Array<u32> = Array::pinned(1, 0);

/// When this CPU last logged a rare event (CLOCK_MONOTONIC ns).
#[map(name = "LOGGED_AT")]
static LOGGED_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The least time between two logged events on one CPU: a flood of them (connections to
/// a function while no faasd runs) costs one record a second, not one each.
const LOG_EVERY_NS: u64 = 1_000_000_000;

/// Whether a rare event may be logged now, on this CPU.
#[inline(always)]
fn may_log() -> bool {
    let Some(last) = LOGGED_AT.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's value; nothing else writes it while the program runs.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < LOG_EVERY_NS {
            return false;
        }
        *last = now;
    }
    true
}

#[sk_lookup]
pub fn faasd_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // The verifier only accepts context loads at constant offsets from the context
    // pointer, so every field is read on its own (volatile keeps them from being merged
    // into a copy through a derived pointer).
    // SAFETY: the kernel passes a valid bpf_sk_lookup for the program's lifetime.
    let (family, protocol, port, addr) = unsafe {
        (
            read_volatile(&raw const (*l).family),
            read_volatile(&raw const (*l).protocol),
            read_volatile(&raw const (*l).local_port),
            [
                read_volatile(&raw const (*l).local_ip6[0]),
                read_volatile(&raw const (*l).local_ip6[1]),
                read_volatile(&raw const (*l).local_ip6[2]),
                read_volatile(&raw const (*l).local_ip6[3]),
            ],
        )
    };
    if family != AF_INET6 {
        count_global(GlobalCounter::Ipv4Passed);
        return SK_PASS;
    }
    let key = BindingKey {
        addr,
        port: port as u16,
        protocol: protocol as u8,
        pad: 0,
    };
    let Some(slot) = BINDINGS.get_ptr(&key) else {
        count_global(GlobalCounter::Miss);
        return SK_PASS;
    };
    // SAFETY: the pointer comes from a successful lookup and the value is a plain u32.
    let slot = unsafe { *slot };
    if !allowed(l, slot) {
        if let Some(c) = POLICY_DROPS.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
            unsafe { *c += 1 };
        }
        return SK_DROP;
    }
    let counters = SLOT_STATS.get_ptr_mut(slot);
    if let Some(c) = counters {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { (*c).lookups += 1 };
    }
    match SOCKETS.redirect_sk_lookup(&ctx, slot, SK_ASSIGN_NO_REUSEPORT) {
        Ok(()) => {
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe { (*c).steered += 1 };
            }
            SK_PASS
        }
        Err(_) => {
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe { (*c).no_socket += 1 };
            }
            if may_log() {
                // SAFETY: four u32 in network order are the address's sixteen bytes.
                let ip: [u8; 16] = unsafe { core::mem::transmute(addr) };
                aya_log_ebpf::warn!(
                    &ctx,
                    "binding [{:i}]:{}/{} (slot {}) has no socket: refused",
                    ip,
                    port,
                    protocol,
                    slot
                );
            }
            // The address belongs to a function whose socket is gone: refuse rather than
            // let another socket on the host answer for it.
            SK_DROP
        }
    }
}

/// Whether the slot's policy lets the client in.
#[inline(always)]
fn allowed(l: *mut aya_ebpf::bindings::bpf_sk_lookup, slot: u32) -> bool {
    // SAFETY: as in the program: fields read one by one from the kernel's context.
    let addr = unsafe {
        [
            read_volatile(&raw const (*l).remote_ip6[0]),
            read_volatile(&raw const (*l).remote_ip6[1]),
            read_volatile(&raw const (*l).remote_ip6[2]),
            read_volatile(&raw const (*l).remote_ip6[3]),
        ]
    };
    source_allowed(slot, addr)
}

/// A slot's policy: an allowed prefix wins, then a denied one refuses, and anything else
/// is allowed (systemd's IPAddressAllow/IPAddressDeny).
#[inline(always)]
fn source_allowed(slot: u32, addr: [u32; 4]) -> bool {
    if !POLICY_SLOTS.get(slot).is_some_and(|p| *p != 0) {
        return true;
    }
    let key = Key::new(POLICY_SLOT_BITS + 128, PolicySource { slot, addr });
    POLICY_ALLOW.get(&key).is_some() || POLICY_DENY.get(&key).is_none()
}

/// XDP on devices without a link-layer header (WireGuard, TUN): the packet starts with
/// the IP header.
#[xdp]
pub fn faasd_xdp_l3(ctx: XdpContext) -> u32 {
    xdp_verdict(guard(ctx.data(), ctx.data_end(), 0))
}

/// XDP on Ethernet devices.
#[xdp]
pub fn faasd_xdp_l2(ctx: XdpContext) -> u32 {
    xdp_verdict(guard_frame(ctx.data(), ctx.data_end()))
}

/// The guard at tcx ingress on devices without a link-layer header.
#[classifier]
pub fn faasd_tc_l3(ctx: TcContext) -> i32 {
    pull_headers(&ctx, 0);
    tc_verdict(guard(ctx.data(), ctx.data_end(), 0))
}

/// The guard at tcx ingress on Ethernet devices.
#[classifier]
pub fn faasd_tc_l2(ctx: TcContext) -> i32 {
    pull_headers(&ctx, ETHERNET_HEADER);
    tc_verdict(guard_frame(ctx.data(), ctx.data_end()))
}

fn xdp_verdict(drop: bool) -> u32 {
    if drop { XDP_DROP } else { XDP_PASS }
}

/// TC_ACT_SHOT, or TCX_NEXT: whatever else is attached decides, and without anything the
/// packet goes on.
fn tc_verdict(drop: bool) -> i32 {
    if drop { 2 } else { -1 }
}

/// A socket buffer's linear part may end before the transport ports: pull them in (the
/// pointers are read again after). A packet too short for them is left alone.
#[inline(always)]
fn pull_headers(ctx: &TcContext, l3: usize) {
    let needed = l3 + IPV6_HEADER + 4;
    if ctx.data() + needed > ctx.data_end() && ctx.len() as usize >= needed {
        let _ = ctx.pull_data(needed as u32);
    }
}

const ETHERNET_HEADER: usize = 14;
const IPV6_HEADER: usize = 40;

/// The guard on an Ethernet frame: an IPv6 packet follows a 14-byte header with type
/// 0x86dd; anything else passes.
#[inline(always)]
fn guard_frame(start: usize, end: usize) -> bool {
    if start + ETHERNET_HEADER > end {
        return false;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { u16::from_be(read_volatile((start + 12) as *const u16)) };
    ethertype == 0x86dd && guard(start, end, ETHERNET_HEADER)
}

/// Whether to drop the packet in `start..end` whose IP header is at `l3`: one for the
/// function prefix that no binding holds, or from a source the function's policy denies,
/// before the stack sees it. Everything else passes.
#[inline(always)]
fn guard(start: usize, end: usize, l3: usize) -> bool {
    let ip = start + l3;
    // The transport ports sit in the first 4 bytes after the IPv6 header.
    if ip + IPV6_HEADER + 4 > end {
        return count_xdp(XdpCounter::NotForFunctions, false);
    }
    // SAFETY: the header and the ports are within the packet (checked above).
    let (version, next, src, dst, dport) = unsafe {
        let b = ip as *const u8;
        let word = |off: usize| read_volatile(b.add(off) as *const u32);
        (
            read_volatile(b) >> 4,
            read_volatile(b.add(6)),
            [word(8), word(12), word(16), word(20)],
            [word(24), word(28), word(32), word(36)],
            u16::from_be(read_volatile(b.add(IPV6_HEADER + 2) as *const u16)),
        )
    };
    if version != 6 || (next != proto::TCP && next != proto::UDP) {
        return count_xdp(XdpCounter::NotForFunctions, false);
    }
    if XDP_PREFIXES.get(&Key::new(128, dst)).is_none() {
        return count_xdp(XdpCounter::NotForFunctions, false);
    }
    let key = BindingKey {
        addr: dst,
        port: dport,
        protocol: next,
        pad: 0,
    };
    let Some(slot) = BINDINGS.get_ptr(&key) else {
        return count_xdp(XdpCounter::DroppedNoBinding, true);
    };
    // SAFETY: the pointer comes from a successful lookup and the value is a plain u32.
    let slot = unsafe { *slot };
    if !source_allowed(slot, src) {
        return count_xdp(XdpCounter::DroppedPolicy, true);
    }
    count_xdp(XdpCounter::Passed, false)
}

/// Counts a guard's verdict (`drop` or not) and returns it.
#[inline(always)]
fn count_xdp(counter: XdpCounter, drop: bool) -> bool {
    if let Some(c) = XDP_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
    drop
}

#[inline(always)]
fn count_global(counter: GlobalCounter) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *c += 1 };
    }
}

/// Verdicts of cgroup socket-address programs.
const ALLOW: i32 = 1;
/// The call fails with EPERM.
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn faasd_egress_connect4(ctx: SockAddrContext) -> i32 {
    egress(&ctx, destination4(&ctx))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn faasd_egress_sendmsg4(ctx: SockAddrContext) -> i32 {
    egress(&ctx, destination4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn faasd_egress_connect6(ctx: SockAddrContext) -> i32 {
    egress(&ctx, destination6(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn faasd_egress_sendmsg6(ctx: SockAddrContext) -> i32 {
    egress(&ctx, destination6(&ctx))
}

/// An IPv4 destination as its IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), the form the
/// prefix lists hold IPv4 in.
#[inline(always)]
fn destination4(ctx: &SockAddrContext) -> [u32; 4] {
    // SAFETY: the kernel passes a valid bpf_sock_addr; the field is read on its own.
    let v4 = unsafe { read_volatile(&raw const (*ctx.sock_addr).user_ip4) };
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

#[inline(always)]
fn destination6(ctx: &SockAddrContext) -> [u32; 4] {
    let a = ctx.sock_addr;
    // SAFETY: as above; the verifier wants each word loaded at its own constant offset.
    unsafe {
        [
            read_volatile(&raw const (*a).user_ip6[0]),
            read_volatile(&raw const (*a).user_ip6[1]),
            read_volatile(&raw const (*a).user_ip6[2]),
            read_volatile(&raw const (*a).user_ip6[3]),
        ]
    }
}

/// The decision for a destination of the calling task's function: its own loopback is
/// always allowed; then the mode; then an allowed prefix wins, a denied one refuses, and
/// anything else passes (systemd's IPAddressAllow/IPAddressDeny).
#[inline(always)]
fn egress(ctx: &impl EbpfContext, addr: [u32; 4]) -> i32 {
    let Some(level) = EGRESS_CONFIG.get(0).copied().filter(|l| *l > 0) else {
        return ALLOW;
    };
    // A process function's instances run in the function's cgroup (level `level`); a
    // container's in a cgroup of its own one level up, beside the functions' namespaces.
    let Some(rule) = rule_at(level).or_else(|| rule_at(level - 1)) else {
        return ALLOW;
    };
    if loopback(addr) {
        return ALLOW;
    }
    let EgressRule {
        mode, id, lists, ..
    } = rule;
    let refused = if mode == EgressMode::None as u32 {
        Some(EgressReason::None)
    } else if mode == EgressMode::Faas as u32
        && addr[0] != u32::from_ne_bytes([0xfd, 0x00, 0xfa, 0xa5])
    {
        Some(EgressReason::Faas)
    } else {
        let key = Key::new(POLICY_SLOT_BITS + 128, PolicySource { slot: id, addr });
        let allowed = lists & EGRESS_HAS_ALLOW != 0 && EGRESS_ALLOW.get(&key).is_some();
        let denied = lists & EGRESS_HAS_DENY != 0 && EGRESS_DENY.get(&key).is_some();
        (!allowed && denied).then_some(EgressReason::Denied)
    };
    match refused {
        None => ALLOW,
        Some(reason) => {
            let key = egress_refused_key(id, reason as u32);
            match EGRESS_REFUSED.get_ptr_mut(&key) {
                // SAFETY: this CPU's value; nothing else writes it while the program runs.
                Some(c) => unsafe { *c += 1 },
                None => {
                    if EGRESS_REFUSED.insert(&key, &1, 0).is_err() && may_log() {
                        aya_log_ebpf::warn!(
                            ctx,
                            "egress: a refusal of rule {} went uncounted: EGRESS_REFUSED is full",
                            id
                        );
                    }
                }
            }
            REFUSE
        }
    }
}

#[inline(always)]
fn rule_at(level: u32) -> Option<EgressRule> {
    // SAFETY: a helper without memory arguments.
    let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    // SAFETY: the value is plain data, copied out at once.
    unsafe { EGRESS_RULES.get(&cgroup) }.copied()
}

/// `127.0.0.0/8` (as IPv4-mapped), `::1` and the unspecified addresses, which all stay
/// inside the instance's own network namespace.
#[inline(always)]
fn loopback(a: [u32; 4]) -> bool {
    let mapped = a[0] == 0 && a[1] == 0 && a[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    let v4_first = a[3].to_ne_bytes()[0];
    (mapped && (v4_first == 127 || a[3] == 0))
        || (a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && (a[3] == 0 || a[3] == u32::from_ne_bytes([0, 0, 0, 1])))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
