//! What a function is: the OpenFaaS deploy request, validated at the edge, and the settings
//! faasd derives from its labels and annotations.
//!
//! | key (annotation unless noted) | meaning | default |
//! |---|---|---|
//! | `com.openfaas.scale.min` (label) | instances started at deploy and kept running; lower bound for `scale`, except 0 (scale to zero) | 0 |
//! | `com.openfaas.scale.max` (label) | upper bound for `scale` and for scaling with the load; above 1, the function scales with the load | 20 (no scaling with the load unless `scale.type` is set) |
//! | `com.openfaas.scale.zero` (label) | stop the function when idle | false |
//! | `com.openfaas.scale.zero-duration` (label) | idle time before stopping | 15m |
//! | `com.openfaas.scale.type` (label) | what the autoscaler aims for: `capacity` (open connections per instance), `rps` (new connections a second per instance) or `cpu` (millicores per instance) | capacity |
//! | `com.openfaas.scale.target` (label) | that, per instance | 1 (capacity), 50 (rps), 900 (cpu) |
//! | `com.openfaas.scale.target-proportion` (label) | the share of the target at which an instance counts as full: instances = ⌈load ÷ (target × proportion)⌉ | 0.90 |
//! | `faasd.dev/scale-down-delay` | time the load must have needed fewer instances before the extra ones stop | 30s |
//! | `faasd.dev/ports` | listening sockets, `name=port/proto,...` | `http=8080/tcp` |
//! | `faasd.dev/accept` | `true`: one instance per connection (inetd style) | false |
//! | `faasd.dev/max-connections` | concurrent instances with `accept` | 64 |
//! | `faasd.dev/notify` | `true`: ready only after READY=1 | false |
//! | `faasd.dev/watchdog` | WATCHDOG=1 interval; silence longer than this restarts | off |
//! | `faasd.dev/user` | user the function runs as | daemon's `user` |
//! | `faasd.dev/stop-timeout` | SIGTERM → SIGKILL grace | daemon's `stop-timeout` |
//! | `faasd.dev/image-port` | images: forward to this port the image binds itself | 8080 unless the image takes sockets |
//! | `faasd.dev/ip-address-allow` | client prefixes let in whatever the deny list says | none |
//! | `faasd.dev/ip-address-deny` | client prefixes refused unless allowed (`any` for all) | none |
//! | `faasd.dev/egress` | where the function may connect: `all`, `faas` (other functions and faasd's DNS only) or `none` | daemon's `egress` |
//! | `faasd.dev/egress-allow` | destination prefixes (IPv6 or IPv4) reachable whatever the deny list says | none |
//! | `faasd.dev/egress-deny` | destination prefixes refused unless allowed (`any` for all) | none |
//! | `faasd.dev/pids-max` | most tasks (processes and threads) of a process function's instance | none |
//! | `faasd.dev/latency-histograms` | `true`: this function's own activation and call latency histograms in `/metrics` (the host-wide ones are always there) | false |
//! | `faasd.dev/socket-activation` | images: `true` passes the sockets (LISTEN_FDS) to an image without faasd's label `dev.faasd.socket-activation`, `false` forwards to one that has it | the image's label |
//! | `faasd.dev/freeze-after` | idle time after which the function's instances are frozen (cgroup freezer) until the next connection thaws them; shorter than `com.openfaas.scale.zero-duration` | off |
//! | `faasd.dev/prepare` | `true`: while stopped, keep one instance set up (namespaces, cgroup, container task) and waiting for its sockets, so the first connection pays only the hand-over and the exec | false |
//! | `faasd.dev/spread` | in a cluster, `true`: run on `com.openfaas.scale.min` hosts (as many as its constraints admit), each serving its address | false |
//!
//! Functions take the OpenFaaS fields `limits` (`memory` like `128Mi`, `cpu` like `500m`,
//! enforced in the instance's cgroup), `readOnlyRootFilesystem` and `secrets` (mounted
//! read-only at `/var/openfaas/secrets/<name>`). `requests` is accepted and, on one
//! host with nothing to schedule, ignored.

use std::{net::Ipv6Addr, path::PathBuf, time::Duration};

use crate::strings::StringMap;

use serde::{Deserialize, Serialize};

use crate::image_ref::ImageRef;

/// The namespace functions land in when none is given (OpenFaaS's default).
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";
/// Most sockets one function may have.
pub const MAX_PORTS: usize = 32;
/// Prefix of faasd's own annotations.
pub const FAASD_PREFIX: &str = "faasd.dev/";

/// A deploy request is wrong; the message says what and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SpecError(pub String);

fn bad<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// The OpenFaaS `FunctionDeployment` body, as faas-cli sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    /// Function name (a DNS label).
    pub service: String,
    /// OCI image reference; a function with an image runs in a container.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub image: Option<String>,
    /// Namespace (a DNS label), default `openfaas-fn`.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub namespace: Option<String>,
    /// The command line of a process function; for an image, the command the activation
    /// shim runs instead of the image's own (or, for images that bind their own port, the
    /// `fprocess` of OpenFaaS's watchdog).
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub env_process: Option<String>,
    /// Environment of the function.
    #[serde(default)]
    pub env_vars: StringMap,
    /// Labels (OpenFaaS scaling labels are read from here); `null` reads as none.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub labels: StringMap,
    /// Annotations (faasd's own settings are read from here); `null` reads as none.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub annotations: StringMap,
    /// Secrets mounted into an instance at `/var/openfaas/secrets/<name>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Placement constraints; meaningless on one host, accepted and ignored like faasd CE.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Resource limits (`memory`, `cpu`), enforced for containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<serde_json::Value>,
    /// Resource requests; validated like `limits`, otherwise ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<serde_json::Value>,
    /// Read-only root filesystem; a container setting.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub read_only_root_filesystem: Option<bool>,
    /// Registry credentials; a container setting.
    #[serde(
        default,
        deserialize_with = "not_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub registry_auth: Option<String>,
    /// Docker Swarm's network; deprecated in the spec and ignored by every provider.
    #[serde(default, deserialize_with = "not_null", skip_serializing)]
    pub network: Option<String>,
}

