//! Image references and name patterns: what the policy's image lists and
//! exemptions match against, and what the rules read from `image:`.

/// An exact name, or a prefix when written with a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    Prefix(String),
}

impl NamePattern {
    pub fn parse(s: &str) -> Self {
        match s.strip_suffix('*') {
            Some(prefix) => NamePattern::Prefix(prefix.to_owned()),
            None => NamePattern::Exact(s.to_owned()),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(e) => e == name,
            NamePattern::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// The repository part of an image reference: tag and digest removed, and the
/// Docker Hub host (`docker.io/`, `index.docker.io/`) and `library/` dropped so
/// `docker.io/tailscale/tailscale:v1.2` and `tailscale/tailscale` compare equal.
pub fn image_repository<'a>(image: &'a str) -> &'a str {
    let without_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    // A ':' after the last '/' is a tag; one before it is a registry port.
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let repo = match without_digest[last_slash..].find(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    // Drop a Docker Hub host or `library/` only when what follows is a Hub path:
    // `docker.io/ghcr.io/x` names the Hub repository `ghcr.io/x`, not ghcr.io's `x`.
    let strip = |repo: &'a str, prefix: &str| {
        repo.strip_prefix(prefix).filter(|rest| {
            let first = rest.split('/').next().unwrap_or_default();
            !first.contains('.') && !first.contains(':') && first != "localhost"
        })
    };
    let repo = strip(repo, "docker.io/")
        .or_else(|| strip(repo, "index.docker.io/"))
        .unwrap_or(repo);
    strip(repo, "library/").unwrap_or(repo)
}

/// The tag of an image reference, if it has one (`None` for a bare or digest-only reference).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split_once('@').map_or(image, |(repo, _)| repo);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    without_digest[last_slash..].split_once(':').map(|(_, tag)| tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repository_normalises_hub_tags_and_digests() {
        assert_eq!(image_repository("tailscale/tailscale"), "tailscale/tailscale");
        assert_eq!(image_repository("tailscale/tailscale:v1.96.4"), "tailscale/tailscale");
        assert_eq!(
            image_repository("docker.io/tailscale/tailscale:latest"),
            "tailscale/tailscale"
        );
        assert_eq!(
            image_repository("ghcr.io/tailscale/tailscale@sha256:abc"),
            "ghcr.io/tailscale/tailscale"
        );
        assert_eq!(image_repository("reg:5000/tailscale:v1"), "reg:5000/tailscale");
        assert_eq!(image_tag("reg:5000/tailscale"), None);
        assert_eq!(image_tag("reg:5000/tailscale:v1"), Some("v1"));
        assert_eq!(image_tag("tailscale/tailscale@sha256:abc"), None);
    }
}
