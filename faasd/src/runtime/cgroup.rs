//! cgroup v2 placement: every function gets `<parent>/<namespace>/<name>` under the unified
//! hierarchy, found at `/sys/fs/cgroup` (pure v2) or `/sys/fs/cgroup/unified` (hybrid).

use std::path::{Path, PathBuf};

/// The unified hierarchy's root, if this host has one.
pub fn root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists() && p.join("cgroup.subtree_control").exists())
        .map(Path::to_path_buf)
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
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
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
}
