//! Image references as `docker pull` accepts them, normalised the way Docker
//! does (the distribution reference grammar plus Docker Hub defaults).
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path
//! domain     := host [ ":" port ]          host: domain-name | "[" ipv6 "]"
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" [a-f0-9]{64}
//! ```
//!
//! The first `/`-separated component is a domain when it contains `.` or `:`,
//! is `localhost`, or contains an uppercase letter; otherwise the reference is
//! on Docker Hub (`docker.io`), where a one-component path gets `library/`.
//! A reference without tag and digest gets the tag `latest`. Only `sha256`
//! digests are accepted (the only algorithm [`Digest`] knows).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::Digest;

/// The display domain of Docker Hub.
pub const DOCKER_HUB_DOMAIN: &str = "docker.io";
/// The host serving Docker Hub's distribution API.
pub const DOCKER_HUB_REGISTRY: &str = "registry-1.docker.io";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest accepted name (domain + `/` + path), as in distribution.
pub const NAME_MAX_LEN: usize = 255;
/// Longest accepted tag.
pub const TAG_MAX_LEN: usize = 128;

/// Why an image reference was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("image reference must not be empty")]
    Empty,
    #[error("image reference {value:?}: name is longer than {NAME_MAX_LEN} characters")]
    NameTooLong { value: String },
    #[error("image reference {value:?}: repository must be lowercase")]
    Uppercase { value: String },
    #[error(
        "image reference {value:?}: repository component {component:?} is invalid \
         (lowercase letters and digits, separated by '.', '_', '__' or '-')"
    )]
    BadComponent { value: String, component: String },
    #[error("image reference {value:?}: registry {domain:?} is not a valid host[:port]")]
    BadDomain { value: String, domain: String },
    #[error(
        "image reference {value:?}: tag {tag:?} is invalid \
         (letters, digits, '_', '.', '-', not starting with '.' or '-', at most {TAG_MAX_LEN})"
    )]
    BadTag { value: String, tag: String },
    #[error("image reference {value:?}: bad digest")]
    BadDigest {
        value: String,
        #[source]
        source: crate::id::IdError,
    },
}

