//! A mailbox for a task: a queue and a wake-up, nothing allocated while it is empty. A
//! function's supervisor receives everything through one, so an idle function costs the
//! size of this struct, not the preallocated blocks of channels.

use std::{collections::VecDeque, sync::Mutex};

use tokio::sync::Notify;

/// Messages for one receiving task. Posting never blocks; after [`Mailbox::close`] it fails
/// and hands the message back, and whatever was queued is dropped (so a waiting reply
/// channel inside a message sees its sender go).
#[derive(Debug)]
pub struct Mailbox<T> {
    queue: Mutex<Option<VecDeque<T>>>,
    wake: Notify,
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
            queue: Mutex::new(Some(VecDeque::new())),
            wake: Notify::new(),
        }
    }

    /// Queues a message; gives it back when the receiver has gone.
    pub fn post(&self, message: T) -> Result<(), T> {
        match self.queue.lock().expect("mailbox lock").as_mut() {
            Some(q) => q.push_back(message),
            None => return Err(message),
        }
        self.wake.notify_one();
        Ok(())
    }

    /// The next message, waiting for one. Cancel-safe: a message is only taken when this
    /// returns it.
    pub async fn recv(&self) -> T {
        loop {
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(m) = self
                .queue
                .lock()
                .expect("mailbox lock")
                .as_mut()
                .and_then(VecDeque::pop_front)
            {
                return m;
            }
            woken.await;
        }
    }

    /// Refuses further messages and drops the queued ones.
    pub fn close(&self) {
        let dropped = self.queue.lock().expect("mailbox lock").take();
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
