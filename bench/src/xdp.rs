//! faasd's guard (at XDP and at tcx) against the stack on the same flood, the floors of
//! the hooks a guard can stand on, and the guard program's own ceiling.
//!
//! Raw frames come from one sender thread per core in a second namespace ([`flood`]). Over
//! a veth the receiver's work runs on the sending CPU, so what a flood measures is the
//! CPU time per frame of the whole path (busy time from `/proc/stat` over frames sent).
//! The same flood into an `ifb` (whose transmit frees any frame tc did not redirect to it,
//! as a `dummy` would; this kernel has no `dummy`) is the sender alone; the difference is
//! the receiving side's, what one core spends to drop a frame, whose inverse is that
//! drop's ceiling. Measured that way, in interleaved rounds:
//! - the guard: faasd's program on one veth, dropping frames for an unbound function
//!   address, at each `guard-hook` in turn (`tc`, then `xdp`: the daemon restarts);
//! - on a second veth with nothing of faasd's on it, frames for the bench side's own
//!   address: dropped by nftables at the earliest hook (prerouting, raw priority), by an
//!   XDP program that only drops (generic mode: the floor under any XDP guard here), and by
//!   a tcx ingress program that only drops (the floor under a tc guard);
//! - back on the guarded veth, frames for the bench side's own address, which the guard
//!   passes and nftables drops: against the plain veth's, what the guard costs a frame it
//!   lets through.
//!
//! `BPF_PROG_TEST_RUN` on the same frame gives the guard program's own cost without any of
//! the path around it.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::{Bench, bpf, flood, in_netns, ip, nft, stats::median};

/// Name of the veth end in the bench namespace that gets the guard.
pub const INTERFACE: &str = "fbx0";
/// Its peer in the sender's namespace.
const PEER: &str = "fbx1";
/// The second veth pair (bench side, sender side), which faasd does not guard.
const PLAIN: (&str, &str) = ("fbn0", "fbn1");
/// The sender's sink (an `ifb`).
const SINK: &str = "fbs0";
/// XDP_DROP, the guard's verdict for a frame no binding holds.
const XDP_DROP: u32 = 1;
/// Rounds of the floods, interleaved: a path's part of a frame is a difference of two CPU
/// figures near 700 ns that move by tens of ns between rounds.
const ROUNDS: usize = 5;

/// A second namespace joined to the bench one by two veth pairs (fd00:beef::2 →
/// fd00:beef::1, routing the platform prefix; fd00:beee::2 → fd00:beee::1), with a sink
/// interface beside: the sender of the XDP benchmark. Removed by `Bench`'s drop with the
/// other namespaces.
pub fn sender_namespace(b: &mut Bench) -> Result<String> {
    let name = b.add_netns("tx")?;
    let there = |args: &[&str]| ip(&[&["-n", &name], args].concat());
    for (here, peer, prefix) in [
        (INTERFACE, PEER, "fd00:beef"),
        (PLAIN.0, PLAIN.1, "fd00:beee"),
    ] {
        ip(&[
            "link", "add", here, "type", "veth", "peer", "name", peer, "netns", &name,
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("{prefix}::1/64"),
            "dev",
            here,
            "nodad",
        ])?;
        ip(&["link", "set", here, "up"])?;
        there(&[
            "addr",
            "add",
            &format!("{prefix}::2/64"),
            "dev",
            peer,
            "nodad",
        ])?;
        there(&["link", "set", peer, "up"])?;
    }
    there(&[
        "-6",
        "route",
        "add",
        "fd00:faa5::/32",
        "via",
        "fd00:beef::1",
    ])?;
    there(&["link", "add", SINK, "type", "ifb"])?;
    there(&["link", "set", SINK, "up"])?;
    Ok(name)
}

/// One flood's frames sent and dropped a second, and the CPU time per frame sent.
struct Rate {
    sent: f64,
    dropped: f64,
    cpu_ns: f64,
}

