//! Random bytes from the kernel, for keys, passwords and call ids.

/// `N` random bytes from `getrandom(2)`.
pub fn bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != N as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(b)
}