/// An optional field that, when given, must hold a value: the spec marks these fields
/// non-nullable, so `null` is refused rather than read as absent.
pub fn not_null<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A map that may come as `null` (the spec marks labels and annotations nullable).
fn null_is_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<StringMap, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or_default())
}

/// Transport of a function socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A listening stream socket.
    Tcp,
    /// An unconnected datagram socket.
    Udp,
}

impl Protocol {
    /// The IP protocol number `sk_lookup` sees.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => faasd_common::proto::TCP,
            Self::Udp => faasd_common::proto::UDP,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

/// One listening socket of a function, named like systemd's `FileDescriptorName=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Name passed in LISTEN_FDNAMES.
    pub name: String,
    /// Port number, 1–65535.
    pub port: u16,
    /// Transport.
    pub protocol: Protocol,
}

/// A function's client policy (`faasd.dev/ip-address-allow`/`-deny`): IPv6 prefixes (address, length) allowed and denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Prefixes allowed; a match wins.
    pub allow: Vec<(Ipv6Addr, u8)>,
    /// Prefixes denied, unless allowed.
    pub deny: Vec<(Ipv6Addr, u8)>,
}

impl Policy {
    /// Whether there is anything to enforce.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

/// Where a function may connect (`faasd.dev/egress`, `-allow`, `-deny`). IPv4 prefixes are
/// held as IPv4-mapped IPv6 (`::ffff:0:0/96` and below).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// The mode, when the function names one (the daemon's default otherwise).
    pub mode: Option<EgressMode>,
    /// Destinations allowed; a match wins.
    pub allow: Vec<(Ipv6Addr, u8)>,
    /// Destinations denied, unless allowed.
    pub deny: Vec<(Ipv6Addr, u8)>,
}

/// `faasd.dev/egress`, and the daemon's `egress` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressMode {
    /// Anywhere: other functions, the host, the outside world.
    All,
    /// Only other functions (and faasd's DNS): the platform prefix `fd00:faa5::/32`.
    Faas,
    /// Nowhere: only its own loopback.
    None,
}

impl EgressMode {
    /// Parses `all`, `faas` or `none`.
    pub fn parse(key: &str, v: &str) -> Result<Self, SpecError> {
        match v.trim() {
            "all" => Ok(Self::All),
            "faas" => Ok(Self::Faas),
            "none" => Ok(Self::None),
            other => bad(format!("{key}: {other:?} is not one of all, faas, none")),
        }
    }
}

/// `com.openfaas.scale.type`: what `com.openfaas.scale.target` counts per instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleType {
    /// Connections open at once.
    Capacity,
    /// New connections a second.
    Rps,
    /// CPU time, in millicores.
    Cpu,
}

impl ScaleType {
    /// The label's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Capacity => "capacity",
            Self::Rps => "rps",
            Self::Cpu => "cpu",
        }
    }

    /// The target when the label gives none.
    fn default_target(self) -> u32 {
        match self {
            Self::Capacity => 1,
            Self::Rps => 50,
            Self::Cpu => 900,
        }
    }
}

/// Scaling with the load, for a function that sets `com.openfaas.scale.max` above 1 (or
/// names a `com.openfaas.scale.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoscale {
    /// What the target counts (`com.openfaas.scale.type`).
    pub kind: ScaleType,
    /// Per instance: open connections (capacity), new connections a second (rps) or
    /// millicores (cpu).
    pub target: u32,
    /// `com.openfaas.scale.target-proportion` in thousandths: an instance counts as full at
    /// this share of the target.
    pub proportion_milli: u32,
    /// How long the load must have needed fewer instances before the extra ones stop.
    pub scale_down_delay: Duration,
}

impl Autoscale {
    /// The load one instance carries when full: target × proportion.
    pub fn per_instance(&self) -> f64 {
        f64::from(self.target) * f64::from(self.proportion_milli) / 1000.0
    }

    /// The instances a load needs: ⌈load ÷ (target × proportion)⌉.
    pub fn instances_for(&self, load: f64) -> u32 {
        // A tiny excess over a whole number (float noise) does not add an instance.
        (load / self.per_instance() - 1e-9).ceil().max(0.0) as u32
    }

    /// `capacity`: the connections one instance carries when full, at least one.
    pub fn connections_per_instance(&self) -> u32 {
        (self.per_instance().floor() as u32).max(1)
    }
}

/// Settings derived from labels and annotations, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Sockets, in LISTEN_FDS order.
    pub ports: Vec<Port>,
    /// Instances kept running.
    pub min_scale: u32,
    /// Upper bound of instances.
    pub max_scale: u32,
    /// Idle time before the function is stopped, if it may be.
    pub scale_to_zero_after: Option<Duration>,
    /// Inetd-style: one instance per connection, at most this many at once.
    pub accept: Option<u32>,
    /// Scaling with the load between min and max (not with `accept`, which has its own).
    pub autoscale: Option<Autoscale>,
    /// Ready only after READY=1.
    pub notify: bool,
    /// WATCHDOG=1 interval.
    pub watchdog: Option<Duration>,
    /// User override.
    pub user: Option<String>,
    /// Grace period override.
    pub stop_timeout: Option<Duration>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    /// Most tasks (processes and threads) of an instance (process functions).
    pub pids_max: Option<u64>,
    /// The port an image binds itself, forwarded to instead of passing sockets.
    pub image_port: Option<u16>,
    /// Which clients may connect (systemd's IPAddressAllow/IPAddressDeny).
    pub policy: Policy,
    /// Where the function may connect.
    pub egress: Egress,
    /// Keep this function's own latency histograms in `/metrics`.
    pub latency_histograms: bool,
    /// In a cluster: run on `min_scale` hosts, not one.
    pub spread: bool,
    /// While stopped, keep one instance prepared: set up and waiting for its sockets.
    pub prepare: bool,
    /// Idle time after which the instances are frozen until the next connection.
    pub freeze_after: Option<Duration>,
    /// Images: whether the instance takes its sockets, when the deployment says so
    /// (else the image's label does).
    pub socket_activation: Option<bool>,
    /// Images that bind their own port: the HTTP path that answers 2xx once an instance
    /// is ready (`com.openfaas.ready.http.path`, as OpenFaaS's readiness probe).
    pub ready_path: Option<String>,
}

