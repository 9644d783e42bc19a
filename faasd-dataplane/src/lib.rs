//! The kernel side: loads the `sk_lookup` program, attaches it to this network namespace,
//! pins program link and maps under `<bpffs>/faasd/<netns inode>/`, and owns the maps.
//!
//! A restarted daemon finds the pinned link and maps and adopts them instead of loading
//! anew, so steering never stops while the daemon is down. The link's pin carries a
//! fingerprint of the program: a daemon with another build of the program loads its own
//! over the same pinned maps, attaches it, and only then detaches the old one, so an
//! upgrade keeps every binding and never leaves a moment without steering.
#![deny(missing_docs)]

use std::{
    os::fd::{AsFd, AsRawFd},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

mod counters;
mod egress;
mod kernel_log;
mod pins;
mod slots;
mod sys;

use std::sync::Arc;

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, Map, MapData, PerCpuArray, SockMap, lpm_trie::Key,
    },
    programs::{
        SchedClassifier, SkLookup, TcAttachType, Xdp, XdpMode, links::FdLink, links::LinkOrder,
        links::PinnedLink, tc::TcAttachOptions,
    },
};
use faasd_common::{
    BindingKey, GlobalCounter, POLICY_SLOT_BITS, PolicySource, SlotCounters, XdpCounter, names,
};
use faasd_core::{config::GuardHook, spec::Policy};

/// The compiled kernel programs, built by `build.rs` from `faasd-ebpf`.
#[cfg(feature = "ebpf")]
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/faasd-sk-lookup"));
/// Built without the `ebpf` feature (for unit tests of the crates above without the eBPF
/// toolchain): there is nothing to load, and [`Dataplane::open`] says so.
#[cfg(not(feature = "ebpf"))]
static PROGRAM_OBJECT: &[u8] = &[];

/// Prefix of the link's pin; the program's fingerprint follows.
const LINK_PIN: &str = "sk_lookup_link";

pub use egress::{Egress, EgressPolicy, Refused};
pub use kernel_log::KernelLog;

/// This build's programs: FNV-1a of the object, carried by the names of the link pins.
fn program_fingerprint() -> u64 {
    PROGRAM_OBJECT
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// The pin name of this build's link.
fn link_pin_name() -> String {
    format!("{LINK_PIN}-{:016x}", program_fingerprint())
}

/// Errors of the data plane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// bpffs is missing where it should be.
    #[error(
        "{0} is not a BPF filesystem; mount one with `mount -t bpf bpf {0}` \
         (cargo xtask setup does this)"
    )]
    NoBpffs(PathBuf),
    /// This build has no kernel programs (the `ebpf` feature was off).
    #[error(
        "this faasd was built without its kernel programs (--no-default-features); build it \
         with the default features (cargo xtask setup installs the eBPF toolchain)"
    )]
    NoPrograms,
    /// Pin directory handling failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Loading or attaching the program failed.
    #[error("loading the kernel programs: {0}")]
    Load(String),
    /// A map operation failed.
    #[error("BPF map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// Why.
        source: aya::maps::MapError,
    },
    /// The bindings map is full.
    #[error("the bindings map is full ({max} sockets on this host); remove functions first")]
    Full {
        /// Its capacity.
        max: u32,
    },
}

/// What `faasd status` shows about the data plane.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneStatus {
    /// Where the pins live.
    pub pin_dir: PathBuf,
    /// Kernel id of the attached program.
    pub program_id: u32,
    /// Whether the program and maps were adopted from a previous daemon.
    pub adopted: bool,
    /// Bindings currently in the map.
    pub bindings: usize,
    /// Capacity of the bindings map.
    pub max_bindings: u32,
    /// IPv6 lookups that matched nothing and fell through.
    pub misses: u64,
    /// IPv4 lookups (never steered: function addresses are IPv6).
    pub ipv4_passed: u64,
    /// Interfaces the guard is attached to.
    #[serde(default)]
    pub xdp_interfaces: Vec<String>,
    /// The hook it runs at there: `xdp` or `tc`.
    #[serde(default)]
    pub guard_hook: String,
    /// XDP: packets for bound functions from allowed sources, passed.
    #[serde(default)]
    pub xdp_passed: u64,
    /// XDP: packets for the function prefix that no binding holds, dropped.
    #[serde(default)]
    pub xdp_dropped_no_binding: u64,
    /// XDP: packets from sources a function denies, dropped.
    #[serde(default)]
    pub xdp_dropped_policy: u64,
    /// Rare events the kernel programs logged since the daemon started.
    #[serde(default)]
    pub kernel_events: u64,
    /// The last of them.
    #[serde(default)]
    pub last_kernel_event: Option<String>,
}

