//! `faasd daemon`: configuration, the data plane, the runtimes and the API listeners.

use std::{os::fd::OwnedFd, os::unix::fs::PermissionsExt, path::Path, sync::Arc};

use faasd::{
    api,
    config::Config,
    daemon::Daemon,
    dataplane::{self, Dataplane},
    lock, net, notify,
    runtime::process::ProcessRuntime,
    store::Store,
};

use crate::{DaemonArgs, Result};

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(args: DaemonArgs, inherited: Vec<(String, OwnedFd)>) -> Result<()> {
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
