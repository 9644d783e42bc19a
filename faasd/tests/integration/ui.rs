//! The web UI at `/ui/`, in a real headless browser: Debian's chromium, driven by
//! selenium (PyPI, `cargo xtask test` installs it and names its python in
//! FAASD_TEST_SELENIUM) through chromedriver, against a daemon over TCP with basic auth.
//! The browser's steps are in `tests/ui/drive.py`; what they did is checked here from
//! outside. Screenshots are kept in `target/ui-screenshots/`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    harness::{Daemon, Netns, hello_bin, http_get_path},
    require_privileges,
};

#[test]
fn the_web_ui_lists_deploys_invokes_and_follows_logs_in_a_real_browser() {
    require_privileges!();
    let Some(python) = std::env::var_os("FAASD_TEST_SELENIUM").map(PathBuf::from) else {
        crate::harness::skip(
            "selenium is not installed (cargo xtask test installs it and sets \
             FAASD_TEST_SELENIUM)",
        );
        return;
    };
    for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !Path::new(program).exists() {
            crate::harness::skip(format!(
                "{program} is missing (cargo xtask setup installs chromium and chromium-driver)"
            ));
            return;
        }
    }
    let ns = Netns::new("webui");
    let tcp: SocketAddr = "[::1]:8090".parse().unwrap();
    let d = Daemon::start_with(&ns, &format!("api = [\"{tcp}\"]\n"));
    d.deploy_hello("first", &[]);

    // Over TCP the page is guarded as /system/* is; on the unix socket it is open, its
    // files served with their types.
    let (code, _) = ns.run(|| http_get_path(tcp, "/ui/")).unwrap();
    assert_eq!(code, 401, "the UI answered without credentials");
    let (code, page) = d.api("GET", "/ui/", "");
    assert_eq!(code, 200);
    assert!(page.contains("<title>faasd</title>"), "{page}");
    let (code, script) = d.api("GET", "/ui/app.js", "");
    assert_eq!(code, 200);
    assert!(script.contains("/system/functions"), "{script}");

    let password = std::fs::read_to_string(ns.dir.join("state/auth/basic-auth-password")).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/drive.py");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(&python)
        .arg(&script)
        .arg("--url")
        .arg(format!("http://{tcp}"))
        .args(["--password", password.trim(), "--listed", "first"])
        .arg("--command")
        .arg(hello_bin())
        .arg("--screenshots")
        .arg(&shots)
        .env("HOME", &ns.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the browser's steps failed (screenshots in {}):\n{}\n{}\n{}",
        shots.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );

    // What the browser did, as the API sees it.
    let second = d.describe("second");
    assert_eq!(
        second.labels.get("team").map(String::as_str),
        Some("web"),
        "{second:?}"
    );
    assert_eq!(
        second.annotations.get("note").map(String::as_str),
        Some("from the browser")
    );
    assert!(second.invocation_count >= 1, "{second:?}");
    let (_, secrets) = d.api("GET", "/system/secrets", "");
    assert!(
        !secrets.contains("ui-token"),
        "the secret stayed: {secrets}"
    );
    let pngs = std::fs::read_dir(&shots)
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path()).is_ok_and(|b| b.starts_with(b"\x89PNG")))
        .count();
    assert!(pngs >= 6, "{pngs} screenshots in {}", shots.display());
}
