//! The raw bpf(2) call, for the commands aya does not offer in the form needed here.

/// bpf(2) with `attr` as its attribute union.
///
/// # Safety
/// Every pointer in `attr` must be valid for what the command reads or writes through it.
pub(super) unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> libc::c_long {
    // SAFETY: the caller vouches for the pointers inside `attr`; the size is its own.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) }
}