/// Busy CPU time of the whole machine so far, in seconds (`/proc/stat`, USER_HZ ticks).
fn busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    // idle and iowait are the fourth and fifth fields.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    // SAFETY: a plain query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks.iter().sum::<u64>() - idle) as f64 / hz)
}

/// Runs `flood` for `secs`, reading drops (a running total) from `dropped` before and after.
fn measure(
    flood: &flood::Flood,
    threads: usize,
    secs: u64,
    dropped: &dyn Fn() -> Result<u64>,
) -> Result<Rate> {
    let before = dropped()?;
    let busy = busy_seconds()?;
    let started = Instant::now();
    let sent = flood.run(threads, Duration::from_secs(secs))?;
    let elapsed = started.elapsed().as_secs_f64();
    let busy = busy_seconds()? - busy;
    // The last frames may still be on their way through the veth.
    std::thread::sleep(Duration::from_millis(200));
    Ok(Rate {
        sent: sent as f64 / elapsed,
        dropped: (dropped()? - before) as f64 / elapsed,
        cpu_ns: busy * 1e9 / sent.max(1) as f64,
    })
}

/// Interface statistic `name` (`/sys/class/net/IF/statistics/NAME`) in `netns`.
fn statistic(netns: &str, interface: &str, name: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{interface}/statistics/{name}");
    let text = in_netns(netns, &["cat", &path])?;
    text.trim()
        .parse()
        .with_context(|| format!("{path} in {netns}: {text}"))
}

/// Per-interface IPv6 counter `name` (`/proc/net/dev_snmp6/IF`) in `netns`.
fn snmp6(netns: &str, interface: &str, name: &str) -> Result<u64> {
    let path = format!("/proc/net/dev_snmp6/{interface}");
    let text = in_netns(netns, &["cat", &path])?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("no {name} in {path} in {netns}: {text}"))
}

