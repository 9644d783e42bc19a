//! Registries faasd pulls from, run for real with Debian's `docker-registry`
//! (distribution 2.8) in the test's namespace and filled by `skopeo`: a plain one on
//! loopback (the pull tests in `containers`), and private ones as companies run them, TLS
//! by their own CA and either basic auth from an htpasswd file or bearer tokens from a token
//! service (a small one here, answering for the right basic credentials with a token signed
//! by the key the registry trusts), reached with Docker's `config.json` and `certs.d`
//! layout.

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

const USER: &str = "alice";
const PASSWORD: &str = "correct-horse";

/// How a private registry asks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// Basic auth from an htpasswd file.
    Basic,
    /// Bearer tokens from a token service that takes basic credentials (as Docker Hub,
    /// GitLab and Harbor do).
    Token,
}

/// Where the token registry's tokens come from.
const TOKEN_REALM: &str = "http://127.0.0.1:5446/token";

impl Auth {
    fn host(self) -> &'static str {
        match self {
            Self::Basic => "127.0.0.1:5443",
            Self::Token => "127.0.0.1:5445",
        }
    }

    /// Who answers a pull's credentials, as faasd's messages name it.
    fn judge(self) -> String {
        match self {
            Self::Basic => format!("the registry {}", self.host()),
            Self::Token => format!("the token service {TOKEN_REALM}"),
        }
    }
}

/// A private registry serving the sample image as `<host>/private/hello:v1`, with the
/// CA of its certificate in Docker's layout below `certs`.
struct Private {
    _registry: LocalRegistry,
    _tokens: Option<TokenService>,
    certs: PathBuf,
}

/// Makes a CA (or a self-signed certificate) in `dir`, its certificate at `crt`; returns
/// the key's path.
fn make_ca(dir: &Path, name: &str, crt: &Path) -> PathBuf {
    let key = dir.join(format!("{name}.key"));
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(crt)
        .stderr(Stdio::null()));
    key
}

/// A certificate for `127.0.0.1` signed by the CA at `ca_crt`/`ca_key`: (cert, key).
fn server_certificate(dir: &Path, ca_crt: &Path, ca_key: &Path) -> (PathBuf, PathBuf) {
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
        .arg(ca_crt)
        .arg("-CAkey")
        .arg(ca_key)
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt)
        .stderr(Stdio::null()));
    (crt, key)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A registry token (a JWT, RS256) for pulling and pushing `private/hello`, signed with
/// `key`, its certificate `crt` in the header: what the registry's `rootcertbundle` trusts.
fn registry_token(dir: &Path, crt: &Path, key: &Path) -> String {
    let der = dir.join("token.der");
    run(Command::new("openssl")
        .args(["x509", "-outform", "DER"])
        .arg("-in")
        .arg(crt)
        .arg("-out")
        .arg(&der));
    let x5c = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&der).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "faasd-test-issuer", "sub": USER, "aud": "faasd-test",
        "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "faasd-test-token",
        "access": [{"type": "repository", "name": "private/hello", "actions": ["pull", "push"]}],
    });
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let input = dir.join("token.input");
    std::fs::write(&input, &signed).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{signed}.{}", b64url(&out.stdout))
}

