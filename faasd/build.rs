//! Builds what faasd embeds, into OUT_DIR: the static activation shim in `faasd-shim` (the
//! container runtime mounts it into containers), and `faasd-preload`, the library that
//! holds a prepared process instance's program before `main`. The kernel programs are
//! built by `faasd-dataplane`'s own build script.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    // The shim runs inside images that may hold nothing else: linked statically.
    println!("cargo:rerun-if-changed=../faasd-shim");
    println!("cargo:rerun-if-changed=../faasd-common/src");
    nested_build(
        "faasd-shim",
        "faasd-shim",
        &[("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")],
    )?;
    // A library without std, loaded into programs before their own start is done: it
    // cannot unwind.
    println!("cargo:rerun-if-changed=../faasd-preload");
    nested_build(
        "faasd-preload",
        "libfaasd_preload.so",
        &[
            ("CARGO_ENCODED_RUSTFLAGS", ""),
            ("CARGO_PROFILE_RELEASE_PANIC", "abort"),
        ],
    )
}

/// Builds `package` in release with a nested cargo in a target directory of its own (the
/// outer build holds the main one), with `env` besides, and copies its `artifact` into
/// OUT_DIR.
fn nested_build(package: &str, artifact: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let target = std::env::var("TARGET")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = out.join(format!("{}-target", package.trim_start_matches("faasd-")));
    let status = Command::new(cargo)
        .args(["build", "--quiet", "--release", "--package", package])
        .arg("--target")
        .arg(&target)
        .arg("--target-dir")
        .arg(&target_dir)
        .envs(env.iter().copied())
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env_remove("RUSTFLAGS")
        .status()
        .with_context(|| format!("running cargo for {package}"))?;
    if !status.success() {
        bail!("building {package} failed ({status})");
    }
    let built = target_dir.join(&target).join("release").join(artifact);
    std::fs::copy(&built, out.join(artifact))
        .with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}
