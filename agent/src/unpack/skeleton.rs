//! The layer's *skeleton* (protocol/DELTA.md, "Skeletons"), written while
//! the layer is unpacked: every byte of the tar stream the unpacker reads
//! is also sent to a thread running [`fleet_protocol::delta::skeleton`],
//! which writes the skeleton file. A snapshot with a skeleton can be
//! offered as a delta base.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use fleet_protocol::Digest;
use fleet_protocol::delta::{self, Skeleton};

/// Pieces of the tar stream in flight to the skeleton thread.
const QUEUE: usize = 64;

/// The sending end: a copy of the tar stream goes to the skeleton thread.
pub(crate) struct SkeletonTee {
    path: PathBuf,
    tx: Option<SyncSender<Vec<u8>>>,
    thread: JoinHandle<io::Result<Skeleton>>,
}

impl SkeletonTee {
    /// Starts a thread writing the skeleton of the stream to `path`.
    pub(crate) fn spawn(path: &Path) -> io::Result<Self> {
        let file = File::create(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("layer-skeleton".into())
            .spawn(move || {
                let input = ChannelReader {
                    rx,
                    buf: Vec::new(),
                    pos: 0,
                };
                let out = BufWriter::with_capacity(64 << 10, file);
                delta::skeleton(input, out)
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tx: Some(tx),
            thread,
        })
    }

    /// Hands a copy of `bytes` to the thread. If the thread has stopped
    /// (it failed), the copy is dropped; [`SkeletonTee::finish`] reports it.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx
            && tx.send(bytes.to_vec()).is_err()
        {
            self.tx = None;
        }
    }

    /// Ends the stream and waits for the skeleton. Keeps the file only if
    /// it was written completely for the layer `diff_id`; otherwise removes
    /// it (the snapshot is then simply not offered as a delta base).
    pub(crate) fn finish(mut self, diff_id: &Digest) {
        let complete = self.tx.take().is_some();
        let result = self.thread.join();
        let kept = match result {
            Ok(Ok(s)) if complete && &s.diff_id == diff_id => true,
            Ok(Ok(_)) => {
                tracing::warn!(layer = %diff_id, "layer skeleton incomplete; not a delta base");
                false
            }
            Ok(Err(error)) => {
                tracing::warn!(layer = %diff_id, %error, "layer skeleton failed; not a delta base");
                false
            }
            Err(_) => {
                tracing::warn!(layer = %diff_id, "layer skeleton thread panicked");
                false
            }
        };
        if !kept {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// Stops the thread and removes the file (the unpack failed).
    pub(crate) fn abandon(mut self) {
        self.tx = None;
        let _ = self.thread.join();
        let _ = fs::remove_file(&self.path);
    }
}

/// The receiving end, as a `Read` over the pieces.
struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.buf = next;
                    self.pos = 0;
                }
                // The sender is gone: the stream ended.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
