//! `cargo xtask image`: OCI archives of the sample functions, written without a registry
//! or Docker (static binaries, one layer, deterministic bytes), imported into containerd
//! with `faasd image import`.
//!
//! - `localhost/hello:latest` takes its sockets from faasd (label
//!   `dev.faasd.socket-activation=true`): the activation shim passes them.
//! - `localhost/hello-port:latest` is the same program told to bind port 8080 itself, as
//!   every OpenFaaS watchdog image does: faasd forwards connections to it.
//! - `localhost/hello-unlabeled:latest` takes its sockets like `hello` but lacks the label,
//!   as a socket-activatable image built elsewhere would: deployed with
//!   `faasd.dev/socket-activation=true`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{Result, root, run, step};

/// One sample image.
struct Sample {
    name: &'static str,
    env: &'static [&'static str],
    socket_activation: bool,
}

const SAMPLES: &[Sample] = &[
    Sample {
        name: "hello",
        env: &[],
        socket_activation: true,
    },
    Sample {
        name: "hello-port",
        env: &["PORT=8080"],
        socket_activation: false,
    },
    Sample {
        name: "hello-unlabeled",
        env: &[],
        socket_activation: false,
    },
];

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the archives into target/images and imports them through `faasd`.
pub fn build_and_import(faasd: &Path, containerd: &Path) -> Result {
    let archives = build()?;
    step("importing the images into containerd (faasd image import)");
    for a in &archives {
        run(Command::new(faasd)
            .args(["image", "import"])
            .arg(a)
            .arg("--containerd")
            .arg(containerd))?;
    }
    Ok(())
}

/// Builds the archives; returns their paths.
pub fn build() -> Result<Vec<PathBuf>> {
    step("building the sample function as a static binary");
    run(crate::cargo()
        .args(["build", "--release", "-p", "hello", "--target", TARGET])
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        // Images carry no debug information.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols"))?;
    let binary = root().join(format!("target/{TARGET}/release/hello"));
    let program = std::fs::read(&binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let dir = root().join("target/images");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for s in SAMPLES {
        let path = dir.join(format!("{}.tar", s.name));
        let mut labels = serde_json::Map::new();
        if s.socket_activation {
            labels.insert("dev.faasd.socket-activation".into(), "true".into());
        }
        let config = json!({
            "Entrypoint": ["/hello"],
            "Env": s.env,
            "WorkingDir": "/",
            "Labels": labels,
        });
        let name = format!("localhost/{}:latest", s.name);
        write_archive(&path, &name, &[("hello", &program, 0o755)], config)?;
        println!("    ✓ {name} → {}", path.display());
        out.push(path);
    }
    Ok(out)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// A tar of `files` with fixed owners and times, so the same inputs give the same digest.
fn tar_of(files: &[(&str, &[u8], u32)]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data)
            .map_err(|e| e.to_string())?;
    }
    b.into_inner().map_err(|e| e.to_string())
}

/// Writes an OCI image layout archive holding one image of one layer.
fn write_archive(
    path: &Path,
    name: &str,
    files: &[(&str, &[u8], u32)],
    container_config: serde_json::Value,
) -> Result {
    let layer = tar_of(files)?;
    let layer_digest = sha256(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .map_err(|e| e.to_string())?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    }))
    .map_err(|e| e.to_string())?;
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap_or("latest"),
            },
        }],
    }))
    .map_err(|e| e.to_string())?;
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    let archive = tar_of(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644),
        ("index.json", &index, 0o644),
        (&blob(&manifest_digest), &manifest, 0o644),
        (&blob(&config_digest), &config, 0o644),
        (&blob(&layer_digest), &layer, 0o644),
    ])?;
    std::fs::write(path, archive).map_err(|e| format!("{}: {e}", path.display()))
}
