//! The `.faas` zone, served by faasd itself (hickory-server) over UDP and TCP.
//!
//! `<fn>.faas` (default namespace) and `<fn>.<namespace>.faas` are AAAA records of the
//! function's address; `ns.faas` is the host. Functions' names are kept in one ordered map
//! of `<fn>.<namespace>` to the address (some 80 bytes a function) and their answers made
//! when asked; the apex records live in hickory's in-memory zone. The apex has SOA and NS; a name that does not
//! exist gets NXDOMAIN with the SOA; a name outside the zone gets REFUSED. Records change in
//! memory the moment a function is deployed or removed, the SOA serial goes up with every
//! change, and the zone is rebuilt from the function records when the daemon starts. The
//! state directory keeps a ceiling the serial has not reached yet, raised a block at a time,
//! so the serial also goes up across restarts without a disk write per change.
//!
//! The listening sockets are bound with IPV6_FREEBIND: the zone's default address lives on
//! `wg-faas`, which may come up after faasd. Over UDP on IPv6, [`udp`] answers first: it
//! sends again what the zone answered before, while the zone has not changed, and relays
//! the rest to hickory.

mod udp;

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_server::{
    Server,
    net::runtime::Time,
    proto::{
        op::{Edns, Metadata, OpCode, ResponseCode},
        rr::{
            LowerName, Name, RData, Record, RecordSet, RecordType, RrKey,
            rdata::{AAAA, NS, SOA},
        },
    },
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, MessageResponseBuilder, ZoneType},
};

use faasd_core::spec::DEFAULT_NAMESPACE;

/// The zone's origin.
pub const ORIGIN: &str = "faas.";
/// TTL of every record: short, as records follow deploys and removals.
const TTL: u32 = 5;
/// How long a TCP client may stay silent.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A listening socket could not be made.
    #[error("DNS listener {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The resolvers to forward to could not be read.
    #[error("the resolvers in {path}: {source}")]
    Upstreams {
        /// The resolv.conf.
        path: PathBuf,
        /// Why.
        source: hickory_resolver::net::NetError,
    },
    /// The zone file could not be written.
    #[error("zone file {path}: {source}")]
    ZoneFile {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The zone and what keeps it current.
pub struct Zone {
    handler: Arc<InMemoryZoneHandler>,
    /// Bumped on every change of the zone: the UDP front's kept answers hold the one they
    /// were made under.
    generation: Arc<AtomicU64>,
    functions: Arc<RwLock<Functions>>,
    queries: Arc<QueryCounts>,
    origin: Name,
    host: Ipv6Addr,
    state: tokio::sync::Mutex<ZoneState>,
    zone_file: Option<ZoneFile>,
    serial_file: PathBuf,
}

/// The zone file's writer: a thread of its own, rung after every change. It writes the
/// zone as it is when it gets to it, so a burst of changes costs one write or two, and no
/// change waits for the file (O(functions) bytes and an fsync each).
struct ZoneFile {
    path: PathBuf,
    doorbell: std::sync::mpsc::SyncSender<()>,
    /// The serial the file is to carry.
    serial: Arc<std::sync::atomic::AtomicU32>,
}

impl ZoneFile {
    fn start(
        path: PathBuf,
        host: Ipv6Addr,
        functions: Arc<RwLock<Functions>>,
        serial: u32,
    ) -> Self {
        // One pending ring is enough: the write that answers it reads the latest zone.
        let (doorbell, rings) = std::sync::mpsc::sync_channel::<()>(1);
        let serial = Arc::new(std::sync::atomic::AtomicU32::new(serial));
        let (file, current) = (path.clone(), serial.clone());
        std::thread::Builder::new()
            .name("zone-file".into())
            .spawn(move || {
                // Ends with the zone, whose drop closes the channel.
                while rings.recv().is_ok() {
                    // A burst of deploys rings a thousand times: written a few times a
                    // second, the file holds the zone's read lock (which deploys wait
                    // for) a small share of the time.
                    std::thread::sleep(ZONE_FILE_DELAY);
                    let text = {
                        let functions = functions.read().expect("zone lock");
                        zone_text(host, current.load(Ordering::Acquire), &functions)
                    };
                    if let Err(e) = faasd_core::durable::write_atomic(&file, text.as_bytes()) {
                        tracing::warn!("writing the zone file {}: {e}", file.display());
                    }
                }
            })
            .expect("starting the zone file's writer");
        Self {
            path,
            doorbell,
            serial,
        }
    }

    /// Asks for the file to be written with `serial`.
    fn ring(&self, serial: u32) {
        self.serial.store(serial, Ordering::Release);
        // Full: a write is already due, and it will read this change.
        let _ = self.doorbell.try_send(());
    }
}

/// How long after a change the zone file is written: the changes meanwhile share the write.
const ZONE_FILE_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// The zone in RFC 1035 master-file form.
fn zone_text(host: Ipv6Addr, serial: u32, functions: &Functions) -> String {
    let mut t = format!(
        "$ORIGIN {ORIGIN}\n$TTL {TTL}\n@ IN SOA ns.{ORIGIN} hostmaster.{ORIGIN} {serial} 3600 600 86400 {TTL}\n\
         @ IN NS ns.{ORIGIN}\nns IN AAAA {host}\n",
    );
    for (name, addr) in &functions.addresses {
        t.push_str(&format!("{name} IN AAAA {addr}\n"));
        if let Some(function) = name
            .strip_suffix(DEFAULT_NAMESPACE)
            .and_then(|f| f.strip_suffix('.'))
        {
            t.push_str(&format!("{function} IN AAAA {addr}\n"));
        }
    }
    t
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("host", &self.host)
            .field("zone_file", &self.zone_file.as_ref().map(|z| &z.path))
            .finish_non_exhaustive()
    }
}