/// A function as faasd stores it: the request, validated, with its identity split out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// The request as received (for describe and for re-validation on load).
    pub deployment: Deployment,
    /// Program and arguments of a process function (empty for an image).
    pub argv: Vec<String>,
    /// The normalised image reference of a container function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl FunctionSpec {
    /// Validates a deploy request; a bare program name is looked up on faasd's PATH now.
    pub fn from_deployment(mut d: Deployment) -> Result<(Self, Settings), SpecError> {
        validate_label("function name", &d.service)?;
        let namespace = d
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
        validate_label("namespace", &namespace)?;
        d.namespace = Some(namespace.clone());
        let image = match d.image.as_deref().map(str::trim) {
            Some(i) if !i.is_empty() => Some(
                ImageRef::parse(i)
                    .map_err(|e| SpecError(format!("image {i:?}: {e}")))?
                    .to_string(),
            ),
            _ => None,
        };
        if d.registry_auth.is_some() {
            return bad("registryAuth: faasd takes registry credentials from \
                 <state-dir>/.docker/config.json (the format docker login and faas-cli \
                 registry-login write), never from a deployment; put them there");
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &d.secrets {
            validate_label("secret name", s)?;
            if !seen.insert(s) {
                return bad(format!("secrets: {s:?} is listed twice"));
            }
        }
        for k in d.env_vars.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad(format!("envVars: {k:?} is not a valid variable name"));
            }
            if k.starts_with("LISTEN_") || k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") {
                return bad(format!("envVars: {k} is set by faasd itself"));
            }
        }
        let argv = if image.is_some() {
            Vec::new()
        } else {
            let argv = split_command(d.env_process.as_deref().unwrap_or(""))?;
            vec![resolve_program(&argv[0])?]
                .into_iter()
                .chain(argv[1..].iter().cloned())
                .collect()
        };
        let settings = Settings::parse(&d)?;
        if image.is_some() && settings.accept.is_some() {
            return bad(
                "faasd.dev/accept: a container per connection is not supported; use a process \
                 function for inetd-style functions",
            );
        }
        if image.is_none() && settings.image_port.is_some() {
            return bad("faasd.dev/image-port applies to container images only");
        }
        if image.is_none() && settings.ready_path.is_some() {
            return bad(format!(
                "{READY_PATH_ANNOTATION} applies to container images only (a process \
                 function says it is ready with READY=1 and faasd.dev/notify=true)"
            ));
        }
        if image.is_none() && settings.socket_activation.is_some() {
            return bad(
                "faasd.dev/socket-activation applies to container images only (a process \
                 function always takes its sockets)",
            );
        }
        Ok((
            Self {
                name: d.service.clone(),
                namespace,
                deployment: d,
                argv,
                image,
            },
            settings,
        ))
    }

    /// `namespace/name`, unique on the host.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A fingerprint of the deployment (FNV-1a over its JSON, whose maps are ordered):
    /// recorded beside each running instance, so a restarted daemon adopts only instances
    /// of the version it is restoring.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_vec(&self.deployment).expect("deployments serialize");
        let hash = json.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// Names and namespaces are DNS labels: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn validate_label(what: &str, s: &str) -> Result<(), SpecError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        bad(format!(
            "{what} {s:?} is not a DNS label: use 1-63 characters of a-z, 0-9 and '-', \
             not starting or ending with '-'"
        ))
    }
}

/// Splits a command line on whitespace, honouring single and double quotes.
fn split_command(s: &str) -> Result<Vec<String>, SpecError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in s.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return bad("envProcess: unterminated quote");
    }
    if in_word {
        out.push(cur);
    }
    if out.is_empty() {
        return bad(
            "envProcess: a process function needs a command, e.g. \"/usr/local/bin/hello\"",
        );
    }
    Ok(out)
}

/// Finds the program now, so a typo fails the deploy rather than the first connection.
fn resolve_program(p: &str) -> Result<String, SpecError> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<PathBuf> = if p.contains('/') {
        vec![PathBuf::from(p)]
    } else {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).map(|d| d.join(p)).collect())
            .unwrap_or_default()
    };
    for c in &candidates {
        if let Ok(m) = std::fs::metadata(c)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            if !c.is_absolute() {
                return bad(format!("envProcess: {p} must be an absolute path"));
            }
            return Ok(c.to_string_lossy().into_owned());
        }
    }
    bad(format!(
        "envProcess: {p}: no such executable file on this host"
    ))
}

