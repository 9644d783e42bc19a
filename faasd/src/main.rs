//! `faasd`: the daemon (`faasd daemon`) and the command line that talks to it.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Read},
    net::SocketAddr,
    os::fd::OwnedFd,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::{Args, Parser, Subcommand};
use faasd::{
    api,
    client::Client,
    config::{Config, Ipv6Net},
    daemon::{Daemon, FunctionStatus, HostStatus},
    dataplane::{self, Dataplane},
    lock,
    logs::LogLine,
    net, notify,
    runtime::process::ProcessRuntime,
    spec::{DEFAULT_NAMESPACE, Deployment},
    store::Store,
};
use hyper::Method;

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
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Daemon(DaemonArgs),
    /// Deploy a function (or update it with --update).
    Deploy(DeployArgs),
    /// List functions.
    List {
        #[command(flatten)]
        ns: Ns,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one function.
    Describe {
        /// Function name.
        name: String,
        #[command(flatten)]
        ns: Ns,
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
    /// Data plane and host status.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
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
        #[arg(long, env = "FAASD_CONTAINERD", default_value = faasd::containerd::DEFAULT_SOCKET)]
        containerd: PathBuf,
    },
    /// Import an OCI image layout archive (oci-archive, e.g. from `cargo xtask image`,
    /// `skopeo copy ... oci-archive:FILE` or `buildah push ... oci-archive:FILE`) into
    /// containerd's `faasd` namespace. Talks to containerd directly.
    Import {
        /// The archive.
        file: PathBuf,
        /// containerd's socket.
        #[arg(long, env = "FAASD_CONTAINERD", default_value = faasd::containerd::DEFAULT_SOCKET)]
        containerd: PathBuf,
    },
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
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List peers with their last handshake and traffic.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
    name: String,
    /// Command line of a process function (or, with --image, the command the image runs).
    #[arg(long = "command", short = 'c', required_unless_present = "image")]
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
    let cli = Cli::parse();
    // Before any thread exists: the protocol's variables are read and removed here.
    let inherited = match cli.command {
        Command::Daemon(_) => faasd::systemd::take_listen_fds(),
        _ => Vec::new(),
    };
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Daemon(args) => run_daemon(args, inherited).await,
            Command::Image(ImageCommand::Import { file, containerd }) => {
                import_image(&file, &containerd).await
            }
            Command::Image(ImageCommand::Pull { image, containerd }) => {
                let image = faasd::containerd::image::ImageRef::parse(&image)
                    .map_err(|e| format!("{image}: {e}"))?;
                let client = faasd::containerd::Containerd::connect(&containerd).await?;
                client.pull(&image).await?;
                println!("Pulled {image}");
                Ok(())
            }
            cmd => run_client(Client::new(cli.socket), cmd).await,
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

async fn run_daemon(args: DaemonArgs, inherited: Vec<(String, OwnedFd)>) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The DNS server and WireGuard log every query and peer change at info.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,hickory_server=warn,boringtun=warn".into()),
        )
        .init();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.state_dir {
        config.state_dir = d;
    }
    if let Some(d) = args.runtime_dir {
        config.runtime_dir = d;
    }
    config.api.extend(args.api);
    if let Some(p) = args.function_prefix {
        config.function_prefix = p;
    }
    if let Some(u) = args.user {
        config.user = u;
    }
    config.stop_functions_on_exit |= args.stop_functions_on_exit;
    if let Some(c) = args.containerd {
        config.containerd = c;
    }
    if let Some(r) = args.oci_runtime {
        config.oci_runtime = r;
    }
    if !args.dns.is_empty() {
        config.dns = args.dns;
    }
    if args.no_dns {
        config.dns.clear();
    }
    if let Some(z) = args.zone_file {
        config.zone_file = Some(z);
    }
    if args.no_wireguard {
        config.wireguard = false;
    }
    if let Some(e) = args.wireguard_endpoint {
        config.wireguard_endpoint = Some(e);
    }
    config.validate()?;
    let config = Arc::new(config);

    std::fs::create_dir_all(&config.runtime_dir)
        .map_err(|e| format!("creating {}: {e}", config.runtime_dir.display()))?;
    // Unprivileged functions must reach the notify socket inside.
    std::fs::set_permissions(&config.runtime_dir, std::fs::Permissions::from_mode(0o755))?;
    let _state_lock = lock::acquire(
        &config.state_dir.join("lock"),
        &format!("the state directory {}", config.state_dir.display()),
    )?;
    let pins = dataplane::pin_dir(&config.bpffs)?;
    let netns = pins
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // bpffs holds no regular files, so the namespace's lock lives under /run/lock.
    let _netns_lock = lock::acquire(
        &Path::new("/run/lock/faasd").join(format!("{netns}.lock")),
        &format!("this network namespace's data plane ({})", pins.display()),
    )?;
    let store = Store::open(&config.state_dir)?;
    let mut dataplane = Dataplane::open(&config.bpffs)?;
    tracing::info!(
        "data plane {} ({})",
        if dataplane.adopted() {
            "adopted"
        } else {
            "loaded"
        },
        dataplane.status().pin_dir.display()
    );
    net::ensure_local_route(config.function_prefix).await?;
    let wireguard = if config.wireguard {
        let settings = faasd::wireguard::Settings {
            interface: config.wireguard_interface.clone(),
            port: config.wireguard_port,
            endpoint: config.wireguard_endpoint.clone(),
        };
        let wg = faasd::wireguard::WireGuard::up(settings, &config.state_dir)
            .await
            .map_err(|e| format!("{e} (--no-wireguard runs without it)"))?;
        Some(Arc::new(wg))
    } else {
        None
    };
    let wireguard_at_exit = wireguard.clone();
    let guarded = wireguard
        .iter()
        .map(|w| w.settings().interface.clone())
        .chain(config.xdp_interfaces.iter().cloned());
    for interface in guarded {
        let link = net::link(&interface)
            .await?
            .ok_or_else(|| format!("XDP: there is no interface {interface} (xdp-interfaces)"))?;
        dataplane.attach_xdp(&interface, link.layer3, config.function_prefix)?;
    }
    let router = notify::Router::default();
    std::fs::create_dir_all(config.notify_dir())
        .map_err(|e| format!("creating {}: {e}", config.notify_dir().display()))?;
    notify::serve(&config.notify_socket(), router.clone())?;
    let daemon = Daemon::start(
        config.clone(),
        store,
        dataplane,
        Arc::new(ProcessRuntime),
        router,
        wireguard,
    )
    .await?;

    // Served from here on; the daemon already holds the zone's records. Sockets systemd
    // passed as `dns` (faasd.socket) take the place of binding the configured addresses.
    let dns_fds: Vec<_> = inherited
        .into_iter()
        .filter(|(name, _)| name == "dns")
        .map(|(_, fd)| fd)
        .collect();
    let dns_addrs = if dns_fds.is_empty() {
        config.dns.clone()
    } else {
        Vec::new()
    };
    let _dns = match daemon.zone() {
        Some(zone) => {
            tracing::info!(
                "DNS for .faas on {:?}{}",
                dns_addrs,
                if dns_fds.is_empty() {
                    String::new()
                } else {
                    format!(" and {} socket(s) from systemd", dns_fds.len())
                }
            );
            Some(zone.serve(&dns_addrs, dns_fds).await?)
        }
        None => None,
    };
    let app = api::router(daemon.clone());
    let sock_path = config.api_socket();
    let _ = std::fs::remove_file(&sock_path);
    let unix = tokio::net::UnixListener::bind(&sock_path)
        .map_err(|e| format!("binding the API socket {}: {e}", sock_path.display()))?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o660))?;
    let mut servers = tokio::task::JoinSet::new();
    servers.spawn(async move { axum::serve(unix, app.into_make_service()).await });
    if !config.api.is_empty() {
        let creds = faasd::auth::Credentials::load_or_create(&config.state_dir)?;
        for addr in &config.api {
            // FREEBIND: the default address lives on wg-faas, which may come up later.
            let l = faasd::sockets::bind_any(*addr, libc::SOCK_STREAM)
                .and_then(|fd| tokio::net::TcpListener::from_std(fd.into()))
                .map_err(|e| format!("binding the API on {addr}: {e}"))?;
            let app = api::router(daemon.clone()).layer(axum::middleware::from_fn_with_state(
                creds.clone(),
                faasd::auth::require,
            ));
            servers.spawn(async move { axum::serve(l, app.into_make_service()).await });
            tracing::info!("API on {addr} (basic auth on /system)");
        }
    }
    tracing::info!("faasd ready: API on {}", sock_path.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = servers.join_next() => tracing::error!("API server ended: {r:?}"),
    }
    tracing::info!("shutting down");
    daemon.shutdown().await;
    if let Some(w) = &wireguard_at_exit {
        w.close();
    }
    let _ = std::fs::remove_file(&sock_path);
    Ok(())
}

