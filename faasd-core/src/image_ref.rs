//! Image references as users write them, validated and normalised the way Docker does, so
//! a bad one is refused at the API edge before anything reaches a registry.

/// A validated, normalised image reference: `[registry/]path[:tag][@digest]`, with
/// `docker.io/library/` and `:latest` filled in as Docker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    /// Parses and normalises `s`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 255 {
            return Err("an image reference has 1 to 255 characters".into());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            let ok = d.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty()
                    && alg
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && hex.len() >= 32
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if !ok {
                return Err(format!("{d:?} is not a digest like sha256:<64 hex digits>"));
            }
        }
        // A tag follows the last ':' after the last '/', which is not a registry's port.
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t)),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !ok {
                return Err(format!(
                    "tag {t:?}: use up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -"
                ));
            }
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let domain =
            if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
                let d = parts.remove(0);
                let ok = d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
                if !ok {
                    return Err(format!(
                        "registry {d:?} is not a host name with an optional port"
                    ));
                }
                d
            } else {
                "docker.io"
            };
        for p in &parts {
            if !path_component_ok(p) {
                return Err(format!(
                    "{p:?}: path components are lowercase letters and digits, separated by \
                     '.', '_', '__' or '-'"
                ));
            }
        }
        let mut out = String::from(domain);
        if domain == "docker.io" && parts.len() == 1 {
            out.push_str("/library");
        }
        for p in &parts {
            out.push('/');
            out.push_str(p);
        }
        match (tag, digest) {
            (Some(t), _) => {
                out.push(':');
                out.push_str(t);
            }
            (None, None) => out.push_str(":latest"),
            (None, Some(_)) => {}
        }
        if let Some(d) = digest {
            out.push('@');
            out.push_str(d);
        }
        Ok(Self(out))
    }

    /// The normalised reference, as containerd names the image.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn path_component_ok(p: &str) -> bool {
    let b = p.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            i += 1;
            continue;
        }
        // Separators: '.', '_', '__', or any run of '-'.
        let sep_len = match c {
            b'.' => 1,
            b'_' if b.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => b[i..].iter().take_while(|&&x| x == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        if !b
            .get(i)
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_like_docker() {
        let n = |s: &str| ImageRef::parse(s).map(|r| r.0);
        assert_eq!(n("hello").unwrap(), "docker.io/library/hello:latest");
        assert_eq!(
            n("alexellis/figlet:0.1").unwrap(),
            "docker.io/alexellis/figlet:0.1"
        );
        assert_eq!(
            n("localhost/hello:latest").unwrap(),
            "localhost/hello:latest"
        );
        assert_eq!(
            n("ghcr.io/openfaas/figlet:latest").unwrap(),
            "ghcr.io/openfaas/figlet:latest"
        );
        assert_eq!(n("registry:5000/a/b").unwrap(), "registry:5000/a/b:latest");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("x/y@{digest}")).unwrap(),
            format!("docker.io/x/y@{digest}")
        );
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for bad in [
            "",
            "Hello",
            "a//b",
            "a/b:",
            "a:b/c:-x",
            "-a",
            "a@sha256:zz",
            "a b",
            "a/b:tag!",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