impl Settings {
    /// The settings of a deployment's labels and annotations (without looking for its
    /// program: a stored function whose program went missing must still be restored).
    pub fn parse(d: &Deployment) -> Result<Self, SpecError> {
        for k in d.annotations.keys().chain(d.labels.keys()) {
            if let Some(rest) = k.strip_prefix(FAASD_PREFIX)
                && !KNOWN_ANNOTATIONS.contains(&rest)
            {
                return bad(format!(
                    "unknown faasd setting {k:?}; known: {}",
                    KNOWN_ANNOTATIONS
                        .iter()
                        .map(|a| format!("{FAASD_PREFIX}{a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        let ann = |k: &str| {
            d.annotations
                .get(&format!("{FAASD_PREFIX}{k}"))
                .map(String::as_str)
        };
        let label = |k: &str| {
            d.labels
                .get(&format!("com.openfaas.scale.{k}"))
                .map(String::as_str)
        };

        let min_scale = parse_u32("com.openfaas.scale.min", label("min"), 0)?;
        let max_scale = parse_u32("com.openfaas.scale.max", label("max"), 20)?;
        if max_scale == 0 || min_scale > max_scale {
            return bad(format!(
                "com.openfaas.scale.min ({min_scale}) must not exceed com.openfaas.scale.max \
                 ({max_scale}), and max must be at least 1"
            ));
        }
        let zero = parse_bool("com.openfaas.scale.zero", label("zero"))?;
        let zero_after =
            parse_duration("com.openfaas.scale.zero-duration", label("zero-duration"))?
                .unwrap_or(Duration::from_secs(15 * 60));
        let accept = if parse_bool("faasd.dev/accept", ann("accept"))? {
            let max = parse_u32("faasd.dev/max-connections", ann("max-connections"), 64)?;
            if max == 0 {
                return bad("faasd.dev/max-connections must be at least 1");
            }
            Some(max)
        } else {
            if ann("max-connections").is_some() {
                return bad("faasd.dev/max-connections needs faasd.dev/accept: \"true\"");
            }
            None
        };
        let kind = match label("type").map(str::trim) {
            None | Some("capacity") => ScaleType::Capacity,
            Some("rps") => ScaleType::Rps,
            Some("cpu") => ScaleType::Cpu,
            Some(other) => {
                return bad(format!(
                    "com.openfaas.scale.type={other:?}: faasd scales by capacity (open \
                     connections per instance), rps (new connections a second per instance) \
                     or cpu (millicores per instance)"
                ));
            }
        };
        let scale_target = parse_u32(
            "com.openfaas.scale.target",
            label("target"),
            kind.default_target(),
        )?;
        if scale_target == 0 {
            return bad("com.openfaas.scale.target must be at least 1");
        }
        let proportion_milli = parse_proportion(label("target-proportion"))?;
        let scale_down_delay =
            parse_duration("faasd.dev/scale-down-delay", ann("scale-down-delay"))?
                .unwrap_or(Duration::from_secs(30));
        // Only where it is asked for, by a max or a type: a function with neither keeps the
        // one instance its first connection starts, as before scaling with the load existed.
        let asked = label("max").is_some() || label("type").is_some();
        let autoscale = (asked && max_scale > 1 && accept.is_none()).then_some(Autoscale {
            kind,
            target: scale_target,
            proportion_milli,
            scale_down_delay,
        });
        let ports = parse_ports(ann("ports").unwrap_or("http=8080/tcp"))?;
        if accept.is_some() && (ports.len() != 1 || ports[0].protocol != Protocol::Tcp) {
            return bad(
                "faasd.dev/accept needs exactly one tcp port (datagrams have no connections)",
            );
        }
        let user = ann("user").map(str::to_owned);
        if let Some(u) = &user
            && u.is_empty()
        {
            return bad("faasd.dev/user must not be empty");
        }
        let (memory_limit, cpu_millis) = parse_resources("limits", d.limits.as_ref())?;
        parse_resources("requests", d.requests.as_ref())?;
        let image_port = match ann("image-port") {
            None => None,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    return bad(format!(
                        "faasd.dev/image-port: {v:?} is not a port (1-65535)"
                    ));
                }
            },
        };
        if image_port.is_some() && ann("socket-activation").is_some_and(|v| v.trim() == "true") {
            return bad(
                "faasd.dev/image-port forwards to a port the image binds, while \
                 faasd.dev/socket-activation=true passes it the sockets: give one of them",
            );
        }
        if image_port.is_some() && (ports.len() != 1 || ports[0].protocol != Protocol::Tcp) {
            return bad(
                "faasd.dev/image-port forwards one tcp port: give faasd.dev/ports one tcp port",
            );
        }
        let ready_path = d.annotations.get(READY_PATH_ANNOTATION).cloned();
        if let Some(p) = &ready_path
            && (!p.starts_with('/')
                || p.bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control()))
        {
            return bad(format!(
                "{READY_PATH_ANNOTATION}: {p:?} is not a URL path (it starts with / and has no spaces)"
            ));
        }
        if let Some(v) = d.env_vars.get(MAX_INFLIGHT_ENV)
            && v.trim().parse::<u32>().is_err()
        {
            return bad(format!(
                "envVars {MAX_INFLIGHT_ENV}={v:?}: of-watchdog's limit of requests at once \
                 (and faasd's of connections an instance is given) is a whole number, 0 for \
                 none"
            ));
        }
        if ready_path.is_some() && ann("socket-activation").is_some_and(|v| v.trim() == "true") {
            return bad(format!(
                "{READY_PATH_ANNOTATION} is asked of an image that binds its own port, \
                 while faasd.dev/socket-activation=true passes it the sockets"
            ));
        }
        let prepare = parse_bool("faasd.dev/prepare", ann("prepare"))?;
        if prepare && accept.is_some() {
            return bad(
                "faasd.dev/prepare keeps one instance waiting for the function's sockets, \
                 while faasd.dev/accept starts one per connection: give one of them",
            );
        }
        let freeze_after = parse_duration("faasd.dev/freeze-after", ann("freeze-after"))?;
        if let Some(f) = freeze_after {
            if accept.is_some() {
                return bad(
                    "faasd.dev/freeze-after freezes idle instances that accept for themselves; \
                     with faasd.dev/accept each connection has its own instance",
                );
            }
            if zero && f >= zero_after {
                return bad(format!(
                    "faasd.dev/freeze-after ({f:?}) must be shorter than \
                     com.openfaas.scale.zero-duration ({zero_after:?}): the function stops then"
                ));
            }
        }
        let policy = Policy {
            allow: parse_prefixes("faasd.dev/ip-address-allow", ann("ip-address-allow"), false)?,
            deny: parse_prefixes("faasd.dev/ip-address-deny", ann("ip-address-deny"), false)?,
        };
        let egress = Egress {
            mode: ann("egress")
                .map(|v| EgressMode::parse("faasd.dev/egress", v))
                .transpose()?,
            allow: parse_prefixes("faasd.dev/egress-allow", ann("egress-allow"), true)?,
            deny: parse_prefixes("faasd.dev/egress-deny", ann("egress-deny"), true)?,
        };
        Ok(Self {
            policy,
            egress,
            memory_limit,
            cpu_millis,
            image_port,
            ports,
            min_scale,
            max_scale,
            scale_to_zero_after: zero.then_some(zero_after),
            accept,
            autoscale,
            notify: parse_bool("faasd.dev/notify", ann("notify"))?,
            watchdog: parse_duration("faasd.dev/watchdog", ann("watchdog"))?,
            user,
            pids_max: match ann("pids-max") {
                None => None,
                Some(v) => Some(v.trim().parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(
                    || {
                        SpecError(format!(
                            "faasd.dev/pids-max: {v:?} is not a positive number"
                        ))
                    },
                )?),
            },
            stop_timeout: parse_duration("faasd.dev/stop-timeout", ann("stop-timeout"))?,
            latency_histograms: parse_bool(
                "faasd.dev/latency-histograms",
                ann("latency-histograms"),
            )?,
            spread: parse_bool("faasd.dev/spread", ann("spread"))?,
            prepare,
            freeze_after,
            socket_activation: ann("socket-activation")
                .map(|v| parse_bool("faasd.dev/socket-activation", Some(v)))
                .transpose()?,
            ready_path,
        })
    }
}

/// OpenFaaS's annotation for the path its readiness probe asks.
pub const READY_PATH_ANNOTATION: &str = "com.openfaas.ready.http.path";

/// The environment variable of-watchdog takes its limit of requests at once from.
pub const MAX_INFLIGHT_ENV: &str = "max_inflight";

const KNOWN_ANNOTATIONS: &[&str] = &[
    "ports",
    "latency-histograms",
    "accept",
    "max-connections",
    "notify",
    "watchdog",
    "user",
    "stop-timeout",
    "image-port",
    "ip-address-allow",
    "ip-address-deny",
    "egress",
    "egress-allow",
    "egress-deny",
    "pids-max",
    "scale-down-delay",
    "spread",
    "prepare",
    "freeze-after",
    "socket-activation",
];

/// A list of prefixes, as systemd writes them: addresses or prefixes, or `any`, `localhost`,
/// `link-local`, `multicast`; separated by spaces or commas. Host bits are cleared. IPv4
/// (held as IPv4-mapped IPv6) only where `ipv4`: no IPv4 client reaches a function, but a
/// function may call IPv4 destinations.
fn parse_prefixes(
    key: &str,
    v: Option<&str>,
    ipv4: bool,
) -> Result<Vec<(Ipv6Addr, u8)>, SpecError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for item in v.split([' ', ',']).map(str::trim).filter(|i| !i.is_empty()) {
        let (addr, len) = match item {
            "any" => (Ipv6Addr::UNSPECIFIED, 0),
            "localhost" => (Ipv6Addr::LOCALHOST, 128),
            "link-local" => (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
            "multicast" => (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
            _ => {
                let (a, l) = item.split_once('/').unwrap_or((item, ""));
                if let Ok(v4) = a.parse::<std::net::Ipv4Addr>() {
                    if !ipv4 {
                        return bad(format!(
                            "{key}: {item} is IPv4; functions are reached over IPv6 only"
                        ));
                    }
                    let len: u8 = if l.is_empty() {
                        Some(32)
                    } else {
                        l.parse().ok()
                    }
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| SpecError(format!("{key}: {item:?} has a bad prefix length")))?;
                    let mask = if len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(len))
                    };
                    let masked = std::net::Ipv4Addr::from(u32::from(v4) & mask);
                    out.push((masked.to_ipv6_mapped(), 96 + len));
                    continue;
                }
                let l = if l.is_empty() { "128" } else { l };
                let addr: Ipv6Addr = a
                    .parse()
                    .map_err(|_| SpecError(format!("{key}: {item:?} is not an IPv6 prefix")))?;
                let len: u8 =
                    l.parse().ok().filter(|l| *l <= 128).ok_or_else(|| {
                        SpecError(format!("{key}: {item:?} has a bad prefix length"))
                    })?;
                (addr, len)
            }
        };
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len))
        };
        out.push((Ipv6Addr::from(u128::from(addr) & mask), len));
    }
    Ok(out)
}

