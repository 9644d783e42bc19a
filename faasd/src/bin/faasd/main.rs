//! `faasd`: the daemon (`faasd daemon`) and the command line that talks to it, over the
//! unix socket or, with `--url`, a remote faasd's TCP API.

mod commands;
mod daemon;
mod output;
mod remote;
mod stack;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};
use faasd::client::Client;
use faasd_core::{config::Ipv6Net, spec::DEFAULT_NAMESPACE};

#[derive(Debug, Parser)]
#[command(
    name = "faasd",
    version,
    about = "A functions host: eBPF-steered sockets, socket activation, the OpenFaaS API"
)]
struct Cli {
    /// The daemon's API socket.
    #[arg(
        long,
        global = true,
        env = "FAASD_SOCKET",
        default_value = "/run/faasd/faasd.sock"
    )]
    socket: PathBuf,
    /// A remote faasd's API over TCP instead of the socket, e.g. http://[fd00:faa5:0:100::1]:8080
    /// (OpenFaaS's gateway variable works too).
    #[arg(long, global = true, env = "OPENFAAS_URL")]
    url: Option<String>,
    /// User name for --url (basic auth on /system/*), as `faas-cli login --username`.
    /// (`--user` is the daemon's: the user functions run as.)
    #[arg(long, global = true, env = "FAASD_USER", default_value = "admin")]
    username: String,
    /// Password for --url; without it, the one `faas-cli login` saved for that URL.
    #[arg(long, global = true, env = "FAASD_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Print JSON (the API's answers) instead of tables, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Daemon(DaemonArgs),
    /// Bring up the WireGuard interface (`wireguard-interface`, its key, address, route and
    /// peers from the daemon's config and state) and keep it up until stopped: what
    /// wg-faas.service runs, so the tunnel outlives daemon restarts. The daemon adopts it.
    Wireguard {
        /// Config file (TOML); default /etc/faasd/config.toml when it exists.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Deploy a function (or update it with --update).
    Deploy(DeployArgs),
    /// List functions.
    List {
        #[command(flatten)]
        ns: Ns,
    },
    /// Show one function.
    Describe {
        /// Function name.
        name: String,
        #[command(flatten)]
        ns: Ns,
    },
    /// Remove a function: instances stopped, sockets closed, address retired.
    Remove {
        /// Function name.
        name: String,
        #[command(flatten)]
        ns: Ns,
    },
    /// Run exactly N instances now (0 = scale to zero; the next connection starts it again).
    Scale {
        /// Function name.
        name: String,
        /// Instances.
        replicas: u32,
        #[command(flatten)]
        ns: Ns,
    },
    /// Call a function over HTTP through its address; the body comes from --data or stdin.
    Invoke {
        /// Function name.
        name: String,
        #[command(flatten)]
        ns: Ns,
        /// Request body (default: stdin when it is not a terminal).
        #[arg(long, short)]
        data: Option<String>,
        /// HTTP method.
        #[arg(long, default_value = "POST")]
        method: String,
    },
    /// Print a function's log.
    Logs {
        /// Function name.
        name: String,
        #[command(flatten)]
        ns: Ns,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<usize>,
        /// Keep printing new lines as they come (Ctrl-C ends).
        #[arg(long, short)]
        follow: bool,
    },
    /// Images in containerd, for functions deployed with --image.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Secrets, mounted into container functions at /var/openfaas/secrets/<name>.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// WireGuard peers: the clients that reach the functions over wg-faas.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Namespaces: `openfaas-fn` and every one that holds a function or a secret.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Data plane and host status.
    Status,
    /// The cluster this host is in (`[cluster]` in its config).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The hosts with their numbers, prefixes, endpoints and WireGuard handshakes, and
    /// each etcd member's health.
    Status,
    /// Move every function off a host (this one by default) and place none there, before
    /// taking it down; `--undo` lets it take functions again.
    Drain {
        /// The host's number (see `faasd cluster status`).
        #[arg(long)]
        host: Option<u16>,
        /// Take functions on that host again.
        #[arg(long)]
        undo: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Pull an image from its registry into containerd's `faasd` namespace (anonymous;
    /// plain HTTP only for registries on loopback). Talks to containerd directly.
    Pull {
        /// Image reference, e.g. ghcr.io/openfaas/figlet:latest.
        image: String,
        /// containerd's socket.
        #[arg(long, env = "FAASD_CONTAINERD", default_value = faasd_core::config::DEFAULT_CONTAINERD_SOCKET)]
        containerd: PathBuf,
    },
    /// Import an OCI image layout archive (oci-archive, e.g. from `cargo xtask image`,
    /// `skopeo copy ... oci-archive:FILE` or `buildah push ... oci-archive:FILE`) into
    /// containerd's `faasd` namespace. Talks to containerd directly.
    Import {
        /// The archive.
        file: PathBuf,
        /// containerd's socket.
        #[arg(long, env = "FAASD_CONTAINERD", default_value = faasd_core::config::DEFAULT_CONTAINERD_SOCKET)]
        containerd: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NamespaceCommand {
    /// List namespaces.
    List,
}

#[derive(Debug, Subcommand)]
enum PeerCommand {
    /// Add a peer and print its wg-quick configuration. Without --public-key faasd makes
    /// the peer's key pair and prints the private key in this answer only.
    Add {
        /// Peer name (a DNS label).
        name: String,
        /// The peer's public key (base64), if it has one.
        #[arg(long)]
        public_key: Option<String>,
    },
    /// List peers with their last handshake and traffic.
    List,
    /// Remove a peer.
    Remove {
        /// Peer name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Create a secret (or replace it with --update).
    Create {
        /// Secret name (a DNS label).
        name: String,
        #[command(flatten)]
        ns: Ns,
        /// The value.
        #[arg(long, conflicts_with = "from_file")]
        from_literal: Option<String>,
        /// Read the value from a file (default: stdin).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Replace an existing secret.
        #[arg(long)]
        update: bool,
    },
    /// List a namespace's secrets (names only).
    List {
        #[command(flatten)]
        ns: Ns,
    },
    /// Remove a secret.
    Remove {
        /// Secret name.
        name: String,
        #[command(flatten)]
        ns: Ns,
    },
}

#[derive(Debug, Args)]
struct Ns {
    /// Namespace.
    #[arg(long, short, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// Config file (TOML); default /etc/faasd/config.toml when it exists.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Durable state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Volatile state directory (API and notify sockets).
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// Where process functions keep their own writable directories.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also serve the API on this TCP address (repeatable).
    #[arg(long)]
    api: Vec<SocketAddr>,
    /// This host's function prefix.
    #[arg(long)]
    function_prefix: Option<Ipv6Net>,
    /// User functions run as.
    #[arg(long)]
    user: Option<String>,
    /// Stop running functions when the daemon exits.
    #[arg(long)]
    stop_functions_on_exit: bool,
    /// containerd's socket (functions deployed from images).
    #[arg(long)]
    containerd: Option<PathBuf>,
    /// OCI runtime for containers: runc or crun.
    #[arg(long)]
    oci_runtime: Option<String>,
    /// Serve the .faas zone here instead (repeatable; UDP and TCP).
    #[arg(long)]
    dns: Vec<SocketAddr>,
    /// Serve no DNS.
    #[arg(long, conflicts_with = "dns")]
    no_dns: bool,
    /// Also write the zone to this file (for CoreDNS).
    #[arg(long)]
    zone_file: Option<PathBuf>,
    /// Bring up no WireGuard interface (peers reach functions some other way).
    #[arg(long)]
    no_wireguard: bool,
    /// `host:port` that peers' configurations name as the endpoint.
    #[arg(long)]
    wireguard_endpoint: Option<String>,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// Function name (a DNS label).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    name: Option<String>,
    /// Deploy the functions of an OpenFaaS stack file (stack.yml) instead: each is created
    /// or updated.
    #[arg(long, short = 'f', value_name = "STACK_YML")]
    file: Option<PathBuf>,
    /// With --file: only the function of this name (repeatable).
    #[arg(long, requires = "file")]
    filter: Vec<String>,
    /// Command line of a process function (or, with --image, the command the image runs).
    #[arg(long = "command", short = 'c', required_unless_present_any = ["image", "file"])]
    command: Option<String>,
    /// OCI image in containerd (`faasd image import`): the function runs in a container.
    #[arg(long)]
    image: Option<String>,
    /// Secret to mount into the container (repeatable).
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Memory limit of a container, e.g. 128Mi.
    #[arg(long)]
    memory_limit: Option<String>,
    /// CPU limit of a container, e.g. 500m.
    #[arg(long)]
    cpu_limit: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    #[command(flatten)]
    ns: Ns,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Label KEY=VALUE (repeatable), e.g. com.openfaas.scale.zero=true.
    #[arg(long = "label", short = 'l', value_parser = key_value)]
    labels: Vec<(String, String)>,
    /// Annotation KEY=VALUE (repeatable), e.g. faasd.dev/ports=http=8080/tcp.
    #[arg(long = "annotation", short = 'a', value_parser = key_value)]
    annotations: Vec<(String, String)>,
    /// In a cluster, a placement constraint over the hosts' labels (repeatable), e.g.
    /// `zone == a`, `faasd.host != host-2`.
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Replace an existing function.
    #[arg(long)]
    update: bool,
}

fn key_value(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() -> std::process::ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == faasd::runtime::spawner::ARG)
    {
        faasd::runtime::spawner::serve();
    }
    let cli = Cli::parse();
    // Before any thread exists: the protocol's variables are read and removed here.
    let (inherited, manager) = match cli.command {
        Command::Daemon(_) => (
            faasd::systemd::take_listen_fds(),
            faasd::systemd::Manager::from_env(),
        ),
        Command::Wireguard { .. } => (Vec::new(), faasd::systemd::Manager::from_env()),
        _ => Default::default(),
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Daemon(args) => daemon::run(args, inherited, manager).await,
            Command::Wireguard { config } => daemon::wireguard(config.as_deref(), manager).await,
            Command::Image(cmd) => commands::image(cmd).await,
            cmd => {
                let client = match &cli.url {
                    None => Client::new(cli.socket),
                    Some(url) => remote::client(url, &cli.username, cli.password.as_deref())?,
                };
                commands::run(&client, cmd, cli.json).await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("faasd: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn client_options_do_not_leak_into_the_daemon() {
        // A global `--user` for the API once set the user functions run as.
        let cli = Cli::try_parse_from(["faasd", "daemon"]).unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!("parsed as {:?}", cli.command)
        };
        assert_eq!(args.user, None);
        let cli = Cli::try_parse_from(["faasd", "--username", "ops", "list"]).unwrap();
        assert_eq!(cli.username, "ops");
    }
}
