//! `cargo xtask dist`: the Debian package and a release directory (with `install.sh`, for
//! hosts without dpkg), both from one release build. The package is assembled here and
//! built with `dpkg-deb`; its maintainer scripts and control template are in
//! `packaging/deb/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Result, root, run, step};

/// The units a package installs, from `systemd/`.
const UNITS: &[&str] = &[
    "faasd.service",
    "faasd.socket",
    "faasd-dns.socket",
    "wg-faas.service",
];

/// How hard dpkg-deb compresses: the release package is small, the test's is quick.
#[derive(Debug, Clone, Copy)]
pub enum Compression {
    /// xz, for what is shipped.
    Release,
    /// none, for the package the tests install.
    Test,
}

/// `cargo xtask dist`.
pub fn dist() -> Result {
    crate::setup::ensure()?;
    step("building faasd (release)");
    run(crate::cargo().args(["build", "--release", "-p", "faasd"]))?;
    let out = root().join("target/dist");
    let binary = root().join("target/release/faasd");
    let deb = deb(&binary, &out, Compression::Release)?;
    let dir = release_dir(&binary, &out)?;
    let tarball = out.join(format!(
        "{}.tar.gz",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    run(Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .arg(dir.file_name().unwrap_or_default()))?;
    println!(
        "\n{}\n{} (unpack, then ./install.sh as root)",
        deb.display(),
        tarball.display()
    );
    Ok(())
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn architecture() -> Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .map_err(|e| format!("dpkg --print-architecture: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", to.display()))
}

/// Copies the binary without its debug information (the release profile keeps line
/// tables for the benchmarks' profiles; a package does not need them).
fn copy_binary(binary: &Path, to: &Path) -> Result {
    copy(binary, to, 0o755)?;
    run(Command::new("strip").arg("--strip-debug").arg(to))
}

/// Builds `faasd_<version>_<arch>.deb` in `out` around `binary`; returns its path.
pub fn deb(binary: &Path, out: &Path, compression: Compression) -> Result<PathBuf> {
    let arch = architecture()?;
    step(&format!("packaging faasd {} for {arch}", version()));
    let stage = out.join("deb-root");
    let _ = std::fs::remove_dir_all(&stage);
    let packaging = root().join("packaging");
    copy_binary(binary, &stage.join("usr/bin/faasd"))?;
    for unit in UNITS {
        copy(
            &root().join("systemd").join(unit),
            &stage.join("lib/systemd/system").join(unit),
            0o644,
        )?;
    }
    copy(
        &root().join("systemd/faasd.sysusers"),
        &stage.join("usr/lib/sysusers.d/faasd.conf"),
        0o644,
    )?;
    copy(
        &packaging.join("config.toml"),
        &stage.join("etc/faasd/config.toml"),
        0o644,
    )?;
    copy(
        &root().join("README.md"),
        &stage.join("usr/share/doc/faasd/README.md"),
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        copy(
            &packaging.join("deb").join(script),
            &stage.join("DEBIAN").join(script),
            0o755,
        )?;
    }
    copy(
        &packaging.join("deb/conffiles"),
        &stage.join("DEBIAN/conffiles"),
        0o644,
    )?;
    let control = std::fs::read_to_string(packaging.join("deb/control"))
        .map_err(|e| format!("reading packaging/deb/control: {e}"))?
        .replace("@VERSION@", version())
        .replace("@ARCH@", &arch);
    std::fs::write(stage.join("DEBIAN/control"), control)
        .map_err(|e| format!("writing the control file: {e}"))?;
    let deb = out.join(format!("faasd_{}_{arch}.deb", version()));
    let z = match compression {
        Compression::Release => "-Zxz",
        Compression::Test => "-Znone",
    };
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", z, "--build"])
        .arg(&stage)
        .arg(&deb))?;
    let _ = std::fs::remove_dir_all(&stage);
    Ok(deb)
}

/// A directory with the binary, `install.sh`, the units, the default config and the
/// OpenRC and runit scripts; returns its path.
fn release_dir(binary: &Path, out: &Path) -> Result<PathBuf> {
    let dir = out.join(format!("faasd-{}-{}", version(), architecture()?));
    let _ = std::fs::remove_dir_all(&dir);
    let packaging = root().join("packaging");
    copy_binary(binary, &dir.join("faasd"))?;
    copy(
        &packaging.join("install.sh"),
        &dir.join("install.sh"),
        0o755,
    )?;
    copy(
        &packaging.join("config.toml"),
        &dir.join("config.toml"),
        0o644,
    )?;
    copy(&root().join("README.md"), &dir.join("README.md"), 0o644)?;
    for unit in UNITS.iter().copied().chain(["faasd.sysusers"]) {
        copy(
            &root().join("systemd").join(unit),
            &dir.join("systemd").join(unit),
            0o644,
        )?;
    }
    copy(
        &packaging.join("openrc/faasd"),
        &dir.join("openrc/faasd"),
        0o755,
    )?;
    for f in ["run", "log/run"] {
        copy(
            &packaging.join("runit/faasd").join(f),
            &dir.join("runit/faasd").join(f),
            0o755,
        )?;
    }
    Ok(dir)
}
