//! Prepared process instances held before `main`: the program is exec'd ahead, its sockets
//! in place, and `faasd-preload` (a library loaded with `LD_PRELOAD`) stops it once the
//! dynamic loader and libc have started, until the first connection's one byte on the
//! hand-over socket. That start before `main` (mapping and relocating libraries, glibc
//! probing the CPU, which on a virtual machine traps at every CPUID) is most of a small
//! program's own start; held, the connection pays none of it.
//!
//! The library lives in a sealed memfd the daemon makes once, named `/proc/self/fd/N` to
//! the instance (which has its own `/proc`): nothing on disk, no mount flags in the way,
//! and no instance can change what the next one loads. A program it cannot hold (static,
//! a script, another architecture, one with its own `LD_PRELOAD`) is prepared the other
//! way, waiting in faasd's code before its exec.

use std::{
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use super::Launch;

/// The library, built by faasd's build script from `faasd-preload`.
static LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libfaasd_preload.so"));

/// The library in a sealed memfd: read-only for good, shared by every held instance.
#[derive(Debug)]
pub struct Preload {
    memfd: OwnedFd,
}

impl Preload {
    /// Writes the library into a new memfd and seals it. Fails where memfds may not be
    /// executed (`vm.memfd_noexec = 2`): prepared instances then wait before exec.
    pub fn new() -> io::Result<Self> {
        let create = |flags| {
            // SAFETY: a NUL-terminated name and flags; the result is checked.
            let fd = unsafe { libc::memfd_create(c"faasd-preload".as_ptr(), flags) };
            // SAFETY: a new descriptor nothing else owns.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
        // MFD_EXEC says the memfd is to be executed (Linux 6.3); older kernels refuse the
        // flag, and execute any memfd.
        let memfd = create(flags | libc::MFD_EXEC)
            .or_else(|| {
                (io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL))
                    .then(|| create(flags))
                    .flatten()
            })
            .ok_or_else(io::Error::last_os_error)?;
        let mut file = std::fs::File::from(memfd);
        file.write_all(LIBRARY)?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: fcntl on our own descriptor.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { memfd: file.into() })
    }

    /// `launch` set up to be held: the instance's end of the hand-over socket and the
    /// library after its sockets, and the variables that name them. `None` for a program
    /// that cannot be held.
    pub(super) fn hold(&self, launch: &Launch, handover: RawFd) -> Option<Launch> {
        // The spawner places at most MAX_PORTS descriptors after stdio.
        if launch.fds.len() + 2 > faasd_core::spec::MAX_PORTS
            || launch.env.iter().any(|(k, _)| k == "LD_PRELOAD")
            || !launch
                .argv
                .first()
                .is_some_and(|p| dynamically_linked(Path::new(p)))
        {
            return None;
        }
        let at = 3 + launch.fds.len();
        let mut held = launch.clone();
        held.fds.extend([handover, self.memfd.as_raw_fd()]);
        held.env.extend([
            ("LD_PRELOAD".to_owned(), format!("/proc/self/fd/{}", at + 1)),
            ("FAASD_HANDOVER_FD".to_owned(), at.to_string()),
            ("FAASD_PRELOAD_FD".to_owned(), (at + 1).to_string()),
        ]);
        Some(held)
    }
}

/// ELF identification and header fields this module reads.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_INTERP: u32 = 3;
#[cfg(target_arch = "x86_64")]
const EM_NATIVE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const EM_NATIVE: u16 = 183;

/// Whether `program` is an ELF executable of this machine that names a dynamic loader
/// (`PT_INTERP`): only a dynamic loader preloads a library. Anything unreadable or
/// unexpected says no.
pub fn dynamically_linked(program: &Path) -> bool {
    let Ok(mut file) = std::fs::File::open(program) else {
        return false;
    };
    let mut header = [0u8; 64];
    if file.read_exact(&mut header).is_err()
        || &header[..4] != ELF_MAGIC
        || header[4] != ELFCLASS64
        || header[5] != ELFDATA2LSB
        || u16::from_le_bytes([header[18], header[19]]) != EM_NATIVE
    {
        return false;
    }
    let phoff = u64::from_le_bytes(header[32..40].try_into().expect("8 bytes"));
    let phentsize = usize::from(u16::from_le_bytes([header[54], header[55]]));
    let phnum = usize::from(u16::from_le_bytes([header[56], header[57]]));
    if phentsize < 4 || phnum > 256 {
        return false;
    }
    let mut table = vec![0u8; phentsize * phnum];
    use std::os::unix::fs::FileExt;
    if file.read_exact_at(&mut table, phoff).is_err() {
        return false;
    }
    table
        .chunks_exact(phentsize)
        .any(|h| u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) == PT_INTERP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_dynamic_programs_from_static_ones_and_scripts() {
        // This test binary is linked dynamically; a script and a missing file are not ELF
        // at all, and the shim faasd embeds is static.
        assert!(dynamically_linked(&std::env::current_exe().unwrap()));
        let dir = std::env::temp_dir().join(format!("faasd-preload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("script");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(!dynamically_linked(&script));
        assert!(!dynamically_linked(&dir.join("missing")));
        let shim = dir.join("shim");
        std::fs::write(&shim, super::super::container::SHIM).unwrap();
        assert!(!dynamically_linked(&shim));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_library_memfd_is_sealed() {
        let p = Preload::new().unwrap();
        // SAFETY: fcntl on a descriptor the test owns.
        let seals = unsafe { libc::fcntl(p.memfd.as_raw_fd(), libc::F_GET_SEALS) };
        assert_eq!(
            seals & libc::F_SEAL_WRITE,
            libc::F_SEAL_WRITE,
            "seals {seals:#x}"
        );
        let mut f = std::fs::File::from(p.memfd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err(), "a sealed memfd took a write");
    }
}
