//! faasd: a functions host for one Linux machine.
//!
//! Each function gets an IPv6 address from the host's function prefix and listening
//! sockets that faasd owns; an eBPF `sk_lookup` program steers connections for the
//! function's address straight into those sockets, and a stopped function is started by
//! its first connection and handed the sockets with the systemd protocol.
//!
//! What a function is, the host's configuration and the durable store live in
//! `faasd-core`; the kernel programs and their maps in `faasd-dataplane`; the containerd
//! and registry client in `faasd-containerd`. The modules here, one per concern:
//! [`sockets`], [`sockdiag`] (every socket's queue in one dump), [`net`] (routes),
//! [`egress`] (calls out: instance namespaces, NAT, the egress policy), [`runtime`] (starting instances: processes, or
//! containers through containerd),
//! [`supervisor`] (socket activation and the life of one function), [`status`] (what the
//! API reports), [`forward`] (connections to images
//! that bind their own port), [`notify`] (sd_notify), [`logs`], [`secrets`], [`dns`] (the
//! `.faas` zone), [`daemon`] (all functions), [`lock`] (one daemon at a time), [`api`] and
//! [`client`].
#![deny(missing_docs)]

pub mod api;
pub mod asynccall;
pub mod auth;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod daemon;
pub mod dns;
pub mod egress;
pub mod forward;
pub mod layout;
pub mod lock;
pub mod logs;
pub mod mailbox;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod random;
pub mod runtime;
pub mod secrets;
pub mod sockdiag;
pub mod sockets;
pub mod status;
pub mod supervisor;
pub mod systemd;
pub mod ui;
pub mod wireguard;
