//! A small HTTP client for the CLI: the daemon's unix socket (no credentials; the socket's
//! permissions guard it), or a remote faasd's TCP API with basic auth.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes, client::conn::http1::SendRequest};
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
    /// The remote API does not answer.
    #[error("cannot reach faasd at {url}: {source} (is the address reachable, over wg-faas?)")]
    ConnectTcp {
        /// The URL.
        url: String,
        /// Why.
        source: std::io::Error,
    },
    /// The URL is not one faasd serves.
    #[error("--url {0:?}: {1}")]
    Url(String, &'static str),
    /// The remote API wants credentials.
    #[error(
        "faasd at {0} refused the credentials (401): give --password (or FAASD_PASSWORD); \
         the password is in <state-dir>/auth/basic-auth-password on the faasd host"
    )]
    Unauthorized(String),
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

/// Where the daemon is.
#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp {
        /// As given, for messages.
        url: String,
        /// `host:port`, for connecting and the Host header.
        authority: String,
        /// `Basic …`, when credentials were given.
        authorization: Option<String>,
    },
}

/// A connection target.
#[derive(Clone)]
pub struct Client {
    target: Target,
}

impl std::fmt::Debug for Client {
    /// Leaves the credentials out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.target {
            Target::Unix(p) => write!(f, "Client({})", p.display()),
            Target::Tcp { url, .. } => write!(f, "Client({url})"),
        }
    }
}

impl Client {
    /// A client for the daemon at `socket`.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            target: Target::Unix(socket),
        }
    }

    /// A client for a faasd API over TCP (`http://host:port`, as OpenFaaS's gateway URL),
    /// with basic-auth credentials for `/system/*` when given.
    pub fn remote(url: &str, credentials: Option<(&str, &str)>) -> Result<Self, ClientError> {
        let bad = |why| ClientError::Url(url.to_owned(), why);
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => {
                return Err(bad(
                    "faasd serves its API in plain HTTP, inside the WireGuard tunnel; use http://",
                ));
            }
            _ => return Err(bad("expected http://HOST:PORT")),
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected http://HOST:PORT with no path"));
        }
        let uri: hyper::Uri = format!("http://{authority}/")
            .parse()
            .map_err(|_| bad("not a valid URL"))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let authority = format!("{host}:{}", uri.port_u16().unwrap_or(8080));
        let authorization = credentials.map(|(user, password)| {
            use base64::Engine;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {token}")
        });
        Ok(Self {
            target: Target::Tcp {
                url: url.to_owned(),
                authority,
                authorization,
            },
        })
    }

    /// A client for another host of the cluster's API, over the mesh, authorized by the
    /// cluster's token (see [`crate::cluster::ClusterKey::api_token`]).
    pub fn peer(api: &str, token: &str) -> Result<Self, ClientError> {
        let mut c = Self::remote(&format!("http://{api}"), None)?;
        if let Target::Tcp { authorization, .. } = &mut c.target {
            *authorization = Some(format!("Bearer {token}"));
        }
        Ok(c)
    }

    /// Sends a request and hands back the answer as it comes, whatever its status, for
    /// relaying it.
    pub async fn relay(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        Ok(self.send(method, path, body).await?.1)
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
            SendRequest<Full<Bytes>>,
            hyper::Response<hyper::body::Incoming>,
        ),
        ClientError,
    > {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        let mut sender = match &self.target {
            Target::Unix(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|source| ClientError::Connect {
                        path: socket.clone(),
                        source,
                    })?;
                req = req.header("host", "faasd");
                handshake(stream).await?
            }
            Target::Tcp {
                url,
                authority,
                authorization,
            } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|source| ClientError::ConnectTcp {
                        url: url.clone(),
                        source,
                    })?;
                req = req.header("host", authority.as_str());
                if let Some(a) = authorization {
                    req = req.header("authorization", a.as_str());
                }
                handshake(stream).await?
            }
        };
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("request parts are valid");
        let resp = sender.send_request(req).await?;
        if resp.status() == StatusCode::UNAUTHORIZED
            && let Target::Tcp { url, .. } = &self.target
        {
            return Err(ClientError::Unauthorized(url.clone()));
        }
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

async fn handshake<S>(stream: S) -> Result<SendRequest<Full<Bytes>>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}
