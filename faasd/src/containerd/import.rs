//! `faasd image import FILE.tar`: an OCI image layout archive into containerd's content
//! store, image store and snapshotter, through containerd's API (no `ctr`, no registry).
//!
//! Each image of the archive is the entry of its `index.json` that carries the
//! `io.containerd.image.name` (or a full `org.opencontainers.image.ref.name`) annotation.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::Path,
};

use containerd_client::{
    services::v1::{
        CreateImageRequest, Image, InfoRequest, UpdateImageRequest, UpdateRequest, WriteAction,
        WriteContentRequest,
    },
    tonic,
    types::Descriptor,
};
use futures::StreamExt;

use super::{
    Containerd, ContainerdError, SNAPSHOTTER,
    image::{Blob, Config, ImageRef, Manifest, chain_ids},
};

/// Bytes per write message.
const CHUNK: usize = 1 << 20;

/// Where each blob sits inside the archive.
struct Archive {
    path: std::path::PathBuf,
    blobs: HashMap<String, (u64, u64)>,
    index: Vec<u8>,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContainerdError {
    move |source| ContainerdError::Io {
        what: what.into(),
        source,
    }
}

fn bad_archive(path: &Path, reason: impl std::fmt::Display) -> ContainerdError {
    ContainerdError::Io {
        what: format!("{}", path.display()),
        source: std::io::Error::other(format!("not a usable OCI image archive: {reason}")),
    }
}

impl Archive {
    fn open(path: &Path) -> Result<Self, ContainerdError> {
        let file = File::open(path).map_err(io_error(format!("opening {}", path.display())))?;
        let mut tar = tar::Archive::new(file);
        let mut blobs = HashMap::new();
        let mut index = None;
        let mut layout = false;
        let entries = tar
            .entries()
            .map_err(io_error(format!("reading {}", path.display())))?;
        for entry in entries {
            let mut entry = entry.map_err(io_error(format!("reading {}", path.display())))?;
            let name = entry
                .path()
                .map_err(io_error("reading an archive entry's name"))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            if name == "index.json" {
                let mut v = Vec::new();
                entry
                    .read_to_end(&mut v)
                    .map_err(io_error("reading index.json"))?;
                index = Some(v);
            } else if name == "oci-layout" {
                layout = true;
            } else if let Some(rest) = name.strip_prefix("blobs/")
                && let Some((alg, hex)) = rest.split_once('/')
                && !hex.is_empty()
            {
                blobs.insert(
                    format!("{alg}:{hex}"),
                    (entry.raw_file_position(), entry.size()),
                );
            }
        }
        let Some(index) = index.filter(|_| layout) else {
            return Err(bad_archive(
                path,
                "no oci-layout and index.json (a `docker save` archive? convert it with \
                 `skopeo copy docker-archive:IN oci-archive:OUT`)",
            ));
        };
        Ok(Self {
            path: path.to_owned(),
            blobs,
            index,
        })
    }

    fn locate(&self, digest: &str) -> Result<(u64, u64), ContainerdError> {
        self.blobs
            .get(digest)
            .copied()
            .ok_or_else(|| bad_archive(&self.path, format!("blob {digest} is missing")))
    }

    fn read_small(&self, blob: &Blob) -> Result<Vec<u8>, ContainerdError> {
        let (offset, size) = self.locate(&blob.digest)?;
        if size > 4 << 20 {
            return Err(bad_archive(
                &self.path,
                format!("{} is too large", blob.digest),
            ));
        }
        let mut f = File::open(&self.path).map_err(io_error("reopening the archive"))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_error("seeking in the archive"))?;
        let mut v = vec![0; size as usize];
        f.read_exact(&mut v)
            .map_err(io_error("reading the archive"))?;
        Ok(v)
    }

    fn json<T: serde::de::DeserializeOwned>(&self, blob: &Blob) -> Result<T, ContainerdError> {
        serde_json::from_slice(&self.read_small(blob)?)
            .map_err(|e| bad_archive(&self.path, format!("{}: {e}", blob.digest)))
    }
}

/// A blob to store and the garbage-collection labels that tie what it references to it.
struct Upload {
    blob: Blob,
    labels: HashMap<String, String>,
}

