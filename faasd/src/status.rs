//! What the API reports about functions and the host: the wire types of `list`, `describe`,
//! `status` and `/metrics`, kept apart from the code that fills them so that the daemon, the
//! supervisors and the metrics renderer all depend on this module and not on each other.

use std::{collections::BTreeMap, net::Ipv6Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

use faasd_core::spec::Port;
use faasd_dataplane::DataplaneStatus;

/// Upper bounds (seconds) of the latency buckets: processes start in milliseconds,
/// containers in tens of milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BUCKETS`] (counts per bucket, not cumulative).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Histogram {
    /// Observations per bucket; one more than the bounds (the last is +Inf).
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, seconds: f64) {
        if self.buckets.len() != LATENCY_BUCKETS.len() + 1 {
            self.buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// Where a function is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// No instance runs; the sockets are watched.
    #[default]
    Stopped,
    /// Instances started, not all ready yet.
    Starting,
    /// Instances serve.
    Running,
    /// Restarts are being delayed after repeated quick exits.
    CrashLoop,
}

/// Timestamps (CLOCK_MONOTONIC ns) of the last activation from zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationTiming {
    /// faasd saw the pending connection and asked the runtime for an instance.
    pub requested_ns: u64,
    /// Container runtime: containerd created the task (0 for processes).
    #[serde(default)]
    pub task_created_ns: u64,
    /// Container runtime: containerd started the task (0 for processes).
    #[serde(default)]
    pub task_started_ns: u64,
    /// The instance's program was running (exec succeeded).
    pub running_ns: u64,
    /// The instance said READY=1 (or was considered ready at start).
    pub ready_ns: u64,
}

/// One running instance as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    /// Instance id (also in its environment as FAASD_INSTANCE and in log lines).
    pub id: String,
    /// Host pid.
    pub pid: i32,
    /// Ready to serve.
    pub ready: bool,
    /// Last STATUS= it sent.
    pub status: Option<String>,
}

/// Activation latency histograms: the whole activation and its two phases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivationHistograms {
    /// First connection seen → instance ready.
    pub total: Histogram,
    /// Connection seen → the function's program running: faasd and the runtime (for a
    /// container: containerd creating and starting the task, the shim handing over).
    pub runtime: Histogram,
    /// Program running → ready (READY=1, or at once for functions that do not notify):
    /// the function's own start.
    pub init: Histogram,
}

impl ActivationHistograms {
    /// Records one activation from its timestamps.
    pub fn observe(&mut self, t: &ActivationTiming) {
        let seconds = |from: u64, to: u64| to.saturating_sub(from) as f64 / 1e9;
        self.total.observe(seconds(t.requested_ns, t.ready_ns));
        self.runtime.observe(seconds(t.requested_ns, t.running_ns));
        self.init.observe(seconds(t.running_ns, t.ready_ns));
    }
}

/// A snapshot of a function's runtime state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionState {
    /// Phase.
    pub phase: Phase,
    /// Running instances.
    pub instances: Vec<InstanceInfo>,
    /// Starts from zero caused by a connection.
    pub activations: u64,
    /// Instances started for any reason.
    pub starts: u64,
    /// Restarts after an instance failed (crash, watchdog).
    pub restarts: u64,
    /// Instances killed for missing WATCHDOG=1.
    pub watchdog_kills: u64,
    /// Why the last start or instance failed, if it did.
    pub last_error: Option<String>,
    /// When a crash-looping function will next be started.
    pub retry_in_ms: Option<u64>,
    /// Timing of the last activation from zero.
    pub last_activation: Option<ActivationTiming>,
    /// The id of the instance kept prepared for the next activation
    /// (`faasd.dev/prepare`), while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared: Option<String>,
    /// The instances are frozen (`faasd.dev/freeze-after`) until the next connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
    /// Times a connection thawed the function.
    #[serde(default)]
    pub thaws: u64,
    /// Scaling with the load, for a function that asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleStatus>,
    /// This function's activation latencies, kept only when it asks for them
    /// (`faasd.dev/latency-histograms`); the host-wide ones are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_seconds: Option<ActivationHistograms>,
}

