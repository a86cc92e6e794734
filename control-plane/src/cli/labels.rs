//! A release's requirements from its image: `fleetctl` reads the image
//! config's `io.fleet.requires.*` labels over the server's OCI pull API
//! (`/v2/...`, every document checked against its digest) and fills what
//! the flags leave open (flags win). An image the server's content store
//! does not hold (given by digest from another registry) has its labels
//! unread, and fleetctl says so.

use std::collections::BTreeMap;

use fleet_protocol::message::RuntimeSettings;
use fleet_protocol::oci::{self, Manifest, Platform, media_type};
use fleet_protocol::requires::{LabelError, Requirements};
use fleet_protocol::{Digest, ImageRef};
use reqwest::StatusCode;

/// Manifests and configs are small; anything larger is refused.
const MAX_DOCUMENT: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot reach the server at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("GET {url}: over {MAX_DOCUMENT} bytes")]
    TooLarge { url: String },
    #[error("{url} does not match its digest {digest}")]
    DigestMismatch { url: String, digest: Digest },
    #[error("{url}")]
    Manifest {
        url: String,
        #[source]
        source: oci::ManifestError,
    },
    #[error("{url}: the index lists no image manifest")]
    EmptyIndex { url: String },
    #[error("{url}: an index inside an index")]
    NestedIndex { url: String },
    #[error("{url}: the image config is not JSON")]
    Config {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Label(#[from] LabelError),
}

/// `runtime` with the requirements the image's labels state where the
/// flags gave none. Reads nothing when every requirement is already set.
pub async fn with_image_requirements(
    client: &crate::client::Client,
    image: &ImageRef,
    digest: &Digest,
    mut runtime: RuntimeSettings,
) -> Result<RuntimeSettings, LabelsError> {
    let flags = &runtime.requires;
    if flags.l4t.is_some() && flags.cuda.is_some() && flags.soc.is_some() {
        return Ok(runtime);
    }
    let Some(labels) = image_labels(client, image.repository(), digest).await? else {
        eprintln!(
            "fleetctl: note: {image} is not in the server's content store; its \
             io.fleet.requires.* labels were not read (requirements come from the flags only)"
        );
        return Ok(runtime);
    };
    let from_labels = Requirements::from_labels(&labels)?;
    runtime.requires = std::mem::take(&mut runtime.requires).or(from_labels);
    Ok(runtime)
}

/// The config labels of `repository@digest` on the server's content
/// endpoint (`None`: the server does not hold the manifest). An index is
/// read for its linux/arm64 image (the Jetson's), else its first one.
pub async fn image_labels(
    client: &crate::client::Client,
    repository: &str,
    digest: &Digest,
) -> Result<Option<BTreeMap<String, String>>, LabelsError> {
    let base = format!("{}/v2/{repository}", client.base());
    let url = format!("{base}/manifests/{digest}");
    let Some(bytes) = get(client, &url, digest).await? else {
        return Ok(None);
    };
    let manifest = parse(&url, &bytes)?;
    let image = match manifest {
        Manifest::Image(m) => m,
        Manifest::Index(index) => {
            let chosen = index
                .select(&Platform::new("linux", "arm64", None))
                .or_else(|| index.manifests.first())
                .ok_or_else(|| LabelsError::EmptyIndex { url: url.clone() })?;
            let url = format!("{base}/manifests/{}", chosen.digest);
            let Some(bytes) = get(client, &url, &chosen.digest).await? else {
                return Ok(None);
            };
            match parse(&url, &bytes)? {
                Manifest::Image(m) => m,
                Manifest::Index(_) => return Err(LabelsError::NestedIndex { url }),
            }
        }
    };
    let url = format!("{base}/blobs/{}", image.config.digest);
    let Some(config) = get(client, &url, &image.config.digest).await? else {
        return Ok(None);
    };
    oci::config_labels(&config)
        .map(Some)
        .map_err(|source| LabelsError::Config { url, source })
}

fn parse(url: &str, bytes: &[u8]) -> Result<Manifest, LabelsError> {
    Manifest::parse(bytes, None).map_err(|source| LabelsError::Manifest {
        url: url.to_owned(),
        source,
    })
}

/// The document at `url`, checked against `digest` (`None`: 404).
async fn get(
    client: &crate::client::Client,
    url: &str,
    digest: &Digest,
) -> Result<Option<Vec<u8>>, LabelsError> {
    let http_err = |source: reqwest::Error| {
        let url = url.to_owned();
        if source.is_connect() || source.is_timeout() {
            LabelsError::Unreachable { url, source }
        } else {
            LabelsError::Http { url, source }
        }
    };
    let mut request = client
        .http()
        .get(url)
        .header(reqwest::header::ACCEPT, media_type::MANIFEST_ACCEPT);
    if let Some(token) = client.token() {
        request = request.bearer_auth(token);
    }
    let mut resp = request.send().await.map_err(http_err)?;
    match resp.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(None),
        status => {
            return Err(LabelsError::Status {
                url: url.to_owned(),
                status,
            });
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(LabelsError::TooLarge {
                url: url.to_owned(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    if &Digest::of(&body) != digest {
        return Err(LabelsError::DigestMismatch {
            url: url.to_owned(),
            digest: digest.clone(),
        });
    }
    Ok(Some(body))
}