/// Runs the floods and the test runs; the section of `results.json`. The daemon runs with
/// `config` (and each guard hook in turn), and with `config` alone after.
pub fn drop_rate(
    b: &mut Bench,
    faasd: &Path,
    config: &str,
    sender: &str,
    secs: u64,
) -> Result<Value> {
    let guard = flood::Flood {
        netns: sender.to_owned(),
        interface: PEER.into(),
        from_mac: flood::mac(sender, PEER)?,
        to_mac: flood::mac(&b.netns, INTERFACE)?,
        from: "fd00:beef::2".parse()?,
        to: "fd00:faa5:1::fffe".parse()?,
        port: 9,
        segment: flood::Segment::Udp,
    };
    let plain = flood::Flood {
        interface: PLAIN.1.into(),
        from_mac: flood::mac(sender, PLAIN.1)?,
        to_mac: flood::mac(&b.netns, PLAIN.0)?,
        from: "fd00:beee::2".parse()?,
        to: "fd00:beee::1".parse()?,
        ..guard.clone()
    };
    let alone = flood::Flood {
        interface: SINK.into(),
        ..guard.clone()
    };
    let behind_guard = flood::Flood {
        to: "fd00:beef::1".parse()?,
        ..guard.clone()
    };
    // Only frames for the bench side's own addresses and port match: the guard's floods
    // and the floors' are dropped before this hook or never pass it.
    nft(
        &b.netns,
        "table inet faasd_bench_drop {\n  chain pre {\n    type filter hook prerouting \
         priority raw;\n    ip6 daddr { fd00:beee::1, fd00:beef::1 } udp dport 9 \
         counter drop\n  }\n}\n",
    )?;
    let rounds = rounds(
        b,
        faasd,
        config,
        sender,
        secs,
        [&alone, &guard, &plain, &behind_guard],
    );
    let _ = in_netns(
        &b.netns,
        &["nft", "delete", "table", "inet", "faasd_bench_drop"],
    );
    let rounds = rounds?;
    let of = |i: usize, f: fn(&Rate) -> f64| median(rounds.iter().map(|r| f(&r[i])).collect());
    // The receiving side's part: what a frame costs beyond the sender alone, the median of
    // each round's difference (a round's floods run seconds apart, so what drifts over the
    // run falls on both). A difference of no more than nothing is below what this method
    // resolves (the sender alone moves by tens of ns between rounds), and has no rate.
    let receive_ns = |i: usize| {
        Some(median(
            rounds.iter().map(|r| r[i].cpu_ns - r[0].cpu_ns).collect(),
        ))
        .filter(|ns| *ns > 0.0)
    };
    let mut paths = serde_json::Map::new();
    for (i, (name, key)) in PATHS.iter().enumerate() {
        let line = format!(
            "  {name}: {:.0} frames/s sent, {:.0}/s dropped; {:.0} ns of CPU each",
            of(i, |r| r.sent),
            of(i, |r| r.dropped),
            of(i, |r| r.cpu_ns),
        );
        let mut path = json!({
            "sent_per_second": of(i, |r| r.sent),
            "dropped_per_second": of(i, |r| r.dropped),
            "cpu_ns_per_frame": of(i, |r| r.cpu_ns),
        });
        match (i, receive_ns(i)) {
            (0, _) => println!("{line}"),
            (_, Some(ns)) => println!(
                "{line}, {ns:.0} ns of it receiving: {:.2} Mpps per core",
                1e3 / ns
            ),
            (_, None) => {
                println!("{line}, its receiving part below what the sender alone's spread resolves")
            }
        }
        if i > 0 {
            path["receive_ns_per_frame"] = json!(receive_ns(i));
            path["drop_ceiling_mpps_per_core"] = json!(receive_ns(i).map(|ns| 1e3 / ns));
        }
        paths.insert((*key).into(), path);
    }
    let at = |key: &str| PATHS.iter().position(|(_, k)| *k == key).expect("a path");
    let stack = receive_ns(at("stack_nftables"));
    let [xdp, tc] = ["xdp", "tc"].map(|hook| {
        let behind = receive_ns(at(&format!("stack_behind_{hook}")));
        let over_stack = stack.zip(receive_ns(at(hook))).map(|(s, g)| s / g);
        let pass_cost = behind.zip(stack).map(|(b, s)| b - s);
        match over_stack {
            Some(x) => println!("  the {hook} guard drops {x:.2}x as fast as the stack"),
            None => println!(
                "  the {hook} guard against the stack: not resolved (a receiving part below \
                 the sender alone's spread)"
            ),
        }
        if let Some(ns) = pass_cost {
            println!("  the {hook} guard costs a frame it passes {ns:.0} ns");
        }
        json!({"receive_side_over_stack": over_stack, "pass_cost_ns": pass_cost})
    });

    let id = guard_program_id(&b.netns)?;
    let frame = guard.frame();
    const REPEAT: u32 = 1_000_000;
    let empty = bpf::EmptyProgram::load(bpf::Kind::Xdp)?;
    let run = bpf::median(5, || bpf::xdp_mean_ns(id, &frame, REPEAT, XDP_DROP))?;
    let empty_run = bpf::median(5, || empty.frame_ns(&frame, REPEAT))?;
    let own_ns = run - empty_run;
    println!(
        "  the guard program alone (test run of the same frame): {own_ns:.0} ns ({run:.0} ns, \
         less {empty_run:.0} ns for an empty program): {:.1} Mpps per core",
        1e3 / own_ns.max(1.0)
    );
    // Back to the daemon the caller started.
    b.start_daemon(faasd, config)?;
    Ok(json!({
        "seconds": secs,
        "rounds": ROUNDS,
        "paths": paths,
        "guard_xdp": xdp,
        "guard_tc": tc,
        "program_over_stack": stack.map(|s| s / own_ns.max(1.0)),
        "program": {
            "test_run_ns": run,
            "empty_program_ns": empty_run,
            "own_ns": own_ns,
            "ceiling_mpps": 1e3 / own_ns.max(1.0),
        },
    }))
}