impl Containerd {
    /// Imports every named image of an OCI layout archive; returns their names.
    pub async fn import(&self, path: &Path) -> Result<Vec<String>, ContainerdError> {
        let archive = Archive::open(path)?;
        let index: Manifest = serde_json::from_slice(&archive.index)
            .map_err(|e| bad_archive(path, format!("index.json: {e}")))?;
        let named: Vec<(ImageRef, Blob)> = index
            .manifests
            .iter()
            .filter_map(|m| {
                let name = m.annotations.get("io.containerd.image.name").or_else(|| {
                    m.annotations
                        .get("org.opencontainers.image.ref.name")
                        .filter(|n| n.contains('/'))
                })?;
                Some(ImageRef::parse(name).map(|r| (r, m.clone())))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| bad_archive(path, format!("an image name in index.json: {e}")))?;
        if named.is_empty() {
            return Err(bad_archive(
                path,
                "index.json names no image (annotation io.containerd.image.name)",
            ));
        }
        let lease = format!("faasd-import-{}", std::process::id());
        self.create_lease(&lease).await?;
        let result = self.import_images(&lease, &archive, &named).await;
        self.delete_lease(&lease).await?;
        result
    }

    async fn import_images(
        &self,
        lease: &str,
        archive: &Archive,
        named: &[(ImageRef, Blob)],
    ) -> Result<Vec<String>, ContainerdError> {
        let mut names = Vec::new();
        for (name, top) in named {
            let mut uploads = Vec::new();
            let manifest_blob =
                if top.media_type.contains("index") || top.media_type.contains("manifest.list") {
                    let idx: Manifest = archive.json(top)?;
                    let arch = super::image::host_architecture();
                    let (i, entry) = idx
                        .manifests
                        .iter()
                        .enumerate()
                        .find(|(_, e)| {
                            e.platform
                                .as_ref()
                                .is_none_or(|p| p.os == "linux" && p.architecture == arch)
                        })
                        .ok_or_else(|| {
                            bad_archive(
                                &archive.path,
                                format!("{name}: no manifest for linux/{arch}"),
                            )
                        })?;
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
            let manifest: Manifest = archive.json(&manifest_blob)?;
            let config_blob = manifest.config.clone().ok_or_else(|| {
                bad_archive(
                    &archive.path,
                    format!("{name}: the manifest names no config"),
                )
            })?;
            let config: Config = archive.json(&config_blob)?;
            if config.rootfs.diff_ids.len() != manifest.layers.len() {
                return Err(bad_archive(
                    &archive.path,
                    format!("{name}: the config's diff_ids do not match the layers"),
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
                self.store_blob(lease, archive, &u.blob).await?;
                if !u.labels.is_empty() {
                    self.label_content(&u.blob.digest, &u.labels).await?;
                }
            }
            self.unpack(lease, name.as_str(), &manifest.layers, &chain)
                .await?;
            self.put_image(name.as_str(), top).await?;
            names.push(name.to_string());
        }
        Ok(names)
    }

    /// Writes one blob of the archive into the content store unless it is there already;
    /// containerd checks the digest and size on commit.
    async fn store_blob(
        &self,
        lease: &str,
        archive: &Archive,
        blob: &Blob,
    ) -> Result<(), ContainerdError> {
        let info = InfoRequest {
            digest: blob.digest.clone(),
        };
        if self.content().info(self.request(info)).await.is_ok() {
            return Ok(());
        }
        let (offset, size) = archive.locate(&blob.digest)?;
        if size != blob.size as u64 {
            return Err(bad_archive(
                &archive.path,
                format!(
                    "{} is {size} bytes, its descriptor says {}",
                    blob.digest, blob.size
                ),
            ));
        }
        let mut file = File::open(&archive.path).map_err(io_error("reopening the archive"))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(io_error("seeking in the archive"))?;
        let reference = format!("faasd-import-{}", blob.digest);
        let digest = blob.digest.clone();
        let total = size as i64;
        // The reads are small and local; the stream yields the chunks, then the commit.
        let requests = futures::stream::unfold(Some((file, 0i64)), move |state| {
            let reference = reference.clone();
            let digest = digest.clone();
            async move {
                let (mut file, written) = state?;
                let mut data = vec![0; CHUNK.min((total - written) as usize)];
                let commit = data.is_empty();
                if !commit && let Err(e) = file.read_exact(&mut data) {
                    tracing::warn!("reading the archive: {e}");
                    return None;
                }
                let req = WriteContentRequest {
                    action: if commit {
                        WriteAction::Commit
                    } else {
                        WriteAction::Write
                    } as i32,
                    r#ref: reference,
                    total,
                    expected: digest,
                    offset: written,
                    data: data.clone(),
                    labels: Default::default(),
                };
                let next = (!commit).then(|| (file, written + data.len() as i64));
                Some((req, next))
            }
        });
        let mut responses = self
            .content()
            .write(self.leased(lease, requests))
            .await
            .map_err(ContainerdError::rpc("writing content"))?
            .into_inner();
        let mut committed = false;
        while let Some(r) = responses.next().await {
            let r = match r {
                Ok(r) => r,
                Err(s) if s.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(s) => return Err(ContainerdError::rpc("writing content")(s)),
            };
            committed |= r.action == WriteAction::Commit as i32;
        }
        if !committed {
            return Err(bad_archive(
                &archive.path,
                format!("{} could not be read completely", blob.digest),
            ));
        }
        Ok(())
    }

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
