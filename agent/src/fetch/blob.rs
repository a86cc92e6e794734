//! Blob downloads: streamed to a partial file, hashed on the way, resumed
//! with HTTP Range from what a previous attempt (or process) left behind.
//!
//! Next to the partial file a small journal records digest, size, URL and the
//! server's validator (ETag). A restart that finds both resumes; a server
//! that answers 200 to a range request makes the download start over.

use std::io::Read;
use std::path::{Path, PathBuf};

use fleet_protocol::Digest;
use reqwest::StatusCode;
use reqwest::header::{ETAG, HeaderMap, HeaderValue, IF_RANGE, RANGE};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;

use super::client::{Client, header_str};
use super::error::FetchError;
use super::sink::BlobSink;
use fleet_protocol::ImageRef;
use fleet_protocol::oci::Descriptor;

/// Where a download in progress lives: the data and its journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub data: PathBuf,
    pub journal: PathBuf,
}

impl Partial {
    /// `<dir>/<hex>.partial` and `<dir>/<hex>.journal`.
    pub fn in_dir(dir: &Path, digest: &Digest) -> Self {
        Self {
            data: dir.join(format!("{}.partial", digest.hex())),
            journal: dir.join(format!("{}.journal", digest.hex())),
        }
    }

    /// Removes both files (missing ones are fine).
    pub async fn remove(&self) {
        for p in [
            &self.data,
            &self.journal,
            &self.journal.with_extension("journal.new"),
        ] {
            let _ = tokio::fs::remove_file(p).await;
        }
    }

    /// The blob size the journal records, when the journal is readable and
    /// is for `digest` (what a resume needs); `None` otherwise.
    pub fn journaled_size(&self, digest: &Digest) -> Option<u64> {
        read_journal(&self.journal)
            .filter(|j| j.digest == *digest)
            .map(|j| j.size)
    }

    /// Bytes a resumed download could keep (0 without a journal).
    pub fn resumable_len(&self, digest: &Digest, size: u64) -> u64 {
        match read_journal(&self.journal) {
            Some(j) if j.digest == *digest && j.size == size => std::fs::metadata(&self.data)
                .map(|m| m.len())
                .ok()
                .filter(|l| *l <= size)
                .unwrap_or(0),
            _ => 0,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    version: u32,
    digest: Digest,
    size: u64,
    url: String,
    #[serde(default)]
    etag: Option<String>,
}

fn read_journal(path: &Path) -> Option<Journal> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<Journal>(&bytes)
        .ok()
        .filter(|j| j.version == 1)
}

/// What one blob download cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobDownload {
    /// Body bytes received, discarded ones included.
    pub fetched: u64,
    /// The offset the first request resumed from (0 = fresh start).
    pub resumed_from: u64,
    /// Times the server ignored a range request and the download restarted.
    pub restarts: u32,
}

