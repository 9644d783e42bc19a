//! Daemon configuration: embedded defaults, overridden by a TOML file, overridden by flags.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::spec::EgressMode;

/// Where the config file is read from when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/faasd/config.toml";

/// The `user` that gives each function a uid (and gid) of its own, as systemd's
/// `DynamicUser=` does.
pub const DYNAMIC_USER: &str = "dynamic";

/// containerd's own default socket.
pub const DEFAULT_CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("config: {0}")]
    Invalid(String),
}

/// Everything the daemon can be told. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Config {
    /// Durable state: functions and address allocations.
    pub state_dir: PathBuf,
    /// Volatile state: the API socket, the notify socket, running instances.
    pub runtime_dir: PathBuf,
    /// Each process function's own writable directory, `<data-dir>/<namespace>/<name>`
    /// (its `STATE_DIRECTORY`), kept until the function is removed.
    pub data_dir: PathBuf,
    /// TCP addresses the API listens on, with basic auth on `/system` (the unix socket is
    /// always served, without).
    pub api: Vec<SocketAddr>,
    /// This host's function prefix; each function gets one /128 from it.
    pub function_prefix: Ipv6Net,
    /// Listen backlog of every function TCP socket.
    pub backlog: u32,
    /// User process functions run as unless a function names another: [`DYNAMIC_USER`]
    /// (each function a uid of its own, see [`Config::dynamic_uid`]), or a user's name.
    pub user: String,
    /// The first uid of the dynamic users: a function's uid is this plus its address's
    /// number in the prefix, which is never reused.
    pub dynamic_uid_base: u32,
    /// cgroup (under the unified hierarchy) that holds the functions' cgroups.
    pub cgroup_parent: String,
    /// Root of the BPF filesystem; pins go under `<bpffs>/faasd/<netns inode>/`.
    pub bpffs: PathBuf,
    /// Stop running function instances when the daemon exits (the default leaves them
    /// serving, so a daemon restart does not interrupt them).
    pub stop_functions_on_exit: bool,
    /// Allow functions without an image: host programs run as `user`. Off, every function
    /// needs an image (an API caller then cannot start programs on the host).
    pub process_functions: bool,
    /// Time a function gets between SIGTERM and SIGKILL, unless it sets its own.
    #[serde(with = "humantime_serde_compat")]
    pub stop_timeout: Duration,
    /// Time a `faasd.dev/notify` function gets to send READY=1 before it is killed.
    #[serde(with = "humantime_serde_compat")]
    pub start_timeout: Duration,
    /// containerd's socket, for functions deployed from images.
    pub containerd: PathBuf,
    /// The OCI runtime containerd's shim runs containers with: `runc` or `crun`.
    pub oci_runtime: String,
    /// Where the `.faas` zone is served (UDP and TCP on each); empty: no DNS.
    pub dns: Vec<SocketAddr>,
    /// The address `ns.faas` answers with: this host on the WireGuard network.
    pub dns_host: Ipv6Addr,
    /// Also write the zone here (RFC 1035 form, for CoreDNS), atomically, shortly after
    /// every change.
    pub zone_file: Option<PathBuf>,
    /// Bring up the WireGuard interface peers reach the functions through.
    pub wireguard: bool,
    /// Its name.
    pub wireguard_interface: String,
    /// Its UDP port.
    pub wireguard_port: u16,
    /// `host:port` written into peers' configurations; found from the host's addresses
    /// when unset.
    pub wireguard_endpoint: Option<String>,
    /// Interfaces besides the WireGuard one that get the XDP guard (an uplink, say).
    pub xdp_interfaces: Vec<String>,
    /// Where on those interfaces the guard runs.
    pub guard_hook: GuardHook,
    /// Where functions may connect unless they say (`faasd.dev/egress`): `all`, `faas`
    /// or `none`.
    pub egress: EgressMode,
    /// IPv4 addresses of running instances, one each, masqueraded on the way out.
    pub egress_ipv4: Ipv4Net,
    /// IPv6 addresses of running instances: inside `function-prefix`, so other functions
    /// answer them directly; masqueraded when they leave the platform.
    pub egress_ipv6: Ipv6Net,
    /// Network namespaces kept prepared for instances that call out, so a start does not
    /// wait for one to be made.
    pub egress_pool: u32,
    /// How long the host's NAT for calls out stays installed after the last instance
    /// that could call out has gone: while it is installed, connection tracking runs on
    /// every packet of the host.
    #[serde(with = "humantime_serde_compat")]
    pub egress_nat_idle: Duration,
    /// The resolvers faasd's DNS forwards names outside `faas.` to.
    pub resolv_conf: PathBuf,
    /// Where the CA certificates of registries are, as Docker keeps them:
    /// `<dir>/<host[:port]>/*.crt`.
    pub registry_certs_dir: PathBuf,
    /// The most async calls kept at once (made or waiting, their callbacks included);
    /// more are refused until the queue drains.
    pub async_queue_limit: u32,
    /// How long a failed callback is tried again after its call was made.
    #[serde(with = "humantime_serde_compat")]
    pub async_callback_retry_for: Duration,
    /// Joining a cluster; without it this host is alone, with its state on its own disk.
    pub cluster: Option<ClusterConfig>,
}