/// How far ahead of the serial its stored ceiling is raised at a time.
const SERIAL_BLOCK: u32 = 4096;

#[derive(Debug, Default)]
struct ZoneState {
    serial: u32,
    /// The stored ceiling: no serial served reaches it, so a restarted zone starts there.
    ceiling: u32,
}

/// The functions' names: `<fn>.<namespace>` → address, and how many functions each
/// namespace holds (`<namespace>.faas` exists while it holds one).
#[derive(Debug, Default)]
struct Functions {
    addresses: BTreeMap<Box<str>, Ipv6Addr>,
    namespaces: BTreeMap<Box<str>, usize>,
}

/// What a name below the apex is.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// A function's name.
    Function(Ipv6Addr),
    /// A namespace's name, which has functions below it but no records (NODATA).
    Namespace,
    /// Nothing (NXDOMAIN).
    Missing,
}

impl Functions {
    fn insert(&mut self, function: &str, namespace: &str, addr: Ipv6Addr) {
        let key = format!("{function}.{namespace}").into_boxed_str();
        if self.addresses.insert(key, addr).is_none() {
            *self.namespaces.entry(namespace.into()).or_default() += 1;
        }
    }

    fn remove(&mut self, function: &str, namespace: &str) {
        if self
            .addresses
            .remove(format!("{function}.{namespace}").as_str())
            .is_some()
            && let Some(n) = self.namespaces.get_mut(namespace)
        {
            *n -= 1;
            if *n == 0 {
                self.namespaces.remove(namespace);
            }
        }
    }

    /// `relative` is a lowercase name below the apex, without the origin: `<fn>` (the
    /// default namespace), `<fn>.<namespace>`, or a namespace.
    fn lookup(&self, relative: &str) -> Lookup {
        let found = match relative.split_once('.') {
            None => self
                .addresses
                .get(format!("{relative}.{DEFAULT_NAMESPACE}").as_str()),
            Some((_, namespace)) if !namespace.contains('.') => self.addresses.get(relative),
            Some(_) => None,
        };
        match found {
            Some(addr) => Lookup::Function(*addr),
            None if self.namespaces.contains_key(relative) => Lookup::Namespace,
            None => Lookup::Missing,
        }
    }
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).expect("faasd's names are valid DNS names")
}

