//! The OCI runtime spec faasd gives each container: its own pid, mount, ipc, uts and
//! network namespaces (the network one holds only `lo`), no new privileges, the default
//! capability set of containerd and Docker, a seccomp filter refusing what that default
//! profile refuses to a container without CAP_SYS_ADMIN, the masked and read-only /proc and
//! /sys paths they use, and the function's limits in its cgroup.

use serde_json::{Value, json};

/// The capabilities containerd and Docker give a container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// System calls the filter answers with EPERM: those the default profile of containerd
/// and Docker leaves out for a container without extra capabilities (kernel modules,
/// mounts, namespaces, keyrings, clocks, tracing other processes, BPF, kexec, swap).
/// Everything else is allowed; names the host's libseccomp does not know are skipped by
/// the runtime.
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// A host path mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Host path.
    pub source: String,
    /// Path in the container.
    pub destination: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// What varies between containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Host name inside the container (the function's name).
    pub hostname: String,
    /// Command line.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Mount the root filesystem read-only.
    pub read_only: bool,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// cgroup path (relative to each hierarchy's root).
    pub cgroups_path: String,
    /// Extra bind mounts.
    pub binds: Vec<Bind>,
    /// A network namespace to join (a path to it); a new one with only `lo` otherwise.
    pub netns: Option<String>,
}

/// CFS period for CPU limits: the kernel's default, 100 ms.
const CPU_PERIOD_US: u64 = 100_000;

impl ContainerSpec {
    /// The spec as JSON, as containerd stores it.
    pub fn to_json(&self) -> Value {
        let network = match &self.netns {
            Some(path) => json!({"type": "network", "path": path}),
            None => json!({"type": "network"}),
        };
        let mut mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc",
                   "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                   "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666",
                               "mode=0620", "gid=5"]}),
            json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                   "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                   "options": ["nosuid", "noexec", "nodev"]}),
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                   "options": ["nosuid", "noexec", "nodev", "ro"]}),
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                   "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]}),
        ];
        for b in &self.binds {
            let mut options = vec!["rbind", "nosuid", "nodev"];
            if b.read_only {
                options.push("ro");
            }
            mounts.push(json!({"destination": b.destination, "type": "bind",
                               "source": b.source, "options": options}));
        }
        let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
        if let Some(m) = self.memory_limit {
            // Swap counts against the limit too, so the limit is the limit.
            resources["memory"] = json!({"limit": m, "swap": m});
        }
        if let Some(c) = self.cpu_millis {
            resources["cpu"] = json!({"quota": c * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US});
        }
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": self.uid, "gid": self.gid},
                "args": self.args,
                "env": env,
                "cwd": self.cwd,
                "capabilities": {
                    "bounding": DEFAULT_CAPABILITIES,
                    "effective": DEFAULT_CAPABILITIES,
                    "permitted": DEFAULT_CAPABILITIES,
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true,
            },
            "root": {"path": "rootfs", "readonly": self.read_only},
            "hostname": self.hostname,
            "mounts": mounts,
            "linux": {
                "resources": resources,
                "cgroupsPath": self.cgroups_path,
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                    {"type": "mount"}, network,
                ],
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                ],
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ALLOW",
                    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                                      "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                    "syscalls": [{
                        "names": DENIED_SYSCALLS,
                        "action": "SCMP_ACT_ERRNO",
                        "errnoRet": libc::EPERM,
                    }],
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            hostname: "hello".into(),
            args: vec!["/hello".into()],
            env: vec![("A".into(), "b".into())],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            read_only: true,
            memory_limit: Some(32 << 20),
            cpu_millis: Some(500),
            cgroups_path: "/faasd/openfaas-fn/hello/x".into(),
            binds: vec![Bind {
                source: "/run/faasd/x".into(),
                destination: "/.faasd/run".into(),
                read_only: false,
            }],
            netns: None,
        }
    }

    #[test]
    fn limits_land_in_the_resources() {
        let j = spec().to_json();
        assert_eq!(j["linux"]["resources"]["memory"]["limit"], 32 << 20);
        assert_eq!(j["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(j["linux"]["resources"]["cpu"]["period"], 100_000);
        assert_eq!(j["root"]["readonly"], true);
        assert_eq!(j["process"]["noNewPrivileges"], true);
        assert_eq!(j["process"]["env"][0], "A=b");
    }

    #[test]
    fn every_namespace_is_new_and_the_bind_is_mounted() {
        let j = spec().to_json();
        let ns: Vec<&str> = j["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        for want in ["pid", "ipc", "uts", "mount", "network"] {
            assert!(ns.contains(&want), "{want} missing");
        }
        assert!(
            j["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n.get("path").is_none())
        );
        let bind = j["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/.faasd/run")
            .unwrap();
        assert_eq!(bind["source"], "/run/faasd/x");
        assert!(!bind["options"].as_array().unwrap().contains(&json!("ro")));
    }
}
