//! `/metrics` in the Prometheus text format: faasd's own series (`faasd_…`: the eBPF
//! counters per function socket, XDP, activation, instances, WireGuard peers) and the names
//! OpenFaaS dashboards already use (`gateway_…`). Labels are bounded: one series per
//! function, socket, peer or HTTP status, never per connection or client address.

use std::{collections::BTreeMap, fmt::Write, sync::Mutex};

use crate::{
    activation::{Histogram, LATENCY_BUCKETS},
    daemon::{FunctionStatus, HostStatus},
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

    fn snapshot(&self) -> BTreeMap<(u16, &'static str, String), Histogram> {
        self.0.lock().expect("http stats lock").clone()
    }
}

/// Everything `/metrics` reports, gathered by the daemon.
#[derive(Debug)]
pub struct Sources<'a> {
    /// Host and data plane.
    pub host: &'a HostStatus,
    /// Every function.
    pub functions: &'a [FunctionMetrics],
    /// WireGuard peers.
    pub peers: &'a [PeerStatus],
    /// DNS queries answered: (type, response code) → count.
    pub dns: &'a BTreeMap<(&'static str, &'static str), u64>,
    /// The API's requests.
    pub http: &'a HttpStats,
}

/// What `/metrics` needs of one function.
#[derive(Debug)]
pub struct FunctionMetrics {
    /// Its status (counters included).
    pub status: FunctionStatus,
    /// Calls through `/function/*` by HTTP status.
    pub invocation_codes: BTreeMap<u16, u64>,
    /// Their durations.
    pub invocation_seconds: Histogram,
}