/// OpenFaaS `limits`/`requests`: `{"memory": "128Mi", "cpu": "500m"}` (Kubernetes
/// quantities). Returns (bytes, thousandths of a CPU).
fn parse_resources(
    key: &str,
    v: Option<&serde_json::Value>,
) -> Result<(Option<u64>, Option<u64>), SpecError> {
    let Some(v) = v else { return Ok((None, None)) };
    let Some(obj) = v.as_object() else {
        return bad(format!(
            "{key}: expected an object like {{\"memory\": \"128Mi\"}}"
        ));
    };
    let mut memory = None;
    let mut cpu = None;
    for (k, v) in obj {
        let text = match v {
            serde_json::Value::String(s) => s.trim().to_owned(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return bad(format!("{key}.{k}: expected a quantity such as \"128Mi\"")),
        };
        if text.is_empty() {
            continue;
        }
        match k.as_str() {
            "memory" => {
                let b = parse_memory(&text).ok_or_else(|| {
                    SpecError(format!(
                        "{key}.memory: {text:?} is not a size like 128Mi, 1Gi or 500M"
                    ))
                })?;
                if b < 4 << 20 {
                    return bad(format!(
                        "{key}.memory: {text} is below the 4Mi a container needs"
                    ));
                }
                memory = Some(b);
            }
            "cpu" => {
                let m = parse_cpu(&text).ok_or_else(|| {
                    SpecError(format!(
                        "{key}.cpu: {text:?} is not a CPU amount like 500m or 1.5"
                    ))
                })?;
                if m == 0 {
                    return bad(format!("{key}.cpu: must be above zero"));
                }
                cpu = Some(m);
            }
            other => return bad(format!("{key}.{other}: faasd knows memory and cpu")),
        }
    }
    Ok((memory, cpu))
}

fn parse_memory(s: &str) -> Option<u64> {
    const UNITS: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mult) = UNITS
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let n: u64 = num.parse().ok()?;
    n.checked_mul(mult)
}

