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
//!
//! With OpenFaaS's watchdogs at hand (see `openfaas.rs`), images built the way OpenFaaS's
//! templates build them: the watchdog is the entrypoint (`/fwatchdog`, listening on 8080)
//! and the environment says what it runs.
//! - `localhost/of-watchdog-streaming:latest`: of-watchdog pipes each request through
//!   `hello --handler`;
//! - `localhost/of-watchdog-http:latest`: of-watchdog starts `hello` once (on port 3000)
//!   and forwards each request to it;
//! - `localhost/classic-watchdog:latest`: the classic watchdog runs `hello --handler` per
//!   request.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{
    Result,
    openfaas::{CLASSIC_WATCHDOG, OF_WATCHDOG, Tool},
    root, run, step,
};

/// One sample image.
struct Sample {
    name: &'static str,
    env: &'static [&'static str],
    socket_activation: bool,
    /// The watchdog that is its entrypoint, if any.
    watchdog: Option<&'static Tool>,
}

const SAMPLES: &[Sample] = &[
    Sample {
        name: "hello",
        env: &[],
        socket_activation: true,
        watchdog: None,
    },
    Sample {
        name: "hello-port",
        env: &["PORT=8080"],
        socket_activation: false,
        watchdog: None,
    },
    Sample {
        name: "hello-unlabeled",
        env: &[],
        socket_activation: false,
        watchdog: None,
    },
    Sample {
        name: "of-watchdog-streaming",
        env: &["fprocess=/hello --handler", "mode=streaming"],
        socket_activation: false,
        watchdog: Some(&OF_WATCHDOG),
    },
    Sample {
        name: "of-watchdog-http",
        env: &[
            "fprocess=/hello",
            "mode=http",
            "upstream_url=http://127.0.0.1:3000",
            "PORT=3000",
        ],
        socket_activation: false,
        watchdog: Some(&OF_WATCHDOG),
    },
    Sample {
        name: "classic-watchdog",
        env: &["fprocess=/hello --handler"],
        socket_activation: false,
        watchdog: Some(&CLASSIC_WATCHDOG),
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
        let watchdog = match s.watchdog {
            None => None,
            Some(tool) => match tool.report() {
                Some(p) => Some(std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?),
                None => continue,
            },
        };
        let path = dir.join(format!("{}.tar", s.name));
        let mut labels = serde_json::Map::new();
        if s.socket_activation {
            labels.insert("dev.faasd.socket-activation".into(), "true".into());
        }
        let entrypoint = if watchdog.is_some() {
            "/fwatchdog"
        } else {
            "/hello"
        };
        let config = json!({
            "Entrypoint": [entrypoint],
            "Env": s.env,
            "WorkingDir": "/",
            "Labels": labels,
        });
        let name = format!("localhost/{}:latest", s.name);
        let mut files = vec![("hello", program.as_slice(), 0o755)];
        if let Some(w) = &watchdog {
            files.push(("fwatchdog", w.as_slice(), 0o755));
        }
        write_archive(&path, &name, &files, config)?;
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
