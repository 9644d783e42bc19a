//! OpenFaaS stack files (`stack.yml`): the functions of a project in the shape faas-cli
//! reads, turned into deployments. Build settings (`lang`, `handler`, `build_args`, …) are
//! faas-cli's business and are ignored; a misspelt key is an error. `${VAR}` and
//! `${VAR:-default}` are replaced from the environment first, as faas-cli does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use faasd_core::spec::Deployment;
use serde::Deserialize;

/// Errors reading a stack file.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The file cannot be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// It is not a stack file.
    #[error("{0}: {1}")]
    Parse(PathBuf, serde_norway::Error),
    /// `${VAR}` names a variable that is not set and has no default.
    #[error("{0}: ${{{1}}} is not set (give a default with ${{{1}:-value}})")]
    Unset(PathBuf, String),
    /// `--filter` names a function the file lacks.
    #[error("{0}: no function {1:?} (it has {2})")]
    NoSuchFunction(PathBuf, String, String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFile {
    #[serde(default, rename = "version")]
    _version: Option<serde_norway::Value>,
    /// `provider.gateway` is faas-cli's; faasd's CLI takes --url.
    #[serde(default, rename = "provider")]
    _provider: Option<serde_norway::Value>,
    /// Template sources; faas-cli's build business.
    #[serde(default, rename = "configuration")]
    _configuration: Option<serde_norway::Value>,
    functions: BTreeMap<String, StackFunction>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StackFunction {
    image: Option<String>,
    namespace: Option<String>,
    fprocess: Option<String>,
    #[serde(default)]
    environment: BTreeMap<String, Scalar>,
    #[serde(default)]
    environment_file: Vec<PathBuf>,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    annotations: BTreeMap<String, Scalar>,
    limits: Option<BTreeMap<String, Scalar>>,
    requests: Option<BTreeMap<String, Scalar>>,
    readonly_root_filesystem: Option<bool>,
    #[serde(default)]
    constraints: Vec<String>,
    // Build settings, faas-cli's business.
    #[serde(default, rename = "lang")]
    _lang: Option<serde_norway::Value>,
    #[serde(default, rename = "handler")]
    _handler: Option<serde_norway::Value>,
    #[serde(default, rename = "build_args")]
    _build_args: Option<serde_norway::Value>,
    #[serde(default, rename = "build_options")]
    _build_options: Option<serde_norway::Value>,
    #[serde(default, rename = "build_secrets")]
    _build_secrets: Option<serde_norway::Value>,
    #[serde(default, rename = "skip_build")]
    _skip_build: Option<serde_norway::Value>,
    #[serde(default, rename = "platforms")]
    _platforms: Option<serde_norway::Value>,
}

/// A YAML scalar that is a string to OpenFaaS (`replicas: 2`, `zero: true` are written
/// unquoted in stack files).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(serde_norway::Number),
    Bool(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Self::Text(s) => s,
            Self::Number(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
        }
    }
}

fn strings(m: BTreeMap<String, Scalar>) -> BTreeMap<String, String> {
    m.into_iter().map(|(k, v)| (k, v.into_string())).collect()
}

/// Reads `path` and returns its functions as deployments (only those in `filter`, when it
/// is not empty), in name order.
pub fn load(path: &Path, filter: &[String]) -> Result<Vec<Deployment>, StackError> {
    let text = read_substituted(path)?;
    let stack: StackFile =
        serde_norway::from_str(&text).map_err(|e| StackError::Parse(path.into(), e))?;
    for f in filter {
        if !stack.functions.contains_key(f) {
            let names: Vec<&str> = stack.functions.keys().map(String::as_str).collect();
            return Err(StackError::NoSuchFunction(
                path.into(),
                f.clone(),
                names.join(", "),
            ));
        }
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (name, f) in stack.functions {
        if !filter.is_empty() && !filter.contains(&name) {
            continue;
        }
        let mut env = BTreeMap::new();
        for file in &f.environment_file {
            env.extend(environment_file(&dir.join(file))?);
        }
        env.extend(strings(f.environment));
        let resources = |m: Option<BTreeMap<String, Scalar>>| {
            m.map(|m| serde_json::to_value(strings(m)).expect("strings serialize"))
        };
        out.push(Deployment {
            service: name,
            image: f.image,
            namespace: f.namespace,
            env_process: f.fprocess,
            env_vars: env.into_iter().collect(),
            labels: strings(f.labels).into_iter().collect(),
            annotations: strings(f.annotations).into_iter().collect(),
            secrets: f.secrets,
            constraints: f.constraints,
            limits: resources(f.limits),
            requests: resources(f.requests),
            read_only_root_filesystem: f.readonly_root_filesystem,
            ..Default::default()
        });
    }
    Ok(out)
}

/// An `environment_file`: a YAML file with an `environment:` map.
fn environment_file(path: &Path) -> Result<BTreeMap<String, String>, StackError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct EnvironmentFile {
        environment: BTreeMap<String, Scalar>,
    }
    let text = read_substituted(path)?;
    let f: EnvironmentFile =
        serde_norway::from_str(&text).map_err(|e| StackError::Parse(path.into(), e))?;
    Ok(strings(f.environment))
}

fn read_substituted(path: &Path) -> Result<String, StackError> {
    let text = std::fs::read_to_string(path).map_err(|e| StackError::Read(path.into(), e))?;
    substitute(&text, |v| std::env::var(v).ok()).map_err(|v| StackError::Unset(path.into(), v))
}

/// Replaces `${VAR}` and `${VAR:-default}`; returns the name of an unset variable without
/// a default. A `$` not followed by `{` stays as it is.
fn substitute(text: &str, var: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find('}') else {
            break;
        };
        let inner = &rest[i + 2..i + end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match var(name).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => out.push_str(default.ok_or_else(|| name.to_owned())?),
        }
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_uses_the_environment_then_the_default() {
        let var = |v: &str| (v == "TAG").then(|| "1.2".to_owned());
        assert_eq!(
            substitute("image: x:${TAG} ${MISSING:-dflt} $HOME", var).unwrap(),
            "image: x:1.2 dflt $HOME"
        );
        assert_eq!(substitute("${MISSING}", var).unwrap_err(), "MISSING");
    }

    #[test]
    fn a_stack_file_becomes_deployments() {
        let dir = std::env::temp_dir().join(format!("faasd-stack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("env.yml"),
            "environment:\n  FROM_FILE: a\n  BOTH: file\n",
        )
        .unwrap();
        let stack = dir.join("stack.yml");
        std::fs::write(
            &stack,
            "version: 1.0\nprovider:\n  name: openfaas\n  gateway: http://127.0.0.1:8080\n\
             functions:\n  figlet:\n    lang: dockerfile\n    handler: ./figlet\n    \
             image: ghcr.io/openfaas/figlet:latest\n    environment:\n      BOTH: inline\n      \
             write_debug: true\n    environment_file:\n      - env.yml\n    labels:\n      \
             com.openfaas.scale.min: 1\n    limits:\n      memory: 128Mi\n    \
             readonly_root_filesystem: true\n  date:\n    fprocess: /bin/date\n",
        )
        .unwrap();
        let all = load(&stack, &[]).unwrap();
        assert_eq!(
            all.iter().map(|d| d.service.as_str()).collect::<Vec<_>>(),
            ["date", "figlet"]
        );
        let figlet = &all[1];
        assert_eq!(
            figlet.image.as_deref(),
            Some("ghcr.io/openfaas/figlet:latest")
        );
        assert_eq!(figlet.env_vars["FROM_FILE"], "a");
        assert_eq!(
            figlet.env_vars["BOTH"], "inline",
            "inline wins over the file"
        );
        assert_eq!(figlet.env_vars["write_debug"], "true");
        assert_eq!(figlet.labels["com.openfaas.scale.min"], "1");
        assert_eq!(figlet.limits, Some(serde_json::json!({"memory": "128Mi"})));
        assert_eq!(figlet.read_only_root_filesystem, Some(true));
        assert_eq!(all[0].env_process.as_deref(), Some("/bin/date"));
        assert_eq!(all[0].image, None);

        let only = load(&stack, &["date".into()]).unwrap();
        assert_eq!(only.len(), 1);
        let e = load(&stack, &["nope".into()]).unwrap_err().to_string();
        assert!(
            e.contains("no function \"nope\"") && e.contains("date, figlet"),
            "{e}"
        );

        std::fs::write(&stack, "functions:\n  f:\n    imgae: x\n").unwrap();
        let e = load(&stack, &[]).unwrap_err().to_string();
        assert!(e.contains("imgae"), "a misspelt key is named: {e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
