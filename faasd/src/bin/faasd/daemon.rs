//! `faasd daemon`: configuration, the data plane, the runtimes and the API listeners.

use std::{os::fd::OwnedFd, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use faasd::{
    api,
    daemon::Daemon,
    lock, net, notify,
    runtime::process::ProcessRuntime,
    systemd::{Manager, Service, StoredSockets},
};
use faasd_core::{config::Config, store::Store};
use faasd_dataplane::Dataplane;

use crate::{DaemonArgs, Result};

fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The DNS server and WireGuard log every query and peer change at info.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "info,hickory_server=warn,hickory_proto=warn,boringtun=warn".into()
            }),
        )
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

/// `faasd wireguard`: the interface alone, kept up until SIGTERM (wg-faas.service).
pub async fn wireguard(config: Option<&Path>, manager: Manager) -> Result<()> {
    init_logging();
    let config = Config::load(config)?;
    config.validate()?;
    let wg =
        faasd::wireguard::WireGuard::up(wireguard_settings(&config), &config.state_dir).await?;
    manager.notify(&format!(
        "READY=1\nSTATUS={} up ({:?}), port {}",
        config.wireguard_interface,
        wg.backend(),
        config.wireguard_port
    ));
    stop_signal().await?;
    manager.notify("STOPPING=1");
    wg.close();
    Ok(())
}

fn wireguard_settings(config: &Config) -> faasd::wireguard::Settings {
    faasd::wireguard::Settings {
        interface: config.wireguard_interface.clone(),
        port: config.wireguard_port,
        endpoint: config.wireguard_endpoint.clone(),
        address: config.dns_host,
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(
    args: DaemonArgs,
    inherited: Vec<(String, OwnedFd)>,
    manager: Manager,
) -> Result<()> {
    init_logging();
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(d) = args.state_dir {
        config.state_dir = d;
    }
    if let Some(d) = args.runtime_dir {
        config.runtime_dir = d;
    }
    if let Some(d) = args.data_dir {
        config.data_dir = d;
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
    // A cluster host's number decides its addresses, so it is known before anything is
    // bound.
    let membership = match &config.cluster {
        Some(c) => {
            let m = faasd::cluster::connect(c, &config.state_dir).await?;
            config.take_host_number(m.number);
            config.validate()?;
            Some(m)
        }
        None => None,
    };
    let config = Arc::new(config);
    let (stored, inherited) = StoredSockets::split(inherited);
    let service = Arc::new(Service {
        manager,
        stored: std::sync::Mutex::new(stored),
    });
    let status = |s: &str| service.manager.notify(&format!("STATUS={s}"));

    std::fs::create_dir_all(&config.runtime_dir)
        .map_err(|e| format!("creating {}: {e}", config.runtime_dir.display()))?;
    // Unprivileged functions must reach the notify socket inside.
    std::fs::set_permissions(&config.runtime_dir, std::fs::Permissions::from_mode(0o755))?;
    let _state_lock = lock::acquire(
        &config.state_dir.join("lock"),
        &format!("the state directory {}", config.state_dir.display()),
    )?;
    let pins = faasd_dataplane::pin_dir(&config.bpffs)?;
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
    let process_runtime = {
        let hidden = faasd::runtime::process::HIDDEN
            .iter()
            .map(std::path::PathBuf::from)
            .chain([config.state_dir.clone()])
            .collect();
        // Instances reach the notify socket by its path, which a private /tmp would hide.
        let private_tmp = !config.notify_socket().starts_with("/tmp");
        if !private_tmp {
            tracing::warn!(
                "runtime-dir {} is under /tmp, where the instances' notify socket is: process \
                 instances share the host's /tmp. Move runtime-dir out of /tmp (the default is \
                 /run/faasd) to give each a private one",
                config.runtime_dir.display()
            );
        }
        Arc::new(
            ProcessRuntime::new(
                hidden,
                private_tmp,
                config.runtime_dir.join("secrets"),
                &config.data_dir,
            )
            .map_err(|e| format!("starting the process spawner: {e}"))?,
        )
    };
    status("loading the data plane");
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
    if config.wireguard {
        status("bringing up WireGuard");
    }
    let wireguard = if config.wireguard {
        let wg = faasd::wireguard::WireGuard::up(wireguard_settings(&config), &config.state_dir)
            .await
            .map_err(|e| format!("{e} (--no-wireguard runs without it)"))?;
        Some(Arc::new(wg))
    } else {
        None
    };
    let cluster = match (membership, &config.cluster) {
        (Some(m), Some(c)) => {
            let wg = wireguard
                .clone()
                .ok_or(faasd::cluster::ClusterError::NoEndpoint)?;
            let api = config.api.iter().map(ToString::to_string).collect();
            Some(Arc::new(faasd::cluster::Cluster::join(m, c, wg, api)?))
        }
        _ => None,
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
        dataplane.attach_guard(
            &interface,
            link.layer3,
            config.function_prefix,
            config.guard_hook,
        )?;
    }
    let router = notify::Router::default();
    std::fs::create_dir_all(config.notify_dir())
        .map_err(|e| format!("creating {}: {e}", config.notify_dir().display()))?;
    notify::serve(&config.notify_socket(), router.clone())?;
    status("restoring functions");
    let daemon = Daemon::start(
        config.clone(),
        store,
        dataplane,
        process_runtime,
        router,
        faasd::daemon::Network { wireguard, cluster },
        service.clone(),
    )
    .await?;

    // Served from here on; the daemon already holds the zone's records. Sockets systemd
    // passed as `dns` and `api` (faasd.socket) take the place of binding them here.
    let (dns_fds, api_fds) = by_name(inherited)?;
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
            Some(zone.serve(&dns_addrs, dns_fds, &config.resolv_conf).await?)
        }
        None => None,
    };
    let mut servers = tokio::task::JoinSet::new();
    // The servers answer only once READY=1 is sent: a request queued on systemd's socket
    // (it started faasd) must not be answered while systemd still sees faasd activating.
    let (ready_tx, ready) = tokio::sync::watch::channel(false);
    let after_ready = move |mut ready: tokio::sync::watch::Receiver<bool>| async move {
        let _ = ready.wait_for(|r| *r).await;
    };
    // The unix socket: systemd's (faasd.socket, with its mode and group) or our own.
    let sock_path = config.api_socket();
    let own_socket = api_fds.unix.is_empty();
    let mut unix = api_fds.unix;
    if own_socket {
        let _ = std::fs::remove_file(&sock_path);
        let l = std::os::unix::net::UnixListener::bind(&sock_path)
            .map_err(|e| format!("binding the API socket {}: {e}", sock_path.display()))?;
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o660))?;
        unix.push(l);
    }
    for l in unix {
        l.set_nonblocking(true)?;
        let l = tokio::net::UnixListener::from_std(l)?;
        let app = api::router(daemon.clone());
        let go = after_ready(ready.clone());
        servers.spawn(async move {
            go.await;
            axum::serve(l, app.into_make_service()).await
        });
    }
    // TCP: basic auth on /system/*.
    let mut tcp = api_fds.tcp;
    for addr in &config.api {
        if tcp.iter().any(|l| l.local_addr().is_ok_and(|a| a == *addr)) {
            continue;
        }
        // FREEBIND: the default address lives on wg-faas, which may come up later.
        let l = faasd::sockets::bind_any(*addr, libc::SOCK_STREAM)
            .map_err(|e| format!("binding the API on {addr}: {e}"))?;
        tcp.push(l.into());
    }
    if !tcp.is_empty() {
        let creds = faasd::auth::Credentials::load_or_create(&config.state_dir)?
            .with_peer_token(daemon.cluster().ok().and_then(|c| c.api_token()));
        for l in tcp {
            l.set_nonblocking(true)?;
            let l = tokio::net::TcpListener::from_std(l)?;
            tracing::info!("API on {:?} (basic auth on /system)", l.local_addr());
            let app = api::router(daemon.clone()).layer(axum::middleware::from_fn_with_state(
                creds.clone(),
                faasd::auth::require,
            ));
            let go = after_ready(ready.clone());
            servers.spawn(async move {
                go.await;
                axum::serve(l, app.into_make_service()).await
            });
        }
    }
    let functions = daemon.function_count();
    tracing::info!("faasd ready: API on {}", sock_path.display());
    service.manager.notify(&format!(
        "READY=1\nSTATUS=serving {functions} function(s); API on {}",
        sock_path.display()
    ));
    let _ = ready_tx.send(true);
    tokio::spawn(api::serve_async_calls(daemon.clone()));
    if let Some(every) = service.manager.watchdog() {
        tokio::spawn(watchdog(daemon.clone(), service.clone(), every));
    }

    tokio::select! {
        r = stop_signal() => r?,
        r = servers.join_next() => tracing::error!("API server ended: {r:?}"),
    }
    tracing::info!("shutting down");
    service.manager.notify("STOPPING=1\nSTATUS=stopping");
    daemon.shutdown().await;
    if let Some(w) = &wireguard_at_exit {
        w.close();
    }
    if own_socket {
        let _ = std::fs::remove_file(&sock_path);
    }
    Ok(())
}