/// The loaded (or adopted) program and its maps.
pub struct Dataplane {
    pin_dir: PathBuf,
    program_id: u32,
    /// What the kernel programs log.
    kernel_log: Arc<KernelLog>,
    adopted: bool,
    bindings: HashMap<MapData, BindingKey, u32>,
    sockets: SockMap<MapData>,
    slot_stats: PerCpuArray<MapData, SlotCounters>,
    global_stats: PerCpuArray<MapData, u64>,
    policy_slots: Array<MapData, u32>,
    policy_allow: LpmTrie<MapData, PolicySource, u8>,
    policy_deny: LpmTrie<MapData, PolicySource, u8>,
    policy_drops: PerCpuArray<MapData, u64>,
    xdp_stats: PerCpuArray<MapData, u64>,
    /// The guards attached by this daemon (detached when dropped): where, at which hook.
    guards: Vec<(String, GuardHook, Ebpf)>,
    /// Which socket slots are in use.
    slots: slots::Slots,
    /// The slots that have prefixes in the policy tries (and only they may have their
    /// flag set): a slot without a policy is bound and freed without touching the tries.
    with_policy: std::collections::BTreeSet<u32>,
}

/// Lock-free readers of the per-slot counters, for supervisors, `list` and `/metrics`.
#[derive(Debug, Clone)]
pub struct Counters(Arc<(counters::PerCpuReader<3>, counters::PerCpuReader<1>)>);

/// Every slot's counters read in one pass: what one `/metrics` page or `list` uses.
#[derive(Debug, Default)]
pub struct CounterSnapshot {
    slots: Vec<[u64; 3]>,
    drops: Vec<[u64; 1]>,
}

fn slot_counters([lookups, steered, no_socket]: [u64; 3]) -> SlotCounters {
    SlotCounters {
        lookups,
        steered,
        no_socket,
    }
}

impl Counters {
    /// The counters of one slot, read now.
    pub fn slot(&self, slot: u32) -> SlotCounters {
        slot_counters(self.0.0.get(slot))
    }

    /// Lookups of one slot its source policy refused, read now.
    pub fn policy_drops(&self, slot: u32) -> u64 {
        self.0.1.get(slot)[0]
    }

    /// Reads every slot below `n` in a few batch calls.
    pub fn snapshot(&self, n: u32) -> CounterSnapshot {
        CounterSnapshot {
            slots: self.0.0.all(n),
            drops: self.0.1.all(n),
        }
    }
}

impl CounterSnapshot {
    /// A slot's counters (zeros for a slot the pass did not cover).
    pub fn slot(&self, slot: u32) -> SlotCounters {
        slot_counters(self.slots.get(slot as usize).copied().unwrap_or_default())
    }

