//! `/metrics` in the Prometheus text format: faasd's own series (`faasd_…`: the eBPF
//! counters per function socket, XDP, activation, instances, WireGuard peers) and the names
//! OpenFaaS dashboards already use (`gateway_…`). Labels are bounded: one series per
//! function, socket, peer or HTTP status, never per connection or client address.
//!
//! Per function there are only counters and gauges (twelve samples for a function with one
//! socket); latency histograms are kept for the whole host, and per function only for the
//! functions that ask (`faasd.dev/latency-histograms`). The text is written to a sink as it
//! is rendered, so a host with 100,000 functions never holds its whole page in memory.

use std::{
    collections::BTreeMap,
    io::Write,
    sync::{Arc, Mutex},
};

use faasd_core::{
    spec::{Port, Protocol, Settings},
    store::FunctionRecord,
};

use crate::{
    status::{
        ActivationHistograms, ActivationTiming, AutoscaleStatus, Histogram, HostStatus,
        LATENCY_BUCKETS, PortCounters,
    },
    wireguard::PeerStatus,
};

/// The API's own requests, OpenFaaS's `provider_http_request…` series: by status, method
/// and route template (`/system/function/{name}`), so their number is bounded.
#[derive(Debug, Default)]
pub struct HttpStats(Mutex<BTreeMap<(u16, &'static str, String), Histogram>>);

impl HttpStats {
    /// Records one answered request.
    pub fn record(&self, code: u16, method: &str, route: &str, seconds: f64) {
        const METHODS: &[&str] = &[
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
        ];
        let method = METHODS.iter().find(|m| **m == method).unwrap_or(&"other");
        self.0
            .lock()
            .expect("http stats lock")
            .entry((code, method, route.to_owned()))
            .or_default()
            .observe(seconds);
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<(u16, &'static str, String), Histogram> {
        self.0.lock().expect("http stats lock").clone()
    }
}

/// The host-wide latency histograms: activations (and their phases) and calls through
/// `/function/*`.
#[derive(Debug, Default)]
pub struct Latencies {
    activation: Mutex<ActivationHistograms>,
    invocation: Mutex<Histogram>,
}

impl Latencies {
    /// Records an activation from zero.
    pub fn observe_activation(&self, t: &ActivationTiming) {
        self.activation.lock().expect("latency lock").observe(t);
    }

    /// The histograms so far: activations, and calls.
    pub fn snapshot(&self) -> (ActivationHistograms, Histogram) {
        (
            self.activation.lock().expect("latency lock").clone(),
            self.invocation.lock().expect("latency lock").clone(),
        )
    }

    /// Records a call through `/function/*`.
    pub fn observe_invocation(&self, seconds: f64) {
        self.invocation
            .lock()
            .expect("latency lock")
            .observe(seconds);
    }
}

/// Everything one `/metrics` page reports, gathered by the daemon (owned, so that the
/// rendering can run away from the async workers).
#[derive(Debug)]
pub struct Page {
    /// Host and data plane.
    pub host: HostStatus,
    /// Every function.
    pub functions: Vec<FunctionRow>,
    /// WireGuard peers.
    pub peers: Vec<PeerStatus>,
    /// DNS queries answered: (type, response code) → count.
    pub dns: BTreeMap<(&'static str, &'static str), u64>,
    /// Of them, answered again from memory by the UDP front.
    pub dns_from_memory: u64,
    /// The API's requests.
    pub http: BTreeMap<(u16, &'static str, String), Histogram>,
    /// Host-wide latencies: activations, and calls through `/function/*`.
    pub latencies: (ActivationHistograms, Histogram),
    /// What the supervisors did.
    pub supervisors: Supervisors,
    /// Calls out refused: (namespace, function, reason) → count, only where not zero.
    pub egress_refused: Vec<EgressRefused>,
    /// The async calls' queue.
    pub async_calls: crate::asynccall::Counts,
}

/// Calls out the egress policy refused for one function and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRefused {
    /// The function's namespace.
    pub namespace: String,
    /// The function.
    pub function: String,
    /// `none`, `faas` or `denied`.
    pub reason: &'static str,
    /// How many connections and datagrams.
    pub count: u64,
}

/// The supervisors' counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Supervisors {
    /// Wake-ups so far.
    pub wakeups: u64,
    /// Functions parked now (stopped, with no task of their own).
    pub parked: u64,
}

/// What `/metrics` needs of one function: a compact row, not its whole status.
#[derive(Debug, Clone)]
pub struct FunctionRow {
    /// The function as stored (its name and namespace).
    pub record: Arc<FunctionRecord>,
    /// Its settings (its sockets).
    pub settings: Arc<Settings>,
    /// Each socket's counters, in `settings.ports` order.
    pub sockets: Vec<PortCounters>,
    /// Starts from zero.
    pub activations: u64,
    /// Restarts after failures.
    pub restarts: u64,
    /// Watchdog kills.
    pub watchdog_kills: u64,
    /// Running instances.
    pub instances: u32,
    /// Ready instances.
    pub ready: u32,
    /// Calls through `/function/*` by HTTP status.
    pub invocation_codes: Vec<(u16, u64)>,
    /// The function's own histograms (activation, calls), when it asks for them.
    pub histograms: Option<Box<(ActivationHistograms, Histogram)>>,
    /// The autoscaler's state, for a function that scales with the load.
    pub autoscale: Option<Box<AutoscaleStatus>>,
}

impl FunctionRow {
    fn name(&self) -> &str {
        &self.record.spec.name
    }

    fn namespace(&self) -> &str {
        &self.record.spec.namespace
    }

    /// OpenFaaS's name of a function: `name.namespace`.
    fn gateway_name(&self) -> String {
        format!("{}.{}", self.name(), self.namespace())
    }
}

/// A series of every function socket: name, help, and how to read it.
type SocketSeries = (&'static str, &'static str, fn(&PortCounters) -> u64);
/// A series of every function: name, type, help, and how to read it.
type FunctionSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&FunctionRow) -> u64,
);