/// Listening sockets for the API that systemd passed as `api`.
#[derive(Default)]
struct ApiSockets {
    unix: Vec<std::os::unix::net::UnixListener>,
    tcp: Vec<std::net::TcpListener>,
}

/// Sorts what systemd passed: `dns` sockets, `api` sockets; anything else is named in an
/// error (a unit passing a socket faasd would ignore is a mistake worth stopping for).
fn by_name(passed: Vec<(String, OwnedFd)>) -> Result<(Vec<OwnedFd>, ApiSockets)> {
    let mut dns = Vec::new();
    let mut api = ApiSockets::default();
    for (name, fd) in passed {
        match name.as_str() {
            "dns" => dns.push(fd),
            "api" => {
                let family = faasd::sockets::family(&fd)
                    .map_err(|e| format!("socket `api` from systemd: {e}"))?;
                match family {
                    libc::AF_UNIX => api.unix.push(fd.into()),
                    _ => api.tcp.push(fd.into()),
                }
            }
            other => {
                return Err(format!(
                    "systemd passed a socket named {other:?}; faasd takes `api` and `dns` \
                     (FileDescriptorName= in faasd.socket)"
                )
                .into());
            }
        }
    }
    Ok((dns, api))
}

/// Tells systemd faasd is alive, as long as the daemon answers: a daemon stuck on its own
/// state stops the pings and gets restarted.
async fn watchdog(daemon: Arc<Daemon>, service: Arc<Service>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tick.tick().await;
        if tokio::time::timeout(every / 2, daemon.alive())
            .await
            .is_ok()
        {
            service.manager.notify("WATCHDOG=1");
        } else {
            tracing::error!(
                "the daemon did not answer within {:?}: no watchdog ping",
                every / 2
            );
        }
    }
}
