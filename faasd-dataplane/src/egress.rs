//! The egress programs: attached once to the cgroup that holds every function's cgroup,
//! they decide the `connect` and unconnected UDP sends of functions by the rule of the
//! function's cgroup. A rule exists only while the function has a cgroup, so a stopped
//! function costs nothing here.
//!
//! The links are pinned beside the steering program's, with the same fingerprint: a
//! restarted daemon keeps them (running functions stay confined while no daemon runs), and
//! a new build attaches its programs before it unpins the old ones.

use std::{
    net::Ipv6Addr,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuHashMap, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSockAddr,
        links::{FdLink, PinnedLink},
    },
};
use faasd_common::{
    EGRESS_HAS_ALLOW, EGRESS_HAS_DENY, EgressMode, EgressReason, EgressRule, MAX_EGRESS_RULES,
    POLICY_SLOT_BITS, PolicySource, egress_refused_key, names,
};

use super::{DataplaneError, PROGRAM_OBJECT, io, map_err, program_fingerprint, slots::Slots};

/// Prefix of the egress links' pins; the program's name and fingerprint follow.
const EGRESS_PIN: &str = "egress_link";

/// What a function may reach: a mode and prefix lists (IPv4 as IPv4-mapped IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    /// The mode.
    pub mode: EgressMode,
    /// Destinations allowed whatever the deny list says.
    pub allow: Vec<(Ipv6Addr, u8)>,
    /// Destinations refused unless allowed.
    pub deny: Vec<(Ipv6Addr, u8)>,
}

/// Connections refused for one function, by reason ([`EgressReason`] order).
pub type Refused = [u64; EgressReason::COUNT];

/// The egress maps, and the rule ids in use.
pub struct Egress {
    rules: HashMap<MapData, u64, EgressRule>,
    allow: LpmTrie<MapData, PolicySource, u8>,
    deny: LpmTrie<MapData, PolicySource, u8>,
    refused: PerCpuHashMap<MapData, u64, u64>,
    ids: Slots,
}

impl Egress {
    /// Attaches the egress programs to `cgroup` (unless this build's are attached there
    /// already) and sets the level of function cgroups below the hierarchy's root.
    /// Their rare events go to `kernel_log`.
    pub fn attach(
        pin_dir: &Path,
        cgroup: &Path,
        level: u32,
        kernel_log: &crate::KernelLog,
    ) -> Result<Self, DataplaneError> {
        if PROGRAM_OBJECT.is_empty() {
            return Err(DataplaneError::NoPrograms);
        }
        let load_err = |e: &dyn std::fmt::Display| {
            DataplaneError::Load(format!("egress programs on {}: {e}", cgroup.display()))
        };
        let fingerprint = program_fingerprint();
        let pin = |prog: &str| pin_dir.join(format!("{EGRESS_PIN}-{prog}-{fingerprint:016x}"));
        let missing: Vec<&str> = names::EGRESS_PROGRAMS
            .into_iter()
            .filter(|p| !pin(p).exists())
            .collect();
        if !missing.is_empty() {
            let dir = std::fs::File::open(cgroup).map_err(io("open", cgroup))?;
            let mut ebpf = EbpfLoader::new()
                .default_map_pin_directory(pin_dir)
                .load(PROGRAM_OBJECT)
                .map_err(|e| load_err(&e))?;
            for name in missing {
                let prog: &mut CgroupSockAddr = ebpf
                    .program_mut(name)
                    .ok_or_else(|| load_err(&format!("{name} missing from the object")))?
                    .try_into()
                    .map_err(|e| load_err(&e))?;
                prog.load().map_err(|e| load_err(&DisplayChain(&e)))?;
                // A link: the kernel lets several links share a cgroup whatever the mode
                // (and refuses the multi flag on one).
                let id = prog
                    .attach(dir.as_fd(), CgroupAttachMode::Single)
                    .map_err(|e| load_err(&DisplayChain(&e)))?;
                let link: FdLink = prog
                    .take_link(id)
                    .map_err(|e| load_err(&e))?
                    .try_into()
                    .map_err(|e| load_err(&e))?;
                link.pin(pin(name)).map_err(|e| load_err(&e))?;
            }
            // Only now, with this build's programs deciding, do older ones go.
            for old in older_pins(pin_dir, &fingerprint_suffix(fingerprint)) {
                let _ = std::fs::remove_file(old);
            }
            kernel_log.attach(&mut ebpf);
        } else {
            // Attached by an earlier faasd, all from one object: one program leads to the
            // log they share.
            let first = pin(names::EGRESS_PROGRAMS[0]);
            match PinnedLink::from_pin(&first).map(FdLink::from) {
                Ok(link) => match link.info() {
                    Ok(info) => kernel_log.attach_program(info.program_id()),
                    Err(e) => tracing::debug!("{}: {e}", first.display()),
                },
                Err(e) => tracing::debug!("{}: {e}", first.display()),
            }
        }
        let pinned =
            |name: &'static str| MapData::from_pin(pin_dir.join(name)).map_err(map_err(name));
        let mut config: Array<MapData, u32> =
            Array::try_from(Map::Array(pinned(names::EGRESS_CONFIG)?))
                .map_err(map_err(names::EGRESS_CONFIG))?;
        config
            .set(0, level, 0)
            .map_err(map_err(names::EGRESS_CONFIG))?;
        let rules: HashMap<MapData, u64, EgressRule> =
            HashMap::try_from(Map::HashMap(pinned(names::EGRESS_RULES)?))
                .map_err(map_err(names::EGRESS_RULES))?;
        let mut ids = Slots::with_limit(MAX_EGRESS_RULES);
        for rule in rules.iter().filter_map(Result::ok) {
            ids.claim(rule.1.id);
        }
        Ok(Self {
            rules,
            allow: LpmTrie::try_from(Map::LpmTrie(pinned(names::EGRESS_ALLOW)?))
                .map_err(map_err(names::EGRESS_ALLOW))?,
            deny: LpmTrie::try_from(Map::LpmTrie(pinned(names::EGRESS_DENY)?))
                .map_err(map_err(names::EGRESS_DENY))?,
            refused: PerCpuHashMap::try_from(Map::PerCpuHashMap(pinned(names::EGRESS_REFUSED)?))
                .map_err(map_err(names::EGRESS_REFUSED))?,
            ids,
        })
    }