/// Writes label values with `\`, `"` and newlines escaped.
fn esc(out: &mut impl Write, v: &str) -> std::io::Result<()> {
    if !v.contains(['\\', '"', '\n']) {
        return out.write_all(v.as_bytes());
    }
    let escaped = v
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    out.write_all(escaped.as_bytes())
}

/// Writes `k="v",…` with the values escaped.
fn write_labels(out: &mut impl Write, labels: &[(&str, &str)]) -> std::io::Result<()> {
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(k.as_bytes())?;
        out.write_all(b"=\"")?;
        esc(out, v)?;
        out.write_all(b"\"")?;
    }
    Ok(())
}

/// Labels rendered once, for a function's many samples.
fn label_text(labels: &[(&str, &str)]) -> String {
    // Sized for the text without escapes: one allocation for nearly every label set.
    let size = labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    let mut t = Vec::with_capacity(size);
    write_labels(&mut t, labels).expect("writing to a Vec cannot fail");
    String::from_utf8(t).expect("labels are UTF-8, and so is their escaped form")
}

/// A function's labels, rendered once per page: its own series', the OpenFaaS
/// `function_name` (`name.namespace`), and where its sockets' labels are in
/// [`SocketLabels`].
struct RowLabels {
    function: String,
    gateway: String,
    sockets: Vec<usize>,
}

impl RowLabels {
    fn new<'a>(f: &'a FunctionRow, sockets: &mut SocketLabels<'a>) -> Self {
        Self {
            function: label_text(&[("function", f.name()), ("namespace", f.namespace())]),
            gateway: label_text(&[("function_name", &f.gateway_name())]),
            sockets: f.settings.ports.iter().map(|p| sockets.index(p)).collect(),
        }
    }
}

/// The socket labels (`socket`, `port`, `protocol`), rendered once for all the functions
/// that share them (most have the one default socket).
#[derive(Default)]
struct SocketLabels<'a> {
    index: std::collections::HashMap<(&'a str, u16, Protocol), usize>,
    text: Vec<String>,
}

impl<'a> SocketLabels<'a> {
    fn index(&mut self, p: &'a Port) -> usize {
        *self
            .index
            .entry((&p.name, p.port, p.protocol))
            .or_insert_with(|| {
                self.text.push(label_text(&[
                    ("socket", &p.name),
                    ("port", &p.port.to_string()),
                    ("protocol", &p.protocol.to_string()),
                ]));
                self.text.len() - 1
            })
    }
}

