//! Network namespaces for instances that call out, made ahead by a thread of their own.
//!
//! Each holds `lo` and `eth0`, the inside end of a veth link whose host end is
//! `fxs<n>`: IPv4 `egress-ipv4[n]/32` and IPv6 `egress-ipv6[n]/128`, default routes through
//! `169.254.0.1` and `fe80::1`, which every host end answers for. The host routes the two
//! addresses to `fxs<n>`. Nothing needs removing afterwards: the namespace ends with the
//! last process in it, and the kernel takes the link and its routes with it. The link's
//! name is the lock on `n`: a name still in use (an instance of a previous daemon) makes
//! the next `n` be tried.

use std::{
    collections::{HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
    sync::{Arc, Mutex},
};

use futures::TryStreamExt;
use rtnetlink::{
    Handle, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
    packet_route::{
        address::{AddressAttribute, AddressFlags},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute},
        route::RouteScope,
    },
};
use tokio::sync::{mpsc, oneshot};

use faasd_core::config::Config;

/// The gateway address every host end holds (IPv4 link-local, never routed).
const GATEWAY4: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// The gateway address every host end holds (IPv6 link-local).
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// Prefix of the host ends' names.
pub const HOST_LINK_PREFIX: &str = "fxs";
/// Table `local`: the function prefix is routed there to `lo`, so the instances' /128s go
/// there too to win over it.
const TABLE_LOCAL: u32 = 255;

/// How long after handing out a namespace the pool waits before it makes the next.
const REFILL_DELAY: std::time::Duration = std::time::Duration::from_millis(30);
/// How often, at most, the pool looks whether instances that may call out still run,
/// while the host's NAT is installed.
const NAT_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Errors preparing a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("{what}: {source}")]
    Netlink {
        /// The step.
        what: &'static str,
        /// Why.
        source: rtnetlink::Error,
    },
    /// Every address of `egress-ipv4`/`egress-ipv6` is in use.
    #[error("no free instance address left in egress-ipv4/egress-ipv6; widen them")]
    Exhausted,
    /// The thread that makes them is gone.
    #[error(
        "the network namespace pool has stopped (its reason is in faasd's log); restart \
         faasd to start it again"
    )]
    Stopped,
}

/// A prepared namespace. Joined by an instance, it lives as long as the instance.
#[derive(Debug)]
pub struct Prepared {
    /// The namespace (an nsfs descriptor for `setns`).
    pub fd: OwnedFd,
    /// The index of its host end, if it is linked.
    link: Option<u32>,
}

/// The host's NAT for calls out, as the pool's thread left it (`hostNat` in `faasd status`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nat {
    /// Not installed: no instance may call out.
    #[default]
    Absent,
    /// Installed.
    Installed,
    /// Tried and failed (logged): calls within the host work, calls out of it do not.
    /// Tried again after the next idle period.
    Failed,
}

/// What a namespace is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Linked to the host, with addresses and routes: the instance may call out.
    Linked,
    /// Only `lo`, up (`faasd.dev/egress=none`): made ahead too, as making a namespace is
    /// the slowest step of a start.
    Closed,
}

/// What the pool's thread is told.
enum Ask {
    /// One was taken: make another, after [`REFILL_DELAY`].
    Refill,
    /// The pool had none of this kind: make one now.
    Make(Kind, oneshot::Sender<Result<Prepared, NetnsError>>),
    /// A linked one is wanted and the host's NAT is not installed: install it.
    Nat(oneshot::Sender<()>),
}

/// The daemon's side of the pool: the prepared namespaces, taken under a lock with no
/// thread hop, and the channel to the thread that makes them.
#[derive(Debug)]
pub struct Pool {
    ready: Arc<Mutex<Ready>>,
    asks: mpsc::UnboundedSender<Ask>,
}

