//! The commands that talk to the daemon's API, and `image`, which talks to containerd.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Read},
    path::Path,
};

use faasd::{
    client::{Client, ClientError},
    logs::LogLine,
    status::{FunctionStatus, HostStatus},
};
use faasd_core::spec::Deployment;
use hyper::{Method, StatusCode};

use crate::{
    ClusterCommand, Command, DeployArgs, ImageCommand, NamespaceCommand, Ns, PeerCommand, Result,
    SecretCommand, output, stack,
};

/// `faasd image …`: straight to containerd, no daemon needed.
pub async fn image(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Import { file, containerd } => import_image(&file, &containerd).await,
        ImageCommand::Pull { image, containerd } => {
            let image = faasd_core::image_ref::ImageRef::parse(&image)
                .map_err(|e| format!("{image}: {e}"))?;
            let client = faasd_containerd::Containerd::connect(&containerd).await?;
            client.pull(&image).await?;
            println!("Pulled {image}");
            Ok(())
        }
    }
}

async fn import_image(file: &Path, socket: &Path) -> Result<()> {
    let client = faasd_containerd::Containerd::connect(socket).await?;
    for name in client.import(file).await? {
        println!("Imported {name}");
    }
    Ok(())
}

fn ns_query(ns: &Ns) -> String {
    format!("namespace={}", ns.namespace)
}