impl Client {
    /// Downloads the blob `desc` of `image`'s repository into `dest.data`,
    /// resuming from what is there. On success `dest.data` holds exactly the
    /// verified blob (size and digest checked) and the journal is gone.
    /// `progress` is called with the bytes present so far.
    pub async fn download_blob(
        &self,
        image: &ImageRef,
        desc: &Descriptor,
        dest: &Partial,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<BlobDownload, FetchError> {
        let url = self.blob_url(image, &desc.digest);
        self.download_from(image, &url, desc, dest, progress).await
    }

    /// [`Client::download_blob`] from another URL of `image`'s registry
    /// serving the content `desc` names (a delta of the content endpoint):
    /// the same checks, journal and resume.
    pub async fn download_from(
        &self,
        image: &ImageRef,
        url: &str,
        desc: &Descriptor,
        dest: &Partial,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<BlobDownload, FetchError> {
        let interrupted = || FetchError::Interrupted {
            digest: desc.digest.clone(),
        };
        let _slot = tokio::select! {
            biased;
            _ = self.interrupted() => return Err(interrupted()),
            slot = self.inner.blob_slots.acquire() => slot.ok(),
        };
        let policy = self.inner.cfg.retry.clone();
        let mut stats = BlobDownload::default();
        let mut first = true;
        let mut best = 0u64;
        let mut attempt = 0u32;
        loop {
            let mut offset = 0;
            let result = self
                .try_download(
                    image,
                    url,
                    desc,
                    dest,
                    progress,
                    &mut stats,
                    &mut offset,
                    first,
                )
                .await;
            first = false;
            match result {
                Ok(()) => return Ok(stats),
                Err(e) => {
                    if e.spoils_partial() {
                        dest.remove().await;
                    }
                    if offset > best {
                        // Progress was made: the connection is flaky, not dead.
                        best = offset;
                        attempt = 0;
                    }
                    if !e.is_retryable() || attempt + 1 >= policy.max_attempts {
                        return Err(e);
                    }
                    let pause = policy.delay(attempt);
                    tracing::warn!(digest = %desc.digest, error = %e, offset, ?pause, "blob download interrupted; resuming");
                    tokio::select! {
                        biased;
                        _ = self.interrupted() => return Err(interrupted()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    attempt += 1;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_download(
        &self,
        image: &ImageRef,
        url: &str,
        desc: &Descriptor,
        dest: &Partial,
        progress: &(dyn Fn(u64) + Send + Sync),
        stats: &mut BlobDownload,
        offset: &mut u64,
        first: bool,
    ) -> Result<(), FetchError> {
        let size = desc.size;
        let journal =
            read_journal(&dest.journal).filter(|j| j.digest == desc.digest && j.size == size);
        let mut hasher = resume_point(dest, &desc.digest, size, journal.is_some(), offset).await?;
        if first {
            stats.resumed_from = *offset;
        }
        if *offset < size {
            let mut resp = self
                .open_body(image, url, desc, journal.as_ref(), offset, stats)
                .await?;
            if *offset == 0 {
                hasher = Sha256::new();
            }
            let etag = header_str(resp.headers(), ETAG.as_str());
            write_journal(
                &dest.journal,
                &Journal {
                    version: 1,
                    digest: desc.digest.clone(),
                    size,
                    url: url.to_owned(),
                    etag,
                },
            )
            .await?;
            hasher = self
                .stream_body(&mut resp, url, desc, dest, hasher, progress, stats, offset)
                .await?;
        } else if size == 0 {
            tokio::fs::File::create(&dest.data)
                .await
                .map_err(io_err("create", &dest.data))?;
        }

        let actual = Digest::from_sha256(hasher.finalize().into());
        if actual != desc.digest {
            return Err(FetchError::DigestMismatch {
                url: url.into(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        let _ = tokio::fs::remove_file(&dest.journal).await;
        progress(size);
        Ok(())
    }

    /// Sends the (ranged, when resuming) GET and checks the answer fits the
    /// download: a 206 with the right Content-Range, or a 200 that restarts
    /// it at offset 0; the body length must be what is missing.
    async fn open_body(
        &self,
        image: &ImageRef,
        url: &str,
        desc: &Descriptor,
        journal: Option<&Journal>,
        offset: &mut u64,
        stats: &mut BlobDownload,
    ) -> Result<reqwest::Response, FetchError> {
        let (size, digest) = (desc.size, &desc.digest);
        let mut headers = HeaderMap::new();
        if *offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-"))
                .map_err(|_| FetchError::Url { url: url.into() })?;
            headers.insert(RANGE, range);
            if let Some(tag) = journal.and_then(|j| j.etag.as_deref())
                && let Ok(v) = HeaderValue::from_str(tag)
            {
                headers.insert(IF_RANGE, v);
            }
        }
        let resp = self.get(image, url, headers).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if *offset > 0 => {
                let value = header_str(resp.headers(), "content-range").unwrap_or_default();
                if !content_range_ok(&value, *offset, size) {
                    return Err(FetchError::BadRange {
                        url: url.into(),
                        value,
                    });
                }
            }
            StatusCode::OK => {
                if *offset > 0 {
                    tracing::info!(%digest, offset = *offset, "server ignored the range request; starting over");
                    stats.restarts += 1;
                    *offset = 0;
                }
            }
            s => {
                return Err(FetchError::Status {
                    url: url.into(),
                    status: s.as_u16(),
                });
            }
        }
        let left = size - *offset;
        if let Some(declared) = resp.content_length()
            && declared != left
        {
            return Err(FetchError::LengthMismatch {
                url: url.into(),
                digest: digest.clone(),
                expected: left,
                declared,
            });
        }
        Ok(resp)
    }

    /// Streams the body into `dest.data` (appending from `offset`), hashing
    /// on the way; on any failure what arrived stays for the next attempt.
    /// Returns the hasher over the whole blob, the file synced.
    #[allow(clippy::too_many_arguments)]
    async fn stream_body(
        &self,
        resp: &mut reqwest::Response,
        url: &str,
        desc: &Descriptor,
        dest: &Partial,
        hasher: Sha256,
        progress: &(dyn Fn(u64) + Send + Sync),
        stats: &mut BlobDownload,
        offset: &mut u64,
    ) -> Result<Sha256, FetchError> {
        let (size, digest) = (desc.size, &desc.digest);
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(*offset > 0)
            .truncate(*offset == 0)
            .open(&dest.data)
            .await
            .map_err(io_err("open", &dest.data))?
            .into_std()
            .await;
        let truncated = |received| FetchError::Truncated {
            url: url.into(),
            digest: digest.clone(),
            expected: size,
            received,
        };
        let sink = BlobSink::start(hasher, file, *offset);
        let outcome = loop {
            let next = tokio::select! {
                biased;
                _ = self.interrupted() => break Err(FetchError::Interrupted { digest: digest.clone() }),
                next = resp.chunk() => next,
            };
            let chunk = match next {
                Ok(Some(c)) => c,
                Ok(None) => break Ok(()),
                Err(source) => {
                    tracing::debug!(%digest, error = %source, "body read failed");
                    break Err(truncated(*offset));
                }
            };
            let n = chunk.len() as u64;
            stats.fetched += n;
            self.count(n);
            if *offset + n > size {
                break Err(FetchError::TooLong {
                    url: url.into(),
                    digest: digest.clone(),
                    expected: size,
                });
            }
            if let Some(l) = &self.inner.limiter {
                l.consume(chunk.len()).await;
            }
            if !sink.push(chunk).await {
                // The writer failed; finish() says why.
                break Ok(());
            }
            *offset += n;
            progress(*offset);
        };
        // Keep what arrived intact for the next attempt.
        let done = sink.finish().await;
        done.write.map_err(io_err("write", &dest.data))?;
        outcome?;
        if *offset < size {
            return Err(truncated(*offset));
        }
        let file = done.file.ok_or_else(|| {
            io_err("write", &dest.data)(std::io::Error::other("the writer thread failed"))
        })?;
        tokio::fs::File::from_std(file)
            .sync_all()
            .await
            .map_err(io_err("sync", &dest.data))?;
        Ok(done.hasher)
    }
}

/// An `FetchError::Io` maker for `op` on `path`.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_owned();
    move |source| FetchError::Io { op, path, source }
}

/// Where this attempt starts: the partial file's verified-by-journal length
/// (or 0, the partial removed) in `offset`, and the hash of that prefix.
async fn resume_point(
    dest: &Partial,
    digest: &Digest,
    size: u64,
    journaled: bool,
    offset: &mut u64,
) -> Result<Sha256, FetchError> {
    *offset = if journaled {
        dest.resumable_len(digest, size)
    } else {
        0
    };
    if *offset == 0 {
        dest.remove().await;
        return Ok(Sha256::new());
    }
    let (path, len) = (dest.data.clone(), *offset);
    tokio::task::spawn_blocking(move || hash_prefix(&path, len))
        .await
        .map_err(|e| FetchError::Io {
            op: "hash",
            path: dest.data.clone(),
            source: std::io::Error::other(e),
        })?
        .map_err(io_err("read", &dest.data))
}

fn hash_prefix(path: &Path, len: u64) -> std::io::Result<Sha256> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path)?.take(len);
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

async fn write_journal(path: &Path, journal: &Journal) -> Result<(), FetchError> {
    let tmp = path.with_extension("journal.new");
    let bytes = serde_json::to_vec(journal).map_err(|e| FetchError::Io {
        op: "encode journal",
        path: path.to_owned(),
        source: e.into(),
    })?;
    let write = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(&bytes).await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    };
    write.await.map_err(|source| FetchError::Io {
        op: "write journal",
        path: path.to_owned(),
        source,
    })
}

/// `bytes <start>-<end>/<total|*>` must start at `offset` and run to the end.
fn content_range_ok(value: &str, offset: u64, size: u64) -> bool {
    let Some(rest) = value.trim().strip_prefix("bytes ") else {
        return false;
    };
    let Some((range, total)) = rest.split_once('/') else {
        return false;
    };
    let Some((start, end)) = range.split_once('-') else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>() == Ok(size);
    start.parse::<u64>() == Ok(offset) && end.parse::<u64>() == Ok(size - 1) && total_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_must_continue_where_we_stopped() {
        assert!(content_range_ok("bytes 100-999/1000", 100, 1000));
        assert!(content_range_ok("bytes 100-999/*", 100, 1000));
        assert!(!content_range_ok("bytes 0-999/1000", 100, 1000));
        assert!(!content_range_ok("bytes 100-500/1000", 100, 1000));
        assert!(!content_range_ok("bytes 100-999/2000", 100, 1000));
        assert!(!content_range_ok("garbage", 100, 1000));
    }

    #[test]
    fn journal_decides_what_is_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"abc");
        let p = Partial::in_dir(dir.path(), &d);
        std::fs::write(&p.data, b"ab").unwrap();
        assert_eq!(p.resumable_len(&d, 3), 0, "no journal, nothing to resume");
        let j = Journal {
            version: 1,
            digest: d.clone(),
            size: 3,
            url: "http://x".into(),
            etag: None,
        };
        std::fs::write(&p.journal, serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(p.resumable_len(&d, 3), 2);
        assert_eq!(p.resumable_len(&d, 4), 0, "size differs from the journal");
        assert_eq!(p.resumable_len(&Digest::of(b"x"), 3), 0);
    }
}
