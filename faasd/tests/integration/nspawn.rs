//! faasd under a real systemd: `cargo xtask test` builds a minimal Debian (debootstrap,
//! cached) and names it in FAASD_TEST_NSPAWN_ROOT; this test boots it with systemd-nspawn
//! (a volatile overlay: the cached tree is never written) and runs
//! `tests/nspawn/scenario.sh` inside as a unit. The scenario installs faasd with
//! `packaging/install.sh`, starts it with systemctl (wg-faas first), deploys through the
//! socket-activated API, restarts faasd with `systemctl restart` and kill -9 while a client
//! calls a running function and one at zero (every call must succeed, and the idle
//! function's socket must be the same one after: systemd's fd store kept it), hangs it with
//! SIGSTOP for the watchdog to restart, and uninstalls; then installs the .deb, starts
//! faasd from it and purges it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// How long the whole boot and scenario may take.
const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn systemd_starts_restarts_and_watches_faasd_from_its_units() {
    crate::require_privileges!();
    let Some(root) = std::env::var_os("FAASD_TEST_NSPAWN_ROOT").map(PathBuf::from) else {
        crate::harness::skip(
            "no Debian tree to boot (cargo xtask test builds one and sets \
             FAASD_TEST_NSPAWN_ROOT)",
        );
        return;
    };
    if Command::new("systemd-nspawn")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::harness::skip("systemd-nspawn is missing (Debian's systemd-container package)");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nspawn");
    let out = std::env::temp_dir().join(format!("faasd-nspawn-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let _cleanup = Cleanup(out.clone());

    // The package `cargo xtask test` built, installed and purged after install.sh's turn.
    let deb = std::env::var_os("FAASD_TEST_DEB").map(PathBuf::from);
    // A missing source would stop nspawn before boot, which reads as "cannot boot here".
    let bind_ro = |from: &Path, to: &str| {
        assert!(from.exists(), "{} is missing", from.display());
        format!("--bind-ro={}:{to}", from.display())
    };
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("--directory")
        .arg(&root)
        // Writes go to a tmpfs over the cached tree.
        .args([
            "--volatile=overlay",
            "--boot",
            "--register=no",
            "--keep-unit",
        ])
        .args(["--private-network", "--console=pipe"])
        // faasd loads eBPF programs and pins them on the host's bpffs, and runs boringtun
        // on a TUN device. nspawn's own system call list lacks pidfd_getfd, with which a
        // restarted faasd takes the sockets back from the instances it adopts.
        .args([
            "--capability=all",
            "--system-call-filter=@privileged bpf pidfd_getfd",
        ])
        .args(["--bind=/sys/fs/bpf", "--bind=/dev/net/tun"])
        .arg(bind_ro(
            Path::new(crate::harness::faasd_bin()),
            "/e2e/faasd",
        ))
        .arg(bind_ro(
            Path::new(&crate::harness::hello_bin()),
            "/e2e/hello",
        ))
        .arg(bind_ro(
            &repo.join("packaging/install.sh"),
            "/e2e/install.sh",
        ))
        .arg(bind_ro(
            &repo.join("packaging/config.toml"),
            "/e2e/config.toml",
        ))
        .arg(bind_ro(&repo.join("systemd"), "/e2e/systemd"))
        .arg(bind_ro(&tests.join("scenario.sh"), "/e2e/scenario.sh"))
        .arg(bind_ro(
            &tests.join("faasd-e2e.service"),
            "/etc/systemd/system/faasd-e2e.service",
        ))
        .arg(format!("--bind={}:/e2e-out", out.display()))
        .args(deb.iter().map(|d| bind_ro(d, "/e2e/faasd.deb")))
        // systemd in a container reads its arguments as a kernel command line.
        .arg("systemd.wants=faasd-e2e.service")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(out.join("nspawn.err")).unwrap());
    let mut child = cmd.spawn().expect("systemd-nspawn runs");
    let deadline = Instant::now() + LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Ok(log) = std::fs::read_to_string(out.join("log")) else {
        // The scenario never started: the container did not boot on this machine.
        crate::harness::skip(format_args!(
            "systemd-nspawn could not boot {} here:\n{}",
            root.display(),
            std::fs::read_to_string(out.join("nspawn.err")).unwrap_or_default()
        ));
        return;
    };
    assert!(
        log.trim_end().ends_with("PASS"),
        "the scenario did not pass (within {LIMIT:?}):\n{log}"
    );
    if deb.is_some() {
        assert!(
            log.contains("== dpkg -i"),
            "the package was not tried:\n{log}"
        );
    } else {
        crate::harness::skip("no FAASD_TEST_DEB: the package part of the test");
    }
}

/// Removes the output directory and the pins the container's faasd left on the host's
/// bpffs (the scenario wrote where; its network namespace is gone with the container).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pins) = std::fs::read_to_string(self.0.join("pins")) {
            let pins = Path::new(pins.trim());
            if pins.starts_with("/sys/fs/bpf/faasd/") {
                let _ = std::fs::remove_dir_all(pins);
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