impl Pool {
    /// Starts the thread that keeps `egress-pool` namespaces of each kind prepared.
    pub fn start(config: &Config) -> Result<Self, NetnsError> {
        let host =
            std::fs::File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Io {
                what: "opening this network namespace",
                source,
            })?;
        let (asks, rx) = mpsc::unbounded_channel();
        let ready = Arc::new(Mutex::new(Ready::default()));
        let maker = Maker {
            host: OwnedFd::from(host),
            config: config.clone(),
            next: 1,
            ready: ready.clone(),
            size: config.egress_pool as usize,
            busy_at: std::time::Instant::now(),
        };
        std::thread::Builder::new()
            .name("faasd-netns".into())
            .spawn(move || maker.run(rx))
            .map_err(|source| NetnsError::Io {
                what: "starting the namespace thread",
                source,
            })?;
        Ok(Self { ready, asks })
    }

    /// A prepared namespace of `kind`: at once from the pool, or made now if it is empty.
    /// The first linked one since no instance could call out waits for the host's NAT.
    pub async fn take(&self, kind: Kind) -> Result<Prepared, NetnsError> {
        let taken = loop {
            {
                let mut ready = self.ready.lock().expect("pool lock");
                // Taken under the lock that the pool's thread removes the NAT under, so
                // that it sees this namespace in use.
                if kind == Kind::Closed || ready.nat != Nat::Absent {
                    break ready.of(kind).pop_front();
                }
            }
            let (tx, rx) = oneshot::channel();
            self.asks
                .send(Ask::Nat(tx))
                .map_err(|_| NetnsError::Stopped)?;
            rx.await.map_err(|_| NetnsError::Stopped)?;
        };
        if let Some(p) = taken {
            let _ = self.asks.send(Ask::Refill);
            return Ok(p);
        }
        let (tx, rx) = oneshot::channel();
        self.asks
            .send(Ask::Make(kind, tx))
            .map_err(|_| NetnsError::Stopped)?;
        rx.await.map_err(|_| NetnsError::Stopped)?
    }

    /// The host's NAT for instances that may call out.
    pub fn nat(&self) -> Nat {
        self.ready.lock().expect("pool lock").nat
    }
}

struct Maker {
    host: OwnedFd,
    config: Config,
    next: u32,
    ready: Arc<Mutex<Ready>>,
    size: usize,
    /// When an instance that may call out was last seen running (or about to).
    busy_at: std::time::Instant,
}

/// The prepared namespaces, by kind, and whether the host's NAT is up for them.
#[derive(Debug, Default)]
struct Ready {
    linked: VecDeque<Prepared>,
    closed: VecDeque<Prepared>,
    /// Linked namespaces are handed out only while it is not absent; the pool's thread
    /// makes it absent, under this lock, when it removes the NAT.
    nat: Nat,
}

impl Ready {
    fn of(&mut self, kind: Kind) -> &mut VecDeque<Prepared> {
        match kind {
            Kind::Linked => &mut self.linked,
            Kind::Closed => &mut self.closed,
        }
    }

    /// The kind that is short of `size`, if any.
    fn short(&self, size: usize) -> Option<Kind> {
        if self.linked.len() < size {
            Some(Kind::Linked)
        } else if self.closed.len() < size {
            Some(Kind::Closed)
        } else {
            None
        }
    }
}