impl Zone {
    /// An empty zone whose name server (`ns.faas`) is `host`. Its serial's ceiling is kept
    /// in `serial_file`; `zone_file`, when given, is rewritten atomically after every change
    /// by a thread of its own (CoreDNS's `file` plugin reads it).
    pub fn new(host: Ipv6Addr, serial_file: PathBuf, zone_file: Option<PathBuf>) -> Self {
        let origin = name(ORIGIN);
        let handler =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        // At the ceiling of the serials this host served (restores bump it further), and
        // never below the Unix time, the usual choice for a zone without a history.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        let stored = std::fs::read_to_string(&serial_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let serial = now.max(stored);
        let functions: Arc<RwLock<Functions>> = Arc::default();
        let zone_file =
            zone_file.map(|path| ZoneFile::start(path, host, functions.clone(), serial));
        Self {
            handler: Arc::new(handler),
            generation: Arc::default(),
            functions,
            queries: Arc::default(),
            origin,
            host,
            state: tokio::sync::Mutex::new(ZoneState {
                serial,
                ceiling: serial,
            }),
            zone_file,
            serial_file,
        }
    }

    fn ns_name(&self) -> Name {
        name(&format!("ns.{ORIGIN}"))
    }

    /// Writes the apex records (SOA with the current serial, NS, ns.faas).
    async fn write_apex(&self, serial: u32) {
        let soa = SOA::new(
            self.ns_name(),
            name(&format!("hostmaster.{ORIGIN}")),
            serial,
            3600,
            600,
            86400,
            TTL,
        );
        // SOA replaces; NS and AAAA are sets, so they are cleared first.
        self.handler
            .upsert(
                Record::from_rdata(self.origin.clone(), TTL, RData::SOA(soa)),
                serial,
            )
            .await;
        {
            let mut records = self.handler.records_mut().await;
            records.remove(&RrKey::new(LowerName::new(&self.origin), RecordType::NS));
            records.remove(&RrKey::new(
                LowerName::new(&self.ns_name()),
                RecordType::AAAA,
            ));
        }
        self.handler
            .upsert(
                Record::from_rdata(self.origin.clone(), TTL, RData::NS(NS(self.ns_name()))),
                serial,
            )
            .await;
        self.handler
            .upsert(
                Record::from_rdata(self.ns_name(), TTL, RData::AAAA(AAAA(self.host))),
                serial,
            )
            .await;
        // Every change ends here (the functions' map is changed before): answers kept
        // until now are not sent again.
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Adds or changes a function's records.
    pub async fn set(&self, function: &str, namespace: &str, addr: Ipv6Addr) {
        self.set_all([(function, namespace, addr)]).await;
    }

    /// Adds or changes the records of many functions as one change (a restore: one serial,
    /// one write of the zone file).
    pub async fn set_all<'a>(
        &self,
        functions: impl IntoIterator<Item = (&'a str, &'a str, Ipv6Addr)>,
    ) {
        let mut state = self.state.lock().await;
        state.serial = state.serial.wrapping_add(1);
        let serial = state.serial;
        {
            let mut names = self.functions.write().expect("zone lock");
            for (function, namespace, addr) in functions {
                names.insert(function, namespace, addr);
            }
        }
        self.write_apex(serial).await;
        self.export(&mut state);
    }

    /// Removes a function's records.
    pub async fn remove(&self, function: &str, namespace: &str) {
        let mut state = self.state.lock().await;
        state.serial = state.serial.wrapping_add(1);
        let serial = state.serial;
        self.functions
            .write()
            .expect("zone lock")
            .remove(function, namespace);
        self.write_apex(serial).await;
        self.export(&mut state);
    }

    /// The current SOA serial.
    pub async fn serial(&self) -> u32 {
        self.state.lock().await.serial
    }

    /// Raises the serial's stored ceiling once the serial reaches it, and has the zone file
    /// rewritten, if one is configured (atomically: a reader sees the old or the new zone).
    /// A failure is logged; DNS itself goes on.
    fn export(&self, state: &mut ZoneState) {
        if state.serial >= state.ceiling {
            let ceiling = state.serial.saturating_add(SERIAL_BLOCK);
            match faasd_core::durable::write_atomic(
                &self.serial_file,
                ceiling.to_string().as_bytes(),
            ) {
                Ok(()) => state.ceiling = ceiling,
                Err(e) => tracing::warn!(
                    "recording the zone serial's ceiling in {}: {e}",
                    self.serial_file.display()
                ),
            }
        }
        if let Some(z) = &self.zone_file {
            z.ring(state.serial);
        }
    }

