//! Pulling an image from a registry (the OCI distribution API) into containerd: the
//! manifest (or index) by tag or digest, then the config and layers, streamed into the
//! content store and unpacked like an import. Anonymous, or with the credentials
//! [`Registries`] has for the registry, by the bearer-token handshake or basic auth;
//! HTTPS with the Mozilla root certificates and the registry's own CAs, plain HTTP only for
//! registries on loopback without a CA directory (`localhost:5000`), as Docker does.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::{
    Request, Response, StatusCode, Uri,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

use faasd_core::image_ref::ImageRef;

use super::{
    Containerd, ContainerdError,
    credentials::{Credential, Registries, tls_config},
    image::Blob,
    ingest::{Chunks, Source, is_index},
};

/// What a manifest request accepts, newest formats first.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest manifest or config read into memory.
const MAX_SMALL: usize = 4 << 20;

/// One repository on one registry.
pub(crate) struct Registry {
    image: ImageRef,
    /// `https` or `http`.
    scheme: &'static str,
    /// Host and port as in URLs.
    host: String,
    repository: String,
    /// What this registry is offered, if it has credentials in the config file.
    credential: Option<Credential>,
    /// The `Authorization` header its challenge called for (`Bearer …` or `Basic …`).
    authorization: Option<String>,
    /// The credentials file, for messages.
    config: std::path::PathBuf,
    tls: Arc<rustls::ClientConfig>,
    /// Manifests and configs already fetched, by digest.
    fetched: HashMap<String, Vec<u8>>,
}

fn error(image: &ImageRef, reason: impl Into<String>) -> ContainerdError {
    ContainerdError::Image {
        image: image.to_string(),
        reason: reason.into(),
    }
}

/// Splits a normalised reference into (registry, repository, tag or digest).
fn parts(image: &ImageRef) -> (String, String, String) {
    let s = image.as_str();
    let (domain, rest) = s
        .split_once('/')
        .expect("normalised references have a domain");
    let (path, reference) = match rest.split_once('@') {
        Some((p, d)) => (p.rsplit_once(':').map_or(p, |(n, _)| n), d.to_owned()),
        None => {
            let (p, t) = rest
                .rsplit_once(':')
                .expect("normalised references have a tag");
            (p, t.to_owned())
        }
    };
    // Docker Hub's registry is not at its image names' domain.
    let registry = if domain == "docker.io" {
        "registry-1.docker.io".to_owned()
    } else {
        domain.to_owned()
    };
    (registry, path.to_owned(), reference)
}

fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => host,
    };
    matches!(name, "localhost" | "127.0.0.1" | "[::1]")
}

/// The parameters of a `WWW-Authenticate: Bearer realm="…",service="…",scope="…"` challenge.
fn bearer_challenge(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let (val, after) = after.split_once('"')?;
        out.insert(key.trim().to_owned(), val.to_owned());
        s = after.trim_start_matches(',').trim();
    }
    Some(out)
}

/// Sends one GET over a new connection (HTTP/1.1, TLS for https).
async fn get(
    tls: &Arc<rustls::ClientConfig>,
    uri: &Uri,
    headers: &[(header::HeaderName, String)],
) -> Result<Response<Incoming>, String> {
    let host = uri.host().ok_or("no host in URL")?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((bare, port)),
    )
    .await
    .map_err(|_| format!("connecting to {host}:{port} timed out"))?
    .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let mut req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("faasd/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let sent = if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        tokio::time::timeout(RESPONSE_TIMEOUT, send_tls(tls.clone(), name, tcp, req)).await
    } else {
        tokio::time::timeout(RESPONSE_TIMEOUT, send(TokioIo::new(tcp), req)).await
    };
    sent.map_err(|_| format!("{host} did not answer within {RESPONSE_TIMEOUT:?}"))?
}

async fn send_tls(
    tls: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    tcp: tokio::net::TcpStream,
    req: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, String> {
    let host = format!("{name:?}");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    send(TokioIo::new(stream), req).await
}

async fn send<S>(io: TokioIo<S>, req: Request<Empty<Bytes>>) -> Result<Response<Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

async fn body_bytes(resp: Response<Incoming>, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            out.extend_from_slice(d);
            if out.len() > limit {
                return Err(format!("answer larger than {limit} bytes"));
            }
        }
    }
    Ok(out)
}

impl Registry {
    fn new(image: &ImageRef, registries: &Registries) -> Result<Self, ContainerdError> {
        let (host, repository, _) = parts(image);
        let extra_roots = registries.extra_roots(&host).map_err(|e| error(image, e))?;
        let credential = registries.credential(&host).map_err(|e| error(image, e))?;
        Ok(Self {
            image: image.clone(),
            scheme: if is_loopback(&host) && extra_roots.is_none() {
                "http"
            } else {
                "https"
            },
            host,
            repository,
            credential,
            authorization: None,
            config: registries.config().to_owned(),
            tls: tls_config(extra_roots).map_err(|e| error(image, format!("TLS setup: {e}")))?,
            fetched: HashMap::new(),
        })
    }

