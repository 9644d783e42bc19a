//! A mailbox for a task: a queue and a wake-up, nothing allocated while it is empty. A
//! function's supervisor receives everything through one, so an idle function costs the
//! size of this struct, not the preallocated blocks of channels. Its receiver may also
//! leave altogether ([`Mailbox::park`]) and be brought back by the next message.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::Notify;

/// Messages for one receiving task. Posting never blocks; after [`Mailbox::close`] it fails
/// and hands the message back, and whatever was queued is dropped (so a waiting reply
/// channel inside a message sees its sender go).
pub struct Mailbox<T> {
    /// `None` once closed.
    state: Mutex<Option<State<T>>>,
    wake: Notify,
}

/// What brings a parked receiver back; run once, by whoever wakes it.
pub type Resume = Box<dyn FnOnce() + Send>;

struct State<T> {
    queue: VecDeque<T>,
    resume: Option<Resume>,
}

impl<T> std::fmt::Debug for Mailbox<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").finish_non_exhaustive()
    }
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Mailbox<T> {
    /// An open, empty mailbox.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(Some(State {
                queue: VecDeque::new(),
                resume: None,
            })),
            wake: Notify::new(),
        }
    }

    /// Queues a message, bringing a parked receiver back; gives the message back when the
    /// receiver has gone.
    pub fn post(&self, message: T) -> Result<(), T> {
        let resume = match self.state.lock().expect("mailbox lock").as_mut() {
            Some(s) => {
                s.queue.push_back(message);
                s.resume.take()
            }
            None => return Err(message),
        };
        self.wake.notify_one();
        if let Some(resume) = resume {
            resume();
        }
        Ok(())
    }

    /// Parks the receiver: `resume` runs on the next [`Mailbox::post`] or
    /// [`Mailbox::unpark`]. Refused (and `resume` handed back) while a message waits, so
    /// no message is left without a receiver.
    pub fn park(&self, resume: Resume) -> Result<(), Resume> {
        match self.state.lock().expect("mailbox lock").as_mut() {
            Some(s) if s.queue.is_empty() => {
                s.resume = Some(resume);
                Ok(())
            }
            _ => Err(resume),
        }
    }

    /// Whether the receiver is parked.
    pub fn is_parked(&self) -> bool {
        self.state
            .lock()
            .expect("mailbox lock")
            .as_ref()
            .is_some_and(|s| s.resume.is_some())
    }

    /// Takes a parked receiver's resume back without running it.
    pub fn take_park(&self) -> Option<Resume> {
        self.state
            .lock()
            .expect("mailbox lock")
            .as_mut()
            .and_then(|s| s.resume.take())
    }

    /// Brings a parked receiver back, if it is parked.
    pub fn unpark(&self) {
        if let Some(resume) = self.take_park() {
            resume();
        }
    }

    /// The next message, waiting for one. Cancel-safe: a message is only taken when this
    /// returns it.
    pub async fn recv(&self) -> T {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(m) = self
                .state
                .lock()
                .expect("mailbox lock")
                .as_mut()
                .and_then(|s| s.queue.pop_front())
            {
                return m;
            }
            woken.await;
        }
    }

    /// Refuses further messages and drops the queued ones.
    pub fn close(&self) {
        let dropped = self.state.lock().expect("mailbox lock").take();
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::Mailbox;

    #[tokio::test]
    async fn messages_arrive_in_order_and_a_closed_box_refuses() {
        let m = Mailbox::new();
        m.post(1).unwrap();
        m.post(2).unwrap();
        assert_eq!(m.recv().await, 1);
        assert_eq!(m.recv().await, 2);
        m.post(3).unwrap();
        m.close();
        assert_eq!(m.post(4), Err(4));
    }

    #[test]
    fn a_parked_receiver_comes_back_once_and_not_while_a_message_waits() {
        use std::sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        };
        let m = Mailbox::new();
        let resumed = Arc::new(AtomicU32::new(0));
        let resume = |n: &Arc<AtomicU32>| -> super::Resume {
            let n = n.clone();
            Box::new(move || {
                n.fetch_add(1, Ordering::SeqCst);
            })
        };
        assert!(m.park(resume(&resumed)).is_ok());
        m.post(1).unwrap();
        m.post(2).unwrap();
        m.unpark();
        assert_eq!(resumed.load(Ordering::SeqCst), 1);
        // Messages are waiting: parking is refused.
        assert!(m.park(resume(&resumed)).is_err());
        let m = Mailbox::<u8>::new();
        assert!(m.park(resume(&resumed)).is_ok());
        m.unpark();
        m.unpark();
        assert_eq!(resumed.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken() {
        let m = std::sync::Arc::new(Mailbox::new());
        let r = tokio::spawn({
            let m = m.clone();
            async move { m.recv().await }
        });
        tokio::task::yield_now().await;
        m.post("x").unwrap();
        assert_eq!(r.await.unwrap(), "x");
    }
}
