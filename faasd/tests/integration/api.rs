//! The API and CLI: shapes, status codes, and clear errors for bad input.

use crate::{
    harness::{Daemon, Netns},
    require_privileges,
};

#[test]
fn openfaas_routes_answer_as_faas_cli_expects() {
    require_privileges!();
    let ns = Netns::new("api");
    let d = Daemon::start(&ns);
    assert_eq!(d.api("GET", "/healthz", "").0, 200);
    let (code, info) = d.api("GET", "/system/info", "");
    assert_eq!(code, 200);
    assert!(
        info.contains("\"provider\"") && info.contains("faasd"),
        "{info}"
    );

    let hello = crate::harness::hello_bin();
    let body = format!(
        r#"{{"service":"api-fn","envProcess":"{hello}","labels":{{}},"annotations":{{}}}}"#
    );
    // faas-cli always tries PUT first and needs 404 for an unknown function.
    assert_eq!(d.api("PUT", "/system/functions", &body).0, 404);
    assert_eq!(d.api("POST", "/system/functions", &body).0, 202);
    assert_eq!(d.api("POST", "/system/functions", &body).0, 409);
    assert_eq!(d.api("PUT", "/system/functions", &body).0, 202);

    let (code, list) = d.api("GET", "/system/functions", "");
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "api-fn");
    assert_eq!(list[0]["namespace"], "openfaas-fn");
    assert!(
        list[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("fd00:faa5:1::")
    );
    assert_eq!(d.api("GET", "/system/function/api-fn", "").0, 200);
    assert_eq!(d.api("GET", "/system/function/nope", "").0, 404);

    // Scale without the namespace in the body, as faas-cli sends it.
    let (code, _) = d.api(
        "POST",
        "/system/scale-function/api-fn?namespace=openfaas-fn",
        r#"{"serviceName":"api-fn","replicas":1}"#,
    );
    assert_eq!(code, 202);
    d.wait_for("api-fn", "one replica", |s| s.available_replicas == 1);
    let (code, out) = d.api(
        "POST",
        "/function/api-fn.openfaas-fn/some/path?x=1",
        "payload",
    );
    assert_eq!(code, 200, "{out}");
    assert!(
        out.contains("path=/some/path?x=1") && out.contains("payload"),
        "{out}"
    );
    assert_eq!(d.describe("api-fn").invocation_count, 1);

    assert_eq!(
        d.api(
            "DELETE",
            "/system/functions?namespace=openfaas-fn",
            r#"{"functionName":"api-fn"}"#
        )
        .0,
        202
    );
    assert_eq!(
        d.api(
            "DELETE",
            "/system/functions",
            r#"{"functionName":"api-fn"}"#
        )
        .0,
        404
    );
}

#[test]
fn bad_input_gets_a_400_that_says_what_is_wrong() {
    require_privileges!();
    let ns = Netns::new("bad");
    let d = Daemon::start(&ns);
    let hello = crate::harness::hello_bin();
    let cases = [
        (
            format!(r#"{{"service":"Bad_Name","envProcess":"{hello}"}}"#),
            "DNS label",
        ),
        (
            format!(r#"{{"service":"f","envProcess":"{hello}","sevrice":"x"}}"#),
            "unknown field `sevrice`",
        ),
        (
            format!(
                r#"{{"service":"f","envProcess":"{hello}","annotations":{{"faasd.dev/ports":"http=0"}}}}"#
            ),
            "port 0",
        ),
        (
            format!(
                r#"{{"service":"f","envProcess":"{hello}","annotations":{{"faasd.dev/ports":"a=80,b=80"}}}}"#
            ),
            "listed twice",
        ),
        (
            format!(
                r#"{{"service":"f","envProcess":"{hello}","annotations":{{"faasd.dev/portz":"x"}}}}"#
            ),
            "unknown faasd setting",
        ),
        (
            r#"{"service":"f","envProcess":"/no/such/program"}"#.to_owned(),
            "no such executable",
        ),
        (
            r#"{"service":"f","image":"Library/Nginx:latest"}"#.to_owned(),
            "path components are lowercase",
        ),
        (
            format!(r#"{{"service":"f","envProcess":"{hello}","limits":{{"memory":"1Gi"}}}}"#),
            "does not enforce limits",
        ),
        ("{not json".to_owned(), "invalid request body"),
    ];
    for (body, expect) in cases {
        let (code, msg) = d.api("POST", "/system/functions", &body);
        assert_eq!(code, 400, "{body} -> {msg}");
        assert!(
            msg.contains(expect),
            "{body}: expected {expect:?} in {msg:?}"
        );
    }
    assert!(
        d.api("GET", "/system/functions", "").1.trim() == "[]",
        "nothing was created"
    );
    let e = d.cli(&["scale", "ghost", "1"]).unwrap_err();
    assert!(e.contains("not found"), "{e}");
}
