//! faasd's client of containerd: one gRPC channel on containerd's socket, every request in
//! faasd's own containerd namespace, and what is created in bulk (an import, a container's
//! snapshot) held by a lease until it is referenced, so containerd's garbage collector
//! cannot take it half-way.
//!
//! [`image`] reads image configs from containerd's content store, [`pull`] fetches images
//! from OCI registries with what [`credentials`] finds for them, [`import`] loads OCI
//! archives, and [`oci`] writes the runtime spec each container gets.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use containerd_client::{
    services::v1::{
        AddResourceRequest, CreateRequest as CreateLeaseRequest,
        DeleteRequest as DeleteLeaseRequest, Resource, containers_client::ContainersClient,
        content_client::ContentClient, diff_client::DiffClient, images_client::ImagesClient,
        leases_client::LeasesClient, snapshots::snapshots_client::SnapshotsClient,
        tasks_client::TasksClient, version_client::VersionClient,
    },
    tonic::{self, Request, metadata::MetadataValue, transport::Channel},
};

pub mod credentials;
pub mod image;
pub mod import;
mod ingest;
pub mod oci;
pub mod pull;

/// The containerd namespace faasd keeps its images and containers in.
pub const NAMESPACE: &str = "faasd";
/// The snapshotter faasd unpacks images with (works on ext4, xfs and tmpfs).
pub const SNAPSHOTTER: &str = "overlayfs";

/// Errors talking to containerd.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// Nothing answers on the socket.
    #[error(
        "containerd is unreachable at {}: {reason}; start containerd, or point faasd at its \
         socket with --containerd",
        socket.display()
    )]
    Unreachable {
        /// Where faasd looked.
        socket: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A call failed.
    #[error("containerd {op}: {}", status.message())]
    Rpc {
        /// Which call.
        op: &'static str,
        /// containerd's answer.
        status: Box<tonic::Status>,
    },
    /// An image is missing or unusable.
    #[error("image {image}: {reason}")]
    Image {
        /// The reference.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// The image's registry cannot be reached, or fails (5xx): not the caller's mistake.
    #[error("image {image}: {reason}")]
    Registry {
        /// The reference.
        image: String,
        /// What failed.
        reason: String,
    },
    /// A local file (an archive being imported).
    #[error("{what}: {source}")]
    Io {
        /// What faasd was doing.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl ContainerdError {
    /// Wraps a failed call.
    pub fn rpc(op: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Rpc {
            op,
            status: Box::new(status),
        }
    }
}

/// A connection to containerd.
#[derive(Debug, Clone)]
pub struct Containerd {
    socket: PathBuf,
    channel: Channel,
    /// Credentials and CAs for pulls.
    registries: credentials::Registries,
}

impl Containerd {
    /// Connects and checks that containerd answers.
    pub async fn connect(socket: &Path) -> Result<Self, ContainerdError> {
        let unreachable = |reason: String| ContainerdError::Unreachable {
            socket: socket.to_owned(),
            reason,
        };
        if !socket.exists() {
            return Err(unreachable("no such socket".into()));
        }
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| unreachable(format!("{e}")))?;
        let defaults = faasd_core::config::Config::default();
        let this = Self {
            socket: socket.to_owned(),
            channel,
            registries: credentials::Registries::new(
                defaults.docker_config(),
                defaults.registry_certs_dir,
            ),
        };
        VersionClient::new(this.channel.clone())
            .version(())
            .await
            .map_err(|s| unreachable(s.message().to_owned()))?;
        Ok(this)
    }

    /// Pulls with the credentials and CAs `registries` has (the default: faasd's default
    /// state directory's `.docker/config.json`, and `/etc/docker/certs.d`).
    pub fn with_registries(mut self, registries: credentials::Registries) -> Self {
        self.registries = registries;
        self
    }

    /// The socket this connection uses.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A request in faasd's namespace.
    pub fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.metadata_mut().insert(
            "containerd-namespace",
            MetadataValue::from_static(NAMESPACE),
        );
        r
    }

    /// A request in faasd's namespace whose new resources the lease holds.
    pub fn leased<T>(&self, lease: &str, msg: T) -> Request<T> {
        let mut r = self.request(msg);
        if let Ok(v) = MetadataValue::try_from(lease) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// Creates a lease; resources created under it survive garbage collection until it is
    /// deleted.
    pub async fn create_lease(&self, id: &str) -> Result<(), ContainerdError> {
        let req = CreateLeaseRequest {
            id: id.into(),
            labels: Default::default(),
        };
        match self.leases().create(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(ContainerdError::rpc("creating a lease")(s)),
        }
    }

    /// Puts an existing resource (`content` by digest, or a snapshot by name) under a
    /// lease, so garbage collection cannot take it between our finding it and our using
    /// it (say, the layers of an image another client just removed).
    pub async fn hold(&self, lease: &str, resource: Held<'_>) -> Result<(), ContainerdError> {
        let (id, kind) = match resource {
            Held::Content(digest) => (digest.to_owned(), "content".to_owned()),
            Held::Snapshot(name) => (name.to_owned(), format!("snapshots/{SNAPSHOTTER}")),
        };
        let req = AddResourceRequest {
            id: lease.into(),
            resource: Some(Resource { id, r#type: kind }),
        };
        self.leases()
            .add_resource(self.request(req))
            .await
            .map(drop)
            .map_err(ContainerdError::rpc("holding content under a lease"))
    }

    /// Deletes a lease and, synchronously, what only it held. A missing lease is not an
    /// error.
    pub async fn delete_lease(&self, id: &str) -> Result<(), ContainerdError> {
        let req = DeleteLeaseRequest {
            id: id.into(),
            sync: true,
        };
        match self.leases().delete(self.request(req)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(ContainerdError::rpc("deleting a lease")(s)),
        }
    }

    /// The containers service.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }

    /// The tasks service.
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    /// The content store.
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    /// The image store.
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    /// The snapshotters.
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// The diff service (applies layers to snapshots).
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }

    /// The leases service.
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
}

/// A resource a lease can hold.
#[derive(Debug, Clone, Copy)]
pub enum Held<'a> {
    /// A blob in the content store, by digest.
    Content(&'a str),
    /// A committed snapshot, by name (faasd names them by chain id).
    Snapshot(&'a str),
}
