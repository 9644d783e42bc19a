//! Builds the kernel programs in `faasd-ebpf` into OUT_DIR, where the data plane embeds
//! them. `cargo xtask setup` installs what this needs: Debian's rustc-web, bpf-linker and
//! the toolchain named below.

use aya_build::{Package, Toolchain};

/// The rustup toolchain `cargo xtask setup` links to Debian's rustc, which carries a
/// prebuilt `core` for the bpf target.
const BPF_TOOLCHAIN: &str = "faasd-bpf";

fn main() -> anyhow::Result<()> {
    if std::env::var_os("CARGO_FEATURE_EBPF").is_none() {
        return Ok(());
    }
    println!("cargo:rerun-if-changed=../faasd-common/src");
    build_ebpf()
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
