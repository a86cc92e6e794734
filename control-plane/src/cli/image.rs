//! `fleetctl image`: images in the server's content store. `import`
//! uploads an image (an OCI image layout directory, an OCI archive or a
//! `docker save` tar) to the server's import endpoint.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::io::{ReaderStream, SyncIoBridge};

use super::{CliError, Output, Remote, print_json};
use crate::content::{ContentCode, ImportSummary};

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Load an OCI image layout directory, an OCI archive or a `docker save`
    /// tar into the server's content store (served at /v2 to devices).
    Import {
        /// The layout directory or the tar file.
        path: PathBuf,
        /// Repository to store it under, e.g. `edge/model`.
        #[arg(long)]
        repository: String,
        /// Tag (default: the tags the layout or archive names).
        #[arg(long)]
        tag: Option<String>,
    },
}

pub async fn run(args: ImageArgs) -> Result<(), CliError> {
    let creds = args.remote.credentials()?;
    // The API client's HTTP client: it trusts the fleet CA.
    let api = args.remote.client()?;
    match args.command {
        ImageCommand::Import {
            path,
            repository,
            tag,
        } => {
            let summary = import_image_with(
                api.http(),
                &creds.server,
                Some(&creds.token),
                &path,
                &repository,
                tag.as_deref(),
            )
            .await
            .map_err(|source| CliError::Import {
                path: path.clone(),
                source,
            })?;
            show(&summary, args.remote.output)
        }
    }
}

fn show(summary: &ImportSummary, output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(summary),
        Output::Text => {
            for image in &summary.images {
                println!(
                    "imported {}:{} {}",
                    image.repository, image.tag, image.digest
                );
            }
            println!(
                "{} blobs added, {} already present",
                summary.blobs_added, summary.blobs_present
            );
            Ok(())
        }
    }
}

/// How much of a directory's tar is buffered between packing and sending.
const PIPE: usize = 256 * 1024;

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportCliError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is a directory but not an OCI image layout (no oci-layout file); \
         pass a layout directory, an OCI archive or a `docker save` tar"
    )]
    NotALayout { path: PathBuf },
    #[error("packing {path} into a tar failed: {source}")]
    Pack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the HTTP client failed: {0}")]
    Client(#[source] reqwest::Error),
    #[error("upload to {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server refused the import (HTTP {status}{}): {message}", code.as_ref().map(|c| format!(", {c}")).unwrap_or_default())]
    Refused {
        status: u16,
        /// `None` when the answer was not an error body.
        code: Option<ContentCode>,
        message: String,
    },
    #[error("unreadable answer from {url} (HTTP {status})")]
    BadAnswer {
        url: String,
        status: u16,
        #[source]
        source: serde_json::Error,
    },
}

/// Uploads the image at `path` to `server_url` (e.g. `https://fleet:8443`)
/// and returns what the server imported. A directory is sent as a tar,
/// packed while it is sent; a file is sent as it is.
pub async fn import_image(
    server_url: &str,
    token: Option<&str>,
    path: &Path,
    repository: &str,
    tag: Option<&str>,
) -> Result<ImportSummary, ImportCliError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(ImportCliError::Client)?;
    import_image_with(&client, server_url, token, path, repository, tag).await
}

/// [`import_image`] with the caller's HTTP client (its TLS roots, proxies).
pub async fn import_image_with(
    client: &reqwest::Client,
    server_url: &str,
    token: Option<&str>,
    path: &Path,
    repository: &str,
    tag: Option<&str>,
) -> Result<ImportSummary, ImportCliError> {
    let io_err = |source| ImportCliError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = tokio::fs::metadata(path).await.map_err(io_err)?;
    let (body, packer) = if meta.is_dir() {
        if !tokio::fs::try_exists(path.join("oci-layout"))
            .await
            .unwrap_or(false)
        {
            return Err(ImportCliError::NotALayout {
                path: path.to_owned(),
            });
        }
        let (reader, writer) = tokio::io::duplex(PIPE);
        let writer = SyncIoBridge::new(writer);
        let dir = path.to_owned();
        let packer = tokio::task::spawn_blocking(move || pack_dir(&dir, writer));
        (
            reqwest::Body::wrap_stream(ReaderStream::with_capacity(reader, PIPE)),
            Some(packer),
        )
    } else {
        let file = tokio::fs::File::open(path).await.map_err(io_err)?;
        (
            reqwest::Body::wrap_stream(ReaderStream::with_capacity(file, PIPE)),
            None,
        )
    };

    let url = format!("{}/api/v1/images/import", server_url.trim_end_matches('/'));
    let mut query = vec![("repository", repository)];
    if let Some(tag) = tag {
        query.push(("tag", tag));
    }
    let mut request = client
        .post(&url)
        .query(&query)
        .body(body)
        .header(reqwest::header::CONTENT_TYPE, "application/x-tar");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if meta.is_file() {
        request = request.header(reqwest::header::CONTENT_LENGTH, meta.len());
    }
    let sent = request.send().await;

    // A packing failure explains a truncated upload better than the server.
    if let Some(packer) = packer {
        let packed = packer.await.map_err(|e| ImportCliError::Pack {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        packed.map_err(|source| ImportCliError::Pack {
            path: path.to_owned(),
            source,
        })?;
    }
    let http_err = |source| ImportCliError::Http {
        url: url.clone(),
        source,
    };
    let response = sent.map_err(http_err)?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(http_err)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|source| ImportCliError::BadAnswer {
            url: url.clone(),
            status: status.as_u16(),
            source,
        });
    }
    #[derive(serde::Deserialize)]
    struct WireError {
        code: ContentCode,
        message: String,
    }
    let (code, message) = match serde_json::from_slice::<WireError>(&bytes) {
        Ok(e) => (Some(e.code), e.message),
        Err(_) => (None, String::from_utf8_lossy(&bytes).trim().to_owned()),
    };
    Err(ImportCliError::Refused {
        status: status.as_u16(),
        code,
        message,
    })
}

/// Writes `dir` as a tar (entries relative to it, symlinks kept as links).
fn pack_dir<W: std::io::Write>(dir: &Path, writer: W) -> std::io::Result<()> {
    let mut builder = tar::Builder::new(writer);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir)?;
    let mut writer = builder.into_inner()?;
    writer.flush()
}