/// The hook the guard (the program that drops packets for the function prefix that no
/// binding holds) runs at on each guarded interface. Both see every packet before the
/// stack does and count the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuardHook {
    /// tcx where the kernel has it, else XDP.
    Auto,
    /// XDP in generic mode, which works on every device and kernel.
    Xdp,
    /// tcx ingress (Linux 6.6 or later): the same point of the receive path for devices
    /// that hand the stack socket buffers, without generic XDP's copy of each packet
    /// short of headroom.
    Tc,
}

impl std::fmt::Display for GuardHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Xdp => "xdp",
            Self::Tc => "tc",
        })
    }
}

/// `[cluster]`: the etcd that holds the cluster's state, and this host's place in it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// The etcd members' client URLs, like `http://10.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// This host's name in the cluster; the machine's host name when unset.
    #[serde(default)]
    pub name: Option<String>,
    /// This host's labels, which functions' `constraints` select on.
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// How long this host's registration outlives its last keep-alive.
    #[serde(default = "default_lease_ttl", with = "humantime_serde_compat")]
    pub lease_ttl: Duration,
    /// The most functions the scheduler places on this host (each host's share of its
    /// capacity decides where a function goes).
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// How long the scheduler waits after a host's lease expired before it places the
    /// host's functions elsewhere: the time a host cut off from etcd has to stop serving
    /// them (it starts when its registration lapses).
    #[serde(default = "default_move_after", with = "humantime_serde_compat")]
    pub move_after: Duration,
    /// The CA of the members' certificates, for `https://` endpoints.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This host's client certificate, when etcd asks for one (with `key`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The cluster's key, the same file on every host (32 random bytes, base64): secrets
    /// are kept in etcd sealed with it. Without it, secrets cannot be managed.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

/// A host's default capacity: the functions one host was measured with (`cargo xtask
/// bench scale`), under the 20,000 open files a process may have here.
pub const DEFAULT_CAPACITY: u32 = 19_000;

fn default_capacity() -> u32 {
    DEFAULT_CAPACITY
}

fn default_move_after() -> Duration {
    Duration::from_secs(10)
}

impl Default for Config {
    fn default() -> Self {
        let (addr, len) = faasd_common::plan::DEFAULT_FUNCTION_PREFIX;
        Self {
            state_dir: "/var/lib/faasd".into(),
            runtime_dir: "/run/faasd".into(),
            data_dir: "/var/lib/faasd-functions".into(),
            api: vec![SocketAddr::from((faasd_common::plan::HOST_ADDRESS, 8080))],
            function_prefix: Ipv6Net { addr, len },
            backlog: 4096,
            user: DYNAMIC_USER.into(),
            dynamic_uid_base: 1_000_000_000,
            bpffs: "/sys/fs/bpf".into(),
            cgroup_parent: "faasd".into(),
            stop_functions_on_exit: false,
            process_functions: true,
            stop_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(30),
            containerd: DEFAULT_CONTAINERD_SOCKET.into(),
            oci_runtime: "runc".into(),
            dns: vec![SocketAddr::from((faasd_common::plan::HOST_ADDRESS, 53))],
            dns_host: faasd_common::plan::HOST_ADDRESS,
            zone_file: None,
            wireguard: true,
            wireguard_interface: "wg-faas".into(),
            wireguard_port: 51820,
            wireguard_endpoint: None,
            xdp_interfaces: Vec::new(),
            guard_hook: GuardHook::Auto,
            egress: EgressMode::All,
            egress_ipv4: Ipv4Net {
                addr: Ipv4Addr::new(10, 250, 0, 0),
                len: 16,
            },
            egress_ipv6: Ipv6Net {
                addr: Ipv6Addr::new(0xfd00, 0xfaa5, 1, 0xffff, 0, 0, 0, 0),
                len: 64,
            },
            egress_pool: 4,
            egress_nat_idle: Duration::from_secs(300),
            resolv_conf: "/etc/resolv.conf".into(),
            registry_certs_dir: "/etc/docker/certs.d".into(),
            async_queue_limit: 100_000,
            async_callback_retry_for: Duration::from_secs(600),
            cluster: None,
        }
    }
}

