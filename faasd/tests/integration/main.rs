//! Privileged integration tests: real eBPF programs, real network namespaces, real
//! processes, a real containerd. Each test creates its own namespace and removes it (and everything it
//! started) when it ends, passing or failing. Without root or BPF they skip with a message.

mod harness;

mod activation;
mod api;
mod async_calls;
mod autoscale;
mod cli;
mod cluster;
mod containers;
mod contract;
mod dashboards;
mod dataplane;
mod dns;
mod egress;
mod nspawn;
mod openfaas;
mod policy;
mod registries;
mod restart;
mod sandbox;
mod ui;
mod units;
mod wireguard;
