//! `/async-function/…`: OpenFaaS's asynchronous invocation, kept on disk. A call is written
//! to `<state-dir>/async` before the caller gets its 202 and `X-Call-Id`; it is made in the
//! background through the function's address (so it wakes a stopped function like any
//! call), at most [`MAX_RUNNING`] at once, and its answer is POSTed to the `X-Callback-Url`
//! the caller gave, retried with backoff until `async-callback-retry-for` has passed.
//!
//! At least once: a call whose answer was not yet written down when faasd died (kill -9,
//! power loss) is made again after the restart, with the same `X-Call-Id`, and a callback
//! under way then may be sent again. A clean stop makes nothing twice: calls under way are
//! abandoned before their answer is kept (and made again after the restart), and the
//! deliveries under way are waited for.

mod callback;
mod record;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use hyper::body::Bytes;
use tokio::sync::{RwLock, Semaphore, mpsc, watch};

pub use callback::Target;
pub use record::Request;
use record::{Answer, Key, Stage};

/// Calls made at the same time; the rest wait in the queue.
pub const MAX_RUNNING: usize = 64;

/// Deliveries under way at the same time.
const MAX_DELIVERING: usize = 64;

/// The first wait before a callback is tried again; it doubles up to [`RETRY_MOST`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MOST: Duration = Duration::from_secs(60);