impl Config {
    /// The registry credentials, where `docker login` and `faas-cli registry-login` write
    /// them for OpenFaaS's faasd: `<state-dir>/.docker/config.json`.
    pub fn docker_config(&self) -> PathBuf {
        self.state_dir.join(".docker/config.json")
    }

    /// The uid (and gid) of the function at `address` when it runs as a dynamic user:
    /// stable for the function's life, and another function's never (addresses are never
    /// reused), up to 2³² − `dynamic-uid-base` functions.
    pub fn dynamic_uid(&self, address: Ipv6Addr) -> u32 {
        let number = u128::from(address).wrapping_sub(u128::from(self.function_prefix.addr));
        self.dynamic_uid_base.wrapping_add(number as u32)
    }

    /// Reads `path`, or the default file if `path` is `None` and it exists, else defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config: Self =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path, source })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(16..=112).contains(&self.function_prefix.len) {
            return Err(ConfigError::Invalid(format!(
                "function-prefix /{} must be between /16 and /112",
                self.function_prefix.len
            )));
        }
        if self.cgroup_parent.is_empty()
            || self
                .cgroup_parent
                .split('/')
                .any(|c| c.is_empty() || c == "..")
        {
            return Err(ConfigError::Invalid(format!(
                "cgroup-parent {:?} must be a relative path like faasd",
                self.cgroup_parent
            )));
        }
        if !["runc", "crun"].contains(&self.oci_runtime.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "oci-runtime {:?}: use runc or crun",
                self.oci_runtime
            )));
        }
        let ifname_ok = !self.wireguard_interface.is_empty()
            && self.wireguard_interface.len() < 16
            && self
                .wireguard_interface
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ifname_ok {
            return Err(ConfigError::Invalid(format!(
                "wireguard-interface {:?}: 1-15 characters of a-z, 0-9, '-', '_', '.'",
                self.wireguard_interface
            )));
        }
        if self.backlog == 0 {
            return Err(ConfigError::Invalid("backlog must be at least 1".into()));
        }
        if self.async_queue_limit == 0 {
            return Err(ConfigError::Invalid(
                "async-queue-limit 0 would refuse every async call: give at least 1".into(),
            ));
        }
        if !self.function_prefix.contains(self.egress_ipv6.addr)
            || self.egress_ipv6.len < self.function_prefix.len
            || self.egress_ipv6.len > 112
        {
            return Err(ConfigError::Invalid(format!(
                "egress-ipv6 {} must be a /{}../112 inside function-prefix {}, such as its \
                 last /64",
                self.egress_ipv6, self.function_prefix.len, self.function_prefix
            )));
        }
        if self.data_dir.starts_with("/tmp") {
            return Err(ConfigError::Invalid(format!(
                "data-dir {} is under /tmp: process instances get a private /tmp, where it \
                 would be hidden from them; put it elsewhere (the default is \
                 /var/lib/faasd-functions)",
                self.data_dir.display()
            )));
        }
        if let Some(c) = &self.cluster {
            if c.endpoints.is_empty() {
                return Err(ConfigError::Invalid(
                    "[cluster] endpoints is empty: name the etcd members' client URLs".into(),
                ));
            }
            if c.capacity == 0 {
                return Err(ConfigError::Invalid(
                    "[cluster] capacity 0 would take no function: give at least 1".into(),
                ));
            }
            if c.move_after < Duration::from_secs(1) {
                return Err(ConfigError::Invalid(format!(
                    "[cluster] move-after {:?} leaves a host cut off from etcd no time to \
                     stop serving what moves: give at least 1s",
                    c.move_after
                )));
            }
            if c.lease_ttl < Duration::from_secs(2) {
                return Err(ConfigError::Invalid(format!(
                    "[cluster] lease-ttl {:?} is below etcd's minimum: give at least 2s",
                    c.lease_ttl
                )));
            }
            // Checked before a host number is claimed for it: numbers are never reused.
            if !self.wireguard || self.wireguard_endpoint.is_none() {
                return Err(ConfigError::Invalid(
                    "[cluster] needs wireguard on and wireguard-endpoint set: the address and \
                     port the other hosts reach this one at, like \"10.0.0.1:51820\""
                        .into(),
                ));
            }
            if c.cert.is_some() != c.key.is_some() {
                return Err(ConfigError::Invalid(
                    "[cluster] cert and key go together".into(),
                ));
            }
        }
        if !(8..=30).contains(&self.egress_ipv4.len) {
            return Err(ConfigError::Invalid(format!(
                "egress-ipv4 {} must be between /8 and /30",
                self.egress_ipv4
            )));
        }
        Ok(())
    }

    /// Takes host number `n`'s place in the address plan: its function prefix
    /// `fd00:faa5:N::/48` (and calls out from the last /64 of it), and its own address
    /// `fd00:faa5:0:1NN::1` for DNS and the API, wherever those are still the single
    /// host's defaults. Host 1's are the defaults.
    pub fn take_host_number(&mut self, n: u16) {
        let single = Self::default();
        let (addr, len) = faasd_common::plan::host_prefix(n);
        if self.function_prefix == single.function_prefix {
            self.function_prefix = Ipv6Net { addr, len };
        }
        if self.egress_ipv6 == single.egress_ipv6 {
            let mut s = addr.segments();
            s[3] = 0xffff;
            self.egress_ipv6 = Ipv6Net {
                addr: Ipv6Addr::from(s),
                len: 64,
            };
        }
        let own = faasd_common::plan::host_address(n);
        if self.dns_host == single.dns_host {
            self.dns_host = own;
        }
        for list in [&mut self.dns, &mut self.api] {
            for a in list.iter_mut() {
                if a.ip() == std::net::IpAddr::V6(single.dns_host) {
                    a.set_ip(own.into());
                }
            }
        }
    }

    /// The API's unix socket.
    pub fn api_socket(&self) -> PathBuf {
        self.runtime_dir.join("faasd.sock")
    }

    /// The directory of the notify socket: containers get it bind-mounted, and see the
    /// socket a restarted daemon binds anew.
    pub fn notify_dir(&self) -> PathBuf {
        self.runtime_dir.join("notify")
    }

    /// The notify socket every instance gets as NOTIFY_SOCKET.
    pub fn notify_socket(&self) -> PathBuf {
        self.notify_dir().join("notify.sock")
    }
}

