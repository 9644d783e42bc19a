//! `faasd-preload`: what holds a prepared process instance's program before `main`.
//!
//! A dynamically linked program spends most of its own start before `main`: the dynamic
//! loader maps and relocates its libraries, and glibc probes the CPU (CPUID instructions,
//! each a trap to the hypervisor on a virtual machine). A prepared instance of such a
//! program is exec'd ahead with this library preloaded (`LD_PRELOAD`, from a sealed memfd
//! the daemon holds, named `/proc/self/fd/N`) and its sockets already at fd 3, …; the
//! library's constructor, which runs once all that is done and before `main`, says so with
//! one byte on the instance's hand-over socket and waits there for one byte back, the
//! first connection. Then it closes both descriptors, removes its variables from the
//! environment (no child of the program inherits them) and returns: `main` runs.
//!
//! Without `FAASD_HANDOVER_FD` it does nothing. A closed hand-over socket (the instance is
//! not needed any more, or the daemon is gone) ends the process quietly, before `main`.
//!
//! No `std`, no dependencies: the library is loaded into programs built against any libc
//! (glibc or musl) and calls only functions both export.

#![no_std]

use core::ffi::{CStr, c_char, c_int, c_void};

// The few libc functions the constructor calls, resolved against the program's own libc.
unsafe extern "C" {
    fn getenv(name: *const c_char) -> *mut c_char;
    fn unsetenv(name: *const c_char) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, count: usize) -> isize;
    fn write(fd: c_int, buf: *const c_void, count: usize) -> isize;
    fn close(fd: c_int) -> c_int;
    fn _exit(status: c_int) -> !;
    fn __errno_location() -> *mut c_int;
}

/// The instance's end of its hand-over socket.
const HANDOVER_FD: &CStr = c"FAASD_HANDOVER_FD";
/// The memfd this library was loaded from.
const PRELOAD_FD: &CStr = c"FAASD_PRELOAD_FD";
const LD_PRELOAD: &CStr = c"LD_PRELOAD";
const EINTR: c_int = 4;

/// Run by the dynamic loader as the library is loaded, after libc's own start and before
/// the program's constructors and `main` (glibc passes argc, argv and envp; musl passes
/// nothing, and none is used).
#[used]
#[unsafe(link_section = ".init_array")]
static WAIT_FOR_THE_FIRST_CONNECTION: extern "C" fn() = wait_for_the_first_connection;

extern "C" fn wait_for_the_first_connection() {
    // SAFETY: libc calls on the process's own environment and descriptors, made before
    // `main`, while the process has one thread.
    unsafe {
        let Some(handover) = fd_from_env(HANDOVER_FD) else {
            return;
        };
        let library = fd_from_env(PRELOAD_FD);
        unsetenv(HANDOVER_FD.as_ptr());
        unsetenv(PRELOAD_FD.as_ptr());
        unsetenv(LD_PRELOAD.as_ptr());
        if let Some(fd) = library {
            close(fd);
        }
        let mut byte = 1u8;
        if write(handover, (&raw const byte).cast(), 1) != 1 {
            _exit(0);
        }
        let n = loop {
            let n = read(handover, (&raw mut byte).cast(), 1);
            if n >= 0 || *__errno_location() != EINTR {
                break n;
            }
        };
        if n != 1 {
            _exit(0);
        }
        close(handover);
    }
}

/// A descriptor number from the environment variable `name`, if it holds one.
///
/// # Safety
/// Reads the environment: no other thread may change it meanwhile.
unsafe fn fd_from_env(name: &CStr) -> Option<c_int> {
    // SAFETY: getenv returns null or a NUL-terminated string of the environment.
    let value = unsafe { getenv(name.as_ptr()) };
    if value.is_null() {
        return None;
    }
    // SAFETY: as above, non-null.
    let digits = unsafe { CStr::from_ptr(value) }.to_bytes();
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    digits.iter().try_fold(0, |fd: c_int, d| {
        d.is_ascii_digit().then(|| fd * 10 + c_int::from(d - b'0'))
    })
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // Nothing here panics; were it to, the program must not run on half set up.
    // SAFETY: ends the process at once.
    unsafe { _exit(127) }
}
