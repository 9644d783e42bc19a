//! Host network setup through rtnetlink: the `local` route that delivers the whole function
//! prefix to this host, so no function ever needs an address on an interface.

use futures::TryStreamExt;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteScope, RouteType},
};

use faasd_core::config::Ipv6Net;

/// Errors of network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("netlink: {0}")]
    Connection(std::io::Error),
    /// The kernel refused the route.
    #[error("{what} local route {prefix} (table local, dev lo): {source}")]
    Route {
        /// Adding or removing.
        what: &'static str,
        /// The prefix.
        prefix: Ipv6Net,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Looking up `lo` failed.
    #[error("looking up interface lo: {0}")]
    Loopback(rtnetlink::Error),
}

/// Table `local` (255): consulted before `main`, where the kernel keeps its own local routes.
const TABLE_LOCAL: u32 = 255;

/// Ensures `local <prefix> dev lo table local` exists (replacing an equal route is a no-op).
pub async fn ensure_local_route(prefix: Ipv6Net) -> Result<(), NetError> {
    local_table(prefix, RouteType::Local, true).await
}

/// Removes `local <prefix> dev lo table local` (a function that moved away from this host
/// at an address outside its prefix); a route already gone is no error.
pub async fn remove_local_route(prefix: Ipv6Net) -> Result<(), NetError> {
    gone_is_fine(local_table(prefix, RouteType::Local, false).await)
}

/// Adds (or removes) `throw <prefix> table local`: an address of this host's prefix
/// that another host serves now is looked up in `main` (towards WireGuard) instead of
/// being delivered here.
pub async fn throw_route(prefix: Ipv6Net, add: bool) -> Result<(), NetError> {
    let done = local_table(prefix, RouteType::Throw, add).await;
    if add { done } else { gone_is_fine(done) }
}

fn gone_is_fine(done: Result<(), NetError>) -> Result<(), NetError> {
    match done {
        Err(NetError::Route {
            source: rtnetlink::Error::NetlinkError(e),
            ..
        }) if e.raw_code() == -libc::ESRCH => Ok(()),
        other => other,
    }
}

async fn local_table(prefix: Ipv6Net, kind: RouteType, add: bool) -> Result<(), NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connection)?;
    let task = tokio::spawn(conn);
    let result = async {
        let lo = handle
            .link()
            .get()
            .match_name("lo".to_owned())
            .execute()
            .try_next()
            .await
            .map_err(NetError::Loopback)?
            .map(|l| l.header.index)
            .unwrap_or(1);
        let route = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(prefix.addr, prefix.len)
            .kind(kind)
            .table_id(TABLE_LOCAL);
        // A throw route goes nowhere: it only ends the table's lookup.
        let route = if kind == RouteType::Throw {
            route.scope(RouteScope::Universe)
        } else {
            route.output_interface(lo).scope(RouteScope::Host)
        }
        .build();
        let done = if add {
            handle.route().add(route).replace().execute().await
        } else {
            handle.route().del(route).execute().await
        };
        done.map_err(|source| NetError::Route {
            what: if add { "adding" } else { "removing" },
            prefix,
            source,
        })
    }
    .await;
    task.abort();
    result
}

/// Errors configuring an interface.
#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    /// The netlink socket could not be opened.
    #[error("netlink: {0}")]
    Connection(std::io::Error),
    /// The kernel refused a step.
    #[error("{what} on {interface}: {source}")]
    Step {
        /// The interface.
        interface: String,
        /// The step.
        what: &'static str,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
}

/// What faasd needs to know of an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// It has no link-layer header (a TUN or WireGuard device).
    pub layer3: bool,
}

/// Interface `name`, if it exists.
pub async fn link(name: &str) -> Result<Option<Link>, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connection)?;
    let task = tokio::spawn(conn);
    let found = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    task.abort();
    // A missing link is an error reply (ENODEV), not an empty answer.
    Ok(found.ok().flatten().map(|l| Link {
        index: l.header.index,
        layer3: l.header.link_layer_type == rtnetlink::packet_route::link::LinkLayerType::None,
    }))
}

/// Gives interface `index` the address `addr/len`, brings it up, and routes `route`
/// through it (each step replaces what is there, so it can run again).
pub async fn configure_interface(
    name: &str,
    index: u32,
    addr: std::net::Ipv6Addr,
    len: u8,
    route: Ipv6Net,
) -> Result<(), InterfaceError> {
    let err = |what| {
        move |source| InterfaceError::Step {
            interface: name.to_owned(),
            what,
            source,
        }
    };
    let (conn, handle, _) = rtnetlink::new_connection().map_err(InterfaceError::Connection)?;
    let task = tokio::spawn(conn);
    let result = async {
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(err("bringing the link up"))?;
        handle
            .address()
            .add(index, addr.into(), len)
            .replace()
            .execute()
            .await
            .map_err(err("adding the address"))?;
        let r = RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(route.addr, route.len)
            .output_interface(index)
            .build();
        handle
            .route()
            .add(r)
            .replace()
            .execute()
            .await
            .map_err(err("routing the platform prefix"))
    }
    .await;
    task.abort();
    result
}

/// Creates a kernel WireGuard interface; fails (EOPNOTSUPP) where the module is missing.
pub async fn create_wireguard_link(name: &str) -> Result<(), InterfaceError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(InterfaceError::Connection)?;
    let task = tokio::spawn(conn);
    let r = handle
        .link()
        .add(rtnetlink::LinkWireguard::new(name).build())
        .execute()
        .await
        .map_err(|source| InterfaceError::Step {
            interface: name.to_owned(),
            what: "creating a kernel WireGuard link",
            source,
        });
    task.abort();
    r
}