/// A series of every function socket: name, help, and how to read it.
type SocketSeries = (
    &'static str,
    &'static str,
    fn(&crate::daemon::PortCounters) -> u64,
);
/// A series of every function: name, type, help, and how to read it.
type FunctionSeries = (
    &'static str,
    &'static str,
    &'static str,
    fn(&FunctionStatus) -> u64,
);

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        if l.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", l.join(","));
        }
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets.get(i).copied().unwrap_or(0);
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, h.count);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Renders every series.
pub fn render(src: &Sources<'_>) -> String {
    let Sources {
        host,
        functions,
        peers,
        dns,
        http,
    } = *src;
    let mut o = Out(String::new());
    let d = &host.dataplane;

    // Per function socket, from the sk_lookup program's per-CPU counters.
    let socket_series: [SocketSeries; 7] = [
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
        (
            "faasd_socket_queue_limit",
            "The accept queue's limit, the listen backlog (TCP).",
            |c| c.queue_limit,
        ),
    ];
    for (name, help, get) in socket_series {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        o.family(name, kind, help);
        for f in functions {
            let s = &f.status;
            for (c, p) in s.counters.iter().zip(&s.ports) {
                let proto = p.protocol.to_string();
                let port = p.port.to_string();
                o.sample(
                    name,
                    &[
                        ("function", &s.name),
                        ("namespace", &s.namespace),
                        ("socket", &c.name),
                        ("port", &port),
                        ("protocol", &proto),
                    ],
                    get(c),
                );
            }
        }
    }
    o.family(
        "faasd_sk_lookup_misses_total",
        "counter",
        "IPv6 lookups that matched no binding and fell through to the host's sockets.",
    );
    o.sample("faasd_sk_lookup_misses_total", &[], d.misses);
    o.family(
        "faasd_sk_lookup_ipv4_total",
        "counter",
        "IPv4 lookups, never steered (function addresses are IPv6).",
    );
    o.sample("faasd_sk_lookup_ipv4_total", &[], d.ipv4_passed);
    o.family(
        "faasd_xdp_packets_total",
        "counter",
        "Packets the XDP guard saw for the function prefix, by what it did.",
    );
    for (verdict, n) in [
        ("passed", d.xdp_passed),
        ("dropped_no_binding", d.xdp_dropped_no_binding),
        ("dropped_policy", d.xdp_dropped_policy),
    ] {
        o.sample("faasd_xdp_packets_total", &[("verdict", verdict)], n);
    }

    // Activation and instances.
    let per_function: [FunctionSeries; 5] = [
        (
            "faasd_function_activations_total",
            "counter",
            "Starts from zero caused by a pending connection or datagram.",
            |s| s.state.activations,
        ),
        (
            "faasd_function_restarts_total",
            "counter",
            "Instances started again after one failed.",
            |s| s.state.restarts,
        ),
        (
            "faasd_function_watchdog_kills_total",
            "counter",
            "Instances killed for missing WATCHDOG=1.",
            |s| s.state.watchdog_kills,
        ),
        (
            "faasd_function_instances",
            "gauge",
            "Running instances.",
            |s| s.replicas.into(),
        ),
        (
            "faasd_function_ready_instances",
            "gauge",
            "Running instances that are ready.",
            |s| s.available_replicas.into(),
        ),
    ];
    for (name, kind, help, get) in per_function {
        o.family(name, kind, help);
        for f in functions {
            let s = &f.status;
            o.sample(
                name,
                &[("function", &s.name), ("namespace", &s.namespace)],
                get(s),
            );
        }
    }
    o.family(
        "faasd_function_activation_seconds",
        "histogram",
        "Activation latency: the first pending connection seen to the instance ready.",
    );
    for f in functions {
        let s = &f.status;
        o.histogram(
            "faasd_function_activation_seconds",
            &[("function", &s.name), ("namespace", &s.namespace)],
            &s.state.activation_seconds,
        );
    }

    o.family(
        "faasd_function_activation_phase_seconds",
        "histogram",
        "Activation latency by phase: runtime (connection seen to the program running) and init (running to ready).",
    );
    for f in functions {
        let s = &f.status;
        let phases = &s.state.activation_phases;
        for (phase, h) in [("runtime", &phases.runtime), ("init", &phases.init)] {
            o.histogram(
                "faasd_function_activation_phase_seconds",
                &[
                    ("function", &s.name),
                    ("namespace", &s.namespace),
                    ("phase", phase),
                ],
                h,
            );
        }
    }

    o.family(
        "faasd_dns_queries_total",
        "counter",
        "Queries the .faas zone answered, by query type and response code.",
    );
    for ((kind, rcode), n) in dns {
        o.sample(
            "faasd_dns_queries_total",
            &[("type", kind), ("rcode", rcode)],
            n,
        );
    }

    // WireGuard peers.
    o.family(
        "faasd_wireguard_peer_handshake_age_seconds",
        "gauge",
        "Seconds since the peer's last handshake (absent before the first).",
    );
    for p in peers {
        if let Some(age) = p.last_handshake_secs_ago {
            o.sample(
                "faasd_wireguard_peer_handshake_age_seconds",
                &[("peer", &p.peer.name)],
                age,
            );
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
        o.family(name, "counter", help);
        for p in peers {
            o.sample(name, &[("peer", &p.peer.name)], get(p));
        }
    }

    // The names OpenFaaS's gateway exports; functions are `name.namespace` there.
    let fname = |s: &FunctionStatus| format!("{}.{}", s.name, s.namespace);
    o.family(
        "gateway_service_count",
        "gauge",
        "Ready instances of each function (OpenFaaS).",
    );
    for f in functions {
        let n = fname(&f.status);
        o.sample(
            "gateway_service_count",
            &[("function_name", &n)],
            f.status.available_replicas,
        );
    }
    o.family(
        "gateway_function_invocation_total",
        "counter",
        "Calls through /function/ by status code (OpenFaaS).",
    );
    for f in functions {
        let n = fname(&f.status);
        for (code, count) in &f.invocation_codes {
            let code = code.to_string();
            o.sample(
                "gateway_function_invocation_total",
                &[("function_name", &n), ("code", &code)],
                count,
            );
        }
    }
    o.family(
        "gateway_functions_seconds",
        "histogram",
        "Duration of calls through /function/ (OpenFaaS).",
    );
    for f in functions {
        let n = fname(&f.status);
        o.histogram(
            "gateway_functions_seconds",
            &[("function_name", &n)],
            &f.invocation_seconds,
        );
    }

    // The API's own requests, as OpenFaaS's providers export them.
    let requests = http.snapshot();
    o.family(
        "provider_http_requests_total",
        "counter",
        "API requests by status code, method and route (OpenFaaS).",
    );
    for ((code, method, path), h) in &requests {
        let code = code.to_string();
        o.sample(
            "provider_http_requests_total",
            &[("code", &code), ("method", method), ("path", path)],
            h.count,
        );
    }
    o.family(
        "provider_http_request_duration_seconds",
        "histogram",
        "API request durations by status code, method and route (OpenFaaS).",
    );
    for ((code, method, path), h) in &requests {
        let code = code.to_string();
        o.histogram(
            "provider_http_request_duration_seconds",
            &[("code", &code), ("method", method), ("path", path)],
            h,
        );
    }
    o.0
}
