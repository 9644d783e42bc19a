//! A SYN flood at a function's address while the steering program's map holds 100,000
//! bindings, against the same flood at a plain listening socket on the same address and
//! port in a namespace with no program: what steering adds to the kernel's busiest TCP
//! path, while `hello` runs. The plain namespace gets a copy of faasd's nftables table (its
//! NAT for calls out, there while an instance runs that may call out, puts connection
//! tracking on every packet of the host's namespace), so that the two
//! differ by the program alone; a third arm floods it without the table, to show what
//! tracking costs. Every receiver answers each SYN with a cookie (`tcp_syncookies=2`), so
//! no connection state builds up and each SYN takes the listener lookup (where the program
//! runs); the rate compared is SYN-ACKs sent a second, from each namespace's own counter.
//! One sender namespace floods both over two veth pairs with the frames of [`flood`],
//! and drops the SYN-ACKs coming back before its own TCP would answer them.

use std::{
    net::{SocketAddr, SocketAddrV6, TcpListener},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Bench, flood, in_netns, ip, nft,
    stats::{median, median_ci95},
};

/// faasd's nftables table (the daemon's NAT for calls out).
const EGRESS_TABLE: &str = "faasd_egress";

/// Flood rounds per side, and how long each side floods in a round. Many short rounds: a
/// round's ratio of the sides spreads by 3-7 % on a VM, and its median must be known to
/// better than the goal's 2 %.
const ROUNDS: usize = 30;
const FLOOD: Duration = Duration::from_millis(500);

/// One side of the comparison: where its frames go, and whether faasd's nftables table is
/// in the receiving namespace (the bench namespace has it from the daemon).
struct Side {
    label: &'static str,
    netns: String,
    flood: flood::Flood,
    table: bool,
}

/// Floods `fn_addr` in the bench namespace (the caller has filled the map) and the same
/// address in a namespace of its own without the program, `ROUNDS` times each in turn.
pub fn run(b: &mut Bench, fn_addr: SocketAddr) -> Result<Value> {
    let SocketAddr::V6(fn_addr) = fn_addr else {
        bail!("function addresses are IPv6")
    };
    // faasd's table is there while an instance that may call out runs: the host at its
    // busiest, tracking on.
    b.scale_and_wait("hello", 1)?;
    b.wait_for_nat(true)?;
    let sender = b.add_netns("syn")?;
    let plain = b.add_netns("plain")?;
    // A veth pair from a receiver (`at`: `ip`'s namespace arguments) to the sender, `net`::1
    // on the receiver's end and `net`::2 on the sender's.
    let pair = |at: &[&str], end: &str, far: &str, net: &str| -> Result<()> {
        let (near_addr, far_addr) = (format!("{net}::1/64"), format!("{net}::2/64"));
        let veth = ["link", "add", end, "type", "veth", "peer", "name", far];
        ip(&[at, &veth, &["netns", &sender]].concat())?;
        ip(&[at, &["addr", "add", &near_addr, "dev", end, "nodad"]].concat())?;
        ip(&[at, &["link", "set", end, "up"]].concat())?;
        ip(&["-n", &sender, "addr", "add", &far_addr, "dev", far, "nodad"])?;
        ip(&["-n", &sender, "link", "set", far, "up"])
    };
    pair(&[], "fbs0", "fbs1", "fd00:beef:1")?;
    pair(&["-n", &plain], "fbs2", "fbs3", "fd00:beef:2")?;
    let addr = format!("{}/128", fn_addr.ip());
    ip(&["-n", &plain, "addr", "add", &addr, "dev", "lo", "nodad"])?;
    let _listener = listen_in(&plain, fn_addr)?;
    // The bench's own table too, so that only faasd's table comes and goes on this side.
    nft(&plain, &crate::untracked_loopback(true))?;
    // The SYN-ACKs end at the sender's first hook, before its TCP would answer with RSTs.
    nft(
        &sender,
        "table inet faasd_bench_syn {\n  chain pre {\n    type filter hook prerouting priority raw;\n    \
         ip6 saddr fd00:faa5::/32 drop\n  }\n}\n",
    )?;
    let cookies_before = syncookies_setting(&b.netns)?;
    set_syncookies(&b.netns, "2")?;
    let result = flood_both(b, &sender, &plain, fn_addr);
    set_syncookies(&b.netns, &cookies_before)?;
    result
}