/// A sample's value as the text format writes it.
trait SampleValue {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()>;
}

impl SampleValue for u64 {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut buf = [0u8; 20];
        let mut at = buf.len();
        let mut n = *self;
        loop {
            at -= 1;
            buf[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.write_all(&buf[at..])
    }
}

impl SampleValue for u32 {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        u64::from(*self).write_to(out)
    }
}

impl SampleValue for usize {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        (*self as u64).write_to(out)
    }
}

impl<T: SampleValue> SampleValue for &T {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        (**self).write_to(out)
    }
}

impl SampleValue for f64 {
    fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        write!(out, "{self}")
    }
}

struct Out<W: Write>(W);

impl<W: Write> Out<W> {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> std::io::Result<()> {
        writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}")
    }

    /// One sample line. Written piece by piece, without the formatting machinery: a page
    /// at 19,000 functions has 228,000 of them.
    fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl SampleValue,
    ) -> std::io::Result<()> {
        self.0.write_all(name.as_bytes())?;
        if !labels.is_empty() {
            self.0.write_all(b"{")?;
            write_labels(&mut self.0, labels)?;
            self.0.write_all(b"}")?;
        }
        self.0.write_all(b" ")?;
        value.write_to(&mut self.0)?;
        self.0.write_all(b"\n")
    }

    /// One sample line with labels already rendered by [`label_text`], in parts.
    fn sample_with(
        &mut self,
        name: &str,
        labels: &[&str],
        value: impl SampleValue,
    ) -> std::io::Result<()> {
        self.0.write_all(name.as_bytes())?;
        for (i, part) in labels.iter().enumerate() {
            self.0.write_all(if i == 0 { b"{" } else { b"," })?;
            self.0.write_all(part.as_bytes())?;
        }
        self.0.write_all(b"} ")?;
        value.write_to(&mut self.0)?;
        self.0.write_all(b"\n")
    }

    fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &Histogram,
    ) -> std::io::Result<()> {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets.get(i).copied().unwrap_or(0);
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, cumulative)?;
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, h.count)?;
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds)?;
        self.sample(&format!("{name}_count"), labels, h.count)
    }
}

