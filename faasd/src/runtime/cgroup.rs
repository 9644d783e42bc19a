//! cgroup v2 placement: every function gets `<parent>/<namespace>/<name>` under the unified
//! hierarchy, found at `/sys/fs/cgroup` (pure v2) or `/sys/fs/cgroup/unified` (hybrid).
//!
//! Limits go where the controllers are: in that cgroup when the unified hierarchy has
//! them, else, on a hybrid host whose memory, cpu and pids controllers are v1 (as on the
//! machines faasd is tested on), in the same path under each v1 hierarchy, which the
//! instance joins itself before it execs.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

/// Resource limits of a function's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory: Option<u64>,
    /// CPU, in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// Tasks (processes and threads).
    pub pids: Option<u64>,
}

/// One limit: (controller, v2 file, v2 value, v1 files and values).
type Setting = (
    &'static str,
    &'static str,
    String,
    Vec<(&'static str, String)>,
);

/// The CFS period the CPU quota is a share of: the kernel's default, 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// Whether there is anything to enforce.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu_millis.is_none() && self.pids.is_none()
    }

    /// How each limit set is written.
    fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        if let Some(m) = self.memory {
            out.push((
                "memory",
                "memory.max",
                m.to_string(),
                vec![("memory.limit_in_bytes", m.to_string())],
            ));
        }
        if let Some(c) = self.cpu_millis {
            let quota = (c * CPU_PERIOD_US / 1000).max(1000);
            out.push((
                "cpu",
                "cpu.max",
                format!("{quota} {CPU_PERIOD_US}"),
                vec![
                    ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            ));
        }
        if let Some(p) = self.pids {
            out.push((
                "pids",
                "pids.max",
                p.to_string(),
                vec![("pids.max", p.to_string())],
            ));
        }
        out
    }
}

/// Puts `limits` on the function cgroup `dir` (under `root`, the unified hierarchy).
/// Returns the v1 `cgroup.procs` files the instance must join (empty where the unified
/// hierarchy holds the controllers: the instance is cloned into `dir` and is limited).
pub fn apply(root: &Path, dir: &Path, limits: &Limits) -> io::Result<Vec<File>> {
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let mut joins = Vec::new();
    for (controller, v2_file, v2_value, v1) in limits.settings() {
        if available.split_whitespace().any(|c| c == controller) {
            // Each ancestor hands the controller down to its children.
            let rel = dir.strip_prefix(root).map_err(io::Error::other)?;
            let mut at = root.to_path_buf();
            for part in rel.iter() {
                std::fs::write(at.join("cgroup.subtree_control"), format!("+{controller}"))?;
                at.push(part);
            }
            std::fs::write(dir.join(v2_file), v2_value)?;
            continue;
        }
        let Some(v1_dir) = v1_dir(controller, root, dir) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("no {controller} controller in cgroup v2 or v1"),
            ));
        };
        create(&v1_dir)?;
        for (file, value) in v1 {
            std::fs::write(v1_dir.join(file), value)?;
        }
        joins.push(
            File::options()
                .write(true)
                .open(v1_dir.join("cgroup.procs"))?,
        );
    }
    Ok(joins)
}

/// The v1 counterpart of the unified cgroup `dir` for `controller`, on a hybrid host.
fn v1_dir(controller: &str, root: &Path, dir: &Path) -> Option<PathBuf> {
    let hierarchy = Path::new("/sys/fs/cgroup").join(controller);
    (root != Path::new("/sys/fs/cgroup") && hierarchy.join("cgroup.procs").exists())
        .then(|| Some(hierarchy.join(dir.strip_prefix(root).ok()?)))
        .flatten()
}

/// Removes the v1 counterparts of `dir` (and their empty parents up to the cgroup
/// parent): what [`apply`] made on a hybrid host.
fn remove_v1(dir: &Path) {
    let Some(root) = root() else { return };
    for controller in ["memory", "cpu", "pids"] {
        if let Some(d) = v1_dir(controller, &root, dir) {
            for d in d.ancestors().take(3) {
                if std::fs::remove_dir(d).is_err() {
                    break;
                }
            }
        }
    }
}

/// The unified hierarchy's root, if this host has one.
pub fn root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        .map(Path::to_path_buf)
}

/// The unified-hierarchy cgroup `pid` is in.
pub fn of_process(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(root()?.join(rel.trim_start_matches('/')))
}

/// The CPU time everything in the cgroup has used, in µs (`usage_usec` in `cpu.stat`,
/// which the unified hierarchy keeps with or without the cpu controller).
pub fn cpu_usage_usec(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))?
        .trim()
        .parse()
        .ok()
}

/// The cgroup of a function.
pub fn path(root: &Path, parent: &str, namespace: &str, name: &str) -> PathBuf {
    root.join(parent).join(namespace).join(name)
}

/// Creates a function's cgroup if it is not there. It is made when an instance starts and
/// removed once none runs (see [`remove_empty`]), so a stopped function holds none.
pub fn create(dir: &Path) -> std::io::Result<()> {
    // One mkdir when the parents exist, as they do for every function but a namespace's
    // first.
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir),
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Removes a function's cgroup if nothing runs in it (the kernel refuses otherwise, and
/// that is left for the next time); says whether it is gone.
pub fn remove_empty(dir: &Path) -> bool {
    let gone = match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if gone {
        remove_v1(dir);
    }
    gone
}

/// Freezes (or thaws) every process in a cgroup v2 directory and below it. The kernel
/// finishes freezing asynchronously; a frozen task takes no signal but SIGKILL.
pub fn freeze(dir: &Path, frozen: bool) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}

/// Asks the kernel to push a cgroup's memory out (to swap, or drop its page cache), where
/// the memory controller is on in the unified hierarchy: `memory.reclaim` of all it uses.
/// Elsewhere (cgroup v1's memory controller has no such file) it does nothing.
pub fn reclaim(dir: &Path) {
    let Ok(current) = std::fs::read_to_string(dir.join("memory.current")) else {
        return;
    };
    // The kernel reclaims what it can and reports EAGAIN for the rest: not an error here.
    let _ = std::fs::write(dir.join("memory.reclaim"), current.trim());
}

/// Whether any process runs in the cgroup or below it (true when that cannot be read).
pub fn populated(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .map_or(true, |events| !events.lines().any(|l| l == "populated 0"))
}

/// Kills every process in the cgroup that is not in the pid namespace of `keep` (an
/// instance a restarted daemon took back); returns how many it killed. Instances are pid 1
/// of their own pid namespace, so this spares exactly the kept instance and its children.
pub fn kill_strays(dir: &Path, keep: Option<i32>) -> usize {
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let keep_ns = keep.and_then(|p| ns_of(&p.to_string()));
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    let mut killed = 0;
    for pid in procs.split_whitespace() {
        if keep_ns.is_some() && ns_of(pid) == keep_ns {
            continue;
        }
        if let Ok(p) = pid.parse::<i32>() {
            // SAFETY: kill has no memory-safety preconditions.
            killed += usize::from(unsafe { libc::kill(p, libc::SIGKILL) } == 0);
        }
    }
    killed
}

/// Kills every process left in the cgroup and removes it, then its namespace and parent
/// cgroups if they are empty (best effort: the kernel refuses while processes are still
/// exiting or other functions remain).
pub fn remove(dir: &Path) {
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for d in dir.ancestors().take(3) {
        if std::fs::remove_dir(d).is_err() {
            break;
        }
    }
    remove_v1(dir);
}