/// What the autoscaler saw and did last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleStatus {
    /// What it counts: `capacity`, `rps` or `cpu`.
    pub kind: String,
    /// The load at the last check: open connections, new connections a second, or
    /// millicores.
    pub load: f64,
    /// The instances it aims for.
    pub target: u32,
    /// Connections waiting in the accept queues at the last check.
    pub queued: u64,
    /// Its last change of the target, and why.
    pub last_decision: Option<String>,
    /// Its changes of the target upwards so far.
    pub scaled_up: u64,
    /// And downwards.
    pub scaled_down: u64,
}

/// The OpenFaaS FunctionStatus, plus faasd's own fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Name.
    pub name: String,
    /// Image (empty for process functions).
    pub image: String,
    /// Namespace.
    pub namespace: String,
    /// Command line.
    pub env_process: String,
    /// Environment.
    pub env_vars: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Calls through `/function/<name>`.
    pub invocation_count: u64,
    /// Running instances.
    pub replicas: u32,
    /// Ready instances.
    pub available_replicas: u32,
    /// First deploy, RFC 3339.
    pub created_at: String,
    /// faasd: the function's address.
    pub address: Ipv6Addr,
    /// faasd: its sockets.
    pub ports: Vec<Port>,
    /// faasd: activation state.
    pub state: FunctionState,
    /// faasd: data plane counters per port.
    pub counters: Vec<PortCounters>,
    /// faasd, in a cluster: the number of the host that runs it (none while unplaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<u16>,
}

impl FunctionStatus {
    /// What its deployment says of a function (its name from `service`, its namespace
    /// as validated), with no live state yet.
    pub fn declared(
        d: &faasd_core::spec::Deployment,
        image: Option<&str>,
        address: Ipv6Addr,
        ports: Vec<Port>,
        created_at: u64,
    ) -> Self {
        Self {
            name: d.service.clone(),
            image: image.unwrap_or_default().to_owned(),
            namespace: d.namespace.clone().unwrap_or_default(),
            env_process: d.env_process.clone().unwrap_or_default(),
            env_vars: d.env_vars.to_btree(),
            labels: d.labels.to_btree(),
            annotations: d.annotations.to_btree(),
            invocation_count: 0,
            replicas: 0,
            available_replicas: 0,
            created_at: humantime::format_rfc3339_seconds(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(created_at),
            )
            .to_string(),
            address,
            ports,
            state: FunctionState::default(),
            counters: Vec::new(),
            host: None,
        }
    }
}

/// Counters of one function socket.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortCounters {
    /// Port name.
    pub name: String,
    /// Socket slot in the maps.
    pub slot: u32,
    /// Lookups that matched.
    pub lookups: u64,
    /// Connections or datagrams steered into the socket.
    pub steered: u64,
    /// Lookups that found no socket.
    pub no_socket: u64,
    /// Lookups the function's source policy refused.
    #[serde(default)]
    pub policy_drops: u64,
    /// What waits on the socket now (from the kernel, not eBPF).
    #[serde(default)]
    pub queued: u64,
    /// Its accept queue's limit (TCP).
    #[serde(default)]
    pub queue_limit: u64,
    /// Connections (TCP) or datagrams (UDP) dropped because its queue was full.
    #[serde(default)]
    pub queue_drops: u64,
}

/// Open files of the daemon against its limit: every function holds one per socket.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenFiles {
    /// Descriptors open now.
    pub used: u64,
    /// The soft RLIMIT_NOFILE (`LimitNOFILE=` under systemd).
    pub limit: u64,
}

/// `faasd status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    /// Data plane.
    pub dataplane: DataplaneStatus,
    /// Functions deployed.
    pub functions: usize,
    /// Function prefix.
    pub function_prefix: String,
    /// Runtime of process functions.
    pub runtime: String,
    /// containerd, for image functions: where, and whether it answers.
    pub containerd: String,
    /// The WireGuard interface: name, implementation, port, public key; or "off".
    pub wireguard: String,
    /// Calls out: the default mode, the instance ranges and the rules in force; or why
    /// functions cannot call out.
    #[serde(default)]
    pub egress: String,
    /// The host's NAT for calls out; none while functions cannot call out.
    #[serde(default)]
    pub host_nat: Option<crate::egress::netns::Nat>,
    /// Where the `.faas` zone is served.
    pub dns: Vec<String>,
    /// cgroup v2 root used, if any.
    pub cgroup_root: Option<PathBuf>,
    /// Open files against the limit.
    #[serde(default)]
    pub open_files: OpenFiles,
    /// The listen backlog of every function's TCP sockets.
    #[serde(default)]
    pub backlog: u32,
}
