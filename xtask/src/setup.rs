//! Installs what a fresh Debian/Ubuntu machine lacks, idempotently: each step checks
//! first and says what it found. See docs/toolchain.md for
//! why each piece is needed.

use std::{path::PathBuf, process::Command};

use crate::{Result, step};

/// Debian packages the build, the tests and the benchmarks use.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "Debian's rustc 1.96 with LLVM 22: builds the eBPF programs",
    ),
    (
        "libstd-rust-web-dev-bpf",
        "prebuilt core for the bpf target",
    ),
    ("llvm-22-dev", "bpf-linker is built against it"),
    ("libpolly-22-dev", "bpf-linker link dependency"),
    ("zlib1g-dev", "bpf-linker link dependency"),
    ("libzstd-dev", "bpf-linker link dependency"),
    ("libxml2-dev", "bpf-linker link dependency"),
    ("iproute2", "network namespaces for tests"),
    ("curl", "calling functions"),
    ("socat", "benchmark: userspace proxy"),
    ("haproxy", "benchmark: userspace proxy"),
    ("systemd", "benchmark: systemd-socket-proxyd"),
    ("bpftool", "troubleshooting the data plane"),
    (
        "protobuf-compiler",
        "containerd's and etcd's API clients are generated at build time",
    ),
    (
        "libprotobuf-dev",
        "the protobuf descriptors etcd's API client is generated from",
    ),
    (
        "etcd-server",
        "the cluster tests run an etcd member per host",
    ),
    (
        "etcd-client",
        "etcdctl: the cluster tests look into etcd with it",
    ),
    ("containerd", "runs container functions"),
    ("runc", "the OCI runtime containerd starts containers with"),
    ("crun", "the other OCI runtime the benchmark compares"),
    (
        "docker-registry",
        "a local registry the image pull tests push to",
    ),
    (
        "skopeo",
        "pushes the sample image to that registry in the tests",
    ),
    (
        "apache2-utils",
        "htpasswd: the private registry test's password file",
    ),
    (
        "openssl",
        "the private registry test makes its CA and certificate",
    ),
    ("dnsutils", "dig: the DNS tests query faasd's zone with it"),
    (
        "nsd",
        "the calls-out tests' authoritative DNS server; a DNS peer in the bench",
    ),
    ("knot", "Knot DNS: the other DNS peer in the bench"),
    (
        "nftables",
        "nft: faasd masquerades what functions send out of the host with it",
    ),
    (
        "wireguard-tools",
        "wg: the WireGuard tests configure the client with it",
    ),
    (
        "wireguard-go",
        "the userspace WireGuard client of the tunnel tests",
    ),
    ("dnsperf", "benchmark: DNS queries per second"),
    (
        "musl-tools",
        "musl-gcc: the bench builds its lean reference program with it",
    ),
    ("prometheus", "promtool: the tests check /metrics with it"),
    ("chromium", "the web UI test's headless browser"),
    (
        "chromium-driver",
        "chromedriver: selenium drives chromium through it",
    ),
    (
        "python3-venv",
        "the contract test's schemathesis is installed in a venv",
    ),
    (
        "systemd-container",
        "systemd-nspawn: the systemd test boots a Debian with faasd's units",
    ),
    ("debootstrap", "builds that Debian"),
];

/// What the systemd test's Debian holds besides a minimal base: systemd to boot, curl to
/// call functions, iproute2 for `ss`, dnsutils for `dig`, wireguard-tools (the package
/// recommends it, for `wg show`), nftables for its NAT rules.
const NSPAWN_PACKAGES: &str =
    "systemd,systemd-sysv,dbus,iproute2,curl,dnsutils,wireguard-tools,nftables";

/// The schemathesis release the contract test is known to work with.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// The selenium release the web UI test is known to work with (newer ones need a
/// certifi this machine kind's PyPI does not have).
const SELENIUM_VERSION: &str = "4.45.0";

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The rustup toolchain name faasd's build script asks aya-build for.
const BPF_TOOLCHAIN: &str = "faasd-bpf";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn ensure() -> Result {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "run as root: setup installs packages and mounts bpffs; the tests create \
                    network namespaces and load eBPF programs"
                .into(),
        );
    }
    step("checking the machine");
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    if !os
        .lines()
        .any(|l| l == "ID=debian" || l == "ID=ubuntu" || l.starts_with("ID_LIKE=debian"))
    {
        println!("    warning: not Debian or Ubuntu; package names may differ");
    }
    apt_packages()?;
    bpf_linker()?;
    bpf_toolchain()?;
    bpffs()?;
    Ok(())
}

/// Installs schemathesis (PyPI) into a venv kept between runs; returns its `st`.
pub fn schemathesis() -> Result<PathBuf> {
    python_tool("schemathesis", SCHEMATHESIS_VERSION, "st")
}

/// Installs selenium (PyPI) into a venv kept between runs, for the web UI test; returns
/// the venv's `python`.
pub fn selenium() -> Result<PathBuf> {
    python_tool("selenium", SELENIUM_VERSION, "python")
}