/// The token service of the token registry: `GET /token` answers a token for the right
/// basic credentials and 401 for anything else.
struct TokenService {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl TokenService {
    fn start(ns: &Netns, token: String) -> Self {
        use std::io::{BufRead, Write};
        let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:5446").unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let expected = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
        )
        .to_lowercase();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut authorized = false;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let line = line.trim().to_lowercase();
                    if let Some(v) = line.strip_prefix("authorization:") {
                        authorized = v.trim() == expected;
                    }
                }
                let answer = if authorized {
                    let body =
                        serde_json::json!({"token": token, "access_token": token}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"faasd-test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                };
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        Self { stop }
    }
}

/// A registry on `auth.host()` with TLS by a CA made here and the given kind of auth,
/// holding the sample image as `<host>/private/hello:v1`.
fn private_registry(ns: &Netns, auth: Auth) -> Option<Private> {
    let tools: &[&str] = match auth {
        Auth::Basic => &["docker-registry", "skopeo", "openssl", "htpasswd"],
        Auth::Token => &["docker-registry", "skopeo", "openssl"],
    };
    if missing(tools) {
        return None;
    }
    let host = auth.host();
    let dir = ns.dir.join("registry");
    let certs = ns.dir.join("certs.d");
    let ca_dir = certs.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca_crt = ca_dir.join("ca.crt");
    let ca_key = make_ca(&dir, "faasd-test-ca", &ca_crt);
    let (crt, key) = server_certificate(&dir, &ca_crt, &ca_key);
    let (auth_config, tokens) = match auth {
        Auth::Basic => {
            let htpasswd = Command::new("htpasswd")
                .args(["-Bbn", USER, PASSWORD])
                .output()
                .unwrap();
            assert!(htpasswd.status.success());
            std::fs::write(dir.join("htpasswd"), &htpasswd.stdout).unwrap();
            (
                format!(
                    "  htpasswd:\n    realm: faasd-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                ),
                None,
            )
        }
        Auth::Token => {
            let token_crt = dir.join("token.crt");
            let token_key = make_ca(&dir, "faasd-token-signer", &token_crt);
            let token = registry_token(&dir, &token_crt, &token_key);
            (
                format!(
                    "  token:\n    realm: {TOKEN_REALM}\n    service: faasd-test\n    issuer: faasd-test-issuer\n    rootcertbundle: {}\n",
                    token_crt.display()
                ),
                Some(TokenService::start(ns, token)),
            )
        }
    };
    let registry = LocalRegistry::serve(
        ns,
        host,
        &format!(
            "  tls:\n    certificate: {}\n    key: {}\nauth:\n{auth_config}",
            crt.display(),
            key.display(),
        ),
    );
    registry.push(
        ns,
        &format!("{host}/private/hello:v1"),
        &[
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
            "--dest-cert-dir",
            ca_dir.to_str().unwrap(),
        ],
    );
    Some(Private {
        _registry: registry,
        _tokens: tokens,
        certs,
    })
}

/// Writes a Docker `config.json` with `user` and `password` for `host`.
fn login(config: &Path, host: &str, user: &str, password: &str) {
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(config, json.to_string()).unwrap();
}

/// A function deployed from the private registry: refused without credentials, with a
/// wrong password and under another CA, each saying why; pulled and served with its own
/// CA and the right credentials.
fn pulled_privately(auth: Auth, tag: &str) {
    require_containerd!(socket);
    let ns = Netns::new(tag);
    let _c = Cleanup {
        socket: &socket,
        names: &[tag],
    };
    let Some(private) = private_registry(&ns, auth) else {
        return;
    };
    let certs = &private.certs;
    let host = auth.host();
    let d = Daemon::start_with(
        &ns,
        &format!("containerd = {socket:?}\nregistry-certs-dir = {certs:?}\n"),
    );
    let image = format!("{host}/private/hello:v1");
    // containerd keeps what an earlier run pulled: forget it, so this run pulls.
    let _ = Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["--namespace", "faasd", "images", "rm", &image])
        .output();
    let deploy = || d.cli(&["deploy", tag, "--image", &image]);
    let config = ns.dir.join("state/.docker/config.json");
    let judge = auth.judge();

    // No credentials: refused, saying where they go.
    let e = deploy().unwrap_err();
    assert!(
        e.contains(&format!("{judge} asks for credentials"))
            && e.contains(&format!("{} has none for {host}", config.display())),
        "{e}"
    );
    // Wrong ones: refused, naming the user and the file, never the password.
    login(&config, host, USER, "wrong-password");
    let e = deploy().unwrap_err();
    assert!(
        e.contains(&format!("{judge} refused the credentials for {host}"))
            && e.contains(&format!("user {USER} from {}", config.display())),
        "{e}"
    );
    assert!(!e.contains("wrong-password"), "{e}");
    // The right ones, but a CA that did not sign the registry's certificate.
    login(&config, host, USER, PASSWORD);
    let ca_dir = certs.join(host);
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
    d.cli_ok(&["deploy", tag, "--image", &image]);
    assert!(
        ctr(&socket, &["images", "ls", "-q"])
            .lines()
            .any(|l| l == image)
    );
    let addr = http(d.describe(tag).address);
    let (code, body) = ns.run(|| http_get(addr)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", d.log());
}

#[test]
fn a_private_registry_with_basic_auth_is_pulled_from_with_docker_credentials() {
    pulled_privately(Auth::Basic, "ctr-private");
}

#[test]
fn a_private_registry_with_a_token_service_is_pulled_from_with_docker_credentials() {
    pulled_privately(Auth::Token, "ctr-token");
}
