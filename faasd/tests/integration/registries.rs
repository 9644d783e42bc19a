//! Registries faasd pulls from, run for real with Debian's `docker-registry`
//! (distribution 2.8) in the test's namespace and filled by `skopeo`: a plain one on
//! loopback (the pull tests in `containers`), and a private one as a company runs it, TLS by
//! its own CA and basic auth from an htpasswd file, reached with Docker's `config.json` and
//! `certs.d` layout.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;

use crate::{
    containers::{Cleanup, http},
    harness::{Daemon, Netns, ctr, http_get, run},
    require_containerd,
};

/// A registry serving in a test namespace, stopped on drop.
pub struct LocalRegistry(Child);

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Skips the test (true) when one of `tools` is not installed.
fn missing(tools: &[&str]) -> bool {
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| Command::new(t).arg("--version").output().is_err())
        .collect();
    if absent.is_empty() {
        return false;
    }
    crate::harness::skip(format!(
        "{} missing (cargo xtask setup installs them)",
        absent.join(", ")
    ));
    true
}

impl LocalRegistry {
    /// Serves on `addr` with `extra` lines of configuration below `http:` (and after it).
    fn serve(ns: &Netns, addr: &str, extra: &str) -> Self {
        let dir = ns.dir.join("registry");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "docker-registry", "serve"])
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self(child)
    }

    /// Pushes the sample image to `dest` with skopeo's `args`, once the registry answers.
    fn push(&self, ns: &Netns, dest: &str, args: &[&str]) {
        let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/hello.tar");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns.name, "skopeo", "copy"])
                .args(args)
                .arg(format!("oci-archive:{}", archive.display()))
                .arg(format!("docker://{dest}"))
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pushing to {dest}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(ns.dir.join("registry/registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A plain-HTTP registry on `127.0.0.1:5000` holding the sample image as
    /// `127.0.0.1:5000/hello:pulled`; `None` (the test skips) without the tools.
    pub fn with_sample(ns: &Netns) -> Option<Self> {
        if missing(&["docker-registry", "skopeo"]) {
            return None;
        }
        let me = Self::serve(ns, "127.0.0.1:5000", "");
        me.push(
            ns,
            "127.0.0.1:5000/hello:pulled",
            &["--dest-tls-verify=false"],
        );
        Some(me)
    }
}

const PRIVATE: &str = "127.0.0.1:5443";
const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";

/// Makes a CA in `dir`, its certificate at `ca_crt`; returns the key's path.
fn make_ca(dir: &Path, name: &str, ca_crt: &Path) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(ca_crt)
        .stderr(Stdio::null()));
    key
}

/// A registry on `127.0.0.1:5443` with TLS by a CA made here (in Docker's layout below the
/// returned directory) and basic auth, holding the sample image as
/// `127.0.0.1:5443/private/hello:v1`.
fn private_registry(ns: &Netns) -> Option<(LocalRegistry, PathBuf)> {
    if missing(&["docker-registry", "skopeo", "openssl", "htpasswd"]) {
        return None;
    }
    let dir = ns.dir.join("registry");
    let certs = ns.dir.join("certs.d");
    let ca_dir = certs.join(PRIVATE);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca_crt = ca_dir.join("ca.crt");
    let ca_key = make_ca(&dir, "faasd-test-ca", &ca_crt);
    let (key, csr, crt, ext) = (
        dir.join("server.key"),
        dir.join("server.csr"),
        dir.join("server.crt"),
        dir.join("server.ext"),
    );
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(Stdio::null()));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr)
        .arg("-CA")
        .arg(&ca_crt)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null()));
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output()
        .unwrap();
    assert!(htpasswd.status.success());
    std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
    let registry = LocalRegistry::serve(
        ns,
        PRIVATE,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: faasd-test\n    path: {}\n",
            crt.display(),
            key.display(),
            dir.join("htpasswd").display()
        ),
    );
    registry.push(
        ns,
        &format!("{PRIVATE}/private/hello:v1"),
        &[
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
            "--dest-cert-dir",
            ca_dir.to_str().unwrap(),
        ],
    );
    Some((registry, certs))
}

/// Writes a Docker `config.json` with `user` and `password` for the private registry.
fn login(config: &Path, user: &str, password: &str) {
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({"auths": {PRIVATE: {"auth": auth}}});
    std::fs::write(config, json.to_string()).unwrap();
}

#[test]
fn a_private_registry_is_pulled_from_with_docker_credentials_and_its_ca() {
    require_containerd!(socket);
    let ns = Netns::new("ctr-private");
    let _c = Cleanup {
        socket: &socket,
        names: &["ctr-private"],
    };
    let Some((_registry, certs)) = private_registry(&ns) else {
        return;
    };
    let d = Daemon::start_with(
        &ns,
        &format!("containerd = {socket:?}\nregistry-certs-dir = {certs:?}\n"),
    );
    let image = format!("{PRIVATE}/private/hello:v1");
    // containerd keeps what an earlier run pulled: forget it, so this run pulls.
    let _ = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["--namespace", "faasd", "images", "rm", &image])
        .output();
    let deploy = || d.cli(&["deploy", "ctr-private", "--image", &image]);
    let config = ns.dir.join("state/.docker/config.json");

    // No credentials: refused, saying where they go.
    let e = deploy().unwrap_err();
    assert!(
        e.contains(&format!("the registry {PRIVATE} asks for credentials"))
            && e.contains(&format!("{} has none", config.display())),
        "{e}"
    );
    // Wrong ones: refused, naming the user and the file, never the password.
    login(&config, USER, "wrong-password");
    let e = deploy().unwrap_err();
    assert!(
        e.contains(&format!("refused the credentials for {PRIVATE}"))
            && e.contains(&format!("user {USER} from {}", config.display())),
        "{e}"
    );
    assert!(!e.contains("wrong-password"), "{e}");
    // The right ones, but a CA that did not sign the registry's certificate.
    login(&config, USER, PASSWORD);
    let ca_dir = certs.join(PRIVATE);
    let aside = certs.join("aside");
    std::fs::rename(&ca_dir, &aside).unwrap();
    std::fs::create_dir_all(&ca_dir).unwrap();
    make_ca(
        &ns.dir.join("registry"),
        "another-ca",
        &ca_dir.join("other.crt"),
    );
    let e = deploy().unwrap_err();
    assert!(e.contains("invalid peer certificate"), "{e}");
    std::fs::remove_dir_all(&ca_dir).unwrap();
    std::fs::rename(&aside, &ca_dir).unwrap();

    // Its own CA and the right credentials: pulled and served.
    d.cli_ok(&["deploy", "ctr-private", "--image", &image]);
    assert!(
        ctr(&socket, &["images", "ls", "-q"])
            .lines()
            .any(|l| l == image)
    );
    let addr = http(d.describe("ctr-private").address);
    let (code, body) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
}
