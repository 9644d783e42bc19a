//! Image references and what faasd reads from an image in containerd: the platform's
//! manifest, the config (entrypoint, command, environment, user, labels) and the snapshot
//! its layers unpack to.

use std::collections::BTreeMap;

use containerd_client::{
    services::v1::{
        ApplyRequest, GetImageRequest, ReadContentRequest,
        snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest},
    },
    tonic,
    types::Descriptor,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use faasd_core::image_ref::ImageRef;

use super::{Containerd, ContainerdError, Held, SNAPSHOTTER};

/// Image config label by which an image says its command takes sockets from LISTEN_FDS;
/// faasd then passes its sockets instead of forwarding to a port the image binds.
pub const SOCKET_ACTIVATION_LABEL: &str = "dev.faasd.socket-activation";

/// Largest manifest, index or config faasd reads into memory.
const MAX_JSON: i64 = 4 << 20;

/// What faasd needs from an image to start containers of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    /// The image's name in containerd.
    pub name: String,
    /// `Entrypoint` of the config.
    pub entrypoint: Vec<String>,
    /// `Cmd` of the config.
    pub cmd: Vec<String>,
    /// `Env` of the config, in order.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, `/` when unset.
    pub working_dir: String,
    /// The numeric user and group the command runs as.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Labels of the config.
    pub labels: BTreeMap<String, String>,
    /// Chain id of the top layer: the committed snapshot containers are prepared from.
    pub chain_id: String,
}

impl ImageConfig {
    /// Whether the image declares that it takes its sockets from LISTEN_FDS.
    pub fn socket_activated(&self) -> bool {
        self.labels
            .get(SOCKET_ACTIVATION_LABEL)
            .is_some_and(|v| v == "true")
    }

    /// The command the image runs: entrypoint followed by command.
    pub fn command(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// The parts of an OCI (or Docker) image manifest, index and config faasd reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    #[serde(default)]
    pub config: Option<Blob>,
    #[serde(default)]
    pub layers: Vec<Blob>,
    /// Present in an index.
    #[serde(default)]
    pub manifests: Vec<Blob>,
}

/// A descriptor inside a manifest or index.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl Blob {
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Config {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RootFs {
    pub diff_ids: Vec<String>,
}

/// containerd's name for this machine's architecture.
pub(crate) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The chain ids of a layer stack, bottom first (OCI image spec: chain(n) =
/// sha256(chain(n-1) + " " + diff_id(n))).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => format!(
                "sha256:{:x}",
                Sha256::digest(format!("{parent} {d}").as_bytes())
            ),
        };
        out.push(next);
    }
    out
}

fn image_error(image: &str, reason: impl Into<String>) -> ContainerdError {
    ContainerdError::Image {
        image: image.into(),
        reason: reason.into(),
    }
}