    /// Queries answered so far: (query type, response code) → count.
    pub fn query_counts(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.queries.snapshot()
    }

    /// Of them, UDP answers sent again from memory.
    pub fn answers_from_memory(&self) -> u64 {
        self.queries.from_memory.load(Ordering::Relaxed)
    }

    /// Starts answering on `addrs` (UDP and TCP on each) and on `inherited`, sockets
    /// systemd passed (each served as what it is: datagram or stream). Names outside the
    /// zone are forwarded to the resolvers `resolv_conf` names (leaving out faasd's own
    /// addresses, which would loop), through hickory's resolver.
    pub async fn serve(
        &self,
        addrs: &[SocketAddr],
        inherited: Vec<std::os::fd::OwnedFd>,
        resolv_conf: &Path,
    ) -> Result<Server<Counted>, DnsError> {
        {
            let mut state = self.state.lock().await;
            self.write_apex(state.serial).await;
            self.export(&mut state);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&self.origin), vec![self.handler.clone()]);
        let own: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .chain(
                inherited
                    .iter()
                    .filter_map(|fd| crate::sockets::local_addr(fd).ok())
                    .map(SocketAddr::V6),
            )
            .collect();
        match forwarder(resolv_conf, &own) {
            Ok(Some(f)) => catalog.upsert(LowerName::new(&Name::root()), vec![Arc::new(f)]),
            Ok(None) => tracing::warn!(
                "{} names no resolver besides faasd: names outside faas. are refused",
                resolv_conf.display()
            ),
            Err(e) => tracing::warn!("{e}: names outside faas. are refused"),
        }
        let mut server = Server::new(Counted {
            catalog,
            queries: self.queries.clone(),
            handler: self.handler.clone(),
            functions: self.functions.clone(),
            origin: LowerName::new(&self.origin),
            ns: LowerName::new(&self.ns_name()),
        });
        // hickory's own UDP socket, behind the front.
        let loopback = SocketAddr::from((Ipv6Addr::LOCALHOST, 0));
        let behind = {
            let listen = |source| DnsError::Listen {
                addr: loopback,
                source,
            };
            let s = crate::sockets::bind_any(loopback, libc::SOCK_DGRAM).map_err(listen)?;
            let addr = SocketAddr::V6(crate::sockets::local_addr(&s).map_err(listen)?);
            server.register_socket(
                tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s)).map_err(listen)?,
            );
            addr
        };
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let front = |fd: std::os::fd::OwnedFd, addr: SocketAddr| {
            udp::serve(
                fd,
                workers,
                behind,
                self.generation.clone(),
                self.queries.clone(),
            )
            .map_err(|source| DnsError::Listen { addr, source })
        };
        for fd in inherited {
            let local = crate::sockets::local_addr(&fd);
            let addr = local
                .as_ref()
                .map(|a| SocketAddr::V6(*a))
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let listen = |source| DnsError::Listen { addr, source };
            let stream = crate::sockets::is_stream(&fd).map_err(listen)?;
            if !stream && local.is_ok() {
                front(fd, addr)?;
                continue;
            }
            crate::sockets::set_nonblocking(&fd).map_err(listen)?;
            if stream {
                server.register_listener(
                    tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd))
                        .map_err(listen)?,
                    TCP_TIMEOUT,
                    4096,
                );
            } else {
                server.register_socket(
                    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
                        .map_err(listen)?,
                );
            }
        }
        for addr in addrs {
            let listen = |source| DnsError::Listen {
                addr: *addr,
                source,
            };
            if addr.is_ipv6() {
                front(
                    crate::sockets::bind_any(*addr, libc::SOCK_DGRAM).map_err(listen)?,
                    *addr,
                )?;
            } else {
                let udp = crate::sockets::bind_any(*addr, libc::SOCK_DGRAM).map_err(listen)?;
                server.register_socket(
                    tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(udp))
                        .map_err(listen)?,
                );
            }
            let tcp = crate::sockets::bind_any(*addr, libc::SOCK_STREAM).map_err(listen)?;
            server.register_listener(
                tokio::net::TcpListener::from_std(std::net::TcpListener::from(tcp))
                    .map_err(listen)?,
                TCP_TIMEOUT,
                4096,
            );
        }
        Ok(server)
    }
}