    /// A 401 that the credentials (or their absence) could not get past, saying which
    /// were tried.
    fn refused(&self, by: &str) -> ContainerdError {
        let reason = match &self.credential {
            Some(c) => format!(
                "{by} refused the credentials for {} ({c:?}); check them, or log in again                  (docker login {} writes that file's format)",
                self.host, self.host
            ),
            None => format!(
                "{by} asks for credentials, and {} has none for {}: add them there (docker                  login {} or faas-cli registry-login writes that format), or import the image                  with `faasd image import`",
                self.config.display(),
                self.host,
                self.host
            ),
        };
        error(&self.image, reason)
    }

    fn uri(&self, kind: &str, reference: &str) -> Result<Uri, ContainerdError> {
        format!(
            "{}://{}/v2/{}/{kind}/{reference}",
            self.scheme, self.host, self.repository
        )
        .parse()
        .map_err(|e| error(&self.image, format!("bad registry URL: {e}")))
    }

    /// GET with the registry's token, fetching one on a bearer challenge, and following
    /// redirects (blob downloads are often redirected to a CDN, which gets no token).
    async fn fetch(
        &mut self,
        uri: Uri,
        accept: &str,
    ) -> Result<Response<Incoming>, ContainerdError> {
        let mut uri = uri;
        let mut challenged = false;
        for _ in 0..6 {
            let mut headers = vec![(header::ACCEPT, accept.to_owned())];
            let same_host = uri.authority().map(|a| a.as_str()) == Some(self.host.as_str());
            if let Some(a) = &self.authorization
                && same_host
            {
                headers.push((header::AUTHORIZATION, a.clone()));
            }
            let resp = match get(&self.tls, &uri, &headers).await {
                Ok(r) => r,
                Err(e) => {
                    return Err(ContainerdError::Registry {
                        image: self.image.to_string(),
                        reason: format!("cannot reach the registry {}: {e}", self.host),
                    });
                }
            };
            match resp.status() {
                StatusCode::UNAUTHORIZED if !challenged && same_host => {
                    challenged = true;
                    let challenge = resp
                        .headers()
                        .get(header::WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    self.authorization = Some(match bearer_challenge(challenge) {
                        Some(c) => format!("Bearer {}", self.token_for(&c).await?),
                        None => match &self.credential {
                            Some(c) if challenge.starts_with("Basic") => c.basic(),
                            _ => return Err(self.refused(&format!("the registry {}", self.host))),
                        },
                    });
                }
                StatusCode::UNAUTHORIZED if same_host => {
                    return Err(self.refused(&format!("the registry {}", self.host)));
                }
                s if s.is_redirection() => {
                    let location = resp
                        .headers()
                        .get(header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .ok_or_else(|| error(&self.image, "a redirect without a location"))?;
                    uri = if location.starts_with('/') {
                        format!("{}://{}{location}", self.scheme, self.host)
                    } else {
                        location.to_owned()
                    }
                    .parse()
                    .map_err(|e| error(&self.image, format!("bad redirect: {e}")))?;
                }
                _ => return Ok(resp),
            }
        }
        Err(error(&self.image, "too many redirects"))
    }

    /// A token from the challenge's realm: for the registry's credentials, or anonymous.
    async fn token_for(&self, c: &HashMap<String, String>) -> Result<String, ContainerdError> {
        let realm = c
            .get("realm")
            .ok_or_else(|| error(&self.image, "the registry's challenge names no realm"))?;
        let mut query = Vec::new();
        for k in ["service", "scope"] {
            if let Some(v) = c.get(k) {
                query.push(format!("{k}={}", v.replace(' ', "%20")));
            }
        }
        if !c.contains_key("scope") {
            query.push(format!("scope=repository:{}:pull", self.repository));
        }
        let uri: Uri = format!("{realm}?{}", query.join("&"))
            .parse()
            .map_err(|e| error(&self.image, format!("bad token realm {realm}: {e}")))?;
        let basic: Vec<_> = self
            .credential
            .iter()
            .map(|c| (header::AUTHORIZATION, c.basic()))
            .collect();
        let resp = get(&self.tls, &uri, &basic)
            .await
            .map_err(|e| error(&self.image, format!("getting a token from {realm}: {e}")))?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(self.refused(&format!("the token service {realm}")));
        }
        if !resp.status().is_success() {
            return Err(error(
                &self.image,
                format!("the token service {realm} answered {}", resp.status()),
            ));
        }
        let body = body_bytes(resp, MAX_SMALL)
            .await
            .map_err(|e| error(&self.image, e))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| error(&self.image, format!("token answer: {e}")))?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| error(&self.image, "the token service sent no token"))
    }

    fn status_error(&self, what: &str, status: StatusCode) -> ContainerdError {
        let hint = if status == StatusCode::NOT_FOUND {
            " (no such repository, tag or digest)"
        } else {
            ""
        };
        let reason = format!(
            "the registry {} answered {status} for {what}{hint}",
            self.host
        );
        if status.is_server_error() {
            return ContainerdError::Registry {
                image: self.image.to_string(),
                reason,
            };
        }
        error(&self.image, reason)
    }

    /// The manifest or index `reference` names, as the top descriptor.
    async fn top(&mut self, reference: &str) -> Result<Blob, ContainerdError> {
        let resp = self
            .fetch(self.uri("manifests", reference)?, MANIFEST_TYPES)
            .await?;
        if !resp.status().is_success() {
            return Err(self.status_error("the manifest", resp.status()));
        }
        let header_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let body = body_bytes(resp, MAX_SMALL)
            .await
            .map_err(|e| error(&self.image, format!("reading the manifest: {e}")))?;
        let digest = format!("sha256:{:x}", Sha256::digest(&body));
        if reference.contains(':') && reference != digest {
            return Err(error(
                &self.image,
                format!("the registry sent {digest} for {reference}"),
            ));
        }
        let media_type = header_type
            .filter(|t| t.contains("manifest") || t.contains("index"))
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["mediaType"].as_str().map(str::to_owned))
            })
            .ok_or_else(|| error(&self.image, "the manifest has no media type"))?;
        let blob = Blob {
            media_type,
            digest: digest.clone(),
            size: body.len() as i64,
            platform: None,
            annotations: Default::default(),
        };
        self.fetched.insert(digest, body);
        Ok(blob)
    }
}

