//! What faasd knows without touching the kernel, containerd or the network: what a
//! function is ([`spec`], with [`image_ref`] and [`strings`]), how the host is configured
//! ([`config`]), and the functions' durable state ([`store`], written with [`durable`]).
//!
//! Everything here builds and tests with plain cargo: no eBPF toolchain, no containerd.
#![deny(missing_docs)]

pub mod config;
pub mod durable;
pub mod image_ref;
pub mod spec;
pub mod store;
pub mod strings;