/// `deploy -f stack.yml`: each function created, or updated when it exists (faas-cli's
/// PUT, then POST on 404).
async fn deploy_stack(client: &Client, a: &DeployArgs, json: bool) -> Result<()> {
    let file = a.file.as_deref().expect("called with --file");
    let deployments = stack::load(file, &a.filter)?;
    let mut deployed = Vec::new();
    for d in deployments {
        let body = serde_json::to_vec(&d)?;
        let answer = match client
            .call(Method::PUT, "/system/functions", Some(body.clone()))
            .await
        {
            Err(ClientError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => {
                client
                    .call(Method::POST, "/system/functions", Some(body))
                    .await
            }
            other => other,
        }
        .map_err(|e| format!("{}: {e}", d.service))?;
        let f: FunctionStatus = serde_json::from_slice(&answer)?;
        if !json {
            println!("Deployed {}.{} at {}", f.name, f.namespace, f.address);
        }
        deployed.push(f);
    }
    if json {
        println!("{}", serde_json::to_string(&deployed)?);
    }
    Ok(())
}

/// Runs one command against the daemon; `json` prints the API's answers as they are.
pub async fn run(client: &Client, cmd: Command, json: bool) -> Result<()> {
    match cmd {
        Command::Daemon(_) | Command::Wireguard { .. } | Command::Image(_) => {
            unreachable!("handled by main")
        }
        Command::Deploy(a) if a.file.is_some() => deploy_stack(client, &a, json).await?,
        Command::Deploy(a) => {
            let mut limits = serde_json::Map::new();
            if let Some(m) = a.memory_limit {
                limits.insert("memory".into(), m.into());
            }
            if let Some(c) = a.cpu_limit {
                limits.insert("cpu".into(), c.into());
            }
            let d = Deployment {
                service: a.name.expect("clap requires a name without --file"),
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
                constraints: a.constraints,
                ..Default::default()
            };
            let method = if a.update { Method::PUT } else { Method::POST };
            let body = client
                .call(method, "/system/functions", Some(serde_json::to_vec(&d)?))
                .await?;
            if json {
                return output::json(&body);
            }
            let f: FunctionStatus = serde_json::from_slice(&body)?;
            let port = f.ports.first().map_or(8080, |p| p.port);
            println!("Deployed {}.{} at {}", f.name, f.namespace, f.address);
            println!("Call it: curl http://[{}]:{port}/", f.address);
        }
        Command::List { ns } => {
            let body = client
                .call(
                    Method::GET,
                    &format!("/system/functions?{}", ns_query(&ns)),
                    None,
                )
                .await?;
            if json {
                return output::json(&body);
            }
            let fs: Vec<FunctionStatus> = serde_json::from_slice(&body)?;
            // A cluster's list says which host runs each function; the state of another
            // host's is there (faasd describe on that host).
            let cluster = fs.iter().any(|f| f.host.is_some());
            let mut header = vec![
                "NAME",
                "ADDRESS",
                "PORTS",
                "STATE",
                "REPLICAS",
                "ACTIVATIONS",
            ];
            if cluster {
                header.push("HOST");
            }
            let mut rows = vec![output::header(&header)];
            for f in fs {
                let host = f.host.map_or_else(|| "-".to_owned(), |h| h.to_string());
                rows.push(vec![
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
                if cluster {
                    rows.last_mut().expect("just pushed").push(host);
                }
            }
            output::table(&rows);
        }
        Command::Describe { name, ns } => {
            let body = client
                .call(
                    Method::GET,
                    &format!("/system/function/{name}?{}", ns_query(&ns)),
                    None,
                )
                .await?;
            if json {
                return output::json(&body);
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
            if let Some(a) = &f.state.autoscale {
                rows.push([
                    "Autoscale".into(),
                    format!(
                        "{}: load {:.1} ({} waiting), target {} instance(s)",
                        a.kind, a.load, a.queued, a.target
                    ),
                ]);
                if let Some(d) = &a.last_decision {
                    rows.push(["Last decision".into(), d.clone()]);
                }
            }
            if let Some(ms) = f.state.retry_in_ms {
                rows.push(["Retry in".into(), format!("{ms} ms (crash loop)")]);
            }
            if let Some(id) = &f.state.prepared {
                rows.push([
                    "Prepared".into(),
                    format!("{id} (waiting for the next activation)"),
                ]);
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
            output::table(&rows.into_iter().map(Vec::from).collect::<Vec<_>>());
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
            if json {
                return output::json(&body);
            }
            let list: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
            let mut rows = vec![output::header(&["NAME", "NAMESPACE"])];
            for s in list {
                rows.push(
                    ["name", "namespace"]
                        .map(|k| s[k].as_str().unwrap_or("").to_owned())
                        .into(),
                );
            }
            output::table(&rows);
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
        Command::Peer(PeerCommand::Add { name, public_key }) => {
            let body = serde_json::json!({"name": name, "publicKey": public_key});
            let out = client
                .call(
                    Method::POST,
                    "/system/peers",
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            if json {
                return output::json(&out);
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
        Command::Peer(PeerCommand::List) => {
            let out = client.call(Method::GET, "/system/peers", None).await?;
            if json {
                return output::json(&out);
            }
            let peers: Vec<faasd::wireguard::PeerStatus> = serde_json::from_slice(&out)?;
            let mut rows = vec![output::header(&[
                "NAME",
                "ADDRESS",
                "PUBLIC KEY",
                "HANDSHAKE",
                "RX",
                "TX",
            ])];
            for p in peers {
                rows.push(vec![
                    p.peer.name.clone(),
                    p.peer.address.to_string(),
                    p.peer.public_key.clone(),
                    p.last_handshake_secs_ago
                        .map_or("never".into(), |s| format!("{s}s ago")),
                    p.rx_bytes.to_string(),
                    p.tx_bytes.to_string(),
                ]);
            }
            output::table(&rows);
        }
        Command::Cluster(ClusterCommand::Drain { host, undo }) => {
            let body = serde_json::json!({ "host": host, "drain": !undo });
            let out = client
                .call(
                    Method::POST,
                    "/system/cluster/drain",
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            if json {
                return output::json(&out);
            }
            let a: faasd::cluster::DrainAnswer = serde_json::from_slice(&out)?;
            if a.draining {
                println!(
                    "host {} drained: its functions move to other hosts (faasd list shows where)",
                    a.host
                );
            } else {
                println!("host {} takes functions again", a.host);
            }
        }
        Command::Cluster(ClusterCommand::Status) => {
            let out = client.call(Method::GET, "/system/cluster", None).await?;
            if json {
                return output::json(&out);
            }
            let s: faasd::cluster::ClusterStatus = serde_json::from_slice(&out)?;
            println!(
                "this host: {} (number {}), {}",
                s.name,
                s.number,
                if s.registered {
                    "registered"
                } else {
                    "NOT registered (etcd unreachable?)"
                }
            );
            match s.scheduler {
                Some(n) => println!("scheduler: host {n}"),
                None => println!("scheduler: not known (etcd unreachable?)"),
            }
            let mut rows = vec![output::header(&[
                "NUMBER",
                "NAME",
                "PREFIX",
                "ADDRESS",
                "ENDPOINT",
                "HANDSHAKE",
                "FUNCTIONS",
            ])];
            for h in &s.hosts {
                rows.push(vec![
                    format!("{}{}", h.info.number, if h.this { " (this)" } else { "" }),
                    h.info.name.clone(),
                    h.prefix.clone(),
                    h.address.to_string(),
                    h.info.endpoint.clone().unwrap_or_default(),
                    match (h.this, h.handshake_secs_ago) {
                        (true, _) => "-".into(),
                        (false, Some(s)) => format!("{s}s ago"),
                        (false, None) => "never".into(),
                    },
                    format!(
                        "{}/{}{}",
                        h.functions,
                        h.info.capacity,
                        if h.draining { " (draining)" } else { "" }
                    ),
                ]);
            }
            output::table(&rows);
            let mut rows = vec![output::header(&["ETCD MEMBER", "STATE"])];
            for m in &s.etcd {
                rows.push(vec![
                    m.endpoint.clone(),
                    match (&m.error, &m.version) {
                        (Some(e), _) => format!("unreachable: {e}"),
                        (None, v) => format!(
                            "{}etcd {}, raft index {}",
                            if m.leader { "leader, " } else { "" },
                            v.clone().unwrap_or_default(),
                            m.raft_index.unwrap_or_default()
                        ),
                    },
                ]);
            }
            output::table(&rows);
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
        Command::Namespace(NamespaceCommand::List) => {
            let body = client.call(Method::GET, "/system/namespaces", None).await?;
            if json {
                return output::json(&body);
            }
            let list: Vec<String> = serde_json::from_slice(&body)?;
            let mut rows = vec![output::header(&["NAMESPACE"])];
            rows.extend(list.into_iter().map(|n| vec![n]));
            output::table(&rows);
        }
        Command::Status => {
            let body = client.call(Method::GET, "/system/status", None).await?;
            if json {
                return output::json(&body);
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
                            "on {} ({}): {} passed, {} dropped (no binding), {} dropped \
                             (policy)",
                            d.xdp_interfaces.join(", "),
                            d.guard_hook,
                            d.xdp_passed,
                            d.xdp_dropped_no_binding,
                            d.xdp_dropped_policy
                        )
                    },
                ),
                (
                    "kernel",
                    match &d.last_kernel_event {
                        None => "no event logged by the kernel programs".into(),
                        Some(last) => format!("{} event(s) logged; last: {last}", d.kernel_events),
                    },
                ),
                ("runtime", s.runtime.clone()),
                ("containerd", s.containerd.clone()),
                ("wireguard", s.wireguard.clone()),
                ("egress", s.egress.clone()),
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
            output::table(
                &rows
                    .into_iter()
                    .map(|(k, v)| vec![k.to_owned(), v])
                    .collect::<Vec<_>>(),
            );
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
