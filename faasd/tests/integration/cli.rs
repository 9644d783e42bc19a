//! The faasd CLI as operators use it: over the unix socket, and with --url over TCP with
//! basic auth (flags, OpenFaaS's variables, or faas-cli's saved login); --json for
//! scripts, aligned tables for people; OpenFaaS stack files; namespaces; secrets that
//! never show up where they should not.

use crate::harness::{Daemon, Netns, hello_bin};

const URL: &str = "http://[::1]:8081";

fn password(ns: &Netns) -> String {
    std::fs::read_to_string(ns.dir.join("state/auth/basic-auth-password"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn the_cli_reaches_a_remote_faasd_with_url_and_credentials() {
    crate::require_privileges!();
    let ns = Netns::new("cli-remote");
    let d = Daemon::start_with(&ns, "api = [\"[::1]:8081\"]\n");
    d.deploy_hello("remote", &[]);
    let password = password(&ns);

    // No credentials: the 401 becomes advice, not a status line.
    let (ok, _, err) = d.remote_cli(&["--url", URL, "list"], &[]);
    assert!(!ok);
    assert!(
        err.contains("refused the credentials") && err.contains("--password"),
        "{err}"
    );
    let (ok, _, err) = d.remote_cli(&["--url", URL, "--password", "wrong", "list"], &[]);
    assert!(!ok && err.contains("refused the credentials"), "{err}");

    // Flags.
    let (ok, out, err) = d.remote_cli(&["--url", URL, "--password", &password, "list"], &[]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.starts_with("remote ")), "{out}");

    // OpenFaaS's URL variable and faasd's password variable, with --json.
    let (ok, out, err) = d.remote_cli(
        &["--json", "list"],
        &[("OPENFAAS_URL", URL), ("FAASD_PASSWORD", &password)],
    );
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(list[0]["name"], "remote", "{out}");

    // The login faas-cli saved for this URL.
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("admin:{password}"));
    let config = ns.dir.join("openfaas");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.yml"),
        format!("auths:\n- gateway: {URL}\n  auth: basic\n  token: {token}\n"),
    )
    .unwrap();
    let (ok, out, err) = d.remote_cli(
        &["--url", URL, "describe", "remote"],
        &[("OPENFAAS_CONFIG", config.to_str().unwrap())],
    );
    assert!(ok, "{err}");
    assert!(out.contains("remote.openfaas-fn"), "{out}");

    // Invocation needs no credentials.
    let (ok, out, err) = d.remote_cli(&["--url", URL, "invoke", "remote"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("Hello from faasd!"), "{out}");

    // URLs faasd does not serve are refused before anything is sent.
    let (ok, _, err) = d.remote_cli(&["--url", "https://[::1]:8081", "list"], &[]);
    assert!(!ok && err.contains("plain HTTP"), "{err}");
    let (ok, _, err) = d.remote_cli(&["--url", "[::1]:8081", "list"], &[]);
    assert!(!ok && err.contains("http://HOST:PORT"), "{err}");
}

#[test]
fn stack_files_deploy_and_update_across_namespaces() {
    crate::require_privileges!();
    let ns = Netns::new("cli-stack");
    let d = Daemon::start(&ns);
    let hello = hello_bin();
    let stack = ns.dir.join("stack.yml");
    let write_stack = |greeting: &str| {
        std::fs::write(
            &stack,
            format!(
                "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\n\
                 functions:\n  web:\n    lang: go\n    handler: ./web\n    fprocess: {hello}\n    \
                 environment:\n      GREETING: {greeting}\n  api:\n    namespace: dev\n    \
                 fprocess: {hello}\n    labels:\n      com.openfaas.scale.max: 3\n"
            ),
        )
        .unwrap();
    };
    write_stack("one");
    let out = d.cli_ok(&["deploy", "-f", stack.to_str().unwrap()]);
    assert!(
        out.contains("Deployed api.dev") && out.contains("Deployed web.openfaas-fn"),
        "{out}"
    );
    // Deploying again updates (PUT) instead of failing with 409.
    write_stack("two");
    d.cli_ok(&["deploy", "-f", stack.to_str().unwrap(), "--filter", "web"]);
    assert_eq!(d.describe("web").env_vars["GREETING"], "two");
    let err = d
        .cli(&["deploy", "-f", stack.to_str().unwrap(), "--filter", "nope"])
        .unwrap_err();
    assert!(err.contains("no function \"nope\""), "{err}");

    // Namespaces: the default one and every one in use; one of them on its own.
    let list: Vec<String> =
        serde_json::from_str(&d.cli_ok(&["--json", "namespace", "list"])).unwrap();
    assert_eq!(list, ["dev", "openfaas-fn"]);
    let (code, body) = d.api("GET", "/system/namespace/dev", "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(d.api("GET", "/system/namespace/nothing-here", "").0, 404);
    // A secret is enough to make a namespace.
    d.cli_ok(&[
        "secret",
        "create",
        "token",
        "-n",
        "ops",
        "--from-literal",
        "x",
    ]);
    let list = d.cli_ok(&["namespace", "list"]);
    assert!(list.lines().any(|l| l == "ops"), "{list}");

    // Tables: every column starts at the same place on every line.
    let table = d.cli_ok(&["list", "-n", "dev"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    let column = |l: &str, word: &str| l.find(word).unwrap_or_else(|| panic!("{word}: {l}"));
    let api: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["--json", "describe", "api", "-n", "dev"])).unwrap();
    let address = api["address"].as_str().unwrap();
    assert_eq!(
        column(lines[0], "ADDRESS"),
        column(lines[1], address),
        "{table}"
    );
}

#[test]
fn secret_values_stay_out_of_answers_logs_and_describe() {
    crate::require_privileges!();
    let ns = Netns::new("cli-secret");
    let d = Daemon::start(&ns);
    const VALUE: &str = "s3cr3t-value-7f1c";
    d.cli_ok(&["secret", "create", "db", "--from-literal", VALUE]);
    let mut seen = vec![
        // Creating it twice, updating it, listing it, in both output forms.
        d.cli(&["secret", "create", "db", "--from-literal", VALUE])
            .unwrap_err(),
        d.cli_ok(&[
            "secret",
            "create",
            "db",
            "--update",
            "--from-literal",
            VALUE,
        ]),
        d.cli_ok(&["secret", "list"]),
        d.cli_ok(&["--json", "secret", "list"]),
    ];
    // A deploy naming a secret that does not exist is refused, naming it; a function that
    // mounts one shows its name in describe, never its value.
    seen.push(
        d.cli(&[
            "deploy",
            "bad",
            "--command",
            &hello_bin(),
            "--secret",
            "missing",
        ])
        .unwrap_err(),
    );
    let refused = seen.last().unwrap();
    assert!(
        refused.contains("missing"),
        "the refusal names it: {refused}"
    );
    d.deploy_hello("plain", &["--secret", "db"]);
    seen.push(d.cli_ok(&["--json", "describe", "plain"]));
    let (_, metrics) = d.api("GET", "/metrics", "");
    seen.push(metrics);
    seen.push(d.log());
    for text in &seen {
        assert!(!text.contains(VALUE), "the secret's value leaked:\n{text}");
    }
    assert!(seen[2].contains("db"), "the list names it: {}", seen[2]);
}
