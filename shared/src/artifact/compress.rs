//! The artifact's compression, on every core, as a sequence of independent
//! blocks: gzip members (see `pargz`) or zstd frames. Decoders read a
//! sequence as one stream (`gzip -d`, `zstd -d`, `tar -xz`, `MultiGzDecoder`,
//! zstd's streaming decoder), which is what lets a part compressed elsewhere
//! (the database dump, while `pg_dump` runs) be spliced in between two
//! blocks: [`Compressor::end_block`].

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

/// The size of one read of a source (a file, the dump's pipe).
pub(super) const COPY_BUFFER: usize = 256 * 1024;

/// The artifact's compression, chosen per backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gzip" => Some(Self::Gzip),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// `gz` / `zst`
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Gzip => "gz",
            Self::Zstd => "zst",
        }
    }

    /// `.tar.gz` / `.tar.zst`
    pub fn extension(self) -> &'static str {
        match self {
            Self::Gzip => "tar.gz",
            Self::Zstd => "tar.zst",
        }
    }
}

const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 3;

/// The compressing threads of one stream: every core, at most 8.
fn cores() -> usize {
    // Read once: on Linux it reads the cgroup's files each time, which was
    // measurable on the path of short jobs (bench-jobs-pipeline).
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8)
    })
}

/// A compressing writer whose output is a sequence of independent blocks.
pub struct Compressor<W: Write> {
    compression: Compression,
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Gzip(super::ParallelGzip<W>),
    /// `None` only for the moment a frame is ended (the zstd writer cannot
    /// start a new frame once finished, so a new one takes over its sink).
    Zstd(Option<zstd::stream::write::Encoder<'static, W>>),
}

fn between_frames() -> io::Error {
    io::Error::other("the zstd stream failed between two frames")
}

fn zstd_encoder<W: Write>(sink: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
    // Every core: zstd's own worker threads, on 2 MiB jobs (the default at
    // level 3 is 8 MiB, each held in and out per worker: most of a zstd
    // backup's peak RSS).
    encoder.multithread(cores() as u32)?;
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(2 << 20))?;
    Ok(encoder)
}

impl<W: Write> Compressor<W> {
    pub fn new(sink: W, compression: Compression) -> io::Result<Self> {
        let inner = match compression {
            // Every core (see `pargz`); `pigz` does the same.
            Compression::Gzip => Inner::Gzip(super::ParallelGzip::new(sink, GZIP_LEVEL, cores())),
            Compression::Zstd => Inner::Zstd(Some(zstd_encoder(sink)?)),
        };
        Ok(Self { compression, inner })
    }

    pub fn compression(&self) -> Compression {
        self.compression
    }

    fn zstd<'a>(
        encoder: &'a mut Option<zstd::stream::write::Encoder<'static, W>>,
    ) -> io::Result<&'a mut zstd::stream::write::Encoder<'static, W>> {
        encoder.as_mut().ok_or_else(between_frames)
    }

    /// Completes the current block with everything written so far, and
    /// gives the sink: what is written to it directly must be whole blocks
    /// of the same compression. Writing to `self` afterwards starts a new
    /// block.
    pub fn end_block(&mut self) -> io::Result<&mut W> {
        match &mut self.inner {
            Inner::Gzip(gzip) => gzip.end_member(),
            Inner::Zstd(slot) => {
                let encoder = slot.take().ok_or_else(between_frames)?;
                let sink = encoder.finish()?;
                Ok(slot.insert(zstd_encoder(sink)?).get_mut())
            }
        }
    }

    /// Ends the last block and gives the sink back.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::Gzip(gzip) => gzip.finish(),
            Inner::Zstd(Some(encoder)) => encoder.finish(),
            Inner::Zstd(None) => Err(between_frames()),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Gzip(e) => e.write(buf),
            Inner::Zstd(e) => Self::zstd(e)?.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Gzip(e) => e.flush(),
            Inner::Zstd(e) => Self::zstd(e)?.flush(),
        }
    }
}

/// A stream compressed on its own, to be spliced into an artifact of the
/// same compression ([`super::ArtifactBuilder::add_precompressed`]).
#[derive(Debug, Clone)]
pub struct Precompressed {
    pub compression: Compression,
    /// Bytes before compression: the tar entry's size.
    pub size: u64,
    /// SHA-256 of the bytes before compression, hex.
    pub sha256: String,
}

/// Reads `source` to its end and writes it compressed into `sink` as whole
/// blocks; returns what the entry will say of it, and the sink.
pub fn compress_stream<W: Write>(
    mut source: impl Read,
    sink: W,
    compression: Compression,
) -> io::Result<(Precompressed, W)> {
    let mut compressor = Compressor::new(sink, compression)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = match source.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        compressor.write_all(&buffer[..n])?;
        size += n as u64;
    }
    let mut sink = compressor.finish()?;
    sink.flush()?;
    Ok((
        Precompressed {
            compression,
            size,
            sha256: hex::encode(hasher.finalize()),
        },
        sink,
    ))
}
