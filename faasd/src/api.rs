//! The HTTP API: the OpenFaaS gateway routes faas-cli uses (see
//! `docs/openfaas-api.md`) and faasd's own `/system/status`. Served on the unix
//! socket (whose permissions are the access control) and on any `--api` TCP address.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Query, Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use futures::StreamExt;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

use faasd_core::spec::{DEFAULT_NAMESPACE, Deployment, SpecError, not_null, validate_label};

use crate::{
    asynccall::AsyncError,
    daemon::{Daemon, DaemonError, ErrorKind},
};

impl IntoResponse for DaemonError {
    fn into_response(self) -> Response {
        let code = match self.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Full => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Exists => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        };
        (code, format!("{self}\n")).into_response()
    }
}

type ApiResult<T> = Result<T, DaemonError>;

/// Parses a JSON body, reporting unknown fields and type errors as 400 with serde's words.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| SpecError(format!("invalid request body: {e}")).into())
}

#[derive(Debug, Deserialize)]
struct NsQuery {
    namespace: Option<String>,
}

fn namespace(q: Option<String>) -> ApiResult<String> {
    let ns = q
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    validate_label("namespace", &ns)?;
    Ok(ns)
}

/// The namespace of a request that may name it in the query and in the body (faas-cli
/// versions differ): the first given, each one checked.
fn namespace_of(query: Option<String>, body: Option<String>) -> ApiResult<String> {
    let given = |n: &Option<String>| n.as_ref().is_some_and(|n| !n.is_empty());
    if given(&query) {
        if given(&body) {
            namespace(body)?;
        }
        namespace(query)
    } else {
        namespace(body)
    }
}

/// The router over a running daemon.
pub fn router(daemon: Arc<Daemon>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { "OK\n" }).head(|| async { StatusCode::OK }),
        )
        .route("/system/info", get(info))
        .route(
            "/system/functions",
            get(list).post(deploy).put(update).delete(remove),
        )
        .route("/system/function/{name}", get(describe))
        .route("/system/scale-function/{name}", post(scale))
        .route("/system/namespaces", get(namespaces))
        .route("/system/namespace/{ns}", get(namespace_info))
        .route(
            "/system/peers",
            get(list_peers).post(add_peer).delete(remove_peer),
        )
        .route(
            "/system/secrets",
            get(list_secrets)
                .post(create_secret)
                .put(update_secret)
                .delete(remove_secret),
        )
        .route("/system/logs", get(logs))
        .route("/system/status", get(status))
        .route("/system/cluster", get(cluster))
        .route("/system/cluster/drain", post(drain))
        .route("/cluster/lease", get(cluster_lease))
        .route("/function/{target}", any(invoke_root))
        .route("/function/{target}/{*rest}", any(invoke_path))
        .route("/async-function/{target}", post(invoke_async_root))
        .route("/async-function/{target}/{*rest}", post(invoke_async_path))
        .merge(crate::ui::routes())
        .layer(axum::middleware::from_fn_with_state(
            daemon.clone(),
            count_request,
        ))
        .with_state(daemon)
}

