//! POSTing a call's answer to its `X-Callback-Url`, with the headers OpenFaaS's queue
//! worker sends: `X-Call-Id`, `X-Function-Name`, `X-Function-Status` and
//! `X-Duration-Seconds`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use super::{AsyncError, record::Answer};

/// The longest one delivery may take, connection and answer together. It also bounds how
/// long a stopping daemon waits for deliveries under way.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// A callback URL faasd can deliver to: `http://host[:port]/path`.
#[derive(Debug, Clone)]
pub struct Target {
    uri: hyper::Uri,
    host: String,
    port: u16,
}

impl Target {
    /// Checks `url` at the edge, so a call is never queued with a callback that cannot be
    /// made.
    pub fn parse(url: &str) -> Result<Self, AsyncError> {
        let bad = |why: &'static str| AsyncError::BadCallback {
            url: url.to_owned(),
            why,
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// callbacks are supported"));
        }
        let host = uri.host().ok_or_else(|| bad("it names no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self { uri, host, port })
    }
}

/// What one delivery came to.
#[derive(Debug)]
pub enum Delivery {
    /// The receiver took it (2xx or 3xx).
    Taken,
    /// The receiver refused it for good (4xx but 408 and 429): sending it again would not
    /// change its answer.
    Refused(u16),
    /// Worth another try later: no connection, no answer in time, 5xx, 408 or 429.
    Retry(String),
}

/// POSTs `answer` and `body` to its callback once.
pub async fn deliver(id: &str, answer: &Answer, body: Bytes) -> Delivery {
    let target = match Target::parse(&answer.callback) {
        Ok(t) => t,
        // Checked when the call was accepted, so only a queue file edited by hand gets here;
        // it is tried like any failing callback until its time is up, and then logged.
        Err(e) => return Delivery::Retry(e.to_string()),
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&target, id, answer, body)).await {
        Err(_) => Delivery::Retry(format!("no answer within {ATTEMPT_TIMEOUT:?}")),
        Ok(Err(e)) => Delivery::Retry(e.to_string()),
        Ok(Ok(code)) => match code {
            408 | 429 | 500.. => Delivery::Retry(format!("it answered {code}")),
            400.. => Delivery::Refused(code),
            _ => Delivery::Taken,
        },
    }
}

async fn post(t: &Target, id: &str, answer: &Answer, body: Bytes) -> Result<u16, AsyncError> {
    let url = || answer.callback.clone();
    let http = |source| AsyncError::CallbackHttp { url: url(), source };
    let stream = tokio::net::TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|source| AsyncError::CallbackConnect { url: url(), source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let mut headers = HeaderMap::new();
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(k, v);
        }
    };
    put("x-call-id", id);
    put("x-function-name", &answer.function);
    put("x-function-status", &answer.status.to_string());
    put("x-duration-seconds", &format!("{:.6}", answer.seconds));
    put(
        header::HOST.as_str(),
        t.uri.authority().map_or(t.host.as_str(), |a| a.as_str()),
    );
    let mut req = hyper::Request::builder()
        .method(Method::POST)
        .uri(t.uri.path_and_query().map_or("/", |p| p.as_str()))
        .body(Full::new(body))
        .expect("a parsed URI's path is a valid request target");
    *req.headers_mut() = headers;
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_taken() {
        let t = Target::parse("http://[::1]:9000/done?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(Target::parse("http://example.com/").unwrap().port, 80);
        for bad in [
            "https://example.com/",
            "example.com/done",
            "/done",
            "http//x",
            "",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(AsyncError::BadCallback { .. })),
                "{bad}"
            );
        }
    }
}