/// Renders every series into `out`.
pub fn render(page: &Page, out: impl Write) -> std::io::Result<()> {
    let Page {
        host,
        functions,
        peers,
        dns,
        dns_from_memory,
        http: requests,
        latencies: (activation, invocation),
        supervisors,
        egress_refused,
        async_calls,
    } = page;
    let mut o = Out(out);
    let d = &host.dataplane;
    let mut socket_labels = SocketLabels::default();
    let labels: Vec<RowLabels> = functions
        .iter()
        .map(|f| RowLabels::new(f, &mut socket_labels))
        .collect();

    // Per function socket, from the sk_lookup program's per-CPU counters and the kernel.
    let socket_series: [SocketSeries; 6] = [
        (
            "faasd_socket_lookups_total",
            "Connections and datagrams for the socket's address, port and protocol.",
            |c| c.lookups,
        ),
        (
            "faasd_socket_steered_total",
            "Lookups the sk_lookup program steered into the socket.",
            |c| c.steered,
        ),
        (
            "faasd_socket_no_socket_total",
            "Lookups refused because the binding had no socket (a stopped function while no faasd runs).",
            |c| c.no_socket,
        ),
        (
            "faasd_socket_policy_drops_total",
            "Lookups the function's source policy refused.",
            |c| c.policy_drops,
        ),
        (
            "faasd_socket_queue_overflows_total",
            "What the socket dropped because its queue was full: connections beyond the accept backlog (TCP), datagrams beyond the receive buffer (UDP).",
            |c| c.queue_drops,
        ),
        (
            "faasd_socket_queued",
            "What waits on the socket now: connections in the accept queue (TCP), bytes in the receive queue (UDP).",
            |c| c.queued,
        ),
    ];
    for (name, help, get) in socket_series {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        o.family(name, kind, help)?;
        for (f, l) in functions.iter().zip(&labels) {
            for (c, s) in f.sockets.iter().zip(&l.sockets) {
                o.sample_with(name, &[&l.function, &socket_labels.text[*s]], get(c))?;
            }
        }
    }
    o.family(
        "faasd_socket_queue_limit",
        "gauge",
        "The accept queue's limit of every function's TCP sockets, the listen backlog.",
    )?;
    o.sample("faasd_socket_queue_limit", &[], host.backlog)?;
    o.family(
        "faasd_sk_lookup_misses_total",
        "counter",
        "IPv6 lookups that matched no binding and fell through to the host's sockets.",
    )?;
    o.sample("faasd_sk_lookup_misses_total", &[], d.misses)?;
    o.family(
        "faasd_sk_lookup_ipv4_total",
        "counter",
        "IPv4 lookups, never steered (function addresses are IPv6).",
    )?;
    o.sample("faasd_sk_lookup_ipv4_total", &[], d.ipv4_passed)?;
    o.family(
        "faasd_xdp_packets_total",
        "counter",
        "Packets the XDP guard saw for the function prefix, by what it did.",
    )?;
    for (verdict, n) in [
        ("passed", d.xdp_passed),
        ("dropped_no_binding", d.xdp_dropped_no_binding),
        ("dropped_policy", d.xdp_dropped_policy),
    ] {
        o.sample("faasd_xdp_packets_total", &[("verdict", verdict)], n)?;
    }
    o.family(
        "faasd_open_files",
        "gauge",
        "Descriptors the daemon holds (every function socket is one).",
    )?;
    o.sample("faasd_open_files", &[], host.open_files.used)?;
    o.family(
        "faasd_open_files_limit",
        "gauge",
        "The daemon's limit of open descriptors (LimitNOFILE=): the most functions it can hold.",
    )?;
    o.sample("faasd_open_files_limit", &[], host.open_files.limit)?;
    o.family(
        "faasd_supervisor_wakeups_total",
        "counter",
        "Times a function supervisor woke up; a stopped function causes none.",
    )?;
    o.sample("faasd_supervisor_wakeups_total", &[], supervisors.wakeups)?;
    o.family(
        "faasd_functions_parked",
        "gauge",
        "Stopped functions waiting in the parking lot, with no task of their own.",
    )?;
    o.sample("faasd_functions_parked", &[], supervisors.parked)?;

    // Activation and instances.
    let per_function: [FunctionSeries; 5] = [
        (
            "faasd_function_activations_total",
            "counter",
            "Starts from zero caused by a pending connection or datagram.",
            |f| f.activations,
        ),
        (
            "faasd_function_restarts_total",
            "counter",
            "Instances started again after one failed.",
            |f| f.restarts,
        ),
        (
            "faasd_function_watchdog_kills_total",
            "counter",
            "Instances killed for missing WATCHDOG=1.",
            |f| f.watchdog_kills,
        ),
        (
            "faasd_function_instances",
            "gauge",
            "Running instances.",
            |f| f.instances.into(),
        ),
        (
            "faasd_function_ready_instances",
            "gauge",
            "Running instances that are ready.",
            |f| f.ready.into(),
        ),
    ];
    for (name, kind, help, get) in per_function {
        o.family(name, kind, help)?;
        for (f, l) in functions.iter().zip(&labels) {
            o.sample_with(name, &[&l.function], get(f))?;
        }
    }
    // Scaling with the load: only the functions that ask for it, so the default stays at
    // 12 samples a function.
    let autoscaled = || {
        functions
            .iter()
            .zip(&labels)
            .filter_map(|(f, l)| Some((f.autoscale.as_deref()?, l)))
    };
    o.family(
        "faasd_function_autoscale_target",
        "gauge",
        "Instances the autoscaler aims for (functions that scale with the load).",
    )?;
    for (a, l) in autoscaled() {
        o.sample_with("faasd_function_autoscale_target", &[&l.function], a.target)?;
    }
    o.family(
        "faasd_function_autoscale_load",
        "gauge",
        "The load the autoscaler measured last, by what it counts: open connections \
         (capacity), new connections a second (rps) or millicores (cpu).",
    )?;
    for (a, l) in autoscaled() {
        o.sample_with(
            "faasd_function_autoscale_load",
            &[&l.function, &format!("type=\"{}\"", a.kind)],
            a.load,
        )?;
    }
    o.family(
        "faasd_function_autoscale_decisions_total",
        "counter",
        "Changes of the autoscaler's target, by direction (the last one's reason is in describe).",
    )?;
    for (a, l) in autoscaled() {
        for (direction, n) in [("up", a.scaled_up), ("down", a.scaled_down)] {
            o.sample_with(
                "faasd_function_autoscale_decisions_total",
                &[&l.function, &format!("direction=\"{direction}\"")],
                n,
            )?;
        }
    }

    o.family(
        "faasd_activation_seconds",
        "histogram",
        "Activation latency on this host: the first pending connection seen to the instance ready.",
    )?;
    o.histogram("faasd_activation_seconds", &[], &activation.total)?;
    o.family(
        "faasd_activation_phase_seconds",
        "histogram",
        "Activation latency on this host by phase: runtime (connection seen to the program running) and init (running to ready).",
    )?;
    for (phase, h) in [("runtime", &activation.runtime), ("init", &activation.init)] {
        o.histogram("faasd_activation_phase_seconds", &[("phase", phase)], h)?;
    }
    o.family(
        "faasd_function_activation_seconds",
        "histogram",
        "Activation latency of the functions that keep their own (faasd.dev/latency-histograms).",
    )?;
    for f in functions {
        if let Some(h) = &f.histograms {
            o.histogram(
                "faasd_function_activation_seconds",
                &[("function", f.name()), ("namespace", f.namespace())],
                &h.0.total,
            )?;
        }
    }

    o.family(
        "faasd_dns_queries_total",
        "counter",
        "Queries the .faas zone answered, by query type and response code.",
    )?;
    for ((kind, rcode), n) in dns {
        o.sample(
            "faasd_dns_queries_total",
            &[("type", kind), ("rcode", rcode)],
            n,
        )?;
    }
    o.family(
        "faasd_dns_answers_from_memory_total",
        "counter",
        "Of those, UDP answers sent again from memory (the same query before, the zone unchanged since).",
    )?;
    o.sample("faasd_dns_answers_from_memory_total", &[], dns_from_memory)?;

    o.family(
        "faasd_egress_refused_total",
        "counter",
        "Connections and datagrams a function's egress policy refused, by reason (none, \
         faas: outside the platform, denied: a denied prefix); only functions that had any.",
    )?;
    for r in egress_refused {
        o.sample(
            "faasd_egress_refused_total",
            &[
                ("function", &r.function),
                ("namespace", &r.namespace),
                ("reason", r.reason),
            ],
            r.count,
        )?;
    }

    let a = async_calls;
    o.family(
        "faasd_async_queued",
        "gauge",
        "Async calls kept on disk: waiting to be made (call), or made with their callback not yet delivered (callback).",
    )?;
    for (stage, n) in [("call", a.calls_waiting), ("callback", a.callbacks_waiting)] {
        o.sample("faasd_async_queued", &[("stage", stage)], n)?;
    }
    o.family(
        "faasd_async_accepted_total",
        "counter",
        "Async calls accepted (and written to disk) since the daemon started.",
    )?;
    o.sample("faasd_async_accepted_total", &[], a.accepted)?;
    o.family(
        "faasd_async_callbacks_total",
        "counter",
        "Callbacks over, by result: delivered (2xx, 3xx), refused (4xx, not sent again), given_up (still failing after async-callback-retry-for).",
    )?;
    for (result, n) in [
        ("delivered", a.delivered),
        ("refused", a.refused),
        ("given_up", a.given_up),
    ] {
        o.sample("faasd_async_callbacks_total", &[("result", result)], n)?;
    }
    o.family(
        "faasd_async_callback_retries_total",
        "counter",
        "Callback deliveries that failed (no connection, 5xx, 408, 429) and were tried again.",
    )?;
    o.sample("faasd_async_callback_retries_total", &[], a.retries)?;

    // WireGuard peers.
    o.family(
        "faasd_wireguard_peer_handshake_age_seconds",
        "gauge",
        "Seconds since the peer's last handshake (absent before the first).",
    )?;
    for p in peers {
        if let Some(age) = p.last_handshake_secs_ago {
            o.sample(
                "faasd_wireguard_peer_handshake_age_seconds",
                &[("peer", &p.peer.name)],
                age,
            )?;
        }
    }
    for (name, help, get) in [
        (
            "faasd_wireguard_peer_received_bytes_total",
            "Bytes received from the peer.",
            (|p: &PeerStatus| p.rx_bytes) as fn(&PeerStatus) -> u64,
        ),
        (
            "faasd_wireguard_peer_sent_bytes_total",
            "Bytes sent to the peer.",
            |p: &PeerStatus| p.tx_bytes,
        ),
    ] {
        o.family(name, "counter", help)?;
        for p in peers {
            o.sample(name, &[("peer", &p.peer.name)], get(p))?;
        }
    }

    // The names OpenFaaS's gateway exports; functions are `name.namespace` there.
    o.family(
        "gateway_service_count",
        "gauge",
        "Ready instances of each function (OpenFaaS).",
    )?;
    for (f, l) in functions.iter().zip(&labels) {
        o.sample_with("gateway_service_count", &[&l.gateway], f.ready)?;
    }
    o.family(
        "gateway_function_invocation_total",
        "counter",
        "Calls through /function/ by status code (OpenFaaS).",
    )?;
    for (f, l) in functions.iter().zip(&labels) {
        for (code, count) in &f.invocation_codes {
            o.sample_with(
                "gateway_function_invocation_total",
                &[&l.gateway, &format!("code=\"{code}\"")],
                count,
            )?;
        }
    }
    o.family(
        "gateway_functions_seconds",
        "histogram",
        "Duration of calls through /function/ (OpenFaaS): the whole host without a function_name, and the functions that keep their own (faasd.dev/latency-histograms).",
    )?;
    o.histogram("gateway_functions_seconds", &[], invocation)?;
    for f in functions {
        if let Some(h) = &f.histograms {
            let name = f.gateway_name();
            o.histogram(
                "gateway_functions_seconds",
                &[("function_name", &name)],
                &h.1,
            )?;
        }
    }

    // The API's own requests, as OpenFaaS's providers export them.
    o.family(
        "provider_http_requests_total",
        "counter",
        "API requests by status code, method and route (OpenFaaS).",
    )?;
    for ((code, method, path), h) in requests {
        let code = code.to_string();
        o.sample(
            "provider_http_requests_total",
            &[("code", &code), ("method", method), ("path", path)],
            h.count,
        )?;
    }
    o.family(
        "provider_http_request_duration_seconds",
        "histogram",
        "API request durations by status code, method and route (OpenFaaS).",
    )?;
    for ((code, method, path), h) in requests {
        let code = code.to_string();
        o.histogram(
            "provider_http_request_duration_seconds",
            &[("code", &code), ("method", method), ("path", path)],
            h,
        )?;
    }
    o.0.flush()
}

