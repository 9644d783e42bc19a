//! A small HTTP client for the CLI, speaking to the daemon's unix socket.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes};
use hyper_util::rt::TokioIo;

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket is not there or refuses.
    #[error("cannot reach faasd at {path}: {source} (is `faasd daemon` running? see --socket)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP failed.
    #[error("talking to faasd: {0}")]
    Http(#[from] hyper::Error),
    /// The daemon answered with an error.
    #[error("{status}: {message}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The daemon's explanation.
        message: String,
    },
}

/// A connection target.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    /// Sends a GET and hands each piece of a 2xx answer's body to `each` as it arrives (a
    /// followed log); returns when the daemon ends the answer.
    pub async fn stream(&self, path: &str, mut each: impl FnMut(&[u8])) -> Result<(), ClientError> {
        // The request's sender lives as long as the answer is read: dropped, it lets the
        // connection end the answer early.
        let (_sender, resp) = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return Err(ClientError::Status {
                status,
                message: String::from_utf8_lossy(&bytes).trim().to_owned(),
            });
        }
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                each(data);
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            hyper::Response<hyper::body::Incoming>,
        ),
        ClientError,
    > {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "faasd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request parts are valid");
        let resp = sender.send_request(req).await?;
        Ok((sender, resp))
    }

    /// Sends a request; returns the body of a 2xx answer, or the error the daemon gave.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let (_sender, resp) = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(ClientError::Status {
                status,
                message: String::from_utf8_lossy(&bytes).trim().to_owned(),
            })
        }
    }
}
