//! Builds what faasd embeds, into OUT_DIR: the static activation shim in `faasd-shim` (the
//! container runtime mounts it into containers). The kernel programs are built by
//! `faasd-dataplane`'s own build script.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    build_shim()
}

/// The shim runs inside images that may hold nothing else, so it is linked statically,
/// with a nested cargo in its own target directory (the outer build holds the main one).
fn build_shim() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../faasd-shim");
    println!("cargo:rerun-if-changed=../faasd-common/src");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let target = std::env::var("TARGET")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "faasd-shim",
            "--target",
        ])
        .arg(&target)
        .arg("--target-dir")
        .arg(out.join("shim-target"))
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo for faasd-shim")?;
    if !status.success() {
        bail!("building the static faasd-shim failed ({status})");
    }
    let built = out
        .join("shim-target")
        .join(&target)
        .join("release/faasd-shim");
    std::fs::copy(&built, out.join("faasd-shim"))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}
