//! Layer deltas served by the content endpoint (protocol/DELTA.md,
//! "Asking the server for a delta").
//!
//! A device asks for a target layer (its blob digest) against the base
//! layers it has (their diff_ids, lowest first). The first request for a
//! (target, bases) pair starts the computation in a blocking task and is
//! answered "not ready"; [`Deltas::prepare`] starts it ahead of any request
//! (at rollout start). The delta is cached in the content store as a blob
//! (by its own SHA-256) with a small record under `<content>/deltas/`
//! naming it, so a restart serves it again without recomputing. A delta
//! that is not clearly smaller than the layer ([`worth_sending`] with the
//! configured ratio) is recorded as such and never served: the device pulls
//! the whole layer.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleet_protocol::Digest;
use fleet_protocol::delta::{self, EncodeError, EncodeOptions, MAX_BASES};
use fleet_protocol::oci::Manifest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{ContentError, ContentStore};

/// Most base layers a request may name (a device's running image).
pub const MAX_REQUEST_BASES: usize = 128;

/// How deltas are computed and when they are worth sending.
#[derive(Debug, Clone, Copy)]
pub struct DeltaOptions {
    /// A delta is served only when under `ratio ×` the layer blob's size.
    pub ratio: f64,
    pub encode: EncodeOptions,
    /// Computations running at once; more wait their turn (each takes a
    /// core and tens of MB while it runs, and any `/v2` client can ask).
    pub max_concurrent: usize,
    /// How long a failed computation is remembered before a request may
    /// try again (a base image imported meanwhile, a full disk freed).
    pub retry_failed_after: Duration,
}

impl Default for DeltaOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            ratio: delta::DEFAULT_RATIO,
            encode: EncodeOptions::default(),
            max_concurrent: (cores / 2).max(1),
            retry_failed_after: Duration::from_secs(60),
        }
    }
}

/// Why a delta could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DeltaComputeError {
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error("layer {blob} is not in the content store")]
    UnknownLayer { blob: Digest },
    #[error("no stored image has a layer with diff_id {diff_id}")]
    UnknownBase { diff_id: Digest },
    #[error("layer {blob} uncompresses to {actual}, its config says {expected}")]
    DiffIdMismatch {
        blob: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("encoding the delta of {blob}")]
    Encode {
        blob: Digest,
        #[source]
        source: EncodeError,
    },
}

/// What the cache knows about one (target, bases) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Outcome {
    /// Stored as blob `delta`.
    Ready {
        delta: Digest,
        delta_bytes: u64,
        layer_bytes: u64,
        target: Digest,
    },
    /// Computed, but not clearly smaller than the layer.
    NotWorth { delta_bytes: u64, layer_bytes: u64 },
    /// The computation failed (kept in memory only: a restart retries).
    Failed { reason: String },
}

/// The answer to a delta request.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Done(Outcome),
    /// Being computed; ask again later.
    Pending,
}

/// Monotonic counters of the delta cache and endpoint.
#[derive(Debug, Default)]
pub struct DeltaCounters {
    pub computed: AtomicU64,
    pub not_worth: AtomicU64,
    pub failed: AtomicU64,
    /// Delta body bytes sent.
    pub served_bytes: AtomicU64,
    /// Layer blob bytes the deltas sent in full replaced.
    pub replaced_layer_bytes: AtomicU64,
}

enum Job {
    Running,
    Done(Outcome, Instant),
}

/// The delta cache over a [`ContentStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Deltas {
    inner: Arc<Inner>,
}

struct Inner {
    store: ContentStore,
    options: DeltaOptions,
    records: PathBuf,
    jobs: Mutex<HashMap<Digest, Job>>,
    /// Bounds the computations running at once ([`DeltaOptions::max_concurrent`]).
    slots: Arc<tokio::sync::Semaphore>,
    counters: DeltaCounters,
}