/// Errors of the async queue.
#[derive(Debug, thiserror::Error)]
pub enum AsyncError {
    /// The queue holds as many calls as it may.
    #[error(
        "the async queue holds {limit} calls, its limit (async-queue-limit): retry once \
         callbacks have drained, or raise the limit"
    )]
    Full {
        /// `async-queue-limit`.
        limit: u32,
    },
    /// A header value the queue cannot keep.
    #[error("header {name}: async calls keep headers as text, and its value is not")]
    HeaderNotText {
        /// The header's name.
        name: String,
    },
    /// An `X-Callback-Url` faasd cannot deliver to.
    #[error("X-Callback-Url {url:?}: {why}")]
    BadCallback {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A queue file could not be written, read or removed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A queue file that is not what faasd writes.
    #[error("{} is not a queued call: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// No connection to the callback's host.
    #[error("connecting to {url}: {source}")]
    CallbackConnect {
        /// The callback.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The callback's host broke off the exchange.
    #[error("posting to {url}: {source}")]
    CallbackHttp {
        /// The callback.
        url: String,
        /// Why.
        source: hyper::Error,
    },
}

/// A new call id: 16 random bytes, hex.
pub fn call_id() -> std::io::Result<String> {
    let b = crate::random::bytes::<16>()?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Work for the queue's dispatcher.
#[derive(Debug)]
enum Job {
    Call(Key),
    Deliver(Key),
}

/// What the queue holds and did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls accepted and not yet made.
    pub calls_waiting: u64,
    /// Calls made whose callback is not yet delivered or given up.
    pub callbacks_waiting: u64,
    /// Calls accepted since the daemon started.
    pub accepted: u64,
    /// Callbacks the receiver took (2xx, 3xx).
    pub delivered: u64,
    /// Callbacks the receiver refused (4xx but 408 and 429), not tried again.
    pub refused: u64,
    /// Callbacks given up after `async-callback-retry-for`.
    pub given_up: u64,
    /// Deliveries that failed and were tried again.
    pub retries: u64,
}

/// The answer of one call: the function's status and body.
pub type Answered = (u16, Bytes);

/// Makes one queued call: how the API reaches a function, given to [`AsyncCalls::run`].
pub type Invoke = Arc<
    dyn Fn(Request, String, Bytes) -> futures::future::BoxFuture<'static, Answered> + Send + Sync,
>;

/// The queue of async calls and its workers.
#[derive(Debug)]
pub struct AsyncCalls {
    dir: PathBuf,
    limit: u32,
    retry_for: Duration,
    next_seq: AtomicU64,
    jobs: mpsc::UnboundedSender<Job>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
    /// Files in the queue (a call's `.call` or its `.done`), which the limit counts.
    held: AtomicU64,
    /// Of them, `.done` files.
    callbacks: AtomicU64,
    accepted: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    given_up: AtomicU64,
    retries: AtomicU64,
    running: Arc<Semaphore>,
    delivering: Semaphore,
    stopping: watch::Sender<bool>,
    /// Held (shared) across one delivery and the removal of its file; [`AsyncCalls::stop`]
    /// takes it exclusively, so no delivery is cut between the two.
    deliveries: RwLock<()>,
}

impl AsyncCalls {
    /// Opens the queue in `dir`, making it if needed; what an earlier daemon left there is
    /// queued again, in the order it was accepted.
    pub fn open(dir: &Path, limit: u32, retry_for: Duration) -> Result<Self, AsyncError> {
        let io = |what| {
            move |source| AsyncError::Io {
                what,
                path: dir.to_owned(),
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("making"))?;
        let mut found: std::collections::BTreeMap<Key, Stage> = Default::default();
        for entry in std::fs::read_dir(dir).map_err(io("reading"))? {
            let name = entry.map_err(io("reading"))?.file_name();
            let name = name.to_string_lossy();
            match Key::parse(&name) {
                // An answer kept wins over its call: the call was made.
                Some((key, stage)) => {
                    let s = found.entry(key).or_insert(stage);
                    if stage == Stage::Done {
                        *s = Stage::Done;
                    }
                }
                // A write's temporary file that a crash left: its call was never accepted.
                None if name.starts_with('.') && name.ends_with(".tmp") => {
                    let _ = std::fs::remove_file(dir.join(&*name));
                }
                None => {}
            }
        }
        let (jobs, pending) = mpsc::unbounded_channel();
        let calls = Self {
            dir: dir.to_owned(),
            limit,
            retry_for,
            next_seq: AtomicU64::new(found.keys().last().map_or(0, |k| k.seq + 1)),
            jobs,
            pending: Mutex::new(Some(pending)),
            held: AtomicU64::new(found.len() as u64),
            callbacks: AtomicU64::default(),
            accepted: AtomicU64::default(),
            delivered: AtomicU64::default(),
            refused: AtomicU64::default(),
            given_up: AtomicU64::default(),
            retries: AtomicU64::default(),
            running: Arc::new(Semaphore::new(MAX_RUNNING)),
            delivering: Semaphore::new(MAX_DELIVERING),
            stopping: watch::Sender::new(false),
            deliveries: RwLock::new(()),
        };
        for (key, stage) in found {
            let job = match stage {
                Stage::Call => Job::Call(key),
                Stage::Done => {
                    let _ = record::remove(dir, &key, Stage::Call);
                    calls.callbacks.fetch_add(1, Ordering::Relaxed);
                    Job::Deliver(key)
                }
            };
            let _ = calls.jobs.send(job);
        }
        let (waiting, callbacks) = (calls.held(), calls.callbacks.load(Ordering::Relaxed));
        if waiting > 0 {
            tracing::info!(
                "async queue: {} call(s) to make and {callbacks} callback(s) to deliver from before the restart",
                waiting - callbacks
            );
        }
        Ok(calls)
    }

    fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Queues a call durably; it is on disk when this returns. `id` is its `X-Call-Id`.
    pub async fn accept(&self, id: &str, request: Request, body: Bytes) -> Result<(), AsyncError> {
        if self.held.fetch_add(1, Ordering::Relaxed) >= u64::from(self.limit) {
            self.held.fetch_sub(1, Ordering::Relaxed);
            return Err(AsyncError::Full { limit: self.limit });
        }
        let key = Key {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            id: id.to_owned(),
        };
        let path = key.path(&self.dir, Stage::Call);
        let written =
            tokio::task::spawn_blocking(move || record::write(&path, &request, &body)).await;
        match written.expect("the queue's writer does not panic") {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = self.jobs.send(Job::Call(key));
                Ok(())
            }
            Err(e) => {
                self.held.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// What the queue holds and did.
    pub fn counts(&self) -> Counts {
        let callbacks = self.callbacks.load(Ordering::Relaxed);
        Counts {
            calls_waiting: self.held().saturating_sub(callbacks),
            callbacks_waiting: callbacks,
            accepted: self.accepted.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            given_up: self.given_up.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
        }
    }

    /// Makes the queued calls and delivers their answers until [`AsyncCalls::stop`].
    /// Runs once.
    pub async fn run(self: Arc<Self>, invoke: Invoke) {
        let Some(mut jobs) = self.pending.lock().expect("queue lock").take() else {
            return;
        };
        let mut stop = self.stopping.subscribe();
        loop {
            let job = tokio::select! {
                job = jobs.recv() => job,
                _ = stop.wait_for(|s| *s) => None,
            };
            match job {
                Some(Job::Call(key)) => {
                    let slot = tokio::select! {
                        slot = self.running.clone().acquire_owned() => slot,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    let slot = slot.expect("the semaphore is never closed");
                    tokio::spawn(self.clone().call(key, invoke.clone(), slot));
                }
                Some(Job::Deliver(key)) => {
                    tokio::spawn(self.clone().deliver(key));
                }
                None => return,
            }
        }
    }

    fn stopped(&self) -> impl Future<Output = ()> + 'static {
        let mut stop = self.stopping.subscribe();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    }

    /// Stops making calls and waits for the deliveries under way, so that none is sent
    /// again after a restart. What is queued stays on disk.
    pub async fn stop(&self) {
        self.stopping.send_replace(true);
        let wait = callback::ATTEMPT_TIMEOUT + Duration::from_secs(1);
        if tokio::time::timeout(wait, self.deliveries.write())
            .await
            .is_err()
        {
            tracing::warn!("async queue: deliveries still under way after {wait:?}");
        }
    }

    async fn call(
        self: Arc<Self>,
        key: Key,
        invoke: Invoke,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let dir = self.dir.clone();
        let path = key.path(&dir, Stage::Call);
        let read = tokio::task::spawn_blocking(move || record::read::<Request>(&path)).await;
        let (request, body) = match read.expect("the queue's reader does not panic") {
            Ok(r) => r,
            Err(e) => return self.set_aside(&key, Stage::Call, &e),
        };
        let started = std::time::Instant::now();
        let function = format!("{}.{}", request.function, request.namespace);
        let callback = request.callback.clone();
        // Abandoned at a stop before its answer is kept: made again after the restart.
        let (status, answer) = tokio::select! {
            a = invoke(request, key.id.clone(), body) => a,
            _ = self.stopped() => return,
        };
        drop(slot);
        let Some(callback) = callback else {
            return self.finish(&key, Stage::Call).await;
        };
        let answer_head = Answer {
            function,
            callback,
            status,
            seconds: started.elapsed().as_secs_f64(),
            finished_ms: unix_ms(SystemTime::now()),
        };
        let keep = {
            let (dir, key) = (dir.clone(), key.clone());
            move || {
                record::write(&key.path(&dir, Stage::Done), &answer_head, &answer)?;
                record::remove(&dir, &key, Stage::Call)
            }
        };
        match tokio::task::spawn_blocking(keep)
            .await
            .expect("the queue's writer does not panic")
        {
            Ok(()) => {
                self.callbacks.fetch_add(1, Ordering::Relaxed);
                self.deliver(key).await;
            }
            // Left as a call, so it is made again after a restart.
            Err(e) => tracing::error!("async call {}: keeping its answer: {e}", key.id),
        }
    }

    async fn deliver(self: Arc<Self>, key: Key) {
        let path = key.path(&self.dir, Stage::Done);
        let read = tokio::task::spawn_blocking(move || record::read::<Answer>(&path)).await;
        let (answer, body) = match read.expect("the queue's reader does not panic") {
            Ok(r) => r,
            Err(e) => return self.set_aside(&key, Stage::Done, &e),
        };
        let deadline =
            SystemTime::UNIX_EPOCH + Duration::from_millis(answer.finished_ms) + self.retry_for;
        let mut wait = RETRY_FIRST;
        loop {
            let why = {
                let _slot = self.delivering.acquire().await.expect("never closed");
                let _delivery = self.deliveries.read().await;
                if *self.stopping.borrow() {
                    return;
                }
                match callback::deliver(&key.id, &answer, body.clone()).await {
                    callback::Delivery::Taken => {
                        self.delivered.fetch_add(1, Ordering::Relaxed);
                        return self.finish(&key, Stage::Done).await;
                    }
                    callback::Delivery::Refused(code) => {
                        tracing::warn!(
                            "async call {} to {}: the callback {} refused it with {code}; not sent again",
                            key.id,
                            answer.function,
                            answer.callback
                        );
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        return self.finish(&key, Stage::Done).await;
                    }
                    callback::Delivery::Retry(why) => why,
                }
            };
            if SystemTime::now() + wait > deadline {
                tracing::warn!(
                    "async call {} to {}: gave up its callback after {:?}: {why}",
                    key.id,
                    answer.function,
                    self.retry_for
                );
                self.given_up.fetch_add(1, Ordering::Relaxed);
                let _delivery = self.deliveries.read().await;
                return self.finish(&key, Stage::Done).await;
            }
            tracing::debug!(
                "async call {}: callback failed ({why}); again in {wait:?}",
                key.id
            );
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopped() => return,
            }
            wait = (wait * 2).min(RETRY_MOST);
        }
    }

    /// Removes a call that is over.
    async fn finish(&self, key: &Key, stage: Stage) {
        let (dir, k) = (self.dir.clone(), key.clone());
        let removed = tokio::task::spawn_blocking(move || record::remove(&dir, &k, stage)).await;
        if let Err(e) = removed.expect("the queue's remover does not panic") {
            tracing::error!("async call {}: {e}", key.id);
        }
        if stage == Stage::Done {
            self.callbacks.fetch_sub(1, Ordering::Relaxed);
        }
        self.held.fetch_sub(1, Ordering::Relaxed);
    }

    /// Moves a file faasd cannot read out of the queue, kept for the operator to look at.
    fn set_aside(&self, key: &Key, stage: Stage, e: &AsyncError) {
        let path = key.path(&self.dir, stage);
        let aside = path.with_extension("unreadable");
        tracing::error!(
            "async call {}: {e}; set aside as {}",
            key.id,
            aside.display()
        );
        let _ = std::fs::rename(&path, &aside);
        if stage == Stage::Done {
            self.callbacks.fetch_sub(1, Ordering::Relaxed);
        }
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Request {
        Request {
            namespace: "ns".into(),
            function: "f".into(),
            method: "POST".into(),
            path: String::new(),
            query: None,
            headers: Vec::new(),
            callback: None,
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_reopened_one_keeps_the_order() {
        let dir = std::env::temp_dir().join(format!("faasd-async-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let q = AsyncCalls::open(&dir, 2, Duration::from_secs(1)).unwrap();
        q.accept("0a", request(), Bytes::from_static(b"one"))
            .await
            .unwrap();
        q.accept("0b", request(), Bytes::new()).await.unwrap();
        let full = q.accept("0c", request(), Bytes::new()).await;
        assert!(
            matches!(full, Err(AsyncError::Full { limit: 2 })),
            "{full:?}"
        );
        assert_eq!(q.counts().calls_waiting, 2);
        drop(q);
        // A leftover temporary file goes; an answer kept wins over its call.
        std::fs::write(dir.join(".x.call.1-0.tmp"), b"").unwrap();
        let second = Key {
            seq: 1,
            id: "0b".into(),
        };
        let answer = Answer {
            function: "f.ns".into(),
            callback: "http://[::1]:1/".into(),
            status: 200,
            seconds: 0.0,
            finished_ms: 0,
        };
        record::write(&second.path(&dir, Stage::Done), &answer, b"").unwrap();
        let q = AsyncCalls::open(&dir, 2, Duration::from_secs(1)).unwrap();
        let c = q.counts();
        assert_eq!((c.calls_waiting, c.callbacks_waiting), (1, 1));
        let mut jobs = q.pending.lock().unwrap().take().unwrap();
        assert!(matches!(jobs.try_recv(), Ok(Job::Call(k)) if k.id == "0a"));
        assert!(matches!(jobs.try_recv(), Ok(Job::Deliver(k)) if k.id == "0b"));
        assert!(!second.path(&dir, Stage::Call).exists());
        assert!(!dir.join(".x.call.1-0.tmp").exists());
        assert_eq!(q.next_seq.load(Ordering::Relaxed), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
