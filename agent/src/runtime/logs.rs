//! Container stdout/stderr: FIFOs the container writes into, pumped by the
//! agent into size-capped rotating files.
//!
//! Each stream goes through a named pipe (`<container>/stdout.pipe`,
//! `stderr.pipe`) that the container receives opened read-write. Because the
//! container itself holds a read end, it never gets `EPIPE`/`SIGPIPE` when the
//! agent dies: a SIGKILLed agent does not take its containers down. The
//! tradeoff: while no agent reads, a container that writes more than the pipe
//! buffer (64 KiB) blocks in `write` until the restarted agent re-opens the
//! pipe and drains it. Writing straight into a file would never block but
//! could not be size-capped while the agent is away.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Size cap and retention of a container's log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Bytes per file before it is rotated.
    pub max_bytes: u64,
    /// Rotated files kept (`.1` … `.N`) besides the live one.
    pub keep: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_bytes: 1 << 20,
            keep: 2,
        }
    }
}

/// Which standard stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The FIFO a stream goes through.
pub fn pipe_path(container_dir: &Path, stream: Stream) -> PathBuf {
    container_dir.join(format!("{}.pipe", stream.name()))
}

/// The live log file of a stream.
pub fn log_path(container_dir: &Path, stream: Stream) -> PathBuf {
    container_dir
        .join("logs")
        .join(format!("{}.log", stream.name()))
}

/// Creates the FIFO if missing.
pub fn ensure_pipe(path: &Path) -> io::Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// Opens the container's end of a FIFO: read-write, so that opening never
/// blocks and the container never sees a reader-less pipe.
pub fn open_container_end(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// Opens the agent's reading end (non-blocking, read-only: end-of-file once
/// every writer — the container — has closed it).
pub fn open_agent_end(path: &Path) -> io::Result<pipe::Receiver> {
    pipe::OpenOptions::new().open_receiver(path)
}

/// A size-capped log file rotated to `.1`, `.2`, ….
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    config: LogConfig,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    pub fn open(path: PathBuf, config: LogConfig) -> io::Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            config,
            file: Some(file),
            size,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.config.keep == 0 {
            std::fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            for n in (1..self.config.keep).rev() {
                std::fs::rename(self.rotated(n), self.rotated(n + 1)).or_else(ignore_missing)?;
            }
            std::fs::rename(&self.path, self.rotated(1)).or_else(ignore_missing)?;
        }
        self.file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.size = 0;
        Ok(())
    }

    /// Appends `data`, rotating first when the file would pass the cap.
    /// A chunk larger than the cap is split across files.
    pub fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        let max = self.config.max_bytes.max(1);
        while !data.is_empty() {
            if self.size >= max {
                self.rotate()?;
            }
            let room = usize::try_from(max - self.size).unwrap_or(usize::MAX);
            let (now, rest) = data.split_at(room.min(data.len()));
            if let Some(file) = self.file.as_mut() {
                file.write_all(now)?;
            }
            self.size += now.len() as u64;
            data = rest;
        }
        Ok(())
    }
}

fn ignore_missing(err: io::Error) -> io::Result<()> {
    if err.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(err)
    }
}

/// Copies a stream from its FIFO into its log until end-of-file (the
/// container exited) or a read error.
pub async fn pump(mut receiver: pipe::Receiver, log: Arc<Mutex<RotatingLog>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match receiver.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                let result = match log.lock() {
                    Ok(mut log) => log.write(&buf[..n]),
                    Err(_) => break,
                };
                if let Err(err) = result {
                    tracing::warn!(error = %err, "writing a container log failed");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "reading a container log pipe failed");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_at_the_cap_and_keep_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/stdout.log");
        let mut log = RotatingLog::open(
            path.clone(),
            LogConfig {
                max_bytes: 10,
                keep: 2,
            },
        )
        .unwrap();
        log.write(b"0123456789abcdef").unwrap();
        log.write(b"ghijklmnopqrstuvwxyz").unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        assert_eq!(read(&path), "uvwxyz");
        assert_eq!(read(&dir.path().join("logs/stdout.log.1")), "klmnopqrst");
        assert_eq!(read(&dir.path().join("logs/stdout.log.2")), "abcdefghij");
        assert!(!dir.path().join("logs/stdout.log.3").exists());
        // Reopened (agent restart): appends and keeps counting the size.
        drop(log);
        let mut log = RotatingLog::open(
            path.clone(),
            LogConfig {
                max_bytes: 8,
                keep: 2,
            },
        )
        .unwrap();
        log.write(b"12").unwrap();
        assert_eq!(read(&path), "uvwxyz12");
        log.write(b"3").unwrap();
        assert_eq!(read(&path), "3");
    }

    #[tokio::test]
    async fn a_fifo_is_pumped_until_its_writers_close() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stdout.pipe");
        ensure_pipe(&fifo).unwrap();
        ensure_pipe(&fifo).unwrap();
        let mut writer = open_container_end(&fifo).unwrap();
        let receiver = open_agent_end(&fifo).unwrap();
        let log = Arc::new(Mutex::new(
            RotatingLog::open(dir.path().join("out.log"), LogConfig::default()).unwrap(),
        ));
        writer.write_all(b"hello\n").unwrap();
        drop(writer);
        pump(receiver, log).await;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("out.log")).unwrap(),
            "hello\n"
        );
    }
}
