//! The kernel programs' rare events: what they log with aya-log (a binding whose socket is
//! gone, a count that found its map full; at most one a second per CPU). Every loaded
//! program object has its own ring buffer; one thread waits on all of them (epoll, so it
//! costs nothing while nothing happens), writes each record to faasd's log under the target
//! `faasd::kernel`, and keeps the last for `faasd status`.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// What the kernel programs logged so far.
#[derive(Debug, Default)]
struct Seen {
    count: AtomicU64,
    last: Mutex<Option<String>>,
}

/// Takes aya-log's records into faasd's log.
#[derive(Debug, Clone)]
struct Sink(Arc<Seen>);

impl log::Log for Sink {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(target: "faasd::kernel", "{text}"),
            log::Level::Warn => tracing::warn!(target: "faasd::kernel", "{text}"),
            log::Level::Info => tracing::info!(target: "faasd::kernel", "{text}"),
            _ => tracing::debug!(target: "faasd::kernel", "{text}"),
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        *self.0.last.lock().expect("kernel log lock") = Some(text);
    }

    fn flush(&self) {}
}

/// The reader of every program object's log ring buffer; its thread ends when it is
/// dropped.
pub struct KernelLog {
    seen: Arc<Seen>,
    epoll: Arc<OwnedFd>,
    /// Written on drop: tells the thread to end (which holds it open until then: a closed
    /// descriptor leaves the epoll set, and its wake-up with it).
    stop: Arc<OwnedFd>,
    loggers: Arc<Mutex<Vec<EbpfLogger<Sink>>>>,
}

/// The epoll token of the stop descriptor (ring buffers have 0).
const STOP: u64 = 1;

impl Drop for KernelLog {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: eight bytes from a live u64 to an open eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

/// Adds `fd` to `epoll` with `token`.
fn watch(epoll: &OwnedFd, fd: i32, token: u64) -> std::io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both descriptors are open; the event is read during the call only.
    let r = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl std::fmt::Debug for KernelLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelLog")
            .field("events", &self.seen.count.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl KernelLog {
    /// Starts the reader thread, with no ring buffer yet.
    pub fn start() -> std::io::Result<Self> {
        // SAFETY: epoll_create1 has no memory arguments; the fd is checked, then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nothing else owns.
        let epoll = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: eventfd has no memory arguments; the fd is checked, then owned.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above.
        let stop = Arc::new(unsafe { OwnedFd::from_raw_fd(stop) });
        watch(&epoll, stop.as_raw_fd(), STOP)?;
        let log = Self {
            seen: Arc::default(),
            epoll: epoll.clone(),
            stop: stop.clone(),
            loggers: Arc::default(),
        };
        let loggers = log.loggers.clone();
        std::thread::Builder::new()
            .name("faasd-kernel-log".into())
            .spawn(move || {
                read_forever(&epoll, &loggers);
                drop(stop);
            })?;
        Ok(log)
    }

    /// Reads the log of a program object just loaded.
    pub fn attach(&self, ebpf: &mut Ebpf) {
        let sink = Sink(self.seen.clone());
        self.add(EbpfLogger::init_with_logger(ebpf, sink), "a loaded program");
    }

    /// Reads the log of a program a previous faasd loaded (the one with kernel id `id`).
    pub fn attach_program(&self, id: u32) {
        let sink = Sink(self.seen.clone());
        let what = format!("program {id}");
        self.add(EbpfLogger::init_from_id_with_logger(id, sink), &what);
    }

    fn add(&self, logger: Result<EbpfLogger<Sink>, aya_log::Error>, what: &str) {
        let logger = match logger {
            Ok(l) => l,
            // A program of an older build, without aya-log: its events go unread until
            // it is replaced.
            Err(e) => {
                tracing::debug!("the kernel log of {what} cannot be read: {e}");
                return;
            }
        };
        if let Err(e) = watch(&self.epoll, logger.as_raw_fd(), 0) {
            tracing::warn!("watching the kernel log of {what}: {e}");
            return;
        }
        let mut loggers = self.loggers.lock().expect("kernel log lock");
        loggers.push(logger);
        // Records written before it was watched (while no faasd ran) come now.
        if let Some(l) = loggers.last_mut() {
            l.flush();
        }
    }

    /// How many events the kernel programs logged since the daemon started, and the last.
    pub fn events(&self) -> (u64, Option<String>) {
        (
            self.seen.count.load(Ordering::Relaxed),
            self.seen.last.lock().expect("kernel log lock").clone(),
        )
    }
}

fn read_forever(epoll: &OwnedFd, loggers: &Mutex<Vec<EbpfLogger<Sink>>>) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    loop {
        // SAFETY: the buffer holds `events.len()` entries for the kernel to fill.
        let n = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                -1,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            tracing::warn!(
                "the kernel log reader stops: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        if events[..n.max(0) as usize].iter().any(|e| e.u64 == STOP) {
            return;
        }
        // Few buffers, rarely readable: flushing each is cheaper than telling them apart.
        for l in loggers.lock().expect("kernel log lock").iter_mut() {
            l.flush();
        }
    }
}