impl Registry {
    /// A manifest or config, whole and checked against its digest.
    pub(crate) async fn fetch_small(&mut self, blob: &Blob) -> Result<Vec<u8>, ContainerdError> {
        if let Some(b) = self.fetched.get(&blob.digest) {
            return Ok(b.clone());
        }
        let is_manifest = is_index(&blob.media_type) || blob.media_type.contains("manifest");
        let (kind, accept) = if is_manifest {
            ("manifests", MANIFEST_TYPES)
        } else {
            ("blobs", "*/*")
        };
        let resp = self.fetch(self.uri(kind, &blob.digest)?, accept).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&blob.digest, resp.status()));
        }
        let body = body_bytes(resp, MAX_SMALL)
            .await
            .map_err(|e| error(&self.image, format!("reading {}: {e}", blob.digest)))?;
        if format!("sha256:{:x}", Sha256::digest(&body)) != blob.digest {
            return Err(error(
                &self.image,
                format!("the registry sent other bytes for {}", blob.digest),
            ));
        }
        self.fetched.insert(blob.digest.clone(), body.clone());
        Ok(body)
    }

    /// A blob's bytes, streamed.
    pub(crate) async fn fetch_blob(&mut self, blob: &Blob) -> Result<Chunks, ContainerdError> {
        if let Some(b) = self.fetched.get(&blob.digest) {
            return Ok(Box::pin(futures::stream::iter([Ok(b.clone())])));
        }
        let resp = self.fetch(self.uri("blobs", &blob.digest)?, "*/*").await?;
        if !resp.status().is_success() {
            return Err(self.status_error(&blob.digest, resp.status()));
        }
        // containerd checks the digest and size when the write is committed.
        let frames = resp.into_body().into_data_stream();
        Ok(Box::pin(frames.map(|r| {
            r.map(|b| b.to_vec()).map_err(std::io::Error::other)
        })))
    }
}

impl Containerd {
    /// Pulls `image` from its registry and unpacks it.
    pub async fn pull(&self, image: &ImageRef) -> Result<(), ContainerdError> {
        let (_, _, reference) = parts(image);
        let mut registry = Registry::new(image, &self.registries)?;
        let top = registry.top(&reference).await?;
        let mut source = Source::Registry(registry);
        let lease = format!(
            "faasd-pull-{}-{:x}",
            std::process::id(),
            Sha256::digest(image.as_str())
        )
        .chars()
        .take(64)
        .collect::<String>();
        self.create_lease(&lease).await?;
        let r = self.ingest(&lease, &mut source, image, &top).await;
        self.delete_lease(&lease).await?;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_registry_repository_and_reference() {
        let p = |s: &str| parts(&ImageRef::parse(s).unwrap());
        assert_eq!(
            p("nginx"),
            (
                "registry-1.docker.io".into(),
                "library/nginx".into(),
                "latest".into()
            )
        );
        assert_eq!(
            p("127.0.0.1:5000/a/b:1.0"),
            ("127.0.0.1:5000".into(), "a/b".into(), "1.0".into())
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            p(&format!("ghcr.io/o/r:t@{d}")),
            ("ghcr.io".into(), "o/r".into(), d.clone())
        );
        assert!(is_loopback("localhost:5000") && is_loopback("127.0.0.1:5000"));
        assert!(!is_loopback("registry.local:5000"));
    }

    #[test]
    fn bearer_challenges_are_parsed() {
        let c = bearer_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        )
        .unwrap();
        assert_eq!(c["realm"], "https://auth.docker.io/token");
        assert_eq!(c["service"], "registry.docker.io");
        assert_eq!(c["scope"], "repository:library/nginx:pull");
        assert!(bearer_challenge("Basic realm=\"x\"").is_none());
    }
}
