//! The systemd units in `systemd/`, as systemd itself reads them, and the scripts for other
//! init systems and for the package.

use std::{path::Path, process::Command};

/// `systemd-analyze verify` on every unit, against a root holding the host's own units (for
/// the targets they name) and the faasd binary at the path the units run. verify exits 0
/// even when it ignores a line it cannot parse, so any output at all is a failure.
#[test]
fn every_unit_verifies_clean() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::harness::skip("systemd-analyze is missing (Debian's systemd package)");
        return;
    }
    let units_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd");
    let root = std::env::temp_dir().join(format!("faasd-units-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(&root);
    let system = root.join("etc/systemd/system");
    std::fs::create_dir_all(&system).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy(crate::harness::faasd_bin(), root.join("usr/bin/faasd")).unwrap();
    copy_dir(
        Path::new("/lib/systemd/system"),
        &root.join("usr/lib/systemd/system"),
    );
    let mut units = Vec::new();
    for entry in std::fs::read_dir(&units_dir).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("service" | "socket")
        ) {
            let dest = system.join(path.file_name().unwrap());
            std::fs::copy(&path, &dest).unwrap();
            units.push(dest);
        }
    }
    assert!(units.len() >= 4, "units found: {units:?}");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", root.display()))
        .args(&units)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0);
    }
}

/// Copies a directory tree, symlinks as symlinks (systemd's unit directory has both).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let (src, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            let _ = std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dest);
        } else if kind.is_dir() {
            copy_dir(&src, &dest);
        } else {
            std::fs::copy(&src, &dest).unwrap();
        }
    }
}

/// The scripts for other init systems and the packaging scripts parse as POSIX shell
/// (`sh -n`, Debian's dash): OpenRC's `openrc-run` and runit's `run` files are shell.
#[test]
fn init_and_packaging_scripts_parse() {
    let packaging = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging");
    let scripts = [
        "install.sh",
        "openrc/faasd",
        "runit/faasd/run",
        "runit/faasd/log/run",
        "deb/postinst",
        "deb/prerm",
        "deb/postrm",
    ];
    for script in scripts {
        let path = packaging.join(script);
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!"), "{script} has no interpreter line");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert!(mode & 0o111 != 0, "{script} is not executable");
    }
}
