//! `cargo xtask`: everything that is not plain cargo.
//!
//! - `setup` installs what a fresh Debian/Ubuntu machine lacks (idempotent).
//! - `up` sets up, builds, runs faasd with the sample function, and waits for Ctrl-C.
//! - `test` sets up and runs every test: unit, privileged integration, fmt and clippy.
//! - `bench` sets up, builds release binaries and runs the benchmark harness.
//! - `image` builds OCI archives of the sample functions and imports them into containerd.

mod containerd;
mod dist;
mod image;
mod openfaas;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

const USAGE: &str = "usage: cargo xtask <setup|up|test|bench|image|dist> [args]

  setup          install what is missing: apt packages, bpf-linker, the eBPF toolchain, bpffs
  up             setup, build, run faasd with the sample function (Ctrl-C stops it)
  test           setup, then every test: unit, privileged integration, fmt, clippy
                 (--no-lint skips fmt and clippy; extra args go to cargo test)
  bench [ARGS]   setup, build release, run the benchmark harness (faasd-bench --help);
                 `bench scale [--sizes 1000,5000,19000]` runs only the cost-per-function section,
                 `bench autoscale` and `bench cluster` only theirs, `bench prepared` the
                 cold starts from prepared instances and their idle cost
  image          build OCI archives of the sample functions (target/images) and import
                 them into containerd (the system one, or a private one for the tests)
  dist           build release; target/dist gets the .deb and a directory (and tarball)
                 with install.sh for hosts without dpkg";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `bench` passes --help on to the harness; everything else answers it here, before
    // installing or running anything.
    let wants_help = args.iter().any(|a| a == "-h" || a == "--help");
    if wants_help && args.first().is_none_or(|c| c != "bench") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::ensure(),
        Some("up") => up(),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("image") => image_command(),
        Some("dist") => dist::dist(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Process functions get a private `/tmp` (as systemd's `PrivateTmp=`): a sample function
/// built in a checkout below it would not be there for them to exec.
fn checkout_outside_tmp() -> Result {
    let root = root();
    if root.starts_with("/tmp") {
        return Err(format!(
            "the checkout is at {}, below /tmp: faasd gives process functions a private \
             /tmp, so the sample function built here is not there for them to run; clone \
             the repository somewhere else (say /srv or /opt) and run it from there",
            root.display()
        ));
    }
    Ok(())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// Runs a command with its output shown; fails with the command line on error.
fn run(cmd: &mut Command) -> Result {
    let started = Instant::now();
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed ({status})"));
    }
    if started.elapsed() > Duration::from_secs(1) {
        println!("    ({:.1}s)", started.elapsed().as_secs_f64());
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn up() -> Result {
    checkout_outside_tmp()?;
    setup::ensure()?;
    step("building faasd and the sample function (release)");
    run(cargo().args(["build", "--release", "-p", "faasd", "-p", "hello"]))?;
    let root = root();
    let faasd = root.join("target/release/faasd");
    let hello = root.join("target/release/hello");
    let dir = root.join("target/up");
    let socket = dir.join("run/faasd.sock");
    // Stopped (if private) when `up` returns, after faasd has deleted its containers.
    let ctr = containerd::Containerd::system_or_private(&dir.join("containerd"), "up")?;
    image::build_and_import(&faasd, &ctr.socket)?;

    step("starting faasd (state in target/up/state)");
    let mut daemon = Command::new(&faasd)
        .args(["daemon", "--stop-functions-on-exit", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--containerd")
        .arg(&ctr.socket)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", faasd.display()))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Ok(Some(status)) = daemon.try_wait() {
            return Err(format!(
                "faasd exited during start ({status}); its log is above"
            ));
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            return Err("faasd did not open its API socket within 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    step("deploying the sample functions: `hello` (a process) and `hello-oci` (a container)");
    let cli = |args: &[&str]| {
        Command::new(&faasd)
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .map_err(|e| e.to_string())
    };
    // Deploys, or updates what an earlier `up` left; returns the function's address.
    let deploy = |name: &str, how: &[&str]| -> Result<String> {
        let mut args = vec!["deploy", name];
        args.extend_from_slice(how);
        args.extend_from_slice(&[
            "-l",
            "com.openfaas.scale.zero=true",
            "-l",
            "com.openfaas.scale.zero-duration=30s",
        ]);
        let mut out = cli(&args)?;
        if String::from_utf8_lossy(&out.stderr).contains("already exists") {
            args.push("--update");
            out = cli(&args)?;
        }
        if !out.status.success() {
            return Err(format!(
                "deploying {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let describe = cli(&["describe", name, "--json"])?;
        let text = String::from_utf8_lossy(&describe.stdout);
        Ok(text
            .split("\"address\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_owned())
    };
    let hello = hello.to_string_lossy();
    let deployed = deploy("hello", &["--command", &hello]).and_then(|process| {
        deploy("hello-oci", &["--image", "localhost/hello:latest"]).map(|c| (process, c))
    });
    let (address, oci_address) = match deployed {
        Ok(a) => a,
        Err(e) => {
            let _ = daemon.kill();
            return Err(e);
        }
    };
    let sock = socket.display();
    println!(
        "
faasd is running with two sample functions:
  hello      a process, at {address}
  hello-oci  the same program as an OCI image in containerd ({}), at {oci_address}

  Call them (the first call starts each from zero):
    curl http://[{address}]:8080/
    curl http://[{oci_address}]:8080/

  By name, through faasd's DNS on wg-faas:
    dig +short AAAA hello.faas @fd00:faa5:0:100::1

  The web UI, in a browser on this host (user admin, the password in
  {}):
    http://[fd00:faa5:0:100::1]:8080/ui/

  Look around:
    export FAASD_SOCKET={sock}
    target/release/faasd list
    target/release/faasd describe hello-oci
    target/release/faasd logs hello
    target/release/faasd status
    target/release/faasd peer add laptop      # a wg-quick file for a WireGuard client

  Each stops again after 30 s without connections; the next call starts it again.
  Press Ctrl-C to stop faasd and its functions.",
        ctr.socket.display(),
        dir.join("state/auth/basic-auth-password").display()
    );
    // Ctrl-C reaches faasd too (same process group); wait for it to finish its shutdown.
    // SAFETY: ignoring SIGINT in this process only; the daemon keeps its own handler.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let status = daemon.wait().map_err(|e| e.to_string())?;
    println!("\nfaasd stopped ({status}).");
    // A real deployment keeps the pinned program and the route across restarts; this
    // demo leaves the host as it found it.
    step("removing the data plane and the function route");
    let ino =
        std::fs::metadata("/proc/self/ns/net").map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    if let Ok(ino) = ino {
        let pins = PathBuf::from(format!("/sys/fs/bpf/faasd/netns-{ino}"));
        if let Err(e) = std::fs::remove_dir_all(&pins) {
            println!("    {}: {e}", pins.display());
        }
    }
    let _ = Command::new("ip")
        .args([
            "-6",
            "route",
            "del",
            "local",
            "fd00:faa5:1::/48",
            "dev",
            "lo",
            "table",
            "local",
        ])
        .status();
    Ok(())
}

fn test(args: &[String]) -> Result {
    let lint = !args.iter().any(|a| a == "--no-lint");
    let extra: Vec<&String> = args.iter().filter(|a| *a != "--no-lint").collect();
    checkout_outside_tmp()?;
    setup::ensure()?;
    if lint {
        for (tool, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
            if !cargo()
                .args([tool, "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
            {
                return Err(format!(
                    "cargo {tool} is not installed: `rustup component add {component}`, \
                     or run `cargo xtask test --no-lint` to skip the lint steps"
                ));
            }
        }
        step("cargo fmt --check");
        run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    }
    // Without --workspace cargo works on the default members: everything but the eBPF
    // crate, which builds only for the bpf target (faasd-dataplane's build script builds
    // it).
    step("building the workspace (the integration tests need the sample function)");
    run(cargo().args(["build", "--all-targets"]))?;
    // The container tests run against a private containerd holding the sample images;
    // it is stopped when `ctr` goes out of scope, pass or fail.
    let ctr = containerd::Containerd::private(&root().join("target/containerd"), "test")?;
    image::build_and_import(&root().join("target/debug/faasd"), &ctr.socket)?;
    let schemathesis = setup::schemathesis()?;
    let selenium = setup::selenium()?;
    let nspawn_root = setup::nspawn_root()?;
    // The package the systemd test installs: the release one's contents around the debug
    // binary, uncompressed.
    let deb = dist::deb(
        &root().join("target/debug/faasd"),
        &root().join("target/dist-test"),
        dist::Compression::Test,
    )?;
    step("OpenFaaS's tools for the tests");
    let tools: Vec<(&str, PathBuf)> = [
        openfaas::FAAS_CLI,
        openfaas::OF_WATCHDOG,
        openfaas::CLASSIC_WATCHDOG,
    ]
    .iter()
    .filter_map(|t| t.report().map(|p| (t.var, p)))
    .collect();
    step("running every test (unit and privileged integration tests)");
    run(cargo()
        .arg("test")
        .args(&extra)
        .envs(tools)
        .env("FAASD_TEST_STRICT", "1")
        .env("FAASD_TEST_CONTAINERD", &ctr.socket)
        .env("FAASD_TEST_SCHEMATHESIS", &schemathesis)
        .env("FAASD_TEST_SELENIUM", &selenium)
        .env("FAASD_TEST_NSPAWN_ROOT", &nspawn_root)
        .env("FAASD_TEST_DEB", &deb))?;
    drop(ctr);
    // The daemon's unit tests must keep building without the eBPF toolchain.
    step("unit tests of faasd without the kernel programs (--no-default-features)");
    run(cargo().args(["test", "-p", "faasd", "--lib", "--no-default-features"]))?;
    if lint {
        step("cargo clippy -D warnings");
        run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // Not a default member: without std it builds only where panics abort.
        step("cargo clippy -p faasd-preload -D warnings");
        run(cargo().env("CARGO_PROFILE_DEV_PANIC", "abort").args([
            "clippy",
            "-p",
            "faasd-preload",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    println!("\nall tests passed");
    Ok(())
}

fn bench(args: &[String]) -> Result {
    setup::ensure()?;
    step("building release binaries");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "faasd",
        "-p",
        "hello",
        "-p",
        "faasd-bench",
    ]))?;
    let root = root();
    // The harness with the binaries it measures; `mode` goes first (the scale section is
    // chosen by its first argument).
    let harness = |mode: &[&std::ffi::OsStr]| {
        let mut c = Command::new(root.join("target/release/faasd-bench"));
        c.args(mode)
            .arg("--faasd")
            .arg(root.join("target/release/faasd"))
            .arg("--hello")
            .arg(root.join("target/release/hello"))
            .arg("--out")
            .arg(root.join("target/bench"));
        c
    };
    if let Some(section @ ("scale" | "autoscale" | "cluster" | "lookup" | "dns" | "xdp" | "warm")) =
        args.first().map(String::as_str)
    {
        // One section alone: process functions only, no containerd needed.
        step(&format!("running the {section} benchmark"));
        return run(harness(&[section.as_ref()]).args(&args[1..]));
    }
    // The prepared section (alone or in the full run) starts the lean program too.
    let lean = build_lean(&root)?;
    let ctr =
        containerd::Containerd::system_or_private(&root.join("target/bench/containerd"), "bench")?;
    image::build_and_import(&root.join("target/release/faasd"), &ctr.socket)?;
    if args.first().is_some_and(|a| a == "prepared") {
        step("running the prepared benchmark");
        return run(harness(&["prepared".as_ref()])
            .arg("--containerd")
            .arg(&ctr.socket)
            .arg("--lean")
            .arg(&lean)
            .args(&args[1..]));
    }
    step("running the benchmarks");
    run(harness(&["--containerd".as_ref(), ctr.socket.as_os_str()])
        .arg("--lean")
        .arg(&lean)
        .args(args))
}

/// Builds the bench's lean reference program static against musl, and against glibc
/// beside it (`lean-glibc`, for its exec floor); returns the musl build's path.
fn build_lean(root: &std::path::Path) -> Result<std::path::PathBuf> {
    step("building the lean reference program (bench/lean/lean.c: musl-gcc -static, and cc)");
    let dir = root.join("target/lean");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-o"];
    run(Command::new("musl-gcc")
        .arg("-static")
        .args(flags)
        .arg(dir.join("lean"))
        .arg(root.join("bench/lean/lean.c")))?;
    run(Command::new("cc")
        .args(flags)
        .arg(dir.join("lean-glibc"))
        .arg(root.join("bench/lean/lean.c")))?;
    Ok(dir.join("lean"))
}

/// `cargo xtask image`: into the system containerd if one runs; otherwise only the archives
/// are built (a private containerd's store lives only as long as the command using it).
fn image_command() -> Result {
    setup::ensure()?;
    if !std::path::Path::new(containerd::SYSTEM_SOCKET).exists() {
        let archives = image::build()?;
        println!(
            "\nNo system containerd at {}: import the archives yourself with\n  faasd image \
             import FILE --containerd SOCKET\n({} archives in target/images)",
            containerd::SYSTEM_SOCKET,
            archives.len()
        );
        return Ok(());
    }
    step("building faasd");
    run(cargo().args(["build", "--release", "-p", "faasd"]))?;
    image::build_and_import(
        &root().join("target/release/faasd"),
        std::path::Path::new(containerd::SYSTEM_SOCKET),
    )
}