impl Deltas {
    /// The cache of `store`, records under `<content>/deltas/`.
    pub fn new(store: ContentStore, options: DeltaOptions) -> Self {
        let records = store.root().join("deltas");
        Self {
            inner: Arc::new(Inner {
                store,
                options,
                records,
                jobs: Mutex::new(HashMap::new()),
                slots: Arc::new(tokio::sync::Semaphore::new(options.max_concurrent.max(1))),
                counters: DeltaCounters::default(),
            }),
        }
    }

    pub fn store(&self) -> &ContentStore {
        &self.inner.store
    }

    pub fn counters(&self) -> &DeltaCounters {
        &self.inner.counters
    }

    /// What is known about the delta of layer blob `target` against `bases`
    /// (diff_ids, lowest first); starts computing it when nothing is. Must
    /// be called inside a tokio runtime.
    pub fn lookup(&self, target: &Digest, bases: &[Digest]) -> Lookup {
        let key = cache_key(target, bases);
        let mut jobs = self.jobs();
        match jobs.get(&key) {
            Some(Job::Running) => return Lookup::Pending,
            Some(Job::Done(Outcome::Failed { .. }, at))
                if at.elapsed() >= self.inner.options.retry_failed_after => {}
            Some(Job::Done(outcome, _)) => return Lookup::Done(outcome.clone()),
            None => {}
        }
        if let Some(outcome) = self.read_record(&key) {
            jobs.insert(key, Job::Done(outcome.clone(), Instant::now()));
            return Lookup::Done(outcome);
        }
        jobs.insert(key.clone(), Job::Running);
        drop(jobs);
        let this = self.clone();
        let (target, bases) = (target.clone(), bases.to_vec());
        let slots = self.inner.slots.clone();
        tokio::spawn(async move {
            // The semaphore is never closed: a permit always comes.
            let Ok(_permit) = slots.acquire_owned().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || this.run(key, &target, &bases)).await;
        });
        Lookup::Pending
    }

    /// What is known about the delta of `target` against `bases`, without
    /// starting anything (`None`: nothing yet, or being computed).
    pub fn known(&self, target: &Digest, bases: &[Digest]) -> Option<Outcome> {
        let key = cache_key(target, bases);
        if let Some(Job::Done(outcome, _)) = self.jobs().get(&key) {
            return Some(outcome.clone());
        }
        self.read_record(&key)
    }

    /// Starts computing the delta of `target` against `bases` unless it is
    /// known or under way (the rollout-start hook).
    pub fn prepare(&self, target: &Digest, bases: &[Digest]) {
        let _ = self.lookup(target, bases);
    }

    /// Counts a delta answer being sent: its body bytes, and the whole
    /// layer it replaces when it starts at byte 0.
    pub fn count_served(&self, response: &axum::response::Response, layer_bytes: u64) {
        let c = &self.inner.counters;
        let len = response
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        c.served_bytes.fetch_add(len, Ordering::Relaxed);
        if !response
            .headers()
            .contains_key(axum::http::header::CONTENT_RANGE)
        {
            c.replaced_layer_bytes
                .fetch_add(layer_bytes, Ordering::Relaxed);
        }
    }

    /// The Prometheus exposition of [`DeltaCounters`].
    pub fn render_metrics(&self) -> String {
        let c = &self.inner.counters;
        let families = [
            (
                "fleet_content_delta_served_bytes_total",
                "Layer delta bytes sent by the content endpoint.",
                &c.served_bytes,
            ),
            (
                "fleet_content_delta_replaced_layer_bytes_total",
                "Whole-layer blob bytes that the deltas sent in full replaced.",
                &c.replaced_layer_bytes,
            ),
            (
                "fleet_content_deltas_computed_total",
                "Layer deltas computed and stored.",
                &c.computed,
            ),
            (
                "fleet_content_deltas_not_worth_total",
                "Layer deltas computed but not clearly smaller than the layer.",
                &c.not_worth,
            ),
            (
                "fleet_content_deltas_failed_total",
                "Layer delta computations that failed.",
                &c.failed,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in families {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<Digest, Job>> {
        self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record_path(&self, key: &Digest) -> PathBuf {
        self.inner.records.join(format!("{}.json", key.hex()))
    }

    fn read_record(&self, key: &Digest) -> Option<Outcome> {
        let bytes = fs::read(self.record_path(key)).ok()?;
        let outcome: Outcome = serde_json::from_slice(&bytes).ok()?;
        match &outcome {
            // A record whose blob went missing is recomputed.
            Outcome::Ready { delta, .. } if self.inner.store.blob_size(delta).is_none() => None,
            _ => Some(outcome),
        }
    }

    fn run(&self, key: Digest, target: &Digest, bases: &[Digest]) {
        let c = &self.inner.counters;
        let outcome = match compute(&self.inner.store, &self.inner.options, target, bases) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(%target, error = %e, "layer delta failed");
                Outcome::Failed {
                    reason: fleet_protocol::report(&e),
                }
            }
        };
        match &outcome {
            Outcome::Ready { delta_bytes, .. } => {
                c.computed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%target, delta_bytes, "layer delta ready");
            }
            Outcome::NotWorth { .. } => {
                c.not_worth.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed { .. } => {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !matches!(outcome, Outcome::Failed { .. })
            && let Err(e) = self.write_record(&key, &outcome)
        {
            tracing::warn!(%target, error = %e, "cannot record the layer delta");
        }
        self.jobs().insert(key, Job::Done(outcome, Instant::now()));
    }

    fn write_record(&self, key: &Digest, outcome: &Outcome) -> Result<(), ContentError> {
        let path = self.record_path(key);
        fs::create_dir_all(&self.inner.records)
            .map_err(|e| ContentError::io("create", &self.inner.records, e))?;
        let bytes = serde_json::to_vec(outcome).map_err(|source| ContentError::BadJson {
            what: "delta record",
            path: path.clone(),
            source,
        })?;
        let mut tmp = tempfile::NamedTempFile::new_in(self.inner.store.tmp_dir())
            .map_err(|e| ContentError::io("create", self.inner.store.tmp_dir(), e))?;
        tmp.write_all(&bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| ContentError::io("write", tmp.path(), e))?;
        tmp.persist(&path)
            .map_err(|e| ContentError::io("rename into", &path, e.error))?;
        Ok(())
    }
}

/// The cache key of (target, bases): SHA-256 over their digests in order.
pub fn cache_key(target: &Digest, bases: &[Digest]) -> Digest {
    let mut text = format!("fleet-delta-v{}\n{target}\n", delta::VERSION);
    for b in bases {
        text.push_str(b.as_str());
        text.push('\n');
    }
    Digest::of(text.as_bytes())
}

/// Layer blob ↔ diff_id of every stored image (from their configs).
fn layer_index(store: &ContentStore) -> HashMap<Digest, Digest> {
    let mut blob_to_diff = HashMap::new();
    for m in store.manifest_digests() {
        let Ok(bytes) = store.read_blob(&m) else {
            continue;
        };
        let Ok(Manifest::Image(image)) = Manifest::parse(&bytes, None) else {
            continue;
        };
        let Ok(config) = store.read_blob(&image.config.digest) else {
            continue;
        };
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(&config) else {
            continue;
        };
        let diff_ids = config["rootfs"]["diff_ids"].as_array().cloned();
        for (layer, diff_id) in image.layers.iter().zip(diff_ids.unwrap_or_default()) {
            if let Some(d) = diff_id.as_str().and_then(|d| Digest::new(d).ok()) {
                blob_to_diff.insert(layer.digest.clone(), d);
            }
        }
    }
    blob_to_diff
}

/// Computes the delta of layer blob `target` against base diff_ids `bases`.
/// Blocking.
pub fn compute(
    store: &ContentStore,
    options: &DeltaOptions,
    target: &Digest,
    bases: &[Digest],
) -> Result<Outcome, DeltaComputeError> {
    let unknown = || DeltaComputeError::UnknownLayer {
        blob: target.clone(),
    };
    let layer_bytes = store.blob_size(target).ok_or_else(unknown)?;
    let index = layer_index(store);
    let target_diff = index.get(target).cloned().ok_or_else(unknown)?;
    // Every base is resolved before any layer is uncompressed.
    let base_blobs = bases
        .iter()
        .map(|diff_id| {
            index
                .iter()
                .find(|(_, d)| *d == diff_id)
                .map(|(b, _)| (b.clone(), diff_id))
                .ok_or_else(|| DeltaComputeError::UnknownBase {
                    diff_id: diff_id.clone(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut base_tars = Vec::with_capacity(bases.len());
    for (blob, diff_id) in &base_blobs {
        base_tars.push(uncompressed(store, blob, diff_id)?);
    }
    let mut target_tar = uncompressed(store, target, &target_diff)?;
    let out = tempfile::NamedTempFile::new_in(store.tmp_dir())
        .map_err(|e| ContentError::io("create", store.tmp_dir(), e))?;
    let mut writer = HashingWriter {
        inner: BufWriter::new(
            out.as_file()
                .try_clone()
                .map_err(|e| ContentError::io("reopen", out.path(), e))?,
        ),
        hasher: Sha256::new(),
    };
    let encoded = delta::encode(
        &mut base_tars,
        &mut target_tar,
        &mut writer,
        &options.encode,
    )
    .map_err(|source| DeltaComputeError::Encode {
        blob: target.clone(),
        source,
    })?;
    writer
        .inner
        .flush()
        .map_err(|e| ContentError::io("write", out.path(), e))?;
    let HashingWriter { hasher, inner } = writer;
    drop(inner);
    let digest = Digest::from_sha256(hasher.finalize().into());
    if !delta::worth_sending(encoded.delta_bytes, layer_bytes, options.ratio) {
        return Ok(Outcome::NotWorth {
            delta_bytes: encoded.delta_bytes,
            layer_bytes,
        });
    }
    let path = out.into_temp_path();
    store.adopt(&path, &digest)?;
    Ok(Outcome::Ready {
        delta: digest,
        delta_bytes: encoded.delta_bytes,
        layer_bytes,
        target: target_diff,
    })
}

/// The layer blob `blob` uncompressed into a temporary file (deleted when
/// dropped), checked against `diff_id`.
fn uncompressed(
    store: &ContentStore,
    blob: &Digest,
    diff_id: &Digest,
) -> Result<File, DeltaComputeError> {
    let path = store.blob_path(blob);
    let io = |op| {
        let path = path.clone();
        move |e| ContentError::io(op, path, e)
    };
    let mut input = BufReader::new(File::open(&path).map_err(io("open"))?);
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut input, &mut magic).map_err(io("read"))?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(input);
    let mut decoder: Box<dyn Read> = match magic {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(head)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(head).map_err(io("zstd"))?)
        }
        _ => Box::new(head),
    };
    let mut file = tempfile::tempfile_in(store.tmp_dir()).map_err(io("create temp for"))?;
    let mut writer = HashingWriter {
        inner: BufWriter::new(file.try_clone().map_err(io("reopen"))?),
        hasher: Sha256::new(),
    };
    io::copy(&mut decoder, &mut writer).map_err(io("uncompress"))?;
    writer.inner.flush().map_err(io("write"))?;
    let HashingWriter { hasher, inner } = writer;
    drop(inner);
    let actual = Digest::from_sha256(hasher.finalize().into());
    if &actual != diff_id {
        return Err(DeltaComputeError::DiffIdMismatch {
            blob: blob.clone(),
            expected: diff_id.clone(),
            actual,
        });
    }
    file.rewind().map_err(io("seek"))?;
    Ok(file)
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Parses the `bases` query value: comma-separated diff_ids, 1 to
/// [`MAX_REQUEST_BASES`], each a valid digest.
pub fn parse_bases(value: Option<&str>) -> Option<Vec<Digest>> {
    let value = value?;
    let bases: Vec<Digest> = value
        .split(',')
        .map(|d| Digest::new(d.trim()).ok())
        .collect::<Option<_>>()?;
    let max = MAX_REQUEST_BASES.min(MAX_BASES as usize);
    (!bases.is_empty() && bases.len() <= max).then_some(bases)
}
