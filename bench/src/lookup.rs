//! What the steering program costs per lookup as its map grows: bindings for addresses no
//! function has are put into the daemon's map beside the real one, and the program is
//! measured by run-time statistics and by test runs at each size.

use std::{
    net::{SocketAddr, SocketAddrV6},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{Bench, BpfStats, bpf, program_totals, request};

/// Bindings for addresses in an unused part of the function prefix (`fd00:faa5:1:ffff::/64`,
/// port 8080/tcp, slot 0), written straight into the daemon's pinned map with one
/// `bpftool batch` per change. The daemon never sees them; [`FakeBindings::clear`] removes
/// them, and the bench namespace goes with the run however it ends.
pub struct FakeBindings {
    map: PathBuf,
    batch_file: PathBuf,
    /// How many are in the map.
    present: usize,
}

impl FakeBindings {
    /// None yet, beside the daemon's own.
    pub fn new(b: &Bench) -> Result<Self> {
        Ok(Self {
            map: b.pin_dir()?.join("BINDINGS"),
            batch_file: b.dir.join("bindings.batch"),
            present: 0,
        })
    }

    /// Adds bindings until `count` are in the map.
    pub fn fill_to(&mut self, count: usize) -> Result<()> {
        self.batch(self.present..count, "update", " value hex 00 00 00 00")?;
        self.present = self.present.max(count);
        Ok(())
    }

    /// Removes every binding this added.
    pub fn clear(&mut self) -> Result<()> {
        self.batch(0..self.present, "delete", "")?;
        self.present = 0;
        Ok(())
    }

    /// The map key of the `i`th: address, port in host order, protocol, padding.
    fn key(i: usize) -> String {
        let mut addr = [
            0xfd, 0x00, 0xfa, 0xa5, 0x00, 0x01, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        addr[12..].copy_from_slice(&(i as u32).to_be_bytes());
        let mut key: Vec<u8> = addr.to_vec();
        key.extend_from_slice(&8080u16.to_ne_bytes());
        key.extend_from_slice(&[6, 0]);
        key.iter()
            .map(|k| format!("{k:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `bpftool map COMMAND` for the bindings `which`, each line ending in `tail`, in one
    /// batch.
    fn batch(&self, which: std::ops::Range<usize>, command: &str, tail: &str) -> Result<()> {
        if which.is_empty() {
            return Ok(());
        }
        let map = self.map.display();
        let lines: String = which
            .map(|i| {
                format!(
                    "map {command} pinned {map} key hex {}{tail}\n",
                    Self::key(i)
                )
            })
            .collect();
        std::fs::write(&self.batch_file, lines)?;
        let out = Command::new("bpftool")
            .arg("batch")
            .arg("file")
            .arg(&self.batch_file)
            .output()?;
        if !out.status.success() {
            bail!("bpftool batch: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

/// The sk_lookup program's cost per run with 1, 1,000 and 100,000 bindings in the map:
/// the function's binding plus `fake` ones, which this leaves in the map (100,000 in all)
/// for the caller to measure more with or clear. Measured two ways: BPF_STATS_RUN_TIME
/// while 2,000 connections go to the function (a clock read around every run included),
/// and BPF_PROG_TEST_RUN of a lookup for the function (the median of 5 means of 1,000,000
/// runs; no clock per run), less the same for a program that does nothing.
pub fn cost_by_bindings(
    b: &Bench,
    fn_addr: SocketAddr,
    fake: &mut FakeBindings,
) -> Result<Vec<LookupCost>> {
    let program_id = b.api("GET", "/system/status", "")?["dataplane"]["programId"]
        .as_u64()
        .context("program id")?;
    let stats = BpfStats::enable()?;
    let empty_program = bpf::EmptyProgram::load(bpf::Kind::SkLookup)?;
    let mut results = Vec::new();
    for target in [1usize, 1_000, 100_000] {
        fake.fill_to(target - 1)?;
        let (runs0, ns0) = program_totals(program_id).context("bpftool prog show")?;
        for _ in 0..2_000 {
            request(fn_addr)?;
        }
        let (runs1, ns1) = program_totals(program_id).context("bpftool prog show")?;
        let stats_clock = (ns1 - ns0) as f64 / (runs1 - runs0).max(1) as f64;
        let SocketAddr::V6(to) = fn_addr else {
            bail!("function addresses are IPv6")
        };
        const REPEAT: u32 = 1_000_000;
        let id = program_id as u32;
        let test_run = bpf::median(5, || bpf::mean_ns(id, to, REPEAT, true))?;
        // An address of the prefix nobody binds: the lookup without the redirect.
        let unbound = SocketAddrV6::new("fd00:faa5:1:fffe::1".parse()?, 8080, 0, 0);
        let miss = bpf::median(5, || bpf::mean_ns(id, unbound, REPEAT, false))?;
        let empty = bpf::median(5, || empty_program.mean_ns(to, REPEAT))?;
        println!(
            "  {target:>7} bindings: {:.0} ns per steered run ({test_run:.0} ns by test run, \
             less {empty:.0} ns for an empty program run the same way; a miss {:.0} ns), \
             {stats_clock:.0} ns by run-time stats (a clock read included)",
            test_run - empty,
            miss - empty
        );
        results.push(LookupCost {
            bindings: target,
            stats_clock,
            test_run,
            miss,
            empty,
        });
    }
    drop(stats);
    Ok(results)
}

/// What one lookup costs the steering program, at a number of bindings.
pub struct LookupCost {
    pub bindings: usize,
    /// ns per run by BPF_STATS_RUN_TIME.
    stats_clock: f64,
    /// ns per steered run by BPF_PROG_TEST_RUN.
    pub test_run: f64,
    /// ns per run for an address no binding holds, the same way.
    miss: f64,
    /// ns per run of a program that does nothing, the same way: the test run's own cost.
    pub empty: f64,
}

impl LookupCost {
    pub fn to_json(&self) -> Value {
        json!({
            "bindings": self.bindings,
            "ns_per_run": self.stats_clock,
            "test_run_ns_per_run": self.test_run,
            "test_run_ns_per_miss": self.miss,
            "test_run_ns_empty_program": self.empty,
            "program_ns_per_run": self.test_run - self.empty,
        })
    }
}