/// Installs `package==version` from PyPI into its own venv under /var/cache/faasd-xtask
/// (kept between runs; made again when the version changes); returns the venv's `bin`.
fn python_tool(package: &str, version: &str, bin: &str) -> Result<PathBuf> {
    let venv = PathBuf::from(format!("/var/cache/faasd-xtask/{package}-{version}"));
    let marker = venv.join(".faasd-installed");
    let program = venv.join("bin").join(bin);
    if marker.exists() && program.exists() {
        println!("    ✓ {package} {version}");
        return Ok(program);
    }
    step(&format!(
        "installing {package} {version} (PyPI) into {}",
        venv.display()
    ));
    let _ = std::fs::remove_dir_all(&venv);
    crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    crate::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("{package}=={version}")),
    )?;
    std::fs::write(&marker, version).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(program)
}

/// A minimal Debian bookworm for the systemd test, built once with debootstrap and kept
/// (the test boots it with a volatile overlay, so it stays as built). FAASD_DEBIAN_MIRROR
/// overrides the mirror.
pub fn nspawn_root() -> Result<PathBuf> {
    let root = PathBuf::from("/var/cache/faasd-xtask/nspawn-bookworm");
    let marker = root.join(".faasd-packages");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == NSPAWN_PACKAGES) {
        println!(
            "    ✓ Debian tree for the systemd test ({})",
            root.display()
        );
        return Ok(root);
    }
    let mirror = std::env::var("FAASD_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let building = root.with_extension("partial");
    step(&format!(
        "debootstrap: a minimal Debian for the systemd test into {} (about a minute, once)",
        root.display()
    ));
    let _ = std::fs::remove_dir_all(&building);
    crate::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={NSPAWN_PACKAGES}")])
            .args(["bookworm"])
            .arg(&building)
            .arg(&mirror),
    )?;
    std::fs::write(building.join(".faasd-packages"), NSPAWN_PACKAGES)
        .map_err(|e| format!("marking {}: {e}", building.display()))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&building, &root)
        .map_err(|e| format!("moving {} into place: {e}", building.display()))?;
    Ok(root)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", pkg])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"ii"))
}

fn apt_packages() -> Result {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(p, _)| !installed(p))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        println!("    ✓ apt packages ({} present)", PACKAGES.len());
        return Ok(());
    }
    for (p, why) in PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        println!("    missing {p}: {why}");
    }
    step("apt-get update");
    crate::run(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    step(&format!("apt-get install {}", missing.join(" ")));
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .map_err(|e| {
        format!(
            "{e}\nhint: rustc-web 1.96 and libstd-rust-web-dev-bpf come from bookworm-security; \
             make sure it is in /etc/apt/sources.list(.d)"
        )
    })?;
    // Debian starts the DNS servers it installs on port 53 of every address; the tests and
    // the bench run their own in namespaces, and faasd answers on the host.
    for unit in ["nsd", "knot"].iter().filter(|u| missing.contains(u)) {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", unit])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    Ok(())
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin").join(name)
}

fn bpf_linker() -> Result {
    let have = Command::new(cargo_bin("bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.contains(BPF_LINKER_VERSION) {
        println!("    ✓ bpf-linker {BPF_LINKER_VERSION}");
        return Ok(());
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about 2 minutes)"
    ));
    // bpf-linker's build script reads LLVM_PREFIX; without it it finds LLVM 14's llvm-config.
    crate::run(
        crate::cargo()
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

/// aya-build runs `rustup run <toolchain> cargo`; Debian's rustc (which has the bpf
/// target's core) becomes a rustup toolchain by linking a directory that holds it.
fn bpf_toolchain() -> Result {
    let list = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| format!("rustup: {e} (faasd builds with rustup's stable toolchain)"))?;
    let data = PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
        .join(".local/share/faasd/bpf-toolchain");
    let linked = String::from_utf8_lossy(&list.stdout)
        .lines()
        .any(|l| l.starts_with(BPF_TOOLCHAIN));
    if linked && data.join("bin/rustc").exists() && data.join("bin/cargo").exists() {
        println!("    ✓ rustup toolchain {BPF_TOOLCHAIN} (Debian rustc for the bpf target)");
        return Ok(());
    }
    step(&format!(
        "linking rustup toolchain {BPF_TOOLCHAIN} to /usr/bin/rustc"
    ));
    let cargo = Command::new("rustup")
        .args(["which", "--toolchain", "stable", "cargo"])
        .output()
        .map_err(|e| e.to_string())?;
    let cargo = String::from_utf8_lossy(&cargo.stdout).trim().to_owned();
    std::fs::create_dir_all(data.join("bin")).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(data.join("lib")).map_err(|e| e.to_string())?;
    for (name, target) in [("rustc", "/usr/bin/rustc"), ("cargo", cargo.as_str())] {
        let link = data.join("bin").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
            .map_err(|e| format!("{}: {e}", link.display()))?;
    }
    crate::run(
        Command::new("rustup")
            .args(["toolchain", "link", BPF_TOOLCHAIN])
            .arg(&data),
    )
}

fn bpffs() -> Result {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        println!("    ✓ bpffs at /sys/fs/bpf");
        return Ok(());
    }
    step("mounting bpffs at /sys/fs/bpf");
    crate::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