/// A parsed, normalised image reference, e.g. `docker.io/library/model:v2`
/// or `registry.local:5000/ns/model@sha256:…`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses and normalises a reference as `docker pull` would.
    pub fn parse(value: &str) -> Result<Self, ImageRefError> {
        if value.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let err_value = || value.to_owned();

        let (rest, digest) = match value.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::new(d).map_err(|source| ImageRefError::BadDigest {
                    value: err_value(),
                    source,
                })?;
                (rest, Some(digest))
            }
            None => (value, None),
        };

        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = rest.rfind('/');
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if last_slash.is_none_or(|s| colon > s) => {
                (&rest[..colon], Some(&rest[colon + 1..]))
            }
            _ => (rest, None),
        };
        if let Some(tag) = tag
            && !valid_tag(tag)
        {
            return Err(ImageRefError::BadTag {
                value: err_value(),
                tag: tag.to_owned(),
            });
        }

        let (domain, path) = match name.split_once('/') {
            Some((first, remainder)) if is_domain_like(first) => (first, remainder),
            _ => (DOCKER_HUB_DOMAIN, name),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB_DOMAIN
        } else {
            domain
        };
        if !valid_domain(domain) {
            return Err(ImageRefError::BadDomain {
                value: err_value(),
                domain: domain.to_owned(),
            });
        }
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ImageRefError::Uppercase { value: err_value() });
        }
        if let Some(component) = path.split('/').find(|c| !valid_path_component(c)) {
            return Err(ImageRefError::BadComponent {
                value: err_value(),
                component: component.to_owned(),
            });
        }
        let path = if domain == DOCKER_HUB_DOMAIN && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if domain.len() + 1 + path.len() > NAME_MAX_LEN {
            return Err(ImageRefError::NameTooLong { value: err_value() });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            domain: domain.to_owned(),
            path,
            tag,
            digest,
        })
    }

    /// The host[:port] to talk the distribution API to
    /// (`registry-1.docker.io` for Docker Hub).
    pub fn registry(&self) -> &str {
        if self.is_docker_hub() {
            DOCKER_HUB_REGISTRY
        } else {
            &self.domain
        }
    }

    /// The domain as people write it (`docker.io` for Docker Hub).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn is_docker_hub(&self) -> bool {
        self.domain == DOCKER_HUB_DOMAIN
    }

    /// The repository path within the registry, e.g. `library/model`.
    pub fn repository(&self) -> &str {
        &self.path
    }

    /// `domain/repository` without tag or digest, e.g. `docker.io/library/model`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The tag; `None` only when the reference was given by digest alone.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What to ask the registry's manifest endpoint for: the digest when there
    /// is one, else the tag.
    pub fn reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.as_str(),
            (None, Some(t)) => t,
            // Unreachable by construction: a reference without digest has a tag.
            (None, None) => DEFAULT_TAG,
        }
    }

    /// The same image pinned to `digest` (the tag is kept for readability).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, ImageRefError> {
        Self::parse(s)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn is_domain_like(first: &str) -> bool {
    first.contains(['.', ':'])
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    tag.len() <= TAG_MAX_LEN
        && bytes.next().is_some_and(word)
        && bytes.all(|b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn valid_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `host [":" port]`, host a domain name (or IPv4) or a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(v6) = domain.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return false;
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = domain.starts_with('[') || host.split('.').all(valid_domain_component);
    port_ok && host_ok
}

/// `[a-zA-Z0-9] | [a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`
fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s:?} rejected: {e}"))
    }

    #[test]
    fn short_names_are_official_docker_hub_images() {
        let r = parse("model:v2");
        assert_eq!(r.registry(), "registry-1.docker.io");
        assert_eq!(r.domain(), "docker.io");
        assert_eq!(r.repository(), "library/model");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.reference(), "v2");
        assert_eq!(r.to_string(), "docker.io/library/model:v2");
    }

    #[test]
    fn a_missing_tag_means_latest() {
        let r = parse("ns/model");
        assert_eq!(r.registry(), "registry-1.docker.io");
        assert_eq!(r.repository(), "ns/model");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/ns/model:latest");
        assert_eq!(parse("docker.io/library/model"), parse("model"));
        assert_eq!(parse("index.docker.io/model"), parse("model"));
    }

    #[test]
    fn a_first_component_with_dot_colon_or_localhost_is_a_registry() {
        let r = parse("registry.local:5000/ns/model:v2");
        assert_eq!(r.registry(), "registry.local:5000");
        assert_eq!(r.repository(), "ns/model");
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.to_string(), "registry.local:5000/ns/model:v2");

        let r = parse("localhost/x");
        assert_eq!(r.registry(), "localhost");
        assert_eq!(r.repository(), "x");
        assert_eq!(r.tag(), Some("latest"));

        let r = parse("127.0.0.1:5000/edge/busybox:1");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "edge/busybox");

        let r = parse("[::1]:5000/x");
        assert_eq!(r.registry(), "[::1]:5000");

        let r = parse("ghcr.io/org/team/app");
        assert_eq!(r.registry(), "ghcr.io");
        assert_eq!(r.repository(), "org/team/app");

        // Not a registry: no dot, no colon, not localhost.
        let r = parse("myregistry/app");
        assert_eq!(r.registry(), "registry-1.docker.io");
        assert_eq!(r.repository(), "myregistry/app");
    }

    #[test]
    fn digests_pin_the_reference_with_or_without_a_tag() {
        let r = parse(&format!("registry.local/ns/model@sha256:{HEX}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().map(Digest::hex), Some(HEX));
        assert_eq!(r.reference(), format!("sha256:{HEX}"));
        assert_eq!(
            r.to_string(),
            format!("registry.local/ns/model@sha256:{HEX}")
        );

        let r = parse(&format!("model:v2@sha256:{HEX}"));
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.reference(), format!("sha256:{HEX}"));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/model:v2@sha256:{HEX}")
        );

        let pinned = parse("model:v2").with_digest(Digest::new(format!("sha256:{HEX}")).unwrap());
        assert_eq!(pinned, r);
    }

    #[test]
    fn invalid_references_are_rejected_with_a_reason() {
        fn kind(e: &ImageRefError) -> &'static str {
            match e {
                ImageRefError::Empty => "empty",
                ImageRefError::NameTooLong { .. } => "name_too_long",
                ImageRefError::Uppercase { .. } => "uppercase",
                ImageRefError::BadComponent { .. } => "component",
                ImageRefError::BadDomain { .. } => "domain",
                ImageRefError::BadTag { .. } => "tag",
                ImageRefError::BadDigest { .. } => "digest",
            }
        }
        let cases = [
            ("", "empty"),
            ("Model", "uppercase"),
            ("ns/Model", "uppercase"),
            ("model:", "tag"),
            ("model:.v2", "tag"),
            ("model:-v2", "tag"),
            ("model:v2+x", "tag"),
            ("ns//model", "component"),
            ("/model", "component"),
            ("model/", "component"),
            ("ns/-model", "component"),
            ("ns/model.", "component"),
            ("ns/mo___del", "component"),
            ("ns/mo..del", "component"),
            ("model v2", "component"),
            ("[0]/x", "component"),
            ("registry.local:/x", "domain"),
            ("registry.local:50a0/x", "domain"),
            ("-reg.local/x", "domain"),
            ("reg..local/x", "domain"),
            ("[::1/x", "domain"),
            ("model@sha256:abc", "digest"),
            ("model@", "digest"),
            ("model@sha512:00", "digest"),
        ];
        for (input, expected) in cases {
            match ImageRef::parse(input) {
                Ok(r) => panic!("{input:?} accepted as {r}"),
                Err(e) => assert_eq!(kind(&e), expected, "{input:?}: {e}"),
            }
        }
        let long_tag = format!("model:{}", "a".repeat(129));
        assert!(matches!(
            ImageRef::parse(&long_tag),
            Err(ImageRefError::BadTag { .. })
        ));
        assert!(parse(&format!("model:{}", "a".repeat(128))).tag().is_some());
        let long_name = format!("reg.local/{}", "a".repeat(250));
        assert!(matches!(
            ImageRef::parse(&long_name),
            Err(ImageRefError::NameTooLong { .. })
        ));
    }

    #[test]
    fn separators_follow_the_distribution_grammar() {
        for ok in ["a.b/c_d", "a__b", "a--b", "a---b/c", "0/1", "a-b.c_d__e"] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok:?} rejected");
        }
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        let r = parse("model:v2");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, "\"docker.io/library/model:v2\"");
        assert_eq!(serde_json::from_str::<ImageRef>(&json).unwrap(), r);
        assert_eq!(serde_json::from_str::<ImageRef>("\"model:v2\"").unwrap(), r);
        assert!(serde_json::from_str::<ImageRef>("\"Model\"").is_err());
        assert_eq!("model:v2".parse::<ImageRef>().unwrap(), r);
    }
}