/// The zone handler that forwards to the resolvers of `resolv_conf`, but for those at
/// `own` (faasd itself); `None` when no other is named.
fn forwarder(
    resolv_conf: &Path,
    own: &[SocketAddr],
) -> Result<Option<hickory_server::store::forwarder::ForwardZoneHandler>, DnsError> {
    use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
    let upstreams = |source| DnsError::Upstreams {
        path: resolv_conf.to_owned(),
        source,
    };
    let text = std::fs::read(resolv_conf)
        .map_err(|e| upstreams(hickory_resolver::net::NetError::from(e)))?;
    let (config, options) =
        hickory_resolver::system_conf::parse_resolv_conf(text).map_err(upstreams)?;
    let name_servers: Vec<_> = config
        .name_servers()
        .iter()
        .filter(|n| !own.iter().any(|a| a.ip() == n.ip))
        .cloned()
        .collect();
    if name_servers.is_empty() {
        return Ok(None);
    }
    let built = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers,
        options: Some(options),
    })
    .build();
    match built {
        Ok(f) => Ok(Some(f)),
        // The builder reports only a message; nothing above depends on its kind.
        Err(msg) => Err(upstreams(hickory_resolver::net::NetError::from(
            std::io::Error::other(msg),
        ))),
    }
}

/// The query types and response codes counted by name; everything else is counted as
/// `other`. Fixed lists: a client sending odd types cannot grow the series without bound.
const QUERY_TYPES: [(RecordType, &str); 13] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::ANY, "ANY"),
    (RecordType::AXFR, "AXFR"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::HTTPS, "HTTPS"),
    (RecordType::MX, "MX"),
    (RecordType::NS, "NS"),
    (RecordType::PTR, "PTR"),
    (RecordType::SOA, "SOA"),
    (RecordType::SRV, "SRV"),
    (RecordType::SVCB, "SVCB"),
    (RecordType::TXT, "TXT"),
];
const RESPONSE_CODES: [(ResponseCode, &str); 6] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
];

/// Where `v` is in `list`; one past the end (the `other` slot) when it is not there.
fn slot<T: PartialEq>(list: &[(T, &str)], v: Option<T>) -> usize {
    v.and_then(|v| list.iter().position(|(t, _)| *t == v))
        .unwrap_or(list.len())
}

