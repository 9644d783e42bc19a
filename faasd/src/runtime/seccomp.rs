//! The system call filter of process instances: the deny list containers get (see
//! [`faasd_containerd::oci::DENIED_SYSCALLS`]), as a classic BPF program for
//! `seccomp(2)`: those calls fail with EPERM, everything else is allowed. It is built in
//! the spawner before the clone (the child may not allocate) and loaded by the child after
//! `no_new_privs`, just before it forks the function.

/// `struct sock_filter`.
pub type Instruction = libc::sock_filter;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// System call numbers of the x32 ABI carry this bit; a filter that ignores it could be
/// bypassed through them.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `struct seccomp_data`: `nr` at 0, `arch` at 4.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

fn stmt(code: u32, k: u32) -> Instruction {
    Instruction {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> Instruction {
    Instruction {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The program: other architectures and the x32 ABI refused, each denied call refused,
/// the rest allowed. Names this architecture lacks are skipped.
pub fn deny_filter(names: &[&str]) -> Vec<Instruction> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JGE, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let numbers: Vec<u32> = names.iter().filter_map(|n| number(n)).collect();
    let eperm = SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let mut p = vec![
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_ARCH),
        jump(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(BPF_RET | BPF_K, eperm),
        stmt(BPF_LD | BPF_W | BPF_ABS, OFFSET_NR),
        jump(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET | BPF_K, eperm),
    ];
    for (i, nr) in numbers.iter().enumerate() {
        // To the EPERM return after the last comparison.
        let to_refuse = (numbers.len() - i) as u8;
        p.push(jump(BPF_JMP | BPF_JEQ | BPF_K, *nr, to_refuse, 0));
    }
    p.push(stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
    p.push(stmt(BPF_RET | BPF_K, eperm));
    p
}

/// The x86-64 number of a system call of the deny list. Missing: those the kernel no
/// longer has (`create_module`, `get_kernel_syms`, `query_module`: ENOSYS anyway) and the
/// i386-only `vm86`, `vm86old`.
fn number(name: &str) -> Option<u32> {
    let n = match name {
        "acct" => libc::SYS_acct,
        "add_key" => libc::SYS_add_key,
        "bpf" => libc::SYS_bpf,
        "clock_adjtime" => libc::SYS_clock_adjtime,
        "clock_settime" => libc::SYS_clock_settime,
        "delete_module" => libc::SYS_delete_module,
        "fanotify_init" => libc::SYS_fanotify_init,
        "finit_module" => libc::SYS_finit_module,
        "fsconfig" => libc::SYS_fsconfig,
        "fsmount" => libc::SYS_fsmount,
        "fsopen" => libc::SYS_fsopen,
        "fspick" => libc::SYS_fspick,
        "init_module" => libc::SYS_init_module,
        "ioperm" => libc::SYS_ioperm,
        "iopl" => libc::SYS_iopl,
        "kcmp" => libc::SYS_kcmp,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "kexec_load" => libc::SYS_kexec_load,
        "keyctl" => libc::SYS_keyctl,
        "lookup_dcookie" => libc::SYS_lookup_dcookie,
        "mount" => libc::SYS_mount,
        "mount_setattr" => libc::SYS_mount_setattr,
        "move_mount" => libc::SYS_move_mount,
        "name_to_handle_at" => libc::SYS_name_to_handle_at,
        "nfsservctl" => libc::SYS_nfsservctl,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "open_tree" => libc::SYS_open_tree,
        "perf_event_open" => libc::SYS_perf_event_open,
        "pivot_root" => libc::SYS_pivot_root,
        "process_vm_readv" => libc::SYS_process_vm_readv,
        "process_vm_writev" => libc::SYS_process_vm_writev,
        "quotactl" => libc::SYS_quotactl,
        "quotactl_fd" => libc::SYS_quotactl_fd,
        "reboot" => libc::SYS_reboot,
        "request_key" => libc::SYS_request_key,
        "setns" => libc::SYS_setns,
        "settimeofday" => libc::SYS_settimeofday,
        "swapoff" => libc::SYS_swapoff,
        "swapon" => libc::SYS_swapon,
        "syslog" => libc::SYS_syslog,
        "umount2" => libc::SYS_umount2,
        "unshare" => libc::SYS_unshare,
        "uselib" => libc::SYS_uselib,
        "userfaultfd" => libc::SYS_userfaultfd,
        "ustat" => libc::SYS_ustat,
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denied_call_of_this_architecture_is_in_the_filter() {
        let names = faasd_containerd::oci::DENIED_SYSCALLS;
        let known: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| number(n).is_some())
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| number(n).is_none())
            .collect();
        assert_eq!(
            missing,
            [
                "create_module",
                "get_kernel_syms",
                "query_module",
                "vm86",
                "vm86old"
            ]
        );
        let p = deny_filter(names);
        assert_eq!(p.len(), 6 + known.len() + 2);
        // Each comparison jumps to the final EPERM.
        for (i, ins) in p[6..6 + known.len()].iter().enumerate() {
            assert_eq!(6 + i + 1 + ins.jt as usize, p.len() - 1);
        }
        assert_eq!(p[p.len() - 2].k, SECCOMP_RET_ALLOW);
    }
}