/// An IPv6 prefix such as `fd00:faa5:1::/48`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Net {
    /// The network address (host bits zero).
    pub addr: Ipv6Addr,
    /// Prefix length.
    pub len: u8,
}

impl Ipv6Net {
    /// The `n`th address of the prefix, or `None` if it does not fit in the host bits.
    pub fn nth(&self, n: u128) -> Option<Ipv6Addr> {
        let host_bits = 128 - u32::from(self.len);
        if host_bits < 128 && n >> host_bits != 0 {
            return None;
        }
        Some(Ipv6Addr::from(u128::from(self.addr) | n))
    }

    /// Whether `a` lies in this prefix.
    pub fn contains(&self, a: Ipv6Addr) -> bool {
        let mask = if self.len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.len))
        };
        u128::from(a) & mask == u128::from(self.addr)
    }
}

impl std::str::FromStr for Ipv6Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s}: expected ADDRESS/LENGTH"))?;
        let addr: Ipv6Addr = a.parse().map_err(|e| format!("{s}: {e}"))?;
        let len: u8 = l.parse().map_err(|_| format!("{s}: bad prefix length"))?;
        if len > 128 {
            return Err(format!("{s}: prefix length above 128"));
        }
        let net = Self { addr, len };
        if net.nth(0) != Some(addr) || !net.contains(addr) {
            return Err(format!("{s}: host bits must be zero"));
        }
        Ok(net)
    }
}

