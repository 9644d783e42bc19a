//! Host network setup through rtnetlink: the `local` route that delivers the whole function
//! prefix to this host, so no function ever needs an address on an interface.

use futures::TryStreamExt;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::route::{RouteScope, RouteType},
};

use crate::config::Ipv6Net;

/// Errors of network setup.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The netlink socket could not be opened.
    #[error("netlink: {0}")]
    Connection(std::io::Error),
    /// The kernel refused the route.
    #[error("adding local route {prefix} (table local, dev lo): {source}")]
    Route {
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
            .output_interface(lo)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(TABLE_LOCAL)
            .build();
        handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|source| NetError::Route { prefix, source })
    }
    .await;
    task.abort();
    result
}
