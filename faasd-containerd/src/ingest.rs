//! Storing an image in containerd from wherever its blobs come from (an OCI archive, a
//! registry): the platform's manifest, its config and layers into the content store with
//! the garbage-collection labels that tie them together, the layers unpacked into
//! snapshots, and the image record pointed at the top descriptor. Runs under a lease, so
//! nothing is collected half-way.

use std::collections::HashMap;

use containerd_client::{
    services::v1::{
        CreateImageRequest, Image, InfoRequest, UpdateImageRequest, UpdateRequest, WriteAction,
        WriteContentRequest,
    },
    tonic,
    types::Descriptor,
};
use futures::stream::BoxStream;

use faasd_core::image_ref::ImageRef;

use super::{
    Containerd, ContainerdError, Held, SNAPSHOTTER,
    image::{Blob, Config, Manifest, chain_ids, host_architecture},
};

/// Bytes per write message.
pub(crate) const CHUNK: usize = 1 << 20;

/// Chunks of a blob's bytes.
pub(crate) type Chunks = BoxStream<'static, std::io::Result<Vec<u8>>>;

/// Where an image's blobs come from.
pub(crate) enum Source {
    /// An OCI layout archive.
    Archive(super::import::Archive),
    /// A registry.
    Registry(super::pull::Registry),
}

impl Source {
    /// A small blob (manifest, index, config), whole.
    async fn small(&mut self, blob: &Blob) -> Result<Vec<u8>, ContainerdError> {
        match self {
            Self::Archive(a) => a.read_small(blob),
            Self::Registry(r) => r.fetch_small(blob).await,
        }
    }

    /// A blob's bytes, streamed.
    async fn open(&mut self, blob: &Blob) -> Result<Chunks, ContainerdError> {
        match self {
            Self::Archive(a) => a.chunks(blob),
            Self::Registry(r) => r.fetch_blob(blob).await,
        }
    }
}

