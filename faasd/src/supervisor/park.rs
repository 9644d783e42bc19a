//! Parking: a stopped function keeps no task.
//!
//! A supervisor with nothing to do (no instance, no start or stop in flight, no timer due)
//! parks: the little it must remember goes into a box held by its mailbox, and its task
//! ends, taking its registration with tokio's reactor along. Its sockets
//! join the daemon's one parking lot, an epoll set watched by one task. The first pending
//! connection or datagram, or any message, resumes it on a new task, which finds the
//! connection queued and starts an instance as before. An idle function then costs its
//! state and an epoll entry, not a task and the futures it waits on.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::io::unix::AsyncFd;

use super::{Context, Event, Supervisor};
use crate::{mailbox::Mailbox, status::FunctionState};

/// What a parked supervisor keeps: the rest of its state is empty or unset whenever it
/// may park (see [`Supervisor::parkable`]), and is made again when it resumes.
#[derive(Debug)]
pub(super) struct Parked {
    pub(super) ctx: Arc<Context>,
    pub(super) sockets: Arc<[OwnedFd]>,
    pub(super) mailbox: Arc<Mailbox<Event>>,
    pub(super) state: Arc<Mutex<FunctionState>>,
    pub(super) target: u32,
    pub(super) crash_streak: u32,
    pub(super) last_lookups: u64,
    pub(super) last_activity: Instant,
    /// The prepared instance, kept across parking (its end resumes the supervisor).
    pub(super) standby: Option<super::Standby>,
}

/// Functions parked now, across lots (a gauge for `/metrics`).
static PARKED: AtomicU64 = AtomicU64::new(0);

/// How many functions are parked.
pub fn parked() -> u64 {
    PARKED.load(Ordering::Relaxed)
}

/// The parking lot: one epoll set for the sockets of every parked function.
#[derive(Debug)]
pub struct Lot {
    epoll: AsyncFd<OwnedFd>,
    /// Parking ticket → the parked function's mailbox.
    parked: Mutex<HashMap<u64, Weak<Mailbox<Event>>>>,
    next: AtomicU64,
}

fn epoll_ctl(epoll: &OwnedFd, op: libc::c_int, fd: libc::c_int, key: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
        u64: key,
    };
    // SAFETY: epoll_ctl on descriptors we hold, with an event we own.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Lot {
    /// A lot and the task that watches it, on the current runtime.
    pub fn new() -> io::Result<Arc<Self>> {
        // SAFETY: epoll_create1 returns a new descriptor or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, owned once and moved into its AsyncFd, which alone
        // closes it.
        let epoll =
            unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd)) }.map_err(io::Error::from)?;
        let lot = Arc::new(Self {
            epoll,
            parked: Mutex::default(),
            next: AtomicU64::new(0),
        });
        tokio::spawn(lot.clone().watch());
        Ok(lot)
    }

    /// Resumes each function one of whose sockets has something pending.
    async fn watch(self: Arc<Self>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            let Ok(mut ready) = self.epoll.readable().await else {
                return;
            };
            // SAFETY: epoll_wait writes at most `events.len()` entries into our array.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    0,
                )
            };
            if n < 0 {
                continue;
            }
            let n = n as usize;
            for ev in &events[..n] {
                let key = ev.u64;
                let mailbox = self.parked.lock().expect("lot lock").remove(&key);
                if let Some(mailbox) = mailbox.and_then(|m| m.upgrade()) {
                    mailbox.unpark();
                }
            }
            if n < events.len() {
                ready.clear_ready();
            }
        }
    }

    /// Adds a function's sockets under ticket `key`; their first event resumes it through
    /// `mailbox`.
    fn enter(
        &self,
        key: u64,
        sockets: &[OwnedFd],
        mailbox: &Arc<Mailbox<Event>>,
    ) -> io::Result<()> {
        self.parked
            .lock()
            .expect("lot lock")
            .insert(key, Arc::downgrade(mailbox));
        for (i, s) in sockets.iter().enumerate() {
            if let Err(e) = epoll_ctl(
                self.epoll.get_ref(),
                libc::EPOLL_CTL_ADD,
                s.as_raw_fd(),
                key,
            ) {
                self.leave(key, &sockets[..i]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Takes a function's sockets out again.
    fn leave(&self, key: u64, sockets: &[OwnedFd]) {
        self.parked.lock().expect("lot lock").remove(&key);
        for s in sockets {
            let _ = epoll_ctl(
                self.epoll.get_ref(),
                libc::EPOLL_CTL_DEL,
                s.as_raw_fd(),
                key,
            );
        }
    }
}

impl Supervisor {
    /// Whether nothing is due: no instance, no start or stop in flight, no timer, only the
    /// sockets and the mailbox to wait on.
    pub(super) fn parkable(&self) -> bool {
        self.instances.is_empty()
            && self.starting == 0
            && self.reaping == 0
            && !self.preparing
            && self.draining.is_none()
            && self.ending.is_none()
            && self.watching()
            && self.next_deadline().is_none()
    }

    /// Parks the supervisor (its task then ends), or hands it back when a message already
    /// waits or the lot refuses its sockets.
    ///
    /// The bed's lock is held until the sockets are in the lot: a resume that comes in
    /// between (a message) waits for it, then takes the sockets out again.
    pub(super) fn park(self) -> Result<(), Box<Self>> {
        let lot = self.ctx.lot.clone();
        let mailbox = self.mailbox.clone();
        let sockets = self.sockets.clone();
        let runtime = tokio::runtime::Handle::current();
        let key = lot.next.fetch_add(1, Ordering::Relaxed);
        let bed: Arc<Mutex<Option<Box<Parked>>>> = Arc::default();
        let mut in_bed = bed.lock().expect("bed lock");
        *in_bed = Some(Box::new(self.into_parked()));
        let woken = |in_bed: &mut Option<Box<Parked>>| {
            Box::new(Supervisor::from_parked(
                *in_bed.take().expect("the supervisor is in its bed"),
            ))
        };
        let resume = {
            let (bed, lot) = (bed.clone(), lot.clone());
            Box::new(move || {
                let parked = bed.lock().expect("bed lock").take();
                if let Some(p) = parked {
                    lot.leave(key, &p.sockets);
                    PARKED.fetch_sub(1, Ordering::Relaxed);
                    runtime.spawn(Supervisor::from_parked(*p).run(true));
                }
            })
        };
        if mailbox.park(resume).is_err() {
            return Err(woken(&mut in_bed));
        }
        PARKED.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = lot.enter(key, &sockets, &mailbox) {
            let id = in_bed.as_ref().map(|s| s.ctx.record.spec.id());
            tracing::warn!(
                "{}: cannot park ({e}); its task stays",
                id.unwrap_or_default()
            );
            PARKED.fetch_sub(1, Ordering::Relaxed);
            // Take the resume back unrun; nothing else can run it while the bed is held
            // and it is still parked.
            drop(mailbox.take_park());
            return Err(woken(&mut in_bed));
        }
        Ok(())
    }
}
