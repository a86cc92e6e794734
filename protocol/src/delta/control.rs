//! Device side: the delta byte stream ([`Input`]) and the control stream
//! decoded from its chunks ([`Control`]), with zstd's streaming API driven
//! directly so chunk boundaries (where data frames sit) stay exact.

use std::io::{self, Read};

use zstd::zstd_safe::{DCtx, DParameter, InBuffer, OutBuffer, get_error_name};

use super::apply::DeltaError;
use super::format::CONTROL_WINDOW_LOG;

const BUF: usize = 64 << 10;

/// The delta stream with its byte position and whether it ended early.
pub(crate) struct Input<R> {
    pub inner: R,
    pub pos: u64,
    pub eof: bool,
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> Input<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            pos: 0,
            eof: false,
        }
    }

    pub fn exact(&mut self, buf: &mut [u8]) -> Result<(), DeltaError> {
        let offset = self.pos;
        self.read_exact(buf).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                DeltaError::Truncated { offset: self.pos }
            } else {
                DeltaError::ReadDelta { offset, source }
            }
        })
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DeltaError> {
        let mut buf = [0u8; N];
        self.exact(&mut buf)?;
        Ok(buf)
    }

    pub fn u32(&mut self) -> Result<u32, DeltaError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DeltaError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

/// The control stream: one zstd frame (ref prefix: the bases' skeletons)
/// whose compressed bytes arrive in chunks (`len u32`, bytes) between the
/// data frames.
pub(crate) struct Control<'p> {
    dctx: DCtx<'p>,
    in_buf: Vec<u8>,
    in_pos: usize,
    in_len: usize,
    /// Compressed bytes of the current chunk not yet read from the input.
    chunk_left: u64,
    out_buf: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// The control frame has ended.
    done: bool,
    /// Control bytes handed out so far (op offsets in errors).
    pub pos: u64,
}

impl<'p> Control<'p> {
    pub fn new(prefix: &'p [u8]) -> Result<Self, DeltaError> {
        let zstd = |code| DeltaError::Frame {
            offset: 0,
            source: io::Error::other(get_error_name(code)),
        };
        let mut dctx = DCtx::create();
        dctx.set_parameter(DParameter::WindowLogMax(CONTROL_WINDOW_LOG))
            .map_err(zstd)?;
        if !prefix.is_empty() {
            dctx.ref_prefix(prefix).map_err(zstd)?;
        }
        Ok(Self {
            dctx,
            in_buf: vec![0; BUF],
            in_pos: 0,
            in_len: 0,
            chunk_left: 0,
            out_buf: vec![0; BUF],
            out_pos: 0,
            out_len: 0,
            done: false,
            pos: 0,
        })
    }

    /// Whether the input stands between two chunks (where a data frame may
    /// start): every compressed control byte read so far went to zstd.
    pub fn at_chunk_boundary(&self) -> bool {
        self.in_pos == self.in_len && self.chunk_left == 0
    }

    /// Up to `buf.len()` control bytes; 0 once the control frame ended.
    pub fn read<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut [u8],
    ) -> Result<usize, DeltaError> {
        loop {
            if self.out_pos < self.out_len {
                let n = buf.len().min(self.out_len - self.out_pos);
                buf[..n].copy_from_slice(&self.out_buf[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                self.pos += n as u64;
                return Ok(n);
            }
            if self.done || buf.is_empty() {
                return Ok(0);
            }
            self.step(input)?;
        }
    }

    /// Decodes what zstd can from the buffered input, or reads more input
    /// (the rest of the chunk, or the next chunk's length).
    fn step<R: Read>(&mut self, input: &mut Input<R>) -> Result<(), DeltaError> {
        let mut inb = InBuffer::around(&self.in_buf[self.in_pos..self.in_len]);
        let mut outb = OutBuffer::around(&mut self.out_buf[..]);
        let hint = match self.dctx.decompress_stream(&mut outb, &mut inb) {
            Ok(hint) => hint,
            Err(_) if input.eof => return Err(DeltaError::Truncated { offset: input.pos }),
            Err(code) => {
                return Err(DeltaError::Frame {
                    offset: input.pos,
                    source: io::Error::other(get_error_name(code)),
                });
            }
        };
        let (consumed, produced) = (inb.pos(), outb.pos());
        self.in_pos += consumed;
        self.out_pos = 0;
        self.out_len = produced;
        self.done = hint == 0;
        if consumed > 0 || produced > 0 || self.done {
            return Ok(());
        }
        if self.in_pos < self.in_len {
            return Err(DeltaError::FrameShape {
                offset: input.pos,
                what: "control stream makes no progress",
            });
        }
        if self.chunk_left == 0 {
            self.chunk_left = input.u32()?.into();
            return Ok(());
        }
        let take = self.chunk_left.min(BUF as u64) as usize;
        input.exact(&mut self.in_buf[..take])?;
        self.in_pos = 0;
        self.in_len = take;
        self.chunk_left -= take as u64;
        Ok(())
    }

    pub fn exact<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut [u8],
    ) -> Result<(), DeltaError> {
        let mut at = 0;
        while at < buf.len() {
            match self.read(input, &mut buf[at..])? {
                0 => return Err(DeltaError::Truncated { offset: input.pos }),
                n => at += n,
            }
        }
        Ok(())
    }

    pub fn array<R: Read, const N: usize>(
        &mut self,
        input: &mut Input<R>,
    ) -> Result<[u8; N], DeltaError> {
        let mut buf = [0u8; N];
        self.exact(input, &mut buf)?;
        Ok(buf)
    }

    pub fn u16<R: Read>(&mut self, input: &mut Input<R>) -> Result<u16, DeltaError> {
        Ok(u16::from_le_bytes(self.array(input)?))
    }

    pub fn u32<R: Read>(&mut self, input: &mut Input<R>) -> Result<u32, DeltaError> {
        Ok(u32::from_le_bytes(self.array(input)?))
    }

    pub fn u64<R: Read>(&mut self, input: &mut Input<R>) -> Result<u64, DeltaError> {
        Ok(u64::from_le_bytes(self.array(input)?))
    }

    /// After `End`: the control frame must end there, inside its chunk.
    pub fn finish<R: Read>(&mut self, input: &mut Input<R>) -> Result<(), DeltaError> {
        loop {
            if self.out_pos < self.out_len {
                return Err(DeltaError::FrameShape {
                    offset: input.pos,
                    what: "control bytes after End",
                });
            }
            if self.done {
                break;
            }
            self.step(input)?;
        }
        if !self.at_chunk_boundary() {
            return Err(DeltaError::FrameShape {
                offset: input.pos,
                what: "bytes after the control frame in its chunk",
            });
        }
        Ok(())
    }
}