fn invalid(image: &ImageRef, reason: impl Into<String>) -> ContainerdError {
    ContainerdError::Image {
        image: image.to_string(),
        reason: reason.into(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    image: &ImageRef,
    blob: &Blob,
    bytes: &[u8],
) -> Result<T, ContainerdError> {
    serde_json::from_slice(bytes)
        .map_err(|e| invalid(image, format!("{} is not valid: {e}", blob.digest)))
}

/// Whether a descriptor points at an index (OCI) or a manifest list (Docker).
pub(crate) fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// A blob to store, and the labels that keep what it references alive.
struct Upload {
    blob: Blob,
    labels: HashMap<String, String>,
}

impl Containerd {
    /// Stores `name` → `top` with everything it references for this machine's platform.
    pub(crate) async fn ingest(
        &self,
        lease: &str,
        source: &mut Source,
        name: &ImageRef,
        top: &Blob,
    ) -> Result<(), ContainerdError> {
        let mut uploads = Vec::new();
        let manifest_blob = if is_index(&top.media_type) {
            let index: Manifest = parse(name, top, &source.small(top).await?)?;
            let arch = host_architecture();
            let (i, entry) = index
                .manifests
                .iter()
                .enumerate()
                .find(|(_, e)| {
                    e.platform
                        .as_ref()
                        .is_none_or(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| invalid(name, format!("no manifest for linux/{arch}")))?;
            uploads.push(Upload {
                blob: top.clone(),
                labels: HashMap::from([(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    entry.digest.clone(),
                )]),
            });
            entry.clone()
        } else {
            top.clone()
        };
        let manifest: Manifest = parse(name, &manifest_blob, &source.small(&manifest_blob).await?)?;
        let config_blob = manifest
            .config
            .clone()
            .ok_or_else(|| invalid(name, "the manifest names no config"))?;
        let config: Config = parse(name, &config_blob, &source.small(&config_blob).await?)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(invalid(
                name,
                "the config's diff_ids do not match the layers",
            ));
        }
        let chain = chain_ids(&config.rootfs.diff_ids);
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_owned(),
            config_blob.digest.clone(),
        )]);
        for (i, l) in manifest.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                l.digest.clone(),
            );
            uploads.push(Upload {
                blob: l.clone(),
                labels: HashMap::new(),
            });
        }
        let mut config_labels = HashMap::new();
        if let Some(top_chain) = chain.last() {
            config_labels.insert(
                format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                top_chain.clone(),
            );
        }
        uploads.push(Upload {
            blob: config_blob,
            labels: config_labels,
        });
        uploads.push(Upload {
            blob: manifest_blob,
            labels: manifest_labels,
        });
        // Layers first, referrers last: whatever is labelled exists when labelled.
        for u in &uploads {
            self.hold(lease, Held::Content(&u.blob.digest)).await?;
            if !self.has_content(&u.blob.digest).await {
                let chunks = source.open(&u.blob).await?;
                self.write_blob(lease, &u.blob, chunks).await?;
            }
            if !u.labels.is_empty() {
                self.label_content(&u.blob.digest, &u.labels).await?;
            }
        }
        self.unpack(lease, name.as_str(), &manifest.layers, &chain)
            .await?;
        self.put_image(name.as_str(), top).await
    }

    async fn has_content(&self, digest: &str) -> bool {
        let info = InfoRequest {
            digest: digest.into(),
        };
        self.content().info(self.request(info)).await.is_ok()
    }

    /// Writes one blob into the content store; containerd checks its digest and size on
    /// commit.
    async fn write_blob(
        &self,
        lease: &str,
        blob: &Blob,
        chunks: Chunks,
    ) -> Result<(), ContainerdError> {
        let failed = std::sync::Arc::new(std::sync::Mutex::new(None::<std::io::Error>));
        let requests = WriteRequests {
            chunks,
            template: WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: format!("faasd-ingest-{}", blob.digest),
                total: blob.size,
                expected: blob.digest.clone(),
                offset: 0,
                data: Vec::new(),
                labels: Default::default(),
            },
            done: false,
            failed: failed.clone(),
        };
        let mut responses = self
            .content()
            .write(self.leased(lease, requests))
            .await
            .map_err(ContainerdError::rpc("writing content"))?
            .into_inner();
        let mut committed = false;
        loop {
            match responses.message().await {
                Ok(Some(r)) => committed |= r.action == WriteAction::Commit as i32,
                Ok(None) => break,
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(ContainerdError::rpc("writing content")(s)),
            }
        }
        if let Some(e) = failed.lock().expect("error slot").take() {
            return Err(ContainerdError::Io {
                what: format!("reading {}", blob.digest),
                source: e,
            });
        }
        if !committed {
            return Err(ContainerdError::Io {
                what: format!("storing {}", blob.digest),
                source: std::io::Error::other("containerd did not commit the blob"),
            });
        }
        Ok(())
    }

    /// Sets garbage-collection labels on a blob.
    pub(crate) async fn label_content(
        &self,
        digest: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), ContainerdError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let req = UpdateRequest {
            info: Some(containerd_client::services::v1::Info {
                digest: digest.into(),
                labels: labels.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        self.content()
            .update(self.request(req))
            .await
            .map_err(ContainerdError::rpc("labelling content"))?;
        Ok(())
    }

    /// Creates the image record, or points an existing one at the new target.
    async fn put_image(&self, name: &str, target: &Blob) -> Result<(), ContainerdError> {
        let image = Image {
            name: name.into(),
            labels: Default::default(),
            target: Some(Descriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                annotations: Default::default(),
            }),
            created_at: None,
            updated_at: None,
        };
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self.images().create(self.request(create)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                let update = UpdateImageRequest {
                    image: Some(image),
                    update_mask: None,
                    source_date_epoch: None,
                };
                self.images()
                    .update(self.request(update))
                    .await
                    .map_err(ContainerdError::rpc("updating an image"))?;
                Ok(())
            }
            Err(s) => Err(ContainerdError::rpc("creating an image")(s)),
        }
    }
}

/// The write requests of one blob: each chunk a write at the running offset, then a commit
/// (which containerd refuses if a read error cut the blob short). A plain `Stream` rather
/// than combinators with closures: those made the API handlers' futures not provably
/// `Send` for every lifetime.
struct WriteRequests {
    chunks: Chunks,
    template: WriteContentRequest,
    done: bool,
    failed: std::sync::Arc<std::sync::Mutex<Option<std::io::Error>>>,
}

impl futures::Stream for WriteRequests {
    type Item = WriteContentRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<WriteContentRequest>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match self.chunks.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(data))) => {
                let req = WriteContentRequest {
                    data,
                    ..self.template.clone()
                };
                self.template.offset += req.data.len() as i64;
                Poll::Ready(Some(req))
            }
            Poll::Ready(Some(Err(e))) => {
                *self.failed.lock().expect("error slot") = Some(e);
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(WriteContentRequest {
                    action: WriteAction::Commit as i32,
                    ..self.template.clone()
                }))
            }
        }
    }
}
