//! An etcd client that talks to one member at a time and moves to the next when a call
//! finds no one there (connection refused, no answer in time, no leader), for as long as
//! [`RETRY_FOR`]; any other answer is final.

use std::{
    future::Future,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnResponse};

/// How long one call to one member may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a call is tried over the members before it fails.
const RETRY_FOR: Duration = Duration::from_secs(5);
/// The pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// TLS files for etcd's client port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The CA that signed the members' certificates (PEM).
    pub ca: PathBuf,
    /// This host's client certificate and key (PEM), when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// Where etcd is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// One URL per member, like `http://10.0.0.1:2379`.
    pub urls: Vec<String>,
    /// TLS, for `https://` members.
    pub tls: Option<Tls>,
}

/// Why a member gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum MemberFailure {
    /// The call failed for want of a connection or a leader.
    #[error(transparent)]
    Call(etcd_client::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Errors talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No member answered for [`RETRY_FOR`].
    #[error(
        "etcd is unreachable ({endpoints}) while {what}: {source}; check that most of its \
         members run and that [cluster] endpoints names them"
    )]
    Unreachable {
        /// The members tried.
        endpoints: String,
        /// What faasd was doing.
        what: &'static str,
        /// The last member's failure.
        source: MemberFailure,
    },
    /// A member answered with an error.
    #[error("etcd refused {what}: {source}")]
    Refused {
        /// What faasd was doing.
        what: &'static str,
        /// Its answer.
        source: etcd_client::Error,
    },
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The client could not be made for a member.
    #[error("etcd endpoint {url}: {source}")]
    Endpoint {
        /// The member.
        url: String,
        /// Why.
        source: etcd_client::Error,
    },
    /// What etcd holds is not what faasd wrote there.
    #[error("etcd holds an invalid {what} at {key}: {why}")]
    Invalid {
        /// What was read.
        what: &'static str,
        /// Where.
        key: String,
        /// What is wrong.
        why: String,
    },
    /// The cluster has handed out every host number.
    #[error("every host number up to {0} is taken: numbers are never reused")]
    NoHostNumbers(u16),
    /// No member is configured.
    #[error("[cluster] endpoints is empty: name at least one etcd member")]
    NoEndpoints,
}

/// How one member answered a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// Its client URL.
    pub endpoint: String,
    /// What it said, or why it said nothing (for display: the check's outcome, not an
    /// error that is handled).
    pub state: Result<MemberStatus, String>,
}

/// A member's own account of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// etcd's version.
    pub version: String,
    /// Whether it is the leader.
    pub leader: bool,
    /// Its raft index.
    pub raft_index: u64,
}

/// A client of every member, one in use at a time.
pub struct Etcd {
    members: Vec<(String, Client)>,
    current: AtomicUsize,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints())
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish()
    }
}

impl Etcd {
    /// A client for each member; connections are made when a call needs them, so a member
    /// that is down now is tried again later.
    pub async fn connect(e: &Endpoints) -> Result<Self, EtcdError> {
        if e.urls.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let mut options = ConnectOptions::new()
            .with_timeout(CALL_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        if let Some(tls) = &e.tls {
            options = options.with_tls(tls_options(tls)?);
        }
        let mut members = Vec::with_capacity(e.urls.len());
        for url in &e.urls {
            let client = Client::connect([url.as_str()], Some(options.clone()))
                .await
                .map_err(|source| EtcdError::Endpoint {
                    url: url.clone(),
                    source,
                })?;
            members.push((url.clone(), client));
        }
        Ok(Self {
            members,
            current: AtomicUsize::new(0),
        })
    }

    /// The members, as configured.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|(u, _)| u.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The member calls go to now.
    pub fn current(&self) -> &str {
        &self.members[self.current.load(Ordering::Relaxed) % self.members.len()].0
    }

    /// Asks every member once how it is: its version, the leader it knows and its raft
    /// index, or why it did not answer.
    /// All at once, so dead members cost one timeout, not one each.
    pub async fn health(&self) -> Vec<MemberHealth> {
        let mut asks = tokio::task::JoinSet::new();
        for (i, (url, client)) in self.members.iter().enumerate() {
            let (url, mut c) = (url.clone(), client.clone());
            asks.spawn(async move {
                let answer = tokio::time::timeout(CONNECT_TIMEOUT * 2, c.status()).await;
                let state = match answer {
                    Ok(Ok(s)) => Ok(MemberStatus {
                        version: s.version().to_owned(),
                        leader: s.leader() == s.header().map_or(0, |h| h.member_id()),
                        raft_index: s.raft_index(),
                    }),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {:?}", CONNECT_TIMEOUT * 2)),
                };
                (
                    i,
                    MemberHealth {
                        endpoint: url,
                        state,
                    },
                )
            });
        }
        let mut out: Vec<(usize, MemberHealth)> = asks.join_all().await;
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, h)| h).collect()
    }

    /// Runs `call` (which must be safe to repeat) on the current member, moving on to the
    /// next while none answers, for up to [`RETRY_FOR`].
    pub async fn call<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(what, CALL_TIMEOUT, call).await
    }

    /// Runs a transaction (which must be safe to repeat: its comparisons decide) as
    /// [`Etcd::call`] does.
    pub async fn txn(&self, what: &'static str, txn: Txn) -> Result<TxnResponse, EtcdError> {
        self.call(what, |mut c| {
            let t = txn.clone();
            async move { c.txn(t).await }
        })
        .await
    }

    /// Puts `value` at `key` unless the key exists; whether it was put.
    pub async fn put_if_absent(
        &self,
        what: &'static str,
        key: &str,
        value: String,
    ) -> Result<bool, EtcdError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        Ok(self.txn(what, txn).await?.succeeded())
    }

    /// Deletes `key`; whether it was there.
    pub async fn delete(&self, what: &'static str, key: &str) -> Result<bool, EtcdError> {
        let r = self
            .call(what, |mut c| {
                let k = key.to_owned();
                async move { c.delete(k, None).await }
            })
            .await?;
        Ok(r.deleted() > 0)
    }

    /// As [`Etcd::call`], giving each member `per_try` to answer.
    pub async fn call_within<T, F, Fut>(
        &self,
        what: &'static str,
        per_try: Duration,
        mut call: F,
    ) -> Result<T, EtcdError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let i = self.current.load(Ordering::Relaxed) % self.members.len();
            let failure = match tokio::time::timeout(per_try, call(self.members[i].1.clone())).await
            {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !no_one_there(&e) => {
                    return Err(EtcdError::Refused { what, source: e });
                }
                Ok(Err(e)) => MemberFailure::Call(e),
                Err(_) => MemberFailure::TimedOut(per_try),
            };
            tracing::debug!("etcd {}: {failure} while {what}", self.members[i].0);
            // Another caller may have moved on already.
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.members.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if Instant::now() >= deadline {
                return Err(EtcdError::Unreachable {
                    endpoints: self.endpoints(),
                    what,
                    source: failure,
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}

/// Whether an error means the member could not answer (try another), not that it refused.
fn no_one_there(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

fn tls_options(tls: &Tls) -> Result<etcd_client::TlsOptions, EtcdError> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}