    /// Lookups of a slot its source policy refused.
    pub fn policy_drops(&self, slot: u32) -> u64 {
        self.drops.get(slot as usize).map_or(0, |d| d[0])
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("pin_dir", &self.pin_dir)
            .field("program_id", &self.program_id)
            .field("adopted", &self.adopted)
            .finish_non_exhaustive()
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataplaneError + 'a {
    move |source| DataplaneError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// The pin directory for the current network namespace under `bpffs`.
pub fn pin_dir(bpffs: &Path) -> Result<PathBuf, DataplaneError> {
    let ns = Path::new("/proc/thread-self/ns/net");
    let ino = std::fs::metadata(ns).map_err(io("stat", ns))?.ino();
    Ok(bpffs.join("faasd").join(format!("netns-{ino}")))
}

impl Dataplane {
    /// Adopts the pinned program of this network namespace, or loads, attaches and pins it.
    pub fn open(bpffs: &Path) -> Result<Self, DataplaneError> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(DataplaneError::NoPrograms);
        }
        check_bpffs(bpffs)?;
        let dir = pin_dir(bpffs)?;
        for gone in pins::stale(&bpffs.join("faasd")) {
            tracing::info!(
                "removing {}: its network namespace no longer exists",
                gone.display()
            );
            std::fs::remove_dir_all(&gone).map_err(io("remove", &gone))?;
        }
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let log =
            Arc::new(KernelLog::start().map_err(io("start the kernel log reader for", &dir))?);
        let link_path = dir.join(link_pin_name());
        let older: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(LINK_PIN))
                    && *p != link_path
            })
            .collect();
        if !link_path.exists() && !older.is_empty() {
            match Self::load(&dir, &link_path, log.clone()) {
                Ok(mut dp) => {
                    // The new program runs beside the old one until the old link goes.
                    for o in &older {
                        let _ = std::fs::remove_file(o);
                    }
                    tracing::info!(
                        "replaced the pinned sk_lookup program with this build's; maps and \
                         bindings kept"
                    );
                    dp.adopted = true;
                    return Ok(dp);
                }
                Err(e) => {
                    tracing::warn!(
                        "the pinned maps in {} do not fit this build ({e}); loading anew",
                        dir.display()
                    );
                    remove_pins(&dir)?;
                    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                }
            }
        }
        if link_path.exists() {
            match Self::adopt(&dir, &link_path, log.clone()) {
                Ok(dp) => return Ok(dp),
                Err(e) => {
                    tracing::warn!(
                        "pinned data plane in {} unusable ({e}); loading anew",
                        dir.display()
                    );
                    remove_pins(&dir)?;
                    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
                }
            }
        }
        Self::load(&dir, &link_path, log.clone())
    }

    fn adopt(
        dir: &Path,
        link_path: &Path,
        kernel_log: Arc<KernelLog>,
    ) -> Result<Self, DataplaneError> {
        let link =
            PinnedLink::from_pin(link_path).map_err(|e| DataplaneError::Load(e.to_string()))?;
        let link = FdLink::from(link);
        let program_id = link
            .info()
            .map_err(|e| DataplaneError::Load(e.to_string()))?
            .program_id();
        let pinned = |name: &'static str| MapData::from_pin(dir.join(name)).map_err(map_err(name));
        kernel_log.attach_program(program_id);
        Ok(Self {
            pin_dir: dir.to_owned(),
            program_id,
            kernel_log,
            adopted: true,
            bindings: HashMap::try_from(Map::HashMap(pinned(names::BINDINGS)?))
                .map_err(map_err(names::BINDINGS))?,
            sockets: SockMap::try_from(Map::SockMap(pinned(names::SOCKETS)?))
                .map_err(map_err(names::SOCKETS))?,
            slot_stats: PerCpuArray::try_from(Map::PerCpuArray(pinned(names::SLOT_STATS)?))
                .map_err(map_err(names::SLOT_STATS))?,
            global_stats: PerCpuArray::try_from(Map::PerCpuArray(pinned(names::GLOBAL_STATS)?))
                .map_err(map_err(names::GLOBAL_STATS))?,
            policy_slots: Array::try_from(Map::Array(pinned(names::POLICY_SLOTS)?))
                .map_err(map_err(names::POLICY_SLOTS))?,
            policy_allow: LpmTrie::try_from(Map::LpmTrie(pinned(names::POLICY_ALLOW)?))
                .map_err(map_err(names::POLICY_ALLOW))?,
            policy_deny: LpmTrie::try_from(Map::LpmTrie(pinned(names::POLICY_DENY)?))
                .map_err(map_err(names::POLICY_DENY))?,
            policy_drops: PerCpuArray::try_from(Map::PerCpuArray(pinned(names::POLICY_DROPS)?))
                .map_err(map_err(names::POLICY_DROPS))?,
            xdp_stats: PerCpuArray::try_from(Map::PerCpuArray(pinned(names::XDP_STATS)?))
                .map_err(map_err(names::XDP_STATS))?,
            guards: Vec::new(),
            slots: slots::Slots::default(),
            with_policy: Default::default(),
        }
        .with_policies_found())
    }

    /// Notes which slots of adopted maps have policy prefixes.
    fn with_policies_found(mut self) -> Self {
        for trie in [&self.policy_allow, &self.policy_deny] {
            let slots = trie.keys().filter_map(Result::ok).map(|k| k.data().slot);
            self.with_policy.extend(slots);
        }
        self
    }

    fn load(
        dir: &Path,
        link_path: &Path,
        kernel_log: Arc<KernelLog>,
    ) -> Result<Self, DataplaneError> {
        let load_err = |e: &dyn std::fmt::Display| DataplaneError::Load(e.to_string());
        // Maps are declared pinned by name, so the loader pins them in `dir`.
        let mut ebpf: Ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(PROGRAM_OBJECT)
            .map_err(|e| load_err(&e))?;
        let prog: &mut SkLookup = ebpf
            .program_mut(names::SK_LOOKUP)
            .ok_or_else(|| DataplaneError::Load("program missing from the object".into()))?
            .try_into()
            .map_err(|e| load_err(&e))?;
        prog.load().map_err(|e| load_err(&e))?;
        let netns_path = Path::new("/proc/thread-self/ns/net");
        let netns = std::fs::File::open(netns_path).map_err(io("open", netns_path))?;
        let link_id = prog.attach(netns.as_fd()).map_err(|e| load_err(&e))?;
        let link: FdLink = prog.take_link(link_id).map_err(|e| load_err(&e))?.into();
        let program_id = link.info().map_err(|e| load_err(&e))?.program_id();
        link.pin(link_path).map_err(|e| load_err(&e))?;
        kernel_log.attach(&mut ebpf);
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or_else(|| DataplaneError::Load(format!("map {name} missing from the object")))
        };
        Ok(Self {
            pin_dir: dir.to_owned(),
            program_id,
            kernel_log,
            adopted: false,
            bindings: HashMap::try_from(take(names::BINDINGS)?)
                .map_err(map_err(names::BINDINGS))?,
            sockets: SockMap::try_from(take(names::SOCKETS)?).map_err(map_err(names::SOCKETS))?,
            slot_stats: PerCpuArray::try_from(take(names::SLOT_STATS)?)
                .map_err(map_err(names::SLOT_STATS))?,
            global_stats: PerCpuArray::try_from(take(names::GLOBAL_STATS)?)
                .map_err(map_err(names::GLOBAL_STATS))?,
            policy_slots: Array::try_from(take(names::POLICY_SLOTS)?)
                .map_err(map_err(names::POLICY_SLOTS))?,
            policy_allow: LpmTrie::try_from(take(names::POLICY_ALLOW)?)
                .map_err(map_err(names::POLICY_ALLOW))?,
            policy_deny: LpmTrie::try_from(take(names::POLICY_DENY)?)
                .map_err(map_err(names::POLICY_DENY))?,
            policy_drops: PerCpuArray::try_from(take(names::POLICY_DROPS)?)
                .map_err(map_err(names::POLICY_DROPS))?,
            xdp_stats: PerCpuArray::try_from(take(names::XDP_STATS)?)
                .map_err(map_err(names::XDP_STATS))?,
            guards: Vec::new(),
            slots: slots::Slots::default(),
            with_policy: Default::default(),
        })
    }

    /// Whether this instance adopted pinned state.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The bindings found in the map (after adoption: the previous daemon's).
    pub fn bindings(&self) -> Vec<(BindingKey, u32)> {
        use std::os::fd::AsFd;
        sys::hash_entries(self.bindings.map().fd().as_fd())
            .unwrap_or_else(|| self.bindings.iter().filter_map(Result::ok).collect())
    }

    /// Steers `key` to `socket` through `slot`. The socket is in place before the binding
    /// appears, so no lookup ever sees a binding without its socket.
    pub fn bind(
        &mut self,
        key: BindingKey,
        slot: u32,
        socket: &impl AsRawFd,
    ) -> Result<(), DataplaneError> {
        if slot >= faasd_common::MAX_BINDINGS {
            return Err(DataplaneError::Full {
                max: faasd_common::MAX_BINDINGS,
            });
        }
        self.sockets
            .set(slot, socket, 0)
            .map_err(map_err(names::SOCKETS))?;
        // Whoever chose the slot, it is in use now.
        self.slots.claim(slot);
        // Counters of a reused slot start from zero.
        let zero = aya::maps::PerCpuValues::try_from(vec![SlotCounters::default(); nr_cpus()])
            .expect("one value per CPU");
        self.slot_stats
            .set(slot, zero, 0)
            .map_err(map_err(names::SLOT_STATS))?;
        self.bindings.insert(key, slot, 0).map_err(|e| match e {
            aya::maps::MapError::SyscallError(ref s)
                if s.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                DataplaneError::Full {
                    max: faasd_common::MAX_BINDINGS,
                }
            }
            e => map_err(names::BINDINGS)(e),
        })
    }

    /// Puts `socket` back in a slot whose binding survived a restart (the key still points
    /// at it); its counters go on counting.
    pub fn reattach(
        &mut self,
        slot: u32,
        socket: &impl AsRawFd,
        policy: &Policy,
    ) -> Result<(), DataplaneError> {
        self.sockets
            .set(slot, socket, 0)
            .map_err(map_err(names::SOCKETS))?;
        self.slots.claim(slot);
        if policy.is_empty() && !self.with_policy.contains(&slot) {
            return Ok(());
        }
        self.set_policy(slot, policy)
    }

    /// Points `key` at `slot`, whose socket is already in place (one atomic map update:
    /// how a new version takes over, or an old one is put back).
    pub fn point(&mut self, key: BindingKey, slot: u32) -> Result<(), DataplaneError> {
        self.bindings
            .insert(key, slot, 0)
            .map_err(map_err(names::BINDINGS))
    }

    /// Removes a binding and its socket. Lookups for the key fall through afterwards.
    pub fn unbind(&mut self, key: &BindingKey, slot: u32) -> Result<(), DataplaneError> {
        match self.bindings.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::BINDINGS)(e)),
        }
        self.clear_slot(slot)
    }

    /// Sets the source policy of a slot (replacing the one it had) and zeroes its drop
    /// count. The flag that turns the check on goes last, after the prefixes are in.
    pub fn set_policy(&mut self, slot: u32, policy: &Policy) -> Result<(), DataplaneError> {
        self.clear_policy(slot)?;
        let zero =
            aya::maps::PerCpuValues::try_from(vec![0u64; nr_cpus()]).expect("one value per CPU");
        self.policy_drops
            .set(slot, zero, 0)
            .map_err(map_err(names::POLICY_DROPS))?;
        if policy.is_empty() {
            return Ok(());
        }
        self.with_policy.insert(slot);
        let key = |(addr, len): &(std::net::Ipv6Addr, u8)| {
            let o = addr.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            Key::new(
                POLICY_SLOT_BITS + u32::from(*len),
                PolicySource {
                    slot,
                    addr: [word(0), word(4), word(8), word(12)],
                },
            )
        };
        for p in &policy.allow {
            self.policy_allow
                .insert(&key(p), 1, 0)
                .map_err(map_err(names::POLICY_ALLOW))?;
        }
        for p in &policy.deny {
            self.policy_deny
                .insert(&key(p), 1, 0)
                .map_err(map_err(names::POLICY_DENY))?;
        }
        self.policy_slots
            .set(slot, 1, 0)
            .map_err(map_err(names::POLICY_SLOTS))
    }

    /// Removes a slot's policy: the flag first, then its prefixes.
    fn clear_policy(&mut self, slot: u32) -> Result<(), DataplaneError> {
        if !self.with_policy.contains(&slot) {
            return Ok(());
        }
        self.policy_slots
            .set(slot, 0, 0)
            .map_err(map_err(names::POLICY_SLOTS))?;
        for (trie, name) in [
            (&mut self.policy_allow, names::POLICY_ALLOW),
            (&mut self.policy_deny, names::POLICY_DENY),
        ] {
            let ours: Vec<Key<PolicySource>> = trie
                .keys()
                .filter_map(Result::ok)
                .filter(|k| {
                    let data = k.data();
                    data.slot == slot
                })
                .collect();
            for k in ours {
                match trie.remove(&k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        self.with_policy.remove(&slot);
        Ok(())
    }

    /// Attaches the guard to `interface` at `hook` (XDP in generic mode, or tcx ingress; the
    /// variant without a link-layer header when `layer3`, as for WireGuard and TUN devices)
    /// and makes it guard `prefix`. It stays attached while this daemon runs. `Auto` takes
    /// tcx, and XDP where tcx cannot attach (Linux before 6.6).
    pub fn attach_guard(
        &mut self,
        interface: &str,
        layer3: bool,
        prefix: faasd_core::config::Ipv6Net,
        hook: GuardHook,
    ) -> Result<(), DataplaneError> {
        if hook != GuardHook::Auto {
            return self.attach_guard_at(interface, layer3, prefix, hook);
        }
        self.attach_guard_at(interface, layer3, prefix, GuardHook::Tc)
            .or_else(|e| {
                tracing::warn!("{e}; attaching it at XDP instead");
                self.attach_guard_at(interface, layer3, prefix, GuardHook::Xdp)
            })
    }

    fn attach_guard_at(
        &mut self,
        interface: &str,
        layer3: bool,
        prefix: faasd_core::config::Ipv6Net,
        hook: GuardHook,
    ) -> Result<(), DataplaneError> {
        let load_err = |e: &dyn std::fmt::Display| {
            DataplaneError::Load(format!("the guard ({hook}) on {interface}: {e}"))
        };
        // The same object again: its pinned maps are the ones the steering program uses.
        let mut ebpf: Ebpf = EbpfLoader::new()
            .default_map_pin_directory(&self.pin_dir)
            .load(PROGRAM_OBJECT)
            .map_err(|e| load_err(&e))?;
        let o = prefix.addr.octets();
        let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        let mut prefixes: LpmTrie<MapData, [u32; 4], u8> = LpmTrie::try_from(
            ebpf.take_map(names::XDP_PREFIXES)
                .ok_or_else(|| load_err(&"map XDP_PREFIXES missing"))?,
        )
        .map_err(map_err(names::XDP_PREFIXES))?;
        prefixes
            .insert(
                &Key::new(u32::from(prefix.len), [word(0), word(4), word(8), word(12)]),
                1,
                0,
            )
            .map_err(map_err(names::XDP_PREFIXES))?;
        let name = match (hook, layer3) {
            (GuardHook::Tc, true) => names::TC_L3,
            (GuardHook::Tc, false) => names::TC_L2,
            (_, true) => names::XDP_L3,
            (_, false) => names::XDP_L2,
        };
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| load_err(&"program missing from the object"))?;
        match hook {
            GuardHook::Xdp | GuardHook::Auto => {
                let prog: &mut Xdp = program.try_into().map_err(|e| load_err(&e))?;
                prog.load().map_err(|e| load_err(&e))?;
                prog.attach(interface, XdpMode::Skb)
                    .map_err(|e| load_err(&e))?;
            }
            GuardHook::Tc => {
                let prog: &mut SchedClassifier = program.try_into().map_err(|e| load_err(&e))?;
                prog.load().map_err(|e| load_err(&e))?;
                let tcx = TcAttachOptions::TcxOrder(LinkOrder::default());
                prog.attach_with_options(interface, TcAttachType::Ingress, tcx)
                    .map_err(|e| {
                        load_err(&format!(
                            "{e} (tcx needs Linux 6.6 or later; set guard-hook = \"xdp\" or \
                             \"auto\" on older kernels)"
                        ))
                    })?;
            }
        }
        tracing::info!("guard ({name}) attached to {interface} for {prefix}");
        self.guards.push((interface.to_owned(), hook, ebpf));
        Ok(())
    }

    fn xdp_counter(&self, c: XdpCounter) -> u64 {
        per_cpu_sum(&self.xdp_stats, c as u32)
    }

    /// Lookups of a slot the policy refused, summed over CPUs.
    pub fn policy_drops(&self, slot: u32) -> u64 {
        per_cpu_sum(&self.policy_drops, slot)
    }

    /// Empties a socket slot and drops its policy (the binding, if any, is left alone).
    pub fn clear_slot(&mut self, slot: u32) -> Result<(), DataplaneError> {
        self.clear_policy(slot)?;
        match self.sockets.clear_index(&slot) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            // An empty slot answers EINVAL: its socket closed and the kernel removed it.
            Err(aya::maps::MapError::SyscallError(s))
                if matches!(s.io_error.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(names::SOCKETS)(e)),
        }
    }

    /// Readers of the per-slot counters that need no lock on the data plane.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let slots_pin = self.pin_dir.join(names::SLOT_STATS);
        let slots = counters::PerCpuReader::new(self.slot_stats.map().fd(), nr_cpus())
            .map_err(io("duplicating the descriptor of", &slots_pin))?;
        let drops_pin = self.pin_dir.join(names::POLICY_DROPS);
        let drops = counters::PerCpuReader::new(self.policy_drops.map().fd(), nr_cpus())
            .map_err(io("duplicating the descriptor of", &drops_pin))?;
        Ok(Counters(Arc::new((slots, drops))))
    }

    /// A free socket slot, if the map has one.
    pub fn take_slot(&mut self) -> Result<u32, DataplaneError> {
        self.slots.take().ok_or(DataplaneError::Full {
            max: faasd_common::MAX_BINDINGS,
        })
    }

    /// Marks a slot the pinned maps already use (a restart) as taken.
    pub fn claim_slot(&mut self, slot: u32) {
        self.slots.claim(slot);
    }

    /// Gives a slot back for reuse (after [`Dataplane::unbind`] or [`Dataplane::clear_slot`]).
    pub fn release_slot(&mut self, slot: u32) {
        self.slots.release(slot);
    }

    /// One past the highest slot in use: how far a counter pass reads.
    pub fn slot_high_water(&self) -> u32 {
        self.slots.high_water()
    }

    fn global(&self, c: GlobalCounter) -> u64 {
        per_cpu_sum(&self.global_stats, c as u32)
    }

    /// Attaches the egress programs to `cgroup`, their maps pinned beside the steering
    /// program's; see [`Egress::attach`].
    pub fn egress(&self, cgroup: &Path, level: u32) -> Result<Egress, DataplaneError> {
        Egress::attach(&self.pin_dir, cgroup, level, &self.kernel_log)
    }

    /// A summary for `faasd status`.
    pub fn status(&self) -> DataplaneStatus {
        let (kernel_events, last_kernel_event) = self.kernel_log.events();
        DataplaneStatus {
            pin_dir: self.pin_dir.clone(),
            program_id: self.program_id,
            adopted: self.adopted,
            bindings: self.slots.used(),
            max_bindings: faasd_common::MAX_BINDINGS,
            misses: self.global(GlobalCounter::Miss),
            ipv4_passed: self.global(GlobalCounter::Ipv4Passed),
            xdp_interfaces: self.guards.iter().map(|(i, ..)| i.clone()).collect(),
            guard_hook: self
                .guards
                .first()
                .map(|(_, h, _)| h.to_string())
                .unwrap_or_default(),
            xdp_passed: self.xdp_counter(XdpCounter::Passed),
            xdp_dropped_no_binding: self.xdp_counter(XdpCounter::DroppedNoBinding),
            xdp_dropped_policy: self.xdp_counter(XdpCounter::DroppedPolicy),
            kernel_events,
            last_kernel_event,
        }
    }
}

/// An entry of a per-CPU counter array, summed over CPUs (0 if it cannot be read).
fn per_cpu_sum(map: &PerCpuArray<MapData, u64>, index: u32) -> u64 {
    map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// The number of possible CPUs, read from sysfs once: every per-CPU map update needs it.
fn nr_cpus() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| aya::util::nr_cpus().unwrap_or(1))
}

fn check_bpffs(bpffs: &Path) -> Result<(), DataplaneError> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let c = std::ffi::CString::new(bpffs.as_os_str().as_encoded_bytes())
        .map_err(|_| DataplaneError::NoBpffs(bpffs.to_owned()))?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 || st.f_type as i64 != BPF_FS_MAGIC {
        return Err(DataplaneError::NoBpffs(bpffs.to_owned()));
    }
    Ok(())
}

/// Detaches the program of a pin directory and drops its maps (used by `faasd dataplane
/// remove` and by tests cleaning up their namespace).
pub fn remove_pins(dir: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", dir)(e)),
    }
}