/// Counts every answered request for `provider_http_requests_total`, by route template.
async fn count_request(
    State(d): State<Arc<Daemon>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    d.http_stats().record(
        resp.status().as_u16(),
        method.as_str(),
        &route,
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// Prometheus text format, streamed: a blocking thread renders the page into chunks that
/// go out as they are written.
async fn metrics(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    let page = d.metrics().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSink {
            tx,
            chunk: Vec::with_capacity(CHUNK),
        };
        if let Err(e) =
            crate::metrics::render(&page, &mut out).and_then(|()| std::io::Write::flush(&mut out))
        {
            tracing::debug!("/metrics: {e}");
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        Body::from_stream(body),
    )
}

/// Size of the body chunks `/metrics` is sent in.
const CHUNK: usize = 64 << 10;

/// Sends what is written as body chunks, each handed over whole (not copied); fails once
/// the client has gone.
struct ChunkSink {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    chunk: Vec<u8>,
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.chunk.extend_from_slice(buf);
        if self.chunk.len() >= CHUNK {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

async fn info() -> impl IntoResponse {
    let version = serde_json::json!({
        "sha": option_env!("FAASD_GIT_SHA").unwrap_or("unknown"),
        "release": env!("CARGO_PKG_VERSION"),
    });
    Json(serde_json::json!({
        "provider": {"provider": "faasd", "orchestration": "process", "version": version},
        "version": {"sha": version["sha"], "release": version["release"], "commit_message": ""},
        "arch": std::env::consts::ARCH,
    }))
}

async fn list(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<NsQuery>,
) -> ApiResult<impl IntoResponse> {
    let ns = namespace(q.namespace)?;
    Ok(Json(d.list(Some(&ns)).await))
}

async fn deploy(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let status = d.deploy(json_body::<Deployment>(&body)?, false).await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

async fn update(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let status = d.deploy(json_body::<Deployment>(&body)?, true).await?;
    Ok((StatusCode::OK, Json(status)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DeleteRequest {
    function_name: String,
    #[serde(default, deserialize_with = "not_null")]
    namespace: Option<String>,
}

async fn remove(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<NsQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: DeleteRequest = json_body(&body)?;
    validate_label("function name", &req.function_name)?;
    let ns = namespace_of(q.namespace, req.namespace)?;
    d.remove(&ns, &req.function_name).await?;
    Ok(StatusCode::OK)
}

/// In a cluster, the answer of the host that runs a function this host does not, to the
/// same request; `None` when this host answers itself.
async fn relayed(
    d: &Daemon,
    namespace: &str,
    name: &str,
    method: axum::http::Method,
    uri: &axum::http::Uri,
    body: &Bytes,
) -> ApiResult<Option<Response>> {
    let Some((host, peer)) = d.peer_running(namespace, name) else {
        return Ok(None);
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let resp = peer
        .relay(method, path, Some(body.to_vec()))
        .await
        .map_err(|source| crate::daemon::DaemonError::Relay { host, source })?;
    Ok(Some(resp.map(axum::body::Body::new).into_response()))
}

async fn describe(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    validate_label("function name", &name)?;
    let ns = namespace(q.namespace)?;
    // Another host's function: its live state from there, or what the cluster knows of
    // it when that host does not answer.
    if let Ok(Some(r)) = relayed(&d, &ns, &name, axum::http::Method::GET, &uri, &Bytes::new()).await
    {
        return Ok(r);
    }
    Ok(Json(d.get(&ns, &name).await?).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ScaleRequest {
    #[serde(default, deserialize_with = "not_null")]
    service_name: Option<String>,
    replicas: u32,
    #[serde(default, deserialize_with = "not_null")]
    namespace: Option<String>,
}

async fn scale(
    State(d): State<Arc<Daemon>>,
    Path(name): Path<String>,
    Query(q): Query<NsQuery>,
    uri: axum::http::Uri,
    body: Bytes,
) -> ApiResult<Response> {
    let req: ScaleRequest = json_body(&body)?;
    validate_label("function name", &name)?;
    if let Some(s) = &req.service_name
        && *s != name
    {
        return Err(SpecError(format!(
            "serviceName {s:?} does not match the path's {name:?}"
        ))
        .into());
    }
    let ns = namespace_of(q.namespace, req.namespace)?;
    if let Some(r) = relayed(&d, &ns, &name, axum::http::Method::POST, &uri, &body).await? {
        return Ok(r);
    }
    d.scale(&ns, &name, req.replicas).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SecretRequest {
    name: String,
    #[serde(default, deserialize_with = "not_null")]
    namespace: Option<String>,
    /// Text value.
    #[serde(default, deserialize_with = "not_null")]
    value: Option<String>,
    /// Binary value, base64.
    #[serde(default, deserialize_with = "not_null")]
    raw_value: Option<String>,
}

impl SecretRequest {
    fn value(&self) -> ApiResult<Vec<u8>> {
        use base64::Engine;
        match (&self.value, &self.raw_value) {
            (Some(v), None) => Ok(v.clone().into_bytes()),
            (None, Some(r)) => base64::engine::general_purpose::STANDARD
                .decode(r)
                .map_err(|e| SpecError(format!("rawValue is not base64: {e}")).into()),
            (None, None) => Err(SpecError("a secret needs value or rawValue".into()).into()),
            (Some(_), Some(_)) => Err(SpecError("give value or rawValue, not both".into()).into()),
        }
    }
}

async fn list_secrets(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<NsQuery>,
) -> ApiResult<impl IntoResponse> {
    let ns = namespace(q.namespace)?;
    let names = d.secrets().list(&ns)?;
    Ok(Json(
        names
            .into_iter()
            .map(|name| serde_json::json!({"name": name, "namespace": ns}))
            .collect::<Vec<_>>(),
    ))
}

async fn put_secret(d: &Daemon, q: NsQuery, body: &Bytes, update: bool) -> ApiResult<()> {
    let req: SecretRequest = json_body(body)?;
    let ns = namespace_of(q.namespace, req.namespace.clone())?;
    d.put_secret(&ns, &req.name, &req.value()?, update).await?;
    Ok(())
}

async fn create_secret(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<NsQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    put_secret(&d, q, &body, false).await?;
    Ok(StatusCode::CREATED)
}

async fn update_secret(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<NsQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    put_secret(&d, q, &body, true).await?;
    Ok(StatusCode::OK)
}

/// 200, not the spec's 204: every faas-cli version reports 204 as an error.
async fn remove_secret(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<NsQuery>,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        name: String,
        #[serde(default, deserialize_with = "not_null")]
        namespace: Option<String>,
    }
    let req: Req = json_body(&body)?;
    let ns = namespace_of(q.namespace, req.namespace)?;
    d.remove_secret(&ns, &req.name).await?;
    Ok(StatusCode::OK)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerRequest {
    name: String,
    #[serde(default)]
    public_key: Option<String>,
}

/// 201 with the peer and its wg-quick file (holding its private key when faasd made it).
async fn add_peer(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let req: PeerRequest = json_body(&body)?;
    let added = d
        .wireguard()?
        .add_peer(&req.name, req.public_key.as_deref())?;
    Ok((StatusCode::CREATED, Json(added)))
}

async fn list_peers(State(d): State<Arc<Daemon>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(d.wireguard()?.peer_status()?))
}

async fn remove_peer(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Req {
        name: String,
    }
    let req: Req = json_body(&body)?;
    d.wireguard()?.remove_peer(&req.name)?;
    Ok(StatusCode::OK)
}

async fn namespaces(State(d): State<Arc<Daemon>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(d.namespaces().await?))
}

/// One namespace, as newer faas-cli versions ask for it: 404 when it holds nothing.
async fn namespace_info(
    State(d): State<Arc<Daemon>>,
    Path(ns): Path<String>,
) -> ApiResult<impl IntoResponse> {
    validate_label("namespace", &ns)?;
    if !d.namespaces().await?.contains(&ns) {
        return Err(DaemonError::NoNamespace(ns));
    }
    Ok(Json(
        serde_json::json!({"name": ns, "labels": {}, "annotations": {}}),
    ))
}

#[derive(Debug, Deserialize)]
struct LogsQuery {
    name: String,
    namespace: Option<String>,
    /// Lines from the end; negative (faas-cli's -1) for all. Any integer: a count beyond
    /// the log is the whole log.
    tail: Option<String>,
    instance: Option<String>,
    /// Keep the answer open and send new lines as they come.
    #[serde(default)]
    follow: bool,
    /// Only lines at or after this RFC 3339 time.
    since: Option<String>,
}

/// How often a followed log is read for new lines.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);

fn ndjson(lines: &[crate::logs::LogLine]) -> String {
    lines
        .iter()
        .map(|l| serde_json::to_string(l).expect("log lines serialize") + "\n")
        .collect()
}

async fn logs(
    State(d): State<Arc<Daemon>>,
    Query(q): Query<LogsQuery>,
    uri: axum::http::Uri,
) -> ApiResult<Response> {
    validate_label("function name", &q.name)?;
    let ns = namespace(q.namespace.clone())?;
    if let Some(r) = relayed(
        &d,
        &ns,
        &q.name,
        axum::http::Method::GET,
        &uri,
        &Bytes::new(),
    )
    .await?
    {
        return Ok(r);
    }
    let log = d.log(&ns, &q.name).await?;
    let rfc3339 =
        |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339);
    let since = match q.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            rfc3339(s)
                .map_err(|e| SpecError(format!("since: {s:?} is not an RFC 3339 time ({e})")))?,
        ),
    };
    let after_since = |l: &crate::logs::LogLine| {
        since.is_none_or(|t| rfc3339(&l.timestamp).is_ok_and(|lt| lt >= t))
    };
    let tail = match q.tail.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(t) => match t.parse::<i128>() {
            Ok(n) if n < 0 => None,
            Ok(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
            // Longer than any i128: still a count past the end of the log.
            Err(_) if t.bytes().all(|b| b.is_ascii_digit()) => Some(usize::MAX),
            Err(_) => return Err(SpecError(format!("tail: {t:?} is not a whole number")).into()),
        },
    };
    let follower = q.follow.then(|| log.follow(q.instance.clone()));
    let mut lines = log.read(q.instance.as_deref(), None);
    lines.retain(after_since);
    if let Some(t) = tail {
        lines.drain(..lines.len().saturating_sub(t));
    }
    let head = ndjson(&lines);
    let body = match follower {
        None => Body::from(head),
        // Then whatever is appended, until the client goes.
        // An empty piece would read as the end of a chunked answer: the head goes only when
        // there is one.
        Some(f) => Body::from_stream(
            futures::stream::iter(
                (!head.is_empty()).then_some(Ok::<_, std::convert::Infallible>(head)),
            )
            .chain(futures::stream::unfold(f, |mut f| async move {
                loop {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    let lines = f.poll();
                    if !lines.is_empty() {
                        return Some((Ok(ndjson(&lines)), f));
                    }
                }
            })),
        ),
    };
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn status(State(d): State<Arc<Daemon>>) -> impl IntoResponse {
    Json(d.status().await)
}

async fn cluster(State(d): State<Arc<Daemon>>) -> ApiResult<Json<crate::cluster::ClusterStatus>> {
    Ok(Json(d.cluster()?.status().await))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DrainRequest {
    #[serde(default)]
    host: Option<u16>,
    #[serde(default = "yes")]
    drain: bool,
}

fn yes() -> bool {
    true
}

async fn drain(State(d): State<Arc<Daemon>>, body: Bytes) -> ApiResult<impl IntoResponse> {
    let req: DrainRequest = json_body(&body)?;
    let host = d
        .cluster()?
        .drain(req.host, req.drain)
        .await
        .map_err(crate::daemon::DaemonError::from)?;
    Ok(Json(crate::cluster::DrainAnswer {
        host,
        draining: req.drain,
    }))
}

/// Asked by the other hosts when their registration lapsed (open, like `/healthz`: it
/// tells only whether this host's registration holds).
async fn cluster_lease(
    State(d): State<Arc<Daemon>>,
) -> ApiResult<Json<crate::cluster::LeaseAnswer>> {
    Ok(Json(d.cluster()?.lease_answer()))
}

async fn invoke_root(
    State(d): State<Arc<Daemon>>,
    Path(target): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    invoke(d, target, String::new(), req).await
}

async fn invoke_async_root(
    State(d): State<Arc<Daemon>>,
    Path(target): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    invoke_async(d, target, String::new(), req).await
}

async fn invoke_async_path(
    State(d): State<Arc<Daemon>>,
    Path((target, rest)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    invoke_async(d, target, rest, req).await
}

/// Accepts a call with 202 once it is on disk; [`serve_async_calls`] makes it (see
/// [`crate::asynccall`]).
async fn invoke_async(
    d: Arc<Daemon>,
    target: String,
    rest: String,
    req: Request,
) -> ApiResult<Response> {
    let (name, ns) = match target.split_once('.') {
        Some((n, ns)) => (n.to_owned(), Some(ns.to_owned())),
        None => (target, None),
    };
    validate_label("function name", &name)?;
    let ns = namespace(ns)?;
    // Refuse now what would fail later: an unknown function is a 404 here.
    d.get(&ns, &name).await?;
    let (parts, body) = req.into_parts();
    let callback = match parts.headers.get("x-callback-url") {
        Some(v) => {
            let url = v.to_str().map_err(|_| AsyncError::HeaderNotText {
                name: "X-Callback-Url".into(),
            })?;
            crate::asynccall::Target::parse(url)?;
            Some(url.to_owned())
        }
        None => None,
    };
    let mut headers = Vec::new();
    for (k, v) in &parts.headers {
        if NOT_PASSED_ON.contains(&k.as_str()) {
            continue;
        }
        let v = v.to_str().map_err(|_| AsyncError::HeaderNotText {
            name: k.to_string(),
        })?;
        headers.push((k.to_string(), v.to_owned()));
    }
    let body = body
        .collect()
        .await
        .map_err(|e| SpecError(format!("reading the body: {e}")))?
        .to_bytes();
    let id = crate::asynccall::call_id().map_err(|source| DaemonError::Host {
        what: "making a call id",
        source,
    })?;
    let request = crate::asynccall::Request {
        namespace: ns,
        function: name,
        method: parts.method.to_string(),
        path: rest,
        query: parts.uri.query().map(str::to_owned),
        headers,
        callback,
    };
    d.async_calls().accept(&id, request, body).await?;
    Ok((StatusCode::ACCEPTED, [("x-call-id", id)]).into_response())
}

/// Headers of an async call that are not passed on to the function: those of the caller's
/// connection to faasd, the callback's address, and a call id (faasd gives its own).
const NOT_PASSED_ON: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "x-callback-url",
    "x-call-id",
];

/// Makes the queued async calls, each through its function's address as `/function/*`
/// calls are, until the daemon stops.
pub async fn serve_async_calls(d: Arc<Daemon>) {
    let queue = d.async_calls().clone();
    let invoke: crate::asynccall::Invoke = Arc::new(move |r, id, body| {
        let d = d.clone();
        Box::pin(async move {
            let started = std::time::Instant::now();
            let uri = match &r.query {
                Some(q) => format!("/{}?{q}", r.path),
                None => format!("/{}", r.path),
            };
            let mut req = Request::builder().method(r.method.as_str()).uri(uri);
            for (k, v) in &r.headers {
                req = req.header(k, v);
            }
            let answer = match req.header("x-call-id", id).body(Body::from(body)) {
                Ok(req) => call(&d, &r.namespace, &r.function, r.path.clone(), req)
                    .await
                    .unwrap_or_else(IntoResponse::into_response),
                Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
            };
            let status = answer.status().as_u16();
            let body = answer
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            d.record_invocation(
                &r.namespace,
                &r.function,
                status,
                started.elapsed().as_secs_f64(),
            )
            .await;
            (status, body)
        })
    });
    queue.run(invoke).await;
}

async fn invoke_path(
    State(d): State<Arc<Daemon>>,
    Path((target, rest)): Path<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    invoke(d, target, rest, req).await
}

/// Proxies a call to the function through its own address: the same steering path any
/// client takes, so it starts a stopped function too.
async fn invoke(d: Arc<Daemon>, target: String, rest: String, req: Request) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let (name, ns) = match target.split_once('.') {
        Some((n, ns)) => (n.to_owned(), Some(ns.to_owned())),
        None => (target, None),
    };
    validate_label("function name", &name)?;
    let ns = namespace(ns)?;
    let resp = call(&d, &ns, &name, rest, req).await?;
    d.record_invocation(
        &ns,
        &name,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    )
    .await;
    Ok(resp)
}

/// One call through the function's address; a 502 that says why when it cannot be made.
async fn call(d: &Daemon, ns: &str, name: &str, rest: String, req: Request) -> ApiResult<Response> {
    let (addr, port) = d.invocation_target(ns, name).await?;
    let bad_gateway = |e: &dyn std::fmt::Display| {
        (
            StatusCode::BAD_GATEWAY,
            format!("function {ns}/{name} at [{addr}]:{port}: {e}\n"),
        )
            .into_response()
    };
    let stream = match tokio::net::TcpStream::connect((addr, port)).await {
        Ok(s) => s,
        Err(e) => return Ok(bad_gateway(&e)),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return Ok(bad_gateway(&e)),
    };
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = format!("/{rest}{query}")
        .parse()
        .map_err(|e| SpecError(format!("bad path: {e}")))?;
    parts.headers.insert(
        header::HOST,
        HeaderValue::from_str(&format!("[{addr}]:{port}")).expect("an address is a valid header"),
    );
    let answer = sender.send_request(hyper::Request::from_parts(parts, body));
    tokio::select! {
        answer = answer => match answer {
            Ok(resp) => Ok(resp.map(Body::new)),
            Err(e) => Ok(bad_gateway(&e)),
        },
        why = crash_loop(d, ns, name) => Ok(bad_gateway(&why)),
    }
}

/// Resolves when the function is crash-looping, with why: a call to a function that cannot
/// start would otherwise wait in its accept queue until the client gives up.
async fn crash_loop(d: &Daemon, ns: &str, name: &str) -> String {
    loop {
        tokio::time::sleep(CRASH_POLL).await;
        if let Ok(s) = d.state(ns, name).await
            && s.phase == crate::status::Phase::CrashLoop
        {
            return format!(
                "it cannot start ({}); next attempt in {} ms",
                s.last_error.unwrap_or_default(),
                s.retry_in_ms.unwrap_or_default()
            );
        }
    }
}

/// How often a call in progress checks whether its function is crash-looping.
const CRASH_POLL: std::time::Duration = std::time::Duration::from_millis(100);