fn flood_both(b: &Bench, sender: &str, plain: &str, fn_addr: SocketAddrV6) -> Result<Value> {
    set_syncookies(plain, "2")?;
    let table = in_netns(&b.netns, &["nft", "list", "table", "inet", EGRESS_TABLE])
        .context("faasd's nftables table in the bench namespace")?;
    // The fourth side: the bench namespace again, at an address of the prefix nobody binds,
    // where a wildcard listener answers after the program's miss (what the namespace costs
    // besides the program).
    let unbound = SocketAddrV6::new("fd00:faa5:1:fffe::1".parse()?, fn_addr.port() + 1, 0, 0);
    let _wildcard = TcpListener::bind(("::", unbound.port()))?;
    let side = |label, netns: &str, to: SocketAddrV6, [here, far, from]: [&str; 3], table| {
        anyhow::Ok(Side {
            label,
            table,
            netns: netns.to_owned(),
            flood: flood::Flood {
                netns: sender.to_owned(),
                interface: far.to_owned(),
                from_mac: flood::mac(sender, far)?,
                to_mac: flood::mac(netns, here)?,
                from: from.parse()?,
                to: *to.ip(),
                port: to.port(),
                segment: flood::Segment::TcpSyn,
            },
        })
    };
    let (to_bench, to_plain) = (
        ["fbs0", "fbs1", "fd00:beef:1::2"],
        ["fbs2", "fbs3", "fd00:beef:2::2"],
    );
    let sides = [
        side("steered", &b.netns, fn_addr, to_bench, true)?,
        side("no program", plain, fn_addr, to_plain, true)?,
        side("no program, no nftables", plain, fn_addr, to_plain, false)?,
        side("program misses", &b.netns, unbound, to_bench, true)?,
    ];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let steered_before = steered(b)?;
    let mut rates: [Vec<(f64, f64)>; 4] = Default::default();
    for round in 0..ROUNDS {
        // Every other round in reverse order, so that a drift within a round falls on both
        // sides of each comparison alike.
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let s = &sides[i];
            if s.netns == plain {
                let _ = in_netns(plain, &["nft", "delete", "table", "inet", EGRESS_TABLE]);
                if s.table {
                    nft(plain, &table)?;
                }
            }
            let before = syncookies_sent(&s.netns)?;
            let started = Instant::now();
            let sent = s.flood.run(threads, FLOOD)?;
            let elapsed = started.elapsed().as_secs_f64();
            // The last frames may still be on their way through the veth.
            std::thread::sleep(Duration::from_millis(200));
            let answered = syncookies_sent(&s.netns)? - before;
            rates[i].push((sent as f64 / elapsed, answered as f64 / elapsed));
        }
    }
    let steered_syns = steered(b)? - steered_before;
    let answered_steered: f64 = rates[0].iter().map(|r| r.1).sum::<f64>() * FLOOD.as_secs_f64();
    // Each SYN-ACK of the steered side came from a lookup the program steered; if the
    // kernel had found the socket another way the comparison would be of nothing.
    if (steered_syns as f64) < 0.9 * answered_steered {
        bail!(
            "the program steered {steered_syns} connections while the function's address \
             answered about {answered_steered:.0} SYNs: the flood did not go through it"
        );
    }
    let summary: Vec<Value> = sides
        .iter()
        .zip(&rates)
        .map(|(s, r)| {
            let sent = median(r.iter().map(|x| x.0).collect());
            let answered = median(r.iter().map(|x| x.1).collect());
            println!(
                "  {:<24} {sent:>9.0} SYNs/s sent, {answered:>9.0} SYN-ACKs/s (median of \
                 {ROUNDS} rounds of {FLOOD:?})",
                s.label
            );
            json!({"side": s.label, "sent_per_second": sent, "answered_per_second": answered,
                   "rounds": r.iter().map(|x| json!({"sent": x.0, "answered": x.1})).collect::<Vec<_>>()})
        })
        .collect();
    // Each ratio is the median of the rounds' own ratios: the sides of one round run
    // seconds apart, so what drifts over the run (the VM's neighbours) cancels out.
    let paired = |a: usize, b: usize| -> Vec<f64> {
        rates[a]
            .iter()
            .zip(&rates[b])
            .map(|(x, y)| x.1 / y.1)
            .collect()
    };
    let ratios = paired(0, 1);
    let (ratio, ci) = (median(ratios.clone()), median_ci95(ratios));
    let tracking = median(paired(1, 2));
    let miss = median(paired(3, 1));
    let shown_ci = ci.map_or_else(String::new, |(lo, hi)| {
        format!(", 95 % for the median {lo:.3} to {hi:.3}")
    });
    println!(
        "  steered ÷ no program: {ratio:.3}{shown_ci} (goal: within 2 %); with faasd's nftables \
         table ÷ without: {tracking:.3}; the bench namespace, the program missing ÷ no \
         program: {miss:.3} (medians of each round's ratio)"
    );
    Ok(json!({
        "bindings": 100_000,
        "sender_threads": threads,
        "sides": summary,
        "steered_over_no_program": ratio,
        "steered_over_no_program_ci95": ci.map(|(lo, hi)| [lo, hi]),
        "flood_ms": FLOOD.as_millis() as u64,
        "nftables_table_over_none": tracking,
        "program_misses_over_no_program": miss,
        "steered_by_program": steered_syns,
    }))
}

/// A listening socket on `addr` made in `netns` (a thread joins it for the call: a socket
/// stays in the namespace it was made in).
fn listen_in(netns: &str, addr: SocketAddrV6) -> Result<TcpListener> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<TcpListener> {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns on this short-lived thread only, with a namespace fd we own.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {netns}: {}", std::io::Error::last_os_error());
            }
            TcpListener::bind(addr).with_context(|| format!("listening on {addr} in {netns}"))
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the listening thread panicked"))?
    })
}

fn syncookies_setting(netns: &str) -> Result<String> {
    Ok(
        in_netns(netns, &["sysctl", "-n", "net.ipv4.tcp_syncookies"])?
            .trim()
            .to_owned(),
    )
}

/// `net.ipv4.tcp_syncookies` (which IPv6 follows too) in one namespace.
fn set_syncookies(netns: &str, value: &str) -> Result<()> {
    in_netns(
        netns,
        &["sysctl", "-qw", &format!("net.ipv4.tcp_syncookies={value}")],
    )
    .map(drop)
}

/// TcpExt's SyncookiesSent in `netns`: one per SYN answered with a cookie.
fn syncookies_sent(netns: &str) -> Result<u64> {
    let text = in_netns(netns, &["cat", "/proc/net/netstat"])?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no TcpExt lines in /proc/net/netstat of {netns}");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "SyncookiesSent")
        .and_then(|(_, v)| v.parse().ok())
        .with_context(|| format!("no SyncookiesSent in /proc/net/netstat of {netns}"))
}

/// Connections the program has steered to `hello` so far.
fn steered(b: &Bench) -> Result<u64> {
    b.describe("hello")?["counters"][0]["steered"]
        .as_u64()
        .context("hello's steered counter")
}
