//! Where a blob's body goes while it arrives: SHA-256 on one blocking
//! thread, the partial file on another, each fed through a bounded channel
//! of the body's chunks. Receiving, hashing and writing so run at once
//! instead of one after the other on the runtime's thread (SHA-256 alone
//! takes about one core at ~1 GiB/s, see bench/REPORT-pull.md).
//!
//! The writer also asks the kernel to start writing back what it wrote a
//! few MiB ago (`posix_fadvise(DONTNEED)`), so that the fsync before the
//! blob is committed finds little left to do, and a large blob does not
//! fill the page cache with dirty pages. That is a hint only: durability
//! still comes from the fsync the caller does at the end.
//!
//! Memory stays bounded: each channel holds at most [`QUEUE_CHUNKS`] chunks
//! (shared between both: a chunk is reference-counted), plus the writer's
//! buffer.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::num::NonZeroU64;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Chunks queued per thread. hyper hands out chunks of at most ~400 KiB,
/// so the queues hold a few MiB at worst.
const QUEUE_CHUNKS: usize = 16;
/// The writer's buffer: merges small chunks into larger writes.
const WRITE_BUFFER: usize = 1 << 20;
/// Writeback is started for data this far behind the end of the file.
const WRITEBACK_LAG: u64 = 8 << 20;
/// ... in steps of this much.
const WRITEBACK_STEP: u64 = 16 << 20;

/// What the threads did, once the body is over (or abandoned).
pub(super) struct SinkOutcome {
    /// The hash of everything before `start` and of every chunk pushed.
    pub hasher: Sha256,
    /// The partial file, flushed (not synced); `None` if a thread died.
    pub file: Option<File>,
    /// The first write error, if any; the data before it is in the file.
    pub write: io::Result<()>,
}

pub(super) struct BlobSink {
    hash_tx: mpsc::Sender<Bytes>,
    write_tx: mpsc::Sender<Bytes>,
    hasher: JoinHandle<Sha256>,
    writer: JoinHandle<(File, io::Result<()>)>,
}

impl BlobSink {
    /// Starts the threads: `hasher` already holds the hash of the file's
    /// first `start` bytes, `file` is open for writing at `start`.
    pub fn start(hasher: Sha256, file: File, start: u64) -> Self {
        let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        let (write_tx, write_rx) = mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut hasher = hasher;
            while let Some(chunk) = hash_rx.blocking_recv() {
                hasher.update(&chunk);
            }
            hasher
        });
        let writer = tokio::task::spawn_blocking(move || write_all(file, start, write_rx));
        Self {
            hash_tx,
            write_tx,
            hasher,
            writer,
        }
    }

    /// Queues a chunk for both threads, waiting while a queue is full.
    /// `false`: the writer stopped (a write failed); [`BlobSink::finish`]
    /// tells why.
    pub async fn push(&self, chunk: Bytes) -> bool {
        self.write_tx.send(chunk.clone()).await.is_ok() && self.hash_tx.send(chunk).await.is_ok()
    }

    /// Ends the body: waits for both threads to drain their queues.
    pub async fn finish(self) -> SinkOutcome {
        let Self {
            hash_tx,
            write_tx,
            hasher,
            writer,
        } = self;
        drop(hash_tx);
        drop(write_tx);
        let (file, write) = match writer.await {
            Ok((file, write)) => (Some(file), write),
            Err(e) => (None, Err(io::Error::other(e))),
        };
        let hasher = match hasher.await {
            Ok(h) => h,
            // Cannot happen short of a panic; an empty hash then fails the
            // digest check, which is the safe outcome.
            Err(_) => Sha256::new(),
        };
        SinkOutcome {
            hasher,
            file,
            write,
        }
    }
}

/// The writer thread: appends every chunk, flushes at the end; stops at the
/// first error (dropping the queue, which makes [`BlobSink::push`] fail).
fn write_all(file: File, start: u64, mut rx: mpsc::Receiver<Bytes>) -> (File, io::Result<()>) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
    let mut written = start;
    let mut advised = start - start % WRITEBACK_STEP;
    let mut result = Ok(());
    while let Some(chunk) = rx.blocking_recv() {
        if let Err(e) = out.write_all(&chunk) {
            result = Err(e);
            break;
        }
        written += chunk.len() as u64;
        let on_disk = written - out.buffer().len() as u64;
        if on_disk >= advised + WRITEBACK_LAG + WRITEBACK_STEP {
            let end = on_disk - WRITEBACK_LAG;
            // From one step further back: that range's writeback has had
            // time to finish, and its now clean pages are dropped.
            let from = advised.saturating_sub(WRITEBACK_STEP);
            if let Some(len) = NonZeroU64::new(end - from) {
                let _ = rustix::fs::fadvise(
                    out.get_ref(),
                    from,
                    Some(len),
                    rustix::fs::Advice::DontNeed,
                );
            }
            advised = end;
        }
    }
    drop(rx);
    if let Err(e) = out.flush()
        && result.is_ok()
    {
        result = Err(e);
    }
    match out.into_inner() {
        Ok(file) => (file, result),
        Err(e) => {
            let (err, writer) = e.into_parts();
            (writer.into_parts().0, result.and(Err(err)))
        }
    }
}
