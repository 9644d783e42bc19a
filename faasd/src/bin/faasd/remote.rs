//! `--url`: a remote faasd's API over TCP, with basic auth. The password comes from
//! --password (or FAASD_PASSWORD), else from what `faas-cli login` saved for the same URL
//! in ~/.openfaas/config.yml, so an operator who logged in with faas-cli need not repeat it.

use std::path::PathBuf;

use faasd::client::Client;
use serde::Deserialize;

use crate::Result;

/// A client for `url`, with the credentials found for it.
pub fn client(url: &str, user: &str, password: Option<&str>) -> Result<Client> {
    let saved = match password {
        Some(_) => None,
        None => faas_cli_login(url),
    };
    let credentials = match (password, &saved) {
        (Some(p), _) => Some((user, p)),
        (None, Some((u, p))) => Some((u.as_str(), p.as_str())),
        (None, None) => None,
    };
    Ok(Client::remote(url, credentials)?)
}

#[derive(Deserialize)]
struct FaasCliConfig {
    #[serde(default)]
    auths: Vec<FaasCliAuth>,
}

#[derive(Deserialize)]
struct FaasCliAuth {
    gateway: String,
    auth: String,
    token: String,
}

/// The basic-auth user and password `faas-cli login` saved for `url`, if any.
fn faas_cli_login(url: &str) -> Option<(String, String)> {
    let path = std::env::var_os("OPENFAAS_CONFIG")
        .map(|d| PathBuf::from(d).join("config.yml"))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".openfaas/config.yml"))
        })?;
    let text = std::fs::read_to_string(path).ok()?;
    let config: FaasCliConfig = serde_norway::from_str(&text).ok()?;
    let url = url.trim_end_matches('/');
    let auth = config
        .auths
        .into_iter()
        .find(|a| a.auth == "basic" && a.gateway.trim_end_matches('/') == url)?;
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.token)
        .ok()?;
    let (user, password) = String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_owned(), p.to_owned()))?;
    Some((user, password))
}
