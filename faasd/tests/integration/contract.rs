//! The OpenFaaS contract: schemathesis generates requests from the published spec
//! (`tests/contract/spec.openapi.yml`, with faasd's deliberate deviations applied by
//! `tests/contract/openfaas.py`) and checks every answer of a running daemon against it:
//! no 5xx for any input, documented status codes and content types, answers that match
//! their schemas, valid input accepted and invalid input refused. `cargo xtask test`
//! installs schemathesis and names it in FAASD_TEST_SCHEMATHESIS.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::harness::{Daemon, Netns, ctr};

/// The seed of the generated inputs: fixed, so a failure repeats; FAASD_CONTRACT_SEED
/// explores others.
const DEFAULT_SEED: &str = "20261122";

/// The image the spec's deployment example names.
const EXAMPLE_IMAGE: &str = "docker.io/functions/nodeinfo:latest";

#[test]
fn openfaas_spec_holds_for_generated_requests() {
    crate::require_privileges!();
    let Some(st) = std::env::var_os("FAASD_TEST_SCHEMATHESIS").map(PathBuf::from) else {
        crate::harness::skip(
            "schemathesis is not installed (cargo xtask test installs it and sets \
             FAASD_TEST_SCHEMATHESIS)",
        );
        return;
    };
    let Some(containerd) = std::env::var_os("FAASD_TEST_CONTAINERD") else {
        crate::harness::skip("no containerd for the tests (cargo xtask test starts one)");
        return;
    };
    let contract = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/contract");
    let ns = Netns::new("contract");
    // Generated deployments name the sample image; stopping the daemon removes what the
    // run started in containerd. Process functions are off: the spec requires an image, and
    // generated commands are not to run on this host.
    let mut d = Daemon::start_with(
        &ns,
        &format!(
            "api = [\"[::1]:8080\"]\ncontainerd = {containerd:?}\nstop-functions-on-exit = true\n\
             process-functions = false\n"
        ),
    );
    // What the spec's examples name: an image (the sample image under that name) and a
    // secret.
    ctr(
        Path::new(&containerd),
        &[
            "images",
            "tag",
            "--force",
            "localhost/hello:latest",
            EXAMPLE_IMAGE,
        ],
    );
    d.cli_ok(&[
        "secret",
        "create",
        "secret-name-1",
        "--from-literal",
        "example",
    ]);
    let password = std::fs::read_to_string(ns.dir.join("state/auth/basic-auth-password"))
        .expect("the daemon made its password");
    let seed = std::env::var("FAASD_CONTRACT_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let mut cmd = Command::new(&st);
    cmd.arg("--no-color")
        .arg("--config-file")
        .arg(contract.join("schemathesis.toml"))
        .arg("run")
        .arg(contract.join("spec.openapi.yml"))
        .args(["--url", "http://[::1]:8080", "--auth"])
        .arg(format!("admin:{}", password.trim()))
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", "40", "--seed", &seed])
        .env("SCHEMATHESIS_HOOKS", contract.join("openfaas.py"))
        .env("FAASD_CONTRACT_IMAGE", "localhost/hello:latest")
        .current_dir(&ns.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = ns
        .spawn(&mut cmd)
        .wait_with_output()
        .expect("schemathesis runs");
    let pid = d.pid();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    d.stop();
    assert!(
        out.status.success(),
        "schemathesis found requests the daemon answers against the contract (seed {seed}):\n\
         {report}\ndaemon log:\n{}",
        d.log()
    );
    // Stopping the daemon stopped what the run started in containerd (instance ids carry
    // the daemon's pid).
    let left = ctr(Path::new(&containerd), &["containers", "ls", "-q"]);
    let mine: Vec<&str> = left
        .lines()
        .filter(|id| id.contains(&format!("-{pid}-")))
        .collect();
    assert!(
        mine.is_empty(),
        "containers left behind: {mine:?}\ndaemon log:\n{}",
        d.log()
    );
    // A run that tested nothing would pass too: make sure it went through every operation
    // (the spec's 20, less /system/alert, plus the invocation methods openfaas.py declares).
    assert!(
        report.contains("Tested: 33"),
        "schemathesis did not test all 33 operations:\n{report}"
    );
}