#[cfg(test)]
mod tests {
    use super::{Out, SampleValue, label_text};

    #[test]
    fn samples_are_written_as_the_text_format_has_them() {
        let mut digits = Vec::new();
        for n in [0u64, 7, 10, 4_096, u64::MAX] {
            n.write_to(&mut digits).unwrap();
            digits.push(b' ');
        }
        assert_eq!(
            String::from_utf8(digits).unwrap(),
            "0 7 10 4096 18446744073709551615 "
        );
        let mut o = Out(Vec::new());
        o.sample("a_total", &[], 3u64).unwrap();
        o.sample("b", &[("function_name", "f.ns"), ("code", "200")], 0.25f64)
            .unwrap();
        o.sample("c", &[("v", "say \"hi\"\n")], 5u32).unwrap();
        let labels = label_text(&[("function", "f"), ("v", "a\\b")]);
        o.sample_with("d", &[&labels, "code=\"200\""], 1u64)
            .unwrap();
        assert_eq!(
            String::from_utf8(o.0).unwrap(),
            "a_total 3\nb{function_name=\"f.ns\",code=\"200\"} 0.25\nc{v=\"say \\\"hi\\\"\\n\"} 5\n\
             d{function=\"f\",v=\"a\\\\b\",code=\"200\"} 1\n"
        );
    }
}