impl Maker {
    fn run(self, mut asks: mpsc::UnboundedReceiver<Ask>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("the network namespace pool cannot start: {e}");
                return;
            }
        };
        let mut maker = self;
        rt.block_on(async move {
            let Ok((conn, host, _)) = rtnetlink::new_connection() else {
                tracing::error!("the network namespace pool has no netlink socket");
                return;
            };
            tokio::spawn(conn);
            // A previous daemon's instances that run on still call out through its table;
            // with none, a table left behind goes.
            match maker.idle_pool(&host).await {
                Ok(Some(_)) => {
                    if let Err(e) = super::nat::remove() {
                        tracing::warn!("removing a previous daemon's NAT table: {e}");
                    }
                }
                Ok(None) => maker.ensure_nat(),
                Err(e) => {
                    tracing::warn!("looking for instances of a previous daemon: {e}");
                    maker.ensure_nat();
                }
            }
            // Whether the NAT can go is looked at on a clock of its own, not after a quiet
            // spell: starts of functions that cannot call out would put that off forever.
            let mut nat_check = tokio::time::Instant::now();
            loop {
                // Fill up, one at a time, serving any request in between.
                loop {
                    let short = maker.ready.lock().expect("pool lock").short(maker.size);
                    let Some(kind) = short else { break };
                    match asks.try_recv() {
                        Ok(ask) => maker.answer(&host, ask).await,
                        Err(mpsc::error::TryRecvError::Empty) => {
                            match maker.make(&host, kind).await {
                                Ok(p) => {
                                    maker.ready.lock().expect("pool lock").of(kind).push_back(p)
                                }
                                Err(e) => {
                                    // Tried again at the next request, not in a loop.
                                    tracing::warn!("preparing a network namespace: {e}");
                                    break;
                                }
                            }
                        }
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                let ask = if maker.ready.lock().expect("pool lock").nat != Nat::Absent {
                    if tokio::time::Instant::now() >= nat_check {
                        maker.remove_nat_if_idle(&host).await;
                        nat_check = tokio::time::Instant::now()
                            + maker.config.egress_nat_idle.min(NAT_CHECK);
                        continue;
                    }
                    match tokio::time::timeout_at(nat_check, asks.recv()).await {
                        Ok(ask) => ask,
                        Err(_) => continue,
                    }
                } else {
                    asks.recv().await
                };
                match ask {
                    None => return,
                    // An instance took one and is starting now: refill after that, not
                    // against it for the CPU and the kernel's network locks; a request
                    // meanwhile is served at once.
                    Some(Ask::Refill) => {
                        let until = tokio::time::Instant::now() + REFILL_DELAY;
                        loop {
                            match tokio::time::timeout_at(until, asks.recv()).await {
                                Ok(Some(ask)) => maker.answer(&host, ask).await,
                                Ok(None) => return,
                                Err(_) => break,
                            }
                        }
                    }
                    Some(ask) => maker.answer(&host, ask).await,
                }
            }
        });
    }

    /// Serves a start's request (a refill needs no answer: the loop fills up).
    async fn answer(&mut self, host: &Handle, ask: Ask) {
        match ask {
            Ask::Make(kind, tx) => {
                let _ = tx.send(self.hand_out(host, kind).await);
            }
            Ask::Nat(tx) => {
                self.ensure_nat();
                let _ = tx.send(());
            }
            Ask::Refill => {}
        }
    }

    /// Installs the host's NAT unless it is; a failure is logged and leaves calls within
    /// the host working.
    fn ensure_nat(&mut self) {
        self.busy_at = std::time::Instant::now();
        if self.ready.lock().expect("pool lock").nat != Nat::Absent {
            return;
        }
        let nat = match super::nat::install(&self.config) {
            Ok(()) => {
                tracing::info!("instances may call out: the host's NAT is installed");
                Nat::Installed
            }
            Err(e) => {
                tracing::error!("calls out cannot leave the host: {e}");
                Nat::Failed
            }
        };
        self.ready.lock().expect("pool lock").nat = nat;
    }

    /// Removes the host's NAT once no instance that may call out has run for
    /// `egress-nat-idle`.
    async fn remove_nat_if_idle(&mut self, host: &Handle) {
        let pooled = match self.idle_pool(host).await {
            Ok(Some(pooled)) => pooled,
            Ok(None) => {
                self.busy_at = std::time::Instant::now();
                return;
            }
            Err(e) => {
                tracing::warn!("looking for instances that call out: {e}");
                return;
            }
        };
        if self.busy_at.elapsed() < self.config.egress_nat_idle {
            return;
        }
        {
            let mut ready = self.ready.lock().expect("pool lock");
            // One taken since the look above is in use now.
            if ready.linked.len() != pooled {
                return;
            }
            ready.nat = Nat::Absent;
        }
        match super::nat::remove() {
            Ok(()) => tracing::info!(
                "no instance has called out for {}: the host's NAT is removed",
                humantime::format_duration(self.config.egress_nat_idle)
            ),
            Err(e) => tracing::warn!("removing the host's NAT: {e}"),
        }
    }

    /// How many linked namespaces the pool holds, if every host end on the host is one
    /// of theirs; `None` if an instance (or a previous daemon's) holds one.
    async fn idle_pool(&self, host: &Handle) -> Result<Option<usize>, NetnsError> {
        let pooled: HashSet<u32> = {
            let ready = self.ready.lock().expect("pool lock");
            ready.linked.iter().filter_map(|p| p.link).collect()
        };
        let mut links = host.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|source| NetnsError::Netlink {
                what: "listing links",
                source,
            })?
        {
            let host_end = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if n.starts_with(HOST_LINK_PREFIX)));
            if host_end && !pooled.contains(&link.header.index) {
                return Ok(None);
            }
        }
        Ok(Some(pooled.len()))
    }

    /// One made for a start that found the pool empty: a linked one with the NAT.
    async fn hand_out(&mut self, host: &Handle, kind: Kind) -> Result<Prepared, NetnsError> {
        if kind == Kind::Linked {
            self.ensure_nat();
        }
        self.make(host, kind).await
    }

    async fn make(&mut self, host: &Handle, kind: Kind) -> Result<Prepared, NetnsError> {
        match kind {
            Kind::Linked => self.make_linked(host).await,
            Kind::Closed => {
                let (fd, inside) = self.new_namespace()?;
                let lo = index(&inside, "lo").await?;
                inside
                    .link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await
                    .map_err(|source| NetnsError::Netlink {
                        what: "bringing lo up",
                        source,
                    })?;
                Ok(Prepared { fd, link: None })
            }
        }
    }

    /// A linked namespace on the next free number and its addresses.
    async fn make_linked(&mut self, host: &Handle) -> Result<Prepared, NetnsError> {
        let limit = 1u32
            .checked_shl(32 - u32::from(self.config.egress_ipv4.len))
            .unwrap_or(u32::MAX)
            .saturating_sub(2);
        for _ in 0..limit.min(4096) {
            let n = self.next;
            self.next = if self.next >= limit { 1 } else { self.next + 1 };
            let Some((ipv4, ipv6)) = super::addresses(&self.config, n) else {
                continue;
            };
            match self.prepare(host, n, ipv4, ipv6).await {
                Err(NetnsError::Netlink { source, .. }) if exists(&source) => continue,
                other => return other,
            }
        }
        Err(NetnsError::Exhausted)
    }

    async fn prepare(
        &self,
        host: &Handle,
        n: u32,
        ipv4: Ipv4Addr,
        ipv6: Ipv6Addr,
    ) -> Result<Prepared, NetnsError> {
        let (fd, inside) = self.new_namespace()?;
        let link = format!("{HOST_LINK_PREFIX}{n}");
        let nl = |what| move |source| NetnsError::Netlink { what, source };
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".to_owned())
            .setns_by_fd(fd.as_raw_fd())
            .build();
        host.link()
            .add(
                LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
                    .name(link.clone())
                    .up()
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("creating the veth link"))?;
        let outer = index(host, &link).await?;
        let inner = index(&inside, "eth0").await?;
        let lo = index(&inside, "lo").await?;
        for (h, i) in [(&inside, lo), (&inside, inner)] {
            h.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(nl("bringing a link up"))?;
        }
        let add = |h: &Handle, index: u32, a: IpAddr, len: u8| {
            let mut req = h.address().add(index, a, len);
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            req.replace().execute()
        };
        add(&inside, inner, ipv4.into(), 32)
            .await
            .map_err(nl("the instance's IPv4 address"))?;
        add(&inside, inner, ipv6.into(), 128)
            .await
            .map_err(nl("the instance's IPv6 address"))?;
        add(host, outer, GATEWAY4.into(), 32)
            .await
            .map_err(nl("the gateway's IPv4 address"))?;
        add(host, outer, GATEWAY6.into(), 64)
            .await
            .map_err(nl("the gateway's IPv6 address"))?;
        let routes = inside.route();
        routes
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .output_interface(inner)
                    .gateway(GATEWAY4)
                    .onlink()
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("the instance's IPv4 default route"))?;
        routes
            .add(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .output_interface(inner)
                    .gateway(GATEWAY6)
                    .build(),
            )
            .execute()
            .await
            .map_err(nl("the instance's IPv6 default route"))?;
        host.route()
            .add(
                RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(ipv4, 32)
                    .output_interface(outer)
                    .scope(RouteScope::Link)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(nl("the host's route to the instance (IPv4)"))?;
        host.route()
            .add(
                RouteMessageBuilder::<Ipv6Addr>::new()
                    .destination_prefix(ipv6, 128)
                    .output_interface(outer)
                    .table_id(TABLE_LOCAL)
                    .build(),
            )
            .replace()
            .execute()
            .await
            .map_err(nl("the host's route to the instance (IPv6)"))?;
        Ok(Prepared {
            fd,
            link: Some(outer),
        })
    }

    /// A new network namespace, and a netlink handle inside it. The thread enters the
    /// namespace only for as long as it takes to open the handle's socket there.
    fn new_namespace(&self) -> Result<(OwnedFd, Handle), NetnsError> {
        let io = |what| move |source| NetnsError::Io { what, source };
        // SAFETY: unshare and setns change this thread only (it is ours alone).
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
            return Err(io("unshare(CLONE_NEWNET)")(std::io::Error::last_os_error()));
        }
        let inside = (|| {
            let fd = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(io("opening the new namespace"))?;
            // Addresses are unique by construction: no duplicate detection to wait for.
            std::fs::write("/proc/sys/net/ipv6/conf/default/accept_dad", "0")
                .map_err(io("turning off duplicate address detection"))?;
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(io("a netlink socket in the namespace"))?;
            tokio::spawn(conn);
            Ok((OwnedFd::from(fd), handle))
        })();
        // SAFETY: back to the daemon's namespace, through the descriptor opened at start.
        if unsafe { libc::setns(self.host.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
            let e = std::io::Error::last_os_error();
            // A thread stuck in another namespace would make every later link there.
            tracing::error!("returning to the host's network namespace: {e}");
            std::process::abort();
        }
        inside
    }
}

async fn index(h: &Handle, name: &str) -> Result<u32, NetnsError> {
    h.link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await
        .map_err(|source| NetnsError::Netlink {
            what: "looking up a link",
            source,
        })?
        .map(|l| l.header.index)
        .ok_or(NetnsError::Io {
            what: "looking up a link",
            source: std::io::Error::from_raw_os_error(libc::ENODEV),
        })
}

/// Whether netlink answered EEXIST (the link name is taken).
fn exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m)
        if m.code.is_some_and(|c| c.get() == -libc::EEXIST))
}