/// The name of slot `i` of `list`.
fn slot_name(list: &[(impl Sized, &'static str)], i: usize) -> &'static str {
    list.get(i).map_or("other", |(_, name)| name)
}

/// Answered queries by type and response code: one atomic counter per pair (the last row
/// and column are `other`), so counting adds no lock to the answer path.
#[derive(Debug)]
struct QueryCounts {
    answers: [[AtomicU64; RESPONSE_CODES.len() + 1]; QUERY_TYPES.len() + 1],
    /// Of them, sent again from memory by the UDP front.
    from_memory: AtomicU64,
}

impl Default for QueryCounts {
    fn default() -> Self {
        Self {
            answers: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            from_memory: AtomicU64::new(0),
        }
    }
}

impl QueryCounts {
    /// Counts one answer; `kind` is `None` for a request without a query.
    fn count(&self, kind: Option<RecordType>, rcode: ResponseCode) {
        self.answers[slot(&QUERY_TYPES, kind)][slot(&RESPONSE_CODES, Some(rcode))]
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer sent again from memory.
    fn count_from_memory(&self, kind: Option<RecordType>, rcode: ResponseCode) {
        self.count(kind, rcode);
        self.from_memory.fetch_add(1, Ordering::Relaxed);
    }

    /// The pairs seen at least once.
    fn snapshot(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        let mut out = BTreeMap::new();
        for (k, row) in self.answers.iter().enumerate() {
            for (c, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    out.insert(
                        (slot_name(&QUERY_TYPES, k), slot_name(&RESPONSE_CODES, c)),
                        n,
                    );
                }
            }
        }
        out
    }
}

/// The catalog, counting what it answers; queries for functions' names are answered here.
///
/// Names below the apex are answered here, from the functions' map (the in-memory zone
/// handler would also look for a missing name with a scan over every record: 650 NXDOMAIN
/// answers a second at 19,000 functions); the apex, `ns.faas` and other zones go to the
/// catalog.
pub struct Counted {
    catalog: Catalog,
    queries: Arc<QueryCounts>,
    handler: Arc<InMemoryZoneHandler>,
    functions: Arc<RwLock<Functions>>,
    origin: LowerName,
    ns: LowerName,
}

/// An answer this handler makes itself.
enum Answer {
    /// The function name's AAAA record.
    Found(Box<Record>),
    /// No record: NXDOMAIN, or NOERROR (NODATA) for a name that exists; with the SOA.
    Empty(ResponseCode, Arc<RecordSet>),
}

impl Counted {
    fn soa_of(&self, records: &BTreeMap<RrKey, Arc<RecordSet>>) -> Option<Arc<RecordSet>> {
        records
            .get(&RrKey::new(self.origin.clone(), RecordType::SOA))
            .cloned()
    }

    /// The answer to a query for a function's name: its AAAA records; NXDOMAIN for a name
    /// that does not exist; NOERROR with no records (NODATA) for a name without that type
    /// or an empty non-terminal (a namespace's `<ns>.faas`). `None` for the apex, `ns.faas`
    /// and names outside the zone: the catalog answers those.
    async fn answer(&self, name: &LowerName, kind: RecordType) -> Option<Answer> {
        if !self.origin.zone_of(name) || *name == self.origin || *name == self.ns {
            return None;
        }
        let full = name.to_string();
        let relative = full
            .strip_suffix(ORIGIN)
            .and_then(|r| r.strip_suffix('.'))?;
        let found = self.functions.read().expect("zone lock").lookup(relative);
        let code = match found {
            // Function names hold only AAAA records.
            Lookup::Function(addr) if matches!(kind, RecordType::AAAA | RecordType::ANY) => {
                let record = Record::from_rdata(name.into(), TTL, RData::AAAA(AAAA(addr)));
                return Some(Answer::Found(Box::new(record)));
            }
            Lookup::Function(_) | Lookup::Namespace => ResponseCode::NoError,
            Lookup::Missing => ResponseCode::NXDomain,
        };
        let records = self.handler.records().await;
        Some(Answer::Empty(code, self.soa_of(&records)?))
    }

    /// Sends an authoritative answer: the records found, or none and the SOA, as the
    /// catalog would.
    async fn send<R: ResponseHandler>(
        &self,
        request: &Request,
        answer: Answer,
        mut response_handle: R,
    ) -> Option<ResponseInfo> {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        let (found, soa) = match answer {
            Answer::Found(record) => (Some(record), None),
            Answer::Empty(code, soa) => {
                metadata.response_code = code;
                (None, Some(soa))
            }
        };
        let edns = request.edns.as_ref().map(|e| {
            let mut ours = Edns::new();
            ours.set_max_payload(e.max_payload().max(512))
                .set_version(0);
            ours
        });
        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            found.iter().map(|r| &**r),
            std::iter::empty(),
            soa.iter().flat_map(|s| s.records_without_rrsigs()),
            std::iter::empty(),
        );
        response_handle.send_response(response).await.ok()
    }
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl RequestHandler for Counted {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let query = request.queries.queries().first();
        let kind = query.map(|q| q.query_type());
        if let Some(q) = query
            && request.metadata.op_code == OpCode::Query
            && request.queries.queries().len() == 1
            && let Some(answer) = self.answer(q.name(), q.query_type()).await
            && let Some(info) = self.send(request, answer, response_handle.clone()).await
        {
            self.queries.count(kind, info.response_code);
            return info;
        }
        let info = self
            .catalog
            .handle_request::<R, T>(request, response_handle)
            .await;
        self.queries.count(kind, info.response_code);
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_type_and_code_with_the_rest_as_other() {
        let counts = QueryCounts::default();
        counts.count(Some(RecordType::AAAA), ResponseCode::NoError);
        counts.count(Some(RecordType::AAAA), ResponseCode::NoError);
        counts.count(Some(RecordType::CAA), ResponseCode::NXDomain);
        counts.count(None, ResponseCode::YXDomain);
        let snap = counts.snapshot();
        assert_eq!(snap[&("AAAA", "NOERROR")], 2);
        assert_eq!(snap[&("other", "NXDOMAIN")], 1);
        assert_eq!(snap[&("other", "other")], 1);
        assert_eq!(snap.len(), 3);
    }

    #[test]
    fn names_below_the_apex_are_functions_namespaces_or_missing() {
        let mut f = Functions::default();
        let a: Ipv6Addr = "fd00:faa5:1::1".parse().unwrap();
        let b: Ipv6Addr = "fd00:faa5:1::2".parse().unwrap();
        f.insert("hello", DEFAULT_NAMESPACE, a);
        f.insert("api", "dev", b);
        f.insert("web", "dev", b);
        assert_eq!(f.lookup("hello"), Lookup::Function(a));
        assert_eq!(f.lookup("hello.openfaas-fn"), Lookup::Function(a));
        assert_eq!(f.lookup("api.dev"), Lookup::Function(b));
        assert_eq!(
            f.lookup("api"),
            Lookup::Missing,
            "only the default namespace is short"
        );
        assert_eq!(f.lookup("dev"), Lookup::Namespace);
        assert_eq!(f.lookup("openfaas-fn"), Lookup::Namespace);
        assert_eq!(f.lookup("x.api.dev"), Lookup::Missing);
        f.remove("api", "dev");
        assert_eq!(f.lookup("api.dev"), Lookup::Missing);
        assert_eq!(f.lookup("dev"), Lookup::Namespace, "web is still there");
        f.remove("web", "dev");
        assert_eq!(f.lookup("dev"), Lookup::Missing);
    }

    #[tokio::test]
    async fn the_zone_file_follows_deploys_and_the_serial_rises() {
        let dir = std::env::temp_dir().join(format!("faasd-zone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("faas.zone");
        let z = Zone::new(
            "fd00:faa5:0:100::1".parse().unwrap(),
            dir.join("serial"),
            Some(file.clone()),
        );
        let s0 = z.serial().await;
        z.set(
            "hello",
            DEFAULT_NAMESPACE,
            "fd00:faa5:1::1".parse().unwrap(),
        )
        .await;
        z.set("api", "dev", "fd00:faa5:1::2".parse().unwrap()).await;
        // Written by its own thread, shortly after.
        let written = |want: &dyn Fn(&str) -> bool| {
            for _ in 0..500 {
                if let Ok(t) = std::fs::read_to_string(&file)
                    && want(&t)
                {
                    return t;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("{}: {:?}", file.display(), std::fs::read_to_string(&file));
        };
        let text = written(&|t| t.contains("api.dev"));
        assert!(text.contains("hello IN AAAA fd00:faa5:1::1"), "{text}");
        assert!(text.contains("hello.openfaas-fn IN AAAA fd00:faa5:1::1"));
        assert!(text.contains("api.dev IN AAAA fd00:faa5:1::2"));
        assert!(
            !text.contains("\napi IN"),
            "only the default namespace is short"
        );
        z.remove("hello", DEFAULT_NAMESPACE).await;
        let text = written(&|t| !t.contains("hello"));
        assert!(!text.contains("hello"), "{text}");
        assert_eq!(z.serial().await, s0 + 3);
        assert!(text.contains(&format!(" {} 3600", s0 + 3)));
        // A new zone over the same state starts past the old serial.
        let again = Zone::new(
            "fd00:faa5:0:100::1".parse().unwrap(),
            dir.join("serial"),
            None,
        );
        assert!(again.serial().await > s0 + 3);
        let _ = std::fs::remove_dir_all(dir);
    }
}