impl Containerd {
    /// Reads a small blob (manifest, index, config) from the content store.
    pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        image: &str,
        blob: &Blob,
    ) -> Result<T, ContainerdError> {
        if blob.size > MAX_JSON {
            return Err(image_error(
                image,
                format!(
                    "{} is {} bytes, too large to be JSON",
                    blob.digest, blob.size
                ),
            ));
        }
        let req = ReadContentRequest {
            digest: blob.digest.clone(),
            offset: 0,
            size: 0,
        };
        let mut stream = self
            .content()
            .read(self.request(req))
            .await
            .map_err(|s| missing_content(image, &blob.digest, s))?
            .into_inner();
        let mut data = Vec::with_capacity(blob.size as usize);
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| missing_content(image, &blob.digest, s))?
        {
            data.extend_from_slice(&chunk.data);
        }
        serde_json::from_slice(&data)
            .map_err(|e| image_error(image, format!("{} is not valid: {e}", blob.digest)))
    }

    /// Looks the image up (pulling it from its registry when containerd does not have it)
    /// and reads its config; unpacks its layers if no snapshot holds them yet (an image
    /// imported by another tool without unpacking).
    pub async fn image_config(&self, image: &ImageRef) -> Result<ImageConfig, ContainerdError> {
        let name = image.as_str();
        let target = match self.image_target(name).await? {
            Some(t) => t,
            None => {
                self.pull(image).await.map_err(|e| {
                    let explain = |reason: String| {
                        format!(
                            "not in containerd's namespace {:?}, and pulling it failed: \
                             {reason}. Import it with `faasd image import FILE.tar`",
                            super::NAMESPACE
                        )
                    };
                    match e {
                        ContainerdError::Image { reason, .. } => image_error(name, explain(reason)),
                        ContainerdError::Registry { reason, .. } => ContainerdError::Registry {
                            image: name.to_owned(),
                            reason: explain(reason),
                        },
                        e => e,
                    }
                })?;
                self.image_target(name)
                    .await?
                    .ok_or_else(|| image_error(name, "pulled, but containerd does not list it"))?
            }
        };
        let top = Blob {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let (manifest, _) = self.platform_manifest(name, &top).await?;
        let config_blob = manifest
            .config
            .ok_or_else(|| image_error(name, "the manifest names no config"))?;
        let config: Config = self.read_json(name, &config_blob).await?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(image_error(
                name,
                "the config's diff_ids do not match the manifest's layers",
            ));
        }
        let chain = chain_ids(&config.rootfs.diff_ids);
        let chain_id = chain
            .last()
            .cloned()
            .ok_or_else(|| image_error(name, "the image has no layers"))?;
        if !self.snapshot_exists(&chain_id).await? {
            let lease = format!("faasd-unpack-{}", std::process::id());
            self.create_lease(&lease).await?;
            let mut r = self.unpack(&lease, name, &manifest.layers, &chain).await;
            if r.is_ok() {
                // The config holds the snapshot once the lease is gone.
                let label = std::collections::HashMap::from([(
                    format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"),
                    chain_id.clone(),
                )]);
                r = self.label_content(&config_blob.digest, &label).await;
            }
            self.delete_lease(&lease).await?;
            r?;
        }
        let c = config.config.unwrap_or_default();
        let (uid, gid) = parse_user(name, c.user.as_deref().unwrap_or(""))?;
        Ok(ImageConfig {
            name: name.into(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c
                .env
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| e.split_once('=').map(|(k, v)| (k.into(), v.into())))
                .collect(),
            working_dir: c
                .working_dir
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            labels: c.labels.unwrap_or_default(),
            chain_id,
        })
    }

    /// The descriptor an image name points at, if containerd has the image.
    async fn image_target(&self, name: &str) -> Result<Option<Descriptor>, ContainerdError> {
        match self
            .images()
            .get(self.request(GetImageRequest { name: name.into() }))
            .await
        {
            Ok(r) => r
                .into_inner()
                .image
                .and_then(|i| i.target)
                .map(Some)
                .ok_or_else(|| image_error(name, "containerd returned no target")),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(ContainerdError::rpc("looking up an image")(s)),
        }
    }

    /// The manifest for this machine's platform: `top` itself, or the matching entry of
    /// an index. Returns the manifest and its blob.
    pub(crate) async fn platform_manifest(
        &self,
        image: &str,
        top: &Blob,
    ) -> Result<(Manifest, Blob), ContainerdError> {
        let m: Manifest = self.read_json(image, top).await?;
        let is_index = m.config.is_none() && !m.manifests.is_empty();
        if !is_index {
            return Ok((m, top.clone()));
        }
        let arch = host_architecture();
        let entry = m
            .manifests
            .iter()
            .find(|e| {
                e.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == arch)
            })
            .cloned()
            .ok_or_else(|| image_error(image, format!("no manifest for linux/{arch}")))?;
        let inner: Manifest = self.read_json(image, &entry).await?;
        if inner.config.is_none() {
            return Err(image_error(image, "nested indexes are not supported"));
        }
        Ok((inner, entry))
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, ContainerdError> {
        let req = StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.into(),
        };
        match self.snapshots().stat(self.request(req)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
            Err(s) => Err(ContainerdError::rpc("looking up a snapshot")(s)),
        }
    }

    /// Applies each layer onto the snapshot of the ones below it and commits it under its
    /// chain id, skipping layers already unpacked. Runs under `lease`.
    pub(crate) async fn unpack(
        &self,
        lease: &str,
        image: &str,
        layers: &[Blob],
        chain: &[String],
    ) -> Result<(), ContainerdError> {
        for (i, (layer, id)) in layers.iter().zip(chain).enumerate() {
            self.hold(lease, Held::Snapshot(id)).await?;
            if self.snapshot_exists(id).await? {
                continue;
            }
            let parent = if i == 0 {
                String::new()
            } else {
                chain[i - 1].clone()
            };
            let key = format!("faasd-extract-{}-{id}", std::process::id());
            let prepare = PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.clone(),
                parent,
                labels: Default::default(),
            };
            let mounts = self
                .snapshots()
                .prepare(self.leased(lease, prepare))
                .await
                .map_err(ContainerdError::rpc("preparing a snapshot"))?
                .into_inner()
                .mounts;
            let apply = ApplyRequest {
                diff: Some(layer.descriptor()),
                mounts,
                payloads: Default::default(),
                sync_fs: false,
            };
            self.diff()
                .apply(self.leased(lease, apply))
                .await
                .map_err(|s| missing_content(image, &layer.digest, s))?;
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: id.clone(),
                key,
                labels: Default::default(),
            };
            match self.snapshots().commit(self.leased(lease, commit)).await {
                Ok(_) => {}
                // Unpacked meanwhile by someone else: theirs is as good.
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(ContainerdError::rpc("committing a snapshot")(s)),
            }
        }
        Ok(())
    }
}

fn missing_content(image: &str, digest: &str, s: tonic::Status) -> ContainerdError {
    if s.code() == tonic::Code::NotFound {
        image_error(
            image,
            format!(
                "blob {digest} is missing from containerd's content store; import the image again"
            ),
        )
    } else {
        ContainerdError::rpc("reading image content")(s)
    }
}

/// The image's `User`: numeric `uid[:gid]` or `root`; names would need the image's
/// /etc/passwd, which faasd does not read.
fn parse_user(image: &str, user: &str) -> Result<(u32, u32), ContainerdError> {
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let num = |s: &str| -> Option<u32> {
        match s {
            "" | "root" => Some(0),
            s => s.parse().ok(),
        }
    };
    let uid = num(u);
    let gid = g.map_or(uid, num);
    match (uid, gid) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(image_error(
            image,
            format!("User {user:?}: faasd needs a numeric uid[:gid] (or root)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let chain = chain_ids(&[d1.clone(), d2.clone()]);
        assert_eq!(chain[0], d1);
        let expect = format!(
            "sha256:{:x}",
            Sha256::digest(format!("{d1} {d2}").as_bytes())
        );
        assert_eq!(chain[1], expect);
    }

    #[test]
    fn users_must_be_numeric() {
        assert_eq!(parse_user("i", "").unwrap(), (0, 0));
        assert_eq!(parse_user("i", "1000").unwrap(), (1000, 1000));
        assert_eq!(parse_user("i", "1000:50").unwrap(), (1000, 50));
        assert!(parse_user("i", "app").is_err());
    }
}