async fn import_image(file: &Path, socket: &Path) -> Result<()> {
    let client = faasd::containerd::Containerd::connect(socket).await?;
    for name in client.import(file).await? {
        println!("Imported {name}");
    }
    Ok(())
}

fn ns_query(ns: &Ns) -> String {
    format!("namespace={}", ns.namespace)
}

async fn run_client(client: Client, cmd: Command) -> Result<()> {
    match cmd {
        Command::Daemon(_) => unreachable!("handled by main"),
        Command::Deploy(a) => {
            let mut limits = serde_json::Map::new();
            if let Some(m) = a.memory_limit {
                limits.insert("memory".into(), m.into());
            }
            if let Some(c) = a.cpu_limit {
                limits.insert("cpu".into(), c.into());
            }
            let d = Deployment {
                service: a.name,
                namespace: Some(a.ns.namespace),
                env_process: match (&a.image, a.command) {
                    (None, Some(c)) => Some(absolute_program(&c)),
                    (_, c) => c,
                },
                image: a.image,
                secrets: a.secrets,
                limits: (!limits.is_empty()).then_some(limits.into()),
                read_only_root_filesystem: a.read_only.then_some(true),
                env_vars: a.env.into_iter().collect(),
                labels: a.labels.into_iter().collect(),
                annotations: a.annotations.into_iter().collect(),
                ..Default::default()
            };
            let method = if a.update { Method::PUT } else { Method::POST };
            let body = client
                .call(method, "/system/functions", Some(serde_json::to_vec(&d)?))
                .await?;
            let f: FunctionStatus = serde_json::from_slice(&body)?;
            let port = f.ports.first().map_or(8080, |p| p.port);
            println!("Deployed {}.{} at {}", f.name, f.namespace, f.address);
            println!("Call it: curl http://[{}]:{port}/", f.address);
        }
        Command::List { ns, json } => {
            let body = client
                .call(
                    Method::GET,
                    &format!("/system/functions?{}", ns_query(&ns)),
                    None,
                )
                .await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let fs: Vec<FunctionStatus> = serde_json::from_slice(&body)?;
            let mut rows = vec![
                [
                    "NAME",
                    "ADDRESS",
                    "PORTS",
                    "STATE",
                    "REPLICAS",
                    "ACTIVATIONS",
                ]
                .map(String::from),
            ];
            for f in fs {
                rows.push([
                    f.name.clone(),
                    f.address.to_string(),
                    ports(&f),
                    serde_json::to_value(f.state.phase)?
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    format!("{}/{}", f.available_replicas, f.replicas),
                    f.state.activations.to_string(),
                ]);
            }
            print_table(&rows);
        }
        Command::Describe { name, ns, json } => {
            let body = client
                .call(
                    Method::GET,
                    &format!("/system/function/{name}?{}", ns_query(&ns)),
                    None,
                )
                .await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let f: FunctionStatus = serde_json::from_slice(&body)?;
            let phase = serde_json::to_value(f.state.phase)?;
            let mut rows: Vec<[String; 2]> = vec![
                ["Name".into(), format!("{}.{}", f.name, f.namespace)],
                ["Address".into(), f.address.to_string()],
                ["Ports".into(), ports(&f)],
                if f.image.is_empty() {
                    ["Command".into(), f.env_process.clone()]
                } else {
                    ["Image".into(), f.image.clone()]
                },
                ["State".into(), phase.as_str().unwrap_or("").to_owned()],
                [
                    "Replicas".into(),
                    format!("{} ready of {}", f.available_replicas, f.replicas),
                ],
                ["Activations".into(), f.state.activations.to_string()],
                [
                    "Restarts".into(),
                    format!("{} ({} watchdog)", f.state.restarts, f.state.watchdog_kills),
                ],
                ["Created".into(), f.created_at.clone()],
            ];
            if let Some(ms) = f.state.retry_in_ms {
                rows.push(["Retry in".into(), format!("{ms} ms (crash loop)")]);
            }
            if let Some(e) = &f.state.last_error {
                rows.push(["Last error".into(), e.clone()]);
            }
            for i in &f.state.instances {
                rows.push([
                    "Instance".into(),
                    format!(
                        "{} pid {}{}",
                        i.id,
                        i.pid,
                        if i.ready { "" } else { " (starting)" }
                    ),
                ]);
            }
            for c in &f.counters {
                rows.push([
                    format!("Counters {}", c.name),
                    format!(
                        "lookups {} steered {} no-socket {} policy-drops {}",
                        c.lookups, c.steered, c.no_socket, c.policy_drops
                    ),
                ]);
            }
            for (k, v) in f.labels.iter().chain(&f.annotations) {
                rows.push([k.clone(), v.clone()]);
            }
            let w = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
            for [k, v] in rows {
                println!("{k:<w$}  {v}");
            }
        }
        Command::Remove { name, ns } => {
            let body = serde_json::json!({"functionName": name, "namespace": ns.namespace});
            client
                .call(
                    Method::DELETE,
                    "/system/functions",
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            println!("Removed {name}.{}", ns.namespace);
        }
        Command::Scale { name, replicas, ns } => {
            let body = serde_json::json!({"serviceName": name, "replicas": replicas});
            client
                .call(
                    Method::POST,
                    &format!("/system/scale-function/{name}?{}", ns_query(&ns)),
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            println!("Scaling {name}.{} to {replicas}", ns.namespace);
        }
        Command::Invoke {
            name,
            ns,
            data,
            method,
        } => {
            let body = match data {
                Some(d) => d.into_bytes(),
                None if !std::io::stdin().is_terminal() => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
                None => Vec::new(),
            };
            let method: Method = method
                .parse()
                .map_err(|_| format!("{method}: not an HTTP method"))?;
            let out = client
                .call(
                    method,
                    &format!("/function/{name}.{}", ns.namespace),
                    Some(body),
                )
                .await?;
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
        }
        Command::Logs {
            name,
            ns,
            tail,
            follow,
        } => {
            let tail = tail.map(|t| format!("&tail={t}")).unwrap_or_default();
            let path = format!(
                "/system/logs?name={name}&{}{tail}&follow={follow}",
                ns_query(&ns)
            );
            // Lines may arrive split across pieces of the answer: print whole ones.
            let mut pending = Vec::new();
            let mut print = |data: &[u8]| {
                pending.extend_from_slice(data);
                while let Some(i) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=i).collect();
                    if let Ok(l) = serde_json::from_slice::<LogLine>(&line) {
                        println!("{} {} {}", l.timestamp, l.instance, l.text);
                    }
                }
            };
            client.stream(&path, &mut print).await?;
        }
        Command::Image(_) => {
            unreachable!("handled without the daemon")
        }
        Command::Secret(SecretCommand::Create {
            name,
            ns,
            from_literal,
            from_file,
            update,
        }) => {
            let value = match (from_literal, from_file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).map_err(|e| format!("reading {}: {e}", f.display()))?
                }
                (None, None) => {
                    let mut v = Vec::new();
                    std::io::stdin().read_to_end(&mut v)?;
                    v
                }
            };
            use base64::Engine;
            let body = serde_json::json!({
                "name": name,
                "namespace": ns.namespace,
                "rawValue": base64::engine::general_purpose::STANDARD.encode(value),
            });
            let method = if update { Method::PUT } else { Method::POST };
            client
                .call(method, "/system/secrets", Some(serde_json::to_vec(&body)?))
                .await?;
            println!(
                "{} secret {name}.{}",
                if update { "Updated" } else { "Created" },
                ns.namespace
            );
        }
        Command::Secret(SecretCommand::List { ns }) => {
            let body = client
                .call(
                    Method::GET,
                    &format!("/system/secrets?{}", ns_query(&ns)),
                    None,
                )
                .await?;
            let list: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
            for s in list {
                println!("{}", s["name"].as_str().unwrap_or(""));
            }
        }
        Command::Secret(SecretCommand::Remove { name, ns }) => {
            let body = serde_json::json!({"name": name, "namespace": ns.namespace});
            client
                .call(
                    Method::DELETE,
                    "/system/secrets",
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            println!("Removed secret {name}.{}", ns.namespace);
        }
        Command::Peer(PeerCommand::Add {
            name,
            public_key,
            json,
        }) => {
            let body = serde_json::json!({"name": name, "publicKey": public_key});
            let out = client
                .call(
                    Method::POST,
                    "/system/peers",
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            if json {
                println!("{}", String::from_utf8_lossy(&out));
                return Ok(());
            }
            let added: faasd::wireguard::AddedPeer = serde_json::from_slice(&out)?;
            eprintln!(
                "Added peer {} at {}. Its wg-quick configuration{}:\n",
                added.peer.name,
                added.peer.address,
                if public_key.is_none() {
                    " (with the private key faasd made for it; it is not stored, keep it)"
                } else {
                    ""
                }
            );
            print!("{}", added.config);
        }
        Command::Peer(PeerCommand::List { json }) => {
            let out = client.call(Method::GET, "/system/peers", None).await?;
            if json {
                println!("{}", String::from_utf8_lossy(&out));
                return Ok(());
            }
            let peers: Vec<faasd::wireguard::PeerStatus> = serde_json::from_slice(&out)?;
            let mut rows =
                vec![["NAME", "ADDRESS", "PUBLIC KEY", "HANDSHAKE", "RX", "TX"].map(String::from)];
            for p in peers {
                rows.push([
                    p.peer.name.clone(),
                    p.peer.address.to_string(),
                    p.peer.public_key.clone(),
                    p.last_handshake_secs_ago
                        .map_or("never".into(), |s| format!("{s}s ago")),
                    p.rx_bytes.to_string(),
                    p.tx_bytes.to_string(),
                ]);
            }
            print_table(&rows);
        }
        Command::Peer(PeerCommand::Remove { name }) => {
            let body = serde_json::json!({"name": name});
            client
                .call(
                    Method::DELETE,
                    "/system/peers",
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            println!("Removed peer {name}");
        }
        Command::Status { json } => {
            let body = client.call(Method::GET, "/system/status", None).await?;
            if json {
                println!("{}", String::from_utf8_lossy(&body));
                return Ok(());
            }
            let s: HostStatus = serde_json::from_slice(&body)?;
            let d = &s.dataplane;
            let rows: BTreeMap<&str, String> = [
                (
                    "program",
                    format!(
                        "sk_lookup id {} ({})",
                        d.program_id,
                        if d.adopted {
                            "adopted from pins"
                        } else {
                            "loaded by this daemon"
                        }
                    ),
                ),
                ("pins", d.pin_dir.display().to_string()),
                ("bindings", format!("{} of {}", d.bindings, d.max_bindings)),
                ("misses", format!("{} (fell through to the host)", d.misses)),
                (
                    "ipv4",
                    format!("{} lookups passed (functions are IPv6 only)", d.ipv4_passed),
                ),
                ("functions", s.functions.to_string()),
                ("prefix", s.function_prefix.clone()),
                (
                    "xdp",
                    if d.xdp_interfaces.is_empty() {
                        "not attached".into()
                    } else {
                        format!(
                            "on {}: {} passed, {} dropped (no binding), {} dropped (policy)",
                            d.xdp_interfaces.join(", "),
                            d.xdp_passed,
                            d.xdp_dropped_no_binding,
                            d.xdp_dropped_policy
                        )
                    },
                ),
                ("runtime", s.runtime.clone()),
                ("containerd", s.containerd.clone()),
                ("wireguard", s.wireguard.clone()),
                (
                    "dns",
                    if s.dns.is_empty() {
                        "off".into()
                    } else {
                        s.dns.join(", ")
                    },
                ),
                (
                    "cgroup",
                    s.cgroup_root
                        .as_ref()
                        .map_or("none".into(), |p| p.display().to_string()),
                ),
            ]
            .into_iter()
            .collect();
            for (k, v) in rows {
                println!("{k:<10} {v}");
            }
        }
    }
    Ok(())
}

/// Makes a relative program path (`./hello`, `target/release/hello`) absolute against the
/// CLI's working directory, which the daemon cannot know. Bare names are left for the
/// daemon to find on its PATH.
fn absolute_program(command: &str) -> String {
    let command = command.trim_start();
    let (program, rest) = command
        .split_once(char::is_whitespace)
        .unwrap_or((command, ""));
    if !program.contains('/') || program.starts_with('/') || program.starts_with(['"', '\'']) {
        return command.to_owned();
    }
    let absolute = std::env::current_dir().map(|d| d.join(program)).ok();
    match absolute.and_then(|p| std::fs::canonicalize(p).ok()) {
        Some(p) if rest.is_empty() => p.display().to_string(),
        Some(p) => format!("{} {rest}", p.display()),
        None => command.to_owned(),
    }
}

fn ports(f: &FunctionStatus) -> String {
    f.ports
        .iter()
        .map(|p| format!("{}={}/{}", p.name, p.port, p.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

fn print_table(rows: &[[String; 6]]) {
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}
