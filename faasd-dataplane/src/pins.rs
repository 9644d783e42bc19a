//! Pin directories of network namespaces that are gone.
//!
//! Each network namespace's data plane is pinned under `faasd/netns-<inode>`. A namespace
//! deleted under a running daemon takes its program off the lookup path, but the pins stay
//! in bpffs for ever, holding the maps. The kernel tells whether a namespace is gone: the
//! sk_lookup link of a dead namespace reports inode 0. A starting daemon removes those.

use std::{
    ffi::CString,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use super::{LINK_PIN, sys::bpf};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `struct bpf_link_info` up to the netns member of its union (which starts at byte 16).
#[repr(C)]
#[derive(Default)]
struct NetnsLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    netns_ino: u32,
    attach_type: u32,
}

/// The network namespace a pinned netns link is attached to: `Some(0)` once that namespace
/// is gone, `None` if the pin cannot be read as a link.
fn link_netns(pin: &Path) -> Option<u32> {
    let path = CString::new(pin.as_os_str().as_bytes()).ok()?;
    let mut get = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the attribute points at a NUL-terminated path that outlives the call.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut get) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor from the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = NetnsLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: size_of::<NetnsLinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the kernel writes at most info_len bytes into `info`.
    if unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) } < 0 {
        return None;
    }
    Some(info.netns_ino)
}

/// The pin directories under `root` (`<bpffs>/faasd`) whose namespace is gone: each has
/// link pins, all reporting inode 0. That includes this namespace's own directory when it
/// was left by a dead namespace whose inode number the kernel has since reused.
pub(super) fn stale(root: &Path) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    dirs.flatten()
        .map(|e| e.path())
        .filter(|d| {
            d.file_name()
                .is_some_and(|n| n.as_bytes().starts_with(b"netns-"))
        })
        .filter(|d| {
            let Ok(entries) = std::fs::read_dir(d) else {
                return false;
            };
            let links: Vec<Option<u32>> = entries
                .flatten()
                .filter(|e| e.file_name().as_bytes().starts_with(LINK_PIN.as_bytes()))
                .map(|e| link_netns(&e.path()))
                .collect();
            !links.is_empty() && links.iter().all(|ino| *ino == Some(0))
        })
        .collect()
}
