//! `/async-function/…`: OpenFaaS's asynchronous invocation. The call is accepted with 202
//! and an `X-Call-Id`, made in the background through the function's address (so it wakes a
//! stopped function like any call), and its result is POSTed to the `X-Callback-Url` the
//! caller gave, with `X-Call-Id`, `X-Function-Name`, `X-Function-Status` and
//! `X-Duration-Seconds`. At most [`MAX_RUNNING`] calls run at once; more wait their turn.
//! Calls live in memory: a daemon restart drops the ones not yet made.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Calls made at the same time; the rest queue.
pub const MAX_RUNNING: usize = 64;

static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_RUNNING);

/// A new call id: 16 random bytes, hex.
pub fn call_id() -> std::io::Result<String> {
    let b = crate::random::bytes::<16>()?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Waits for a free slot; the permit frees it when dropped.
pub async fn slot() -> tokio::sync::SemaphorePermit<'static> {
    RUNNING
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// The outcome of one call.
#[derive(Debug)]
pub struct Outcome {
    /// HTTP status the function answered (502 if it could not be reached).
    pub status: u16,
    /// Its body.
    pub body: Bytes,
    /// Seconds the call took.
    pub seconds: f64,
}

/// POSTs the outcome to `url` (plain HTTP), with the OpenFaaS headers.
pub async fn callback(url: &str, id: &str, function: &str, o: &Outcome) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// callbacks are supported"));
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut headers = HeaderMap::new();
    let mut put = |k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            headers.insert(k, v);
        }
    };
    put("x-call-id", id.to_owned());
    put("x-function-name", function.to_owned());
    put("x-function-status", o.status.to_string());
    put("x-duration-seconds", format!("{:.6}", o.seconds));
    put(
        header::HOST.as_str(),
        uri.authority().map_or(host, |a| a.as_str()).to_owned(),
    );
    let mut req = hyper::Request::builder()
        .method(Method::POST)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .body(Full::new(o.body.clone()))
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = headers;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}
