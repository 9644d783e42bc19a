//! faasd's cluster state in etcd.
//!
//! A single host needs none of this: without a `[cluster]` section faasd keeps its state on
//! its own disk. With one, etcd holds what the hosts share, under `/faasd/v1/`:
//!
//! | key | value | life |
//! |---|---|---|
//! | `hosts/next` | the next host number to hand out | permanent |
//! | `hosts/names/<name>` | the host number a host name claimed | permanent |
//! | `hosts/numbers/<N>` | the host name that claimed number N | permanent: a number is never reused |
//! | `hosts/live/<N>` | the host's registration ([`HostInfo`], JSON) | its lease |
//! | `names/<namespace>/<name>` | a function's address and host ([`NameRecord`]) | its host's lease |
//! | `functions/<namespace>/<name>` | a function's deployment, address and host ([`Placed`]) | until removed |
//! | `addresses/<N>` | the next address of host N's range for a placed function | permanent |
//! | `scheduler` | the number of the host that places functions | its host's lease |
//! | `secrets/<namespace>/<name>` | a secret, sealed with the cluster key ([`SealedSecret`]) | until removed |
//! | `drain/<N>` | `true`: host N is drained (its functions placed elsewhere) | until undone |
//!
//! [`Etcd`] is the client: etcd-client's own balances over all members and keeps calling
//! one that died, so this one talks to one member at a time and moves to the next when a
//! call fails for want of a connection, retrying calls that are safe to repeat.

#![warn(missing_docs)]

mod client;
mod functions;
mod hosts;
mod names;
mod secrets;
mod watch;

pub use client::{Endpoints, Etcd, EtcdError, MemberFailure, MemberHealth, MemberStatus, Tls};
pub use functions::{
    Constraint, Decision, Placed, adopt_function, campaign, create_function, delete_function,
    function, place, set_draining, update_function, watch_draining, watch_functions,
};
pub use hosts::{HostInfo, Registration, claim_host_number, register, watch_hosts};
pub use names::{FunctionName, NameRecord, delete_name, put_name, watch_names};
pub use secrets::{SealedSecret, delete_secret, put_secret, watch_secrets};
pub use watch::Synced;
