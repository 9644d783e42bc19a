//! Builds what faasd embeds, into OUT_DIR: the kernel programs in `faasd-ebpf` (the data
//! plane loads them) and the static activation shim in `faasd-shim` (the container runtime
//! mounts it into containers). `cargo xtask setup` installs what this needs (see README).

use std::{path::PathBuf, process::Command};

use anyhow::{Context, bail};
use aya_build::{Package, Toolchain};

/// The rustup toolchain `cargo xtask setup` links to Debian's rustc, which carries a
/// prebuilt `core` for the bpf target.
const BPF_TOOLCHAIN: &str = "faasd-bpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../faasd-common/src");
    build_shim()?;
    build_ebpf()
}

/// The shim runs inside images that may hold nothing else, so it is linked statically,
/// with a nested cargo in its own target directory (the outer build holds the main one).
fn build_shim() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../faasd-shim");
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

fn build_ebpf() -> anyhow::Result<()> {
    // SAFETY: build scripts are single-threaded; the variable scopes the unstable features
    // aya-ebpf needs to that one crate, so Debian's stable rustc can build it.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };
    // aya-build relays every line the nested cargo prints as a cargo warning; without its
    // "Compiling …" lines, only real warnings and errors show up in the build.
    // SAFETY: as above.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "faasd-ebpf",
            root_dir: "../faasd-ebpf",
            ..Default::default()
        }],
        Toolchain::Custom(BPF_TOOLCHAIN),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "building the eBPF programs failed: {e:#}\n\
             hint: run `cargo xtask setup` (installs Debian's rustc-web, bpf-linker and the \
             `{BPF_TOOLCHAIN}` toolchain)"
        )
    })
}