fn parse_cpu(s: &str) -> Option<u64> {
    if let Some(m) = s.strip_suffix('m') {
        return m.parse().ok();
    }
    let f: f64 = s.parse().ok()?;
    (0.0..1e6).contains(&f).then(|| (f * 1000.0).round() as u64)
}

fn parse_u32(key: &str, v: Option<&str>, default: u32) -> Result<u32, SpecError> {
    v.map_or(Ok(default), |v| {
        v.trim()
            .parse()
            .map_err(|_| SpecError(format!("{key}: {v:?} is not a whole number")))
    })
}

/// `com.openfaas.scale.target-proportion`, a share above 0 and at most 1, in thousandths.
fn parse_proportion(v: Option<&str>) -> Result<u32, SpecError> {
    let Some(v) = v else {
        return Ok(900);
    };
    match v.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(((p * 1000.0).round() as u32).max(1)),
        _ => bad(format!(
            "com.openfaas.scale.target-proportion={v:?}: give a share of the target above 0 \
             and at most 1, like 0.9"
        )),
    }
}

fn parse_bool(key: &str, v: Option<&str>) -> Result<bool, SpecError> {
    match v.map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => bad(format!("{key}: {v:?} is not \"true\" or \"false\"")),
    }
}

fn parse_duration(key: &str, v: Option<&str>) -> Result<Option<Duration>, SpecError> {
    let Some(v) = v else { return Ok(None) };
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        SpecError(format!(
            "{key}: {v:?} is not a duration like 30s or 15m ({e})"
        ))
    })?;
    if d.is_zero() {
        return bad(format!("{key}: must be longer than zero"));
    }
    Ok(Some(d))
}