    /// The cgroup ids that have a rule (after a restart: the previous daemon's).
    pub fn cgroups(&self) -> Vec<u64> {
        self.rules.keys().filter_map(Result::ok).collect()
    }

    /// Gives the function whose cgroup is `cgroup` its policy, replacing any it had. The
    /// prefixes go in before the rule that makes them count.
    pub fn set(&mut self, cgroup: u64, policy: &EgressPolicy) -> Result<(), DataplaneError> {
        self.clear(cgroup)?;
        let id = self.ids.take().ok_or(DataplaneError::Full {
            max: MAX_EGRESS_RULES,
        })?;
        let mut lists = 0;
        for (trie, prefixes, flag, name) in [
            (
                &mut self.allow,
                &policy.allow,
                EGRESS_HAS_ALLOW,
                names::EGRESS_ALLOW,
            ),
            (
                &mut self.deny,
                &policy.deny,
                EGRESS_HAS_DENY,
                names::EGRESS_DENY,
            ),
        ] {
            for p in prefixes {
                trie.insert(&key(id, p), 1, 0).map_err(map_err(name))?;
                lists |= flag;
            }
        }
        let rule = EgressRule {
            mode: policy.mode as u32,
            id,
            lists,
            pad: 0,
        };
        self.rules
            .insert(cgroup, rule, 0)
            .map_err(map_err(names::EGRESS_RULES))
    }

    /// Removes the rule of `cgroup` (its cgroup is gone) and returns what it refused.
    pub fn clear(&mut self, cgroup: u64) -> Result<Refused, DataplaneError> {
        let Ok(rule) = self.rules.get(&cgroup, 0) else {
            return Ok(Refused::default());
        };
        let refused = self.refused_by(rule.id);
        match self.rules.remove(&cgroup) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::EGRESS_RULES)(e)),
        }
        for (trie, name) in [
            (&mut self.allow, names::EGRESS_ALLOW),
            (&mut self.deny, names::EGRESS_DENY),
        ] {
            let ours: Vec<Key<PolicySource>> = trie
                .keys()
                .filter_map(Result::ok)
                .filter(|k| k.data().slot == rule.id)
                .collect();
            for k in ours {
                match trie.remove(&k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        for (reason, _) in EgressReason::ALL {
            let _ = self
                .refused
                .remove(&egress_refused_key(rule.id, reason as u32));
        }
        self.ids.release(rule.id);
        Ok(refused)
    }

    /// What the rule of `cgroup` has refused so far (zero without a rule).
    pub fn refused(&self, cgroup: u64) -> Refused {
        self.rules
            .get(&cgroup, 0)
            .map(|r| self.refused_by(r.id))
            .unwrap_or_default()
    }

    fn refused_by(&self, id: u32) -> Refused {
        let mut out = Refused::default();
        for (reason, _) in EgressReason::ALL {
            out[reason as usize] = self
                .refused
                .get(&egress_refused_key(id, reason as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
        }
        out
    }
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("rules", &self.ids.used())
            .finish_non_exhaustive()
    }
}

/// An error with its sources, for aya's errors whose message leaves out the errno.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// A prefix of a rule's trie: the rule's id, then the destination.
fn key(id: u32, (addr, len): &(Ipv6Addr, u8)) -> Key<PolicySource> {
    let o = addr.octets();
    let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
    Key::new(
        POLICY_SLOT_BITS + u32::from(*len),
        PolicySource {
            slot: id,
            addr: [word(0), word(4), word(8), word(12)],
        },
    )
}

fn fingerprint_suffix(fingerprint: u64) -> String {
    format!("-{fingerprint:016x}")
}

/// Egress link pins of other builds.
fn older_pins(pin_dir: &Path, ours: &str) -> Vec<PathBuf> {
    std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with(EGRESS_PIN) && !n.ends_with(ours)
            })
        })
        .collect()
}
