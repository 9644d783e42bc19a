//! `faasd image import FILE.tar`: an OCI image layout archive into containerd's content
//! store, image store and snapshotter, through containerd's API (no `ctr`, no registry).
//!
//! Each image of the archive is the entry of its `index.json` that carries the
//! `io.containerd.image.name` (or a full `org.opencontainers.image.ref.name`) annotation.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use faasd_core::image_ref::ImageRef;

use super::{
    Containerd, ContainerdError,
    image::{Blob, Manifest},
    ingest::{CHUNK, Chunks, Source},
};

/// An archive and where each blob sits inside it.
pub(crate) struct Archive {
    path: PathBuf,
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

    /// The blob's file, positioned at its first byte, and its size.
    fn reader(&self, blob: &Blob) -> Result<(File, u64), ContainerdError> {
        let (offset, size) =
            self.blobs.get(&blob.digest).copied().ok_or_else(|| {
                bad_archive(&self.path, format!("blob {} is missing", blob.digest))
            })?;
        if size != blob.size as u64 {
            return Err(bad_archive(
                &self.path,
                format!(
                    "{} is {size} bytes, its descriptor says {}",
                    blob.digest, blob.size
                ),
            ));
        }
        let mut f = File::open(&self.path).map_err(io_error("reopening the archive"))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(io_error("seeking in the archive"))?;
        Ok((f, size))
    }
}

impl Archive {
    /// A manifest or config, whole.
    pub(crate) fn read_small(&self, blob: &Blob) -> Result<Vec<u8>, ContainerdError> {
        let (mut f, size) = self.reader(blob)?;
        if size > 4 << 20 {
            return Err(bad_archive(
                &self.path,
                format!("{} is too large", blob.digest),
            ));
        }
        let mut v = vec![0; size as usize];
        f.read_exact(&mut v)
            .map_err(io_error("reading the archive"))?;
        Ok(v)
    }

    /// A blob's bytes, in chunks.
    pub(crate) fn chunks(&self, blob: &Blob) -> Result<Chunks, ContainerdError> {
        let (file, size) = self.reader(blob)?;
        // Local reads of a megabyte: done in place rather than on a blocking thread.
        Ok(Box::pin(futures::stream::unfold(
            (file, size),
            |(mut file, left)| async move {
                if left == 0 {
                    return None;
                }
                let mut data = vec![0; CHUNK.min(left as usize)];
                let r = file.read_exact(&mut data).map(|()| data);
                let left = if r.is_ok() {
                    left - CHUNK.min(left as usize) as u64
                } else {
                    0
                };
                Some((r, (file, left)))
            },
        )))
    }
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
        let mut archive = Source::Archive(archive);
        self.create_lease(&lease).await?;
        let mut result = Ok(Vec::new());
        for (name, top) in &named {
            if let Err(e) = self.ingest(&lease, &mut archive, name, top).await {
                result = Err(e);
                break;
            }
            if let Ok(names) = result.as_mut() {
                names.push(name.to_string());
            }
        }
        self.delete_lease(&lease).await?;
        result
    }
}