/// `http=8080/tcp,dns=53/udp`; names follow systemd's FileDescriptorName rules.
fn parse_ports(s: &str) -> Result<Vec<Port>, SpecError> {
    let mut ports: Vec<Port> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let err = || {
            SpecError(format!(
                "faasd.dev/ports: {item:?} is not NAME=PORT/PROTO (e.g. http=8080/tcp)"
            ))
        };
        let (name, rest) = item.split_once('=').ok_or_else(err)?;
        let (port, proto) = rest.split_once('/').unwrap_or((rest, "tcp"));
        let port: u16 = port.parse().map_err(|_| {
            SpecError(format!(
                "faasd.dev/ports: {port:?} is not a port number (1-65535)"
            ))
        })?;
        if port == 0 {
            return bad("faasd.dev/ports: port 0 is not a port; use 1-65535");
        }
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => {
                return bad(format!(
                    "faasd.dev/ports: protocol {proto:?} is not tcp or udp"
                ));
            }
        };
        let name_ok = !name.is_empty()
            && name.len() <= 255
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok || ["unknown", "stored", "connection"].contains(&name) {
            return bad(format!(
                "faasd.dev/ports: {name:?} is not a usable socket name (printable, no ':', \
                 not unknown/stored/connection)"
            ));
        }
        if ports
            .iter()
            .any(|p| p.port == port && p.protocol == protocol)
        {
            return bad(format!(
                "faasd.dev/ports: {port}/{protocol} is listed twice"
            ));
        }
        if ports.iter().any(|p| p.name == name) {
            return bad(format!("faasd.dev/ports: the name {name:?} is used twice"));
        }
        ports.push(Port {
            name: name.into(),
            port,
            protocol,
        });
    }
    if ports.len() > MAX_PORTS {
        return bad(format!(
            "faasd.dev/ports: at most {MAX_PORTS} ports per function"
        ));
    }
    if ports.is_empty() {
        return bad("faasd.dev/ports: a function needs at least one port");
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(name: &str) -> Deployment {
        Deployment {
            service: name.into(),
            env_process: Some("/bin/true".into()),
            ..Default::default()
        }
    }

    #[test]
    fn max_inflight_must_be_a_whole_number() {
        let mut d = deployment("watchdog");
        d.env_process = None;
        d.image = Some("localhost/app:1".into());
        for good in ["0", "4", " 8 "] {
            d.env_vars.insert(MAX_INFLIGHT_ENV.into(), good.into());
            assert!(FunctionSpec::from_deployment(d.clone()).is_ok(), "{good:?}");
        }
        for bad in ["", "-1", "four", "1.5"] {
            d.env_vars.insert(MAX_INFLIGHT_ENV.into(), bad.into());
            let e = FunctionSpec::from_deployment(d.clone()).unwrap_err();
            assert!(e.to_string().contains("whole number"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn prepare_and_freeze_after_are_refused_where_they_cannot_work() {
        let with = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| {
            let mut d = deployment("f");
            d.labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            d.annotations = annotations
                .iter()
                .map(|(k, v)| (format!("faasd.dev/{k}"), v.to_string()))
                .collect();
            FunctionSpec::from_deployment(d).map(|(_, s)| s)
        };
        let zero = [
            ("com.openfaas.scale.zero", "true"),
            ("com.openfaas.scale.zero-duration", "1s"),
        ];
        let s = with(&zero, &[("freeze-after", "200ms"), ("prepare", "true")]).unwrap();
        assert_eq!(s.freeze_after, Some(Duration::from_millis(200)));
        assert!(s.prepare);
        for (labels, annotations, says) in [
            (
                &zero[..],
                &[("freeze-after", "1s")][..],
                "must be shorter than",
            ),
            (
                &[][..],
                &[("accept", "true"), ("freeze-after", "5s")][..],
                "its own instance",
            ),
            (
                &[][..],
                &[("freeze-after", "soon")][..],
                "faasd.dev/freeze-after",
            ),
            (
                &[][..],
                &[("accept", "true"), ("prepare", "true")][..],
                "give one of them",
            ),
            (&[][..], &[("prepare", "yes")][..], "faasd.dev/prepare"),
        ] {
            let e = with(labels, annotations).unwrap_err().to_string();
            assert!(e.contains(says), "{annotations:?}: {e}");
        }
    }

    #[test]
    fn names_must_be_dns_labels() {
        for bad in ["", "Hello", "a_b", "-a", "a-", &"a".repeat(64)] {
            assert!(
                FunctionSpec::from_deployment(deployment(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(FunctionSpec::from_deployment(deployment("a-1")).is_ok());
    }

    #[test]
    fn defaults_are_socket_activated_http_on_8080() {
        let (spec, s) = FunctionSpec::from_deployment(deployment("hello")).unwrap();
        assert_eq!(spec.namespace, DEFAULT_NAMESPACE);
        assert_eq!(spec.argv, vec!["/bin/true".to_string()]);
        assert_eq!(
            s.ports,
            vec![Port {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp
            }]
        );
        assert_eq!(
            (s.min_scale, s.scale_to_zero_after, s.accept),
            (0, None, None)
        );
    }

    #[test]
    fn ports_are_validated() {
        let with = |p: &str| {
            let mut d = deployment("f");
            d.annotations.insert("faasd.dev/ports".into(), p.into());
            FunctionSpec::from_deployment(d).map(|(_, s)| s.ports)
        };
        assert_eq!(with("a=53/udp,b=53/tcp").unwrap().len(), 2);
        for p in [
            "a=0",
            "a=65536",
            "a=80/sctp",
            "a=1,a=2",
            "a=1,b=1",
            "a:b=1",
            "x",
            "",
        ] {
            assert!(with(p).is_err(), "{p}");
        }
    }

    #[test]
    fn scaling_labels_follow_openfaas() {
        let mut d = deployment("f");
        d.labels
            .insert("com.openfaas.scale.zero".into(), "true".into());
        d.labels
            .insert("com.openfaas.scale.zero-duration".into(), "2s".into());
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        assert_eq!(s.scale_to_zero_after, Some(Duration::from_secs(2)));
        d.labels
            .insert("com.openfaas.scale.min".into(), "30".into());
        assert!(FunctionSpec::from_deployment(d).is_err());
    }

    #[test]
    fn unknown_settings_and_fields_are_reported() {
        let mut d = deployment("f");
        d.annotations.insert("faasd.dev/portz".into(), "x".into());
        let e = FunctionSpec::from_deployment(d).unwrap_err();
        assert!(e.0.contains("faasd.dev/portz"), "{e}");
        let e = serde_json::from_str::<Deployment>(r#"{"service":"f","sevrice":"g"}"#).unwrap_err();
        assert!(e.to_string().contains("sevrice"));
    }

    #[test]
    fn command_lines_split_with_quotes_and_missing_programs_fail() {
        assert_eq!(split_command(r#"a 'b c' "d""#).unwrap(), ["a", "b c", "d"]);
        assert!(split_command("a 'b").is_err());
        let mut d = deployment("f");
        d.env_process = Some("/nonexistent/prog".into());
        assert!(
            FunctionSpec::from_deployment(d)
                .unwrap_err()
                .0
                .contains("no such executable")
        );
    }

    #[test]
    fn fingerprints_tell_versions_apart() {
        let (a, _) = FunctionSpec::from_deployment(deployment("f")).unwrap();
        let mut d = deployment("f");
        d.env_vars.insert("VERSION".into(), "2".into());
        let (b, _) = FunctionSpec::from_deployment(d).unwrap();
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn limits_and_secrets_apply_to_processes_and_images() {
        let mut d = deployment("f");
        d.limits = Some(serde_json::json!({"memory": "64Mi", "cpu": "250m"}));
        d.annotations
            .insert("faasd.dev/pids-max".into(), "32".into());
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        assert_eq!(
            (s.memory_limit, s.cpu_millis, s.pids_max),
            (Some(64 << 20), Some(250), Some(32))
        );
        d.annotations
            .insert("faasd.dev/pids-max".into(), "0".into());
        assert!(
            FunctionSpec::from_deployment(d.clone())
                .unwrap_err()
                .0
                .contains("pids-max")
        );
        d.annotations
            .insert("faasd.dev/pids-max".into(), "32".into());
        d.env_process = None;
        d.image = Some("localhost/hello".into());
        d.secrets = vec!["api-key".into()];
        let (spec, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        assert_eq!(spec.image.as_deref(), Some("localhost/hello:latest"));
        assert!(spec.argv.is_empty());
        assert_eq!((s.memory_limit, s.cpu_millis), (Some(64 << 20), Some(250)));
        d.limits = Some(serde_json::json!({"memory": "lots"}));
        assert!(
            FunctionSpec::from_deployment(d.clone())
                .unwrap_err()
                .0
                .contains("memory")
        );
        d.limits = None;
        d.image = Some("Not A Reference".into());
        assert!(
            FunctionSpec::from_deployment(d)
                .unwrap_err()
                .0
                .contains("image")
        );
    }

    #[test]
    fn address_policies_parse_like_systemd_and_refuse_ipv4() {
        let p = |v: &str| parse_prefixes("k", Some(v), false);
        assert_eq!(p("any").unwrap(), vec![(Ipv6Addr::UNSPECIFIED, 0)]);
        assert_eq!(
            p("fd00:faa5:0:100::7/64, localhost").unwrap(),
            vec![
                ("fd00:faa5:0:100::".parse().unwrap(), 64),
                (Ipv6Addr::LOCALHOST, 128)
            ]
        );
        assert!(p("10.0.0.0/8").unwrap_err().0.contains("IPv4"));
        assert!(p("fd00::/129").is_err());
        assert!(p("nonsense").is_err());
    }

    #[test]
    fn egress_takes_a_mode_and_ipv4_prefixes_as_mapped_ipv6() {
        let p = |v: &str| parse_prefixes("k", Some(v), true);
        assert_eq!(
            p("10.1.2.3/8 192.0.2.7").unwrap(),
            vec![
                ("::ffff:10.0.0.0".parse().unwrap(), 104),
                ("::ffff:192.0.2.7".parse().unwrap(), 128)
            ]
        );
        assert!(p("10.0.0.0/33").is_err());
        let mut d = deployment("f");
        d.annotations
            .insert("faasd.dev/egress".into(), "faas".into());
        d.annotations
            .insert("faasd.dev/egress-deny".into(), "any".into());
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        assert_eq!(s.egress.mode, Some(EgressMode::Faas));
        assert_eq!(s.egress.deny, vec![(Ipv6Addr::UNSPECIFIED, 0)]);
        d.annotations
            .insert("faasd.dev/egress".into(), "some".into());
        let e = FunctionSpec::from_deployment(d).unwrap_err().0;
        assert!(e.contains("all, faas, none"), "{e}");
    }

    #[test]
    fn autoscaling_is_asked_for_by_a_max_or_a_type() {
        let mut d = deployment("f");
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        assert_eq!(
            s.autoscale, None,
            "the default max alone does not autoscale"
        );
        d.labels.insert("com.openfaas.scale.max".into(), "4".into());
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        let a = s.autoscale.unwrap();
        assert_eq!(
            (a.kind, a.target, a.proportion_milli),
            (ScaleType::Capacity, 1, 900)
        );
        assert_eq!(a.scale_down_delay, Duration::from_secs(30));
        d.labels
            .insert("com.openfaas.scale.type".into(), "rps".into());
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        assert_eq!(s.autoscale.unwrap().target, 50, "rps's default target");
        d.labels
            .insert("com.openfaas.scale.target".into(), "500".into());
        d.labels
            .insert("com.openfaas.scale.target-proportion".into(), "0.5".into());
        d.labels
            .insert("com.openfaas.scale.type".into(), "cpu".into());
        let (_, s) = FunctionSpec::from_deployment(d.clone()).unwrap();
        let a = s.autoscale.unwrap();
        assert_eq!(
            (a.kind, a.target, a.proportion_milli),
            (ScaleType::Cpu, 500, 500)
        );
        // 600 millicores at 250 per instance: 3 instances.
        assert_eq!(a.instances_for(600.0), 3);
        assert_eq!(a.instances_for(500.0), 2);
        assert_eq!(a.instances_for(0.0), 0);
        // A type without a max: up to the default max.
        let mut typed = deployment("t");
        typed
            .labels
            .insert("com.openfaas.scale.type".into(), "capacity".into());
        let (_, s) = FunctionSpec::from_deployment(typed).unwrap();
        assert!(s.autoscale.is_some());
        assert_eq!(s.max_scale, 20);
        for bad in ["0", "1.5", "most"] {
            d.labels
                .insert("com.openfaas.scale.target-proportion".into(), bad.into());
            let e = FunctionSpec::from_deployment(d.clone()).unwrap_err().0;
            assert!(e.contains("above 0"), "{bad}: {e}");
        }
        d.labels
            .insert("com.openfaas.scale.target-proportion".into(), "1".into());
        d.labels
            .insert("com.openfaas.scale.type".into(), "memory".into());
        let e = FunctionSpec::from_deployment(d).unwrap_err().0;
        assert!(e.contains("capacity"), "{e}");
    }

    #[test]
    fn quantities_follow_kubernetes() {
        assert_eq!(parse_memory("128Mi"), Some(128 << 20));
        assert_eq!(parse_memory("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory("4096"), Some(4096));
        assert_eq!(parse_memory("1.5Gi"), None);
        assert_eq!(parse_cpu("500m"), Some(500));
        assert_eq!(parse_cpu("1.5"), Some(1500));
        assert_eq!(parse_cpu("x"), None);
    }

    #[test]
    fn accept_mode_needs_one_tcp_port() {
        let mut d = deployment("f");
        d.annotations
            .insert("faasd.dev/accept".into(), "true".into());
        assert_eq!(
            FunctionSpec::from_deployment(d.clone()).unwrap().1.accept,
            Some(64)
        );
        d.annotations
            .insert("faasd.dev/ports".into(), "d=53/udp".into());
        assert!(FunctionSpec::from_deployment(d).is_err());
    }
}