impl std::fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Ipv6Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An IPv4 prefix such as `10.250.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub len: u8,
}

impl Ipv4Net {
    /// The `n`th address of the prefix, or `None` if it does not fit in the host bits.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let host_bits = 32 - u32::from(self.len);
        if host_bits < 32 && n >> host_bits != 0 {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(self.addr) | n))
    }
}

impl std::str::FromStr for Ipv4Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s}: expected ADDRESS/LENGTH"))?;
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s}: {e}"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s}: bad prefix length"))?;
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{s}: host bits must be zero"));
        }
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Durations in the config file are written like `10s` or `1m30s`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_host_number_takes_its_place_in_the_address_plan() {
        let mut c: super::Config = toml::from_str(
            "wireguard-endpoint = \"10.0.0.1:51820\"\n[cluster]\nendpoints = \
             [\"http://10.0.0.1:2379\"]\nlease-ttl = \"3s\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        let cluster = c.cluster.clone().unwrap();
        assert_eq!(cluster.lease_ttl, std::time::Duration::from_secs(3));
        c.take_host_number(1);
        assert_eq!(c.function_prefix, super::Config::default().function_prefix);
        c.take_host_number(3);
        assert_eq!(c.function_prefix.to_string(), "fd00:faa5:3::/48");
        assert_eq!(c.egress_ipv6.to_string(), "fd00:faa5:3:ffff::/64");
        assert_eq!(c.dns_host.to_string(), "fd00:faa5:0:102::1");
        assert_eq!(c.api[0].to_string(), "[fd00:faa5:0:102::1]:8080");
        assert_eq!(c.dns[0].to_string(), "[fd00:faa5:0:102::1]:53");
        c.validate().unwrap();
        // A prefix the operator chose stays.
        let mut own: super::Config = toml::from_str(
            "function-prefix = \"fd00:faa5:77::/48\"\negress-ipv6 = \"fd00:faa5:77:ffff::/64\"\n",
        )
        .unwrap();
        own.take_host_number(3);
        assert_eq!(own.function_prefix.to_string(), "fd00:faa5:77::/48");
        let bad: super::Config = toml::from_str("[cluster]\nendpoints = []\n").unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("endpoints is empty")
        );
        let hidden: super::Config = toml::from_str("data-dir = \"/tmp/f\"\n").unwrap();
        let e = hidden.validate().unwrap_err().to_string();
        assert!(e.contains("private /tmp"), "{e}");
        let unreachable: super::Config =
            toml::from_str("[cluster]\nendpoints = [\"http://10.0.0.1:2379\"]\n").unwrap();
        let e = unreachable.validate().unwrap_err().to_string();
        assert!(e.contains("wireguard-endpoint"), "{e}");
    }

    #[test]
    fn dynamic_uids_are_one_per_address_from_the_base() {
        let c = super::Config::default();
        let first = c.function_prefix.addr;
        let next = std::net::Ipv6Addr::from(u128::from(first) + 1);
        assert_eq!(c.dynamic_uid(first), c.dynamic_uid_base);
        assert_eq!(c.dynamic_uid(next), c.dynamic_uid_base + 1);
    }

    use super::*;

    #[test]
    fn prefix_parsing_rejects_host_bits() {
        assert!("fd00:faa5:1::/48".parse::<Ipv6Net>().is_ok());
        assert!("fd00:faa5:1::1/48".parse::<Ipv6Net>().is_err());
        assert!("fd00:faa5:1::/129".parse::<Ipv6Net>().is_err());
    }

    #[test]
    fn nth_stays_inside_the_prefix() {
        let n: Ipv6Net = "fd00:faa5:1::/112".parse().unwrap();
        assert_eq!(n.nth(5), Some("fd00:faa5:1::5".parse().unwrap()));
        assert_eq!(n.nth(0x1_0000), None);
        assert!(n.contains("fd00:faa5:1::ffff".parse().unwrap()));
        assert!(!n.contains("fd00:faa5:2::1".parse().unwrap()));
    }

    #[test]
    fn config_file_overrides_and_rejects_unknown_keys() {
        let c: Config = toml::from_str("backlog = 16\nstop-timeout = \"2s\"").unwrap();
        assert_eq!(c.backlog, 16);
        assert_eq!(c.stop_timeout, Duration::from_secs(2));
        assert!(toml::from_str::<Config>("bakclog = 16").is_err());
    }

    #[test]
    fn egress_keys_parse_and_the_ranges_are_checked() {
        let c: Config = toml::from_str(
            "egress = \"faas\"\negress-ipv4 = \"10.77.0.0/16\"\n\
             egress-ipv6 = \"fd00:faa5:1:fffe::/64\"\negress-pool = 0\n\
             egress-nat-idle = \"2s\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.egress, EgressMode::Faas);
        assert_eq!(c.egress_ipv4.nth(7), Some(Ipv4Addr::new(10, 77, 0, 7)));
        assert_eq!(c.egress_pool, 0);
        assert_eq!(c.egress_nat_idle, Duration::from_secs(2));
        assert!(toml::from_str::<Config>("egress = \"some\"").is_err());
        let tc: Config = toml::from_str("guard-hook = \"tc\"").unwrap();
        assert_eq!(tc.guard_hook, GuardHook::Tc);
        assert_eq!(Config::default().guard_hook, GuardHook::Auto);
        let wrong = toml::from_str::<Config>("guard-hook = \"nft\"").unwrap_err();
        assert!(wrong.to_string().contains("`auto`, `xdp`, `tc`"), "{wrong}");
        assert!(toml::from_str::<Config>("egress-ipv4 = \"10.77.0.1/16\"").is_err());
        // Instance addresses outside the function prefix would not be answered.
        let outside: Config = toml::from_str("egress-ipv6 = \"fd00:faa5:2::/64\"").unwrap();
        assert!(
            outside
                .validate()
                .unwrap_err()
                .to_string()
                .contains("inside function-prefix")
        );
    }
}
