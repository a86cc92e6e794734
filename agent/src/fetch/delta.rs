//! Asking a registry for a layer delta (protocol/DELTA.md, "Asking the
//! server for a delta"). Only Fleet's content endpoint serves them; any
//! other registry answers 404 (or an error) and the layer is pulled whole.
//! The answer's headers are hints: the delta is downloaded against the
//! digest announced here (so a resumed download checks the same bytes) and
//! the device checks what it rebuilds against its own diff_id.

use fleet_protocol::{Digest, ImageRef};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use fleet_protocol::delta::TARGET_HEADER;

use super::client::{Client, header_str};
use super::error::FetchError;

/// A delta the registry has ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaOffer {
    pub url: String,
    /// SHA-256 of the delta's bytes (`Docker-Content-Digest`).
    pub digest: Digest,
    pub size: u64,
    /// The diff_id it claims to rebuild.
    pub target: Digest,
}

/// What the registry said about a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeltaProbe {
    Ready(DeltaOffer),
    /// Being computed (202): this pull takes the whole layer.
    Pending,
    /// None to be had (404, another registry, or an unusable answer).
    Unavailable {
        reason: String,
    },
}

impl Client {
    /// `<repo>/deltas/<layer>?bases=<diff_id>,...`.
    pub fn delta_url(&self, image: &ImageRef, layer: &Digest, bases: &[Digest]) -> String {
        let bases: Vec<&str> = bases.iter().map(Digest::as_str).collect();
        format!(
            "{}/deltas/{layer}?bases={}",
            self.repo_url(image),
            bases.join(",")
        )
    }

    /// Asks (HEAD) whether a delta of `layer` against `bases` is ready.
    /// Never fails: whatever goes wrong means "pull the layer".
    pub async fn probe_delta(
        &self,
        image: &ImageRef,
        layer: &Digest,
        bases: &[Digest],
    ) -> DeltaProbe {
        let url = self.delta_url(image, layer, bases);
        match self
            .send(reqwest::Method::HEAD, image, &url, HeaderMap::new())
            .await
        {
            Ok(resp) => match resp.status() {
                StatusCode::OK => offer(url, resp.headers()),
                StatusCode::ACCEPTED => DeltaProbe::Pending,
                s => DeltaProbe::Unavailable {
                    reason: format!("HTTP {}", s.as_u16()),
                },
            },
            Err(FetchError::NotFound { .. }) => DeltaProbe::Unavailable {
                reason: "HTTP 404".into(),
            },
            Err(e) => DeltaProbe::Unavailable {
                reason: fleet_protocol::report(&e),
            },
        }
    }
}

fn offer(url: String, headers: &HeaderMap) -> DeltaProbe {
    let digest = header_str(headers, "docker-content-digest").and_then(|h| Digest::new(h).ok());
    let target = header_str(headers, TARGET_HEADER).and_then(|h| Digest::new(h).ok());
    let size = header_str(headers, "content-length").and_then(|h| h.parse::<u64>().ok());
    match (digest, target, size) {
        (Some(digest), Some(target), Some(size)) => DeltaProbe::Ready(DeltaOffer {
            url,
            digest,
            size,
            target,
        }),
        _ => DeltaProbe::Unavailable {
            reason: "the answer lacks the digest, target or length of the delta".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn an_offer_needs_digest_target_and_length() {
        let d = Digest::of(b"delta");
        let t = Digest::of(b"tar");
        let mut h = HeaderMap::new();
        h.insert(
            "docker-content-digest",
            HeaderValue::from_str(d.as_str()).unwrap(),
        );
        h.insert(TARGET_HEADER, HeaderValue::from_str(t.as_str()).unwrap());
        assert!(matches!(
            offer("u".into(), &h),
            DeltaProbe::Unavailable { .. }
        ));
        h.insert("content-length", HeaderValue::from_static("5"));
        assert_eq!(
            offer("u".into(), &h),
            DeltaProbe::Ready(DeltaOffer {
                url: "u".into(),
                digest: d,
                size: 5,
                target: t,
            })
        );
    }
}