/// `ROUNDS` rounds of every flood, in the order of [`PATHS`]; `floods` are the sender
/// alone, the guard's (an unbound function address), the plain veth's and the one behind
/// the guard (the bench side's own addresses).
fn rounds(
    b: &mut Bench,
    faasd: &Path,
    config: &str,
    sender: &str,
    secs: u64,
    [alone, guard, plain, behind_guard]: [&flood::Flood; 4],
) -> Result<Vec<Vec<Rate>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let empty_xdp = bpf::EmptyProgram::load(bpf::Kind::Xdp)?;
    let empty_tc = bpf::EmptyProgram::load(bpf::Kind::Tc)?;
    let nft_dropped = |b: &Bench| -> Result<u64> {
        let text = in_netns(
            &b.netns,
            &["nft", "list", "table", "inet", "faasd_bench_drop"],
        )?;
        text.split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no counter in {text}"))
    };
    // Frames the plain veth delivered that IPv6 never received: dropped at a hook before.
    let hook_dropped = |b: &Bench| -> Result<u64> {
        let rx = statistic(&b.netns, PLAIN.0, "rx_packets")?;
        Ok(rx - snmp6(&b.netns, PLAIN.0, "Ip6InReceives")?)
    };
    let guard_dropped = |b: &Bench| -> Result<u64> {
        b.api("GET", "/system/status", "")?["dataplane"]["xdpDroppedNoBinding"]
            .as_u64()
            .context("no xdpDroppedNoBinding in the status")
    };
    // The ifb counts what it frees as dropped on receive.
    let sink_dropped = |_: &Bench| statistic(sender, SINK, "rx_dropped");
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let mut round = Vec::new();
        let mut run = |b: &Bench, flood: &flood::Flood, dropped: &dyn Fn(&Bench) -> Result<u64>| {
            round.push(measure(flood, threads, secs, &|| dropped(b))?);
            anyhow::Ok(())
        };
        run(b, alone, &sink_dropped)?;
        let link = empty_xdp.attach(&b.netns, PLAIN.0)?;
        run(b, plain, &hook_dropped)?;
        drop(link);
        let link = empty_tc.attach(&b.netns, PLAIN.0)?;
        run(b, plain, &hook_dropped)?;
        drop(link);
        run(b, plain, &nft_dropped)?;
        // XDP last: the test run below measures the XDP program attached.
        for hook in ["tc", "xdp"] {
            b.start_daemon(faasd, &format!("{config}guard-hook = \"{hook}\"\n"))?;
            run(b, guard, &guard_dropped)?;
            run(b, behind_guard, &nft_dropped)?;
        }
        rounds.push(round);
    }
    Ok(rounds)
}

/// What each flood of a round measured, in order: its name, and its key in `results.json`.
const PATHS: [(&str, &str); 8] = [
    ("sender alone (into an ifb)", "sender_alone"),
    ("an XDP program that only drops (generic)", "xdp_floor"),
    ("a tcx ingress program that only drops", "tc_floor"),
    ("the stack (nftables, prerouting raw)", "stack_nftables"),
    ("faasd's guard at tcx ingress", "tc"),
    (
        "the stack behind the tc guard (passed by it)",
        "stack_behind_tc",
    ),
    ("faasd's guard at XDP (generic)", "xdp"),
    (
        "the stack behind the XDP guard (passed by it)",
        "stack_behind_xdp",
    ),
];

/// The id of the XDP program on the guarded interface in `netns`.
fn guard_program_id(netns: &str) -> Result<u32> {
    let out = std::process::Command::new("ip")
        .args(["-n", netns, "-j", "-d", "link", "show", INTERFACE])
        .output()?;
    let links: Value = serde_json::from_slice(&out.stdout)?;
    links[0]["xdp"]["prog"]["id"]
        .as_u64()
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program on {INTERFACE} in {netns}"))
}
