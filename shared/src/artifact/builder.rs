use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::compress::{Compressor, Precompressed};
use super::manifest::{FORMAT_VERSION, Manifest, ManifestEntry, ManifestMeta};

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

/// What was written, as the destination should then confirm it.
#[derive(Debug, Clone)]
pub struct ArtifactSummary {
    /// Bytes of the stored stream (compressed, and encrypted when sealed).
    pub bytes: u64,
    /// SHA-256 of the stored stream, hex.
    pub sha256: String,
    pub manifest: Manifest,
}

/// Counts and hashes what passes through to the sink.
struct Tally<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressed stream as stored: as it is, or wrapped in the age format
/// for the configured recipients (then `age -d -i key.txt` opens it with
/// nothing of ours running). The tally below counts what is stored.
enum Sealed<W: Write> {
    Plain(Tally<W>),
    Age(Box<age::stream::StreamWriter<Tally<W>>>),
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(t) => t.write(buf),
            Self::Age(a) => a.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(t) => t.flush(),
            Self::Age(a) => a.flush(),
        }
    }
}

impl<W: Write> Sealed<W> {
    fn finish(self) -> io::Result<Tally<W>> {
        match self {
            Self::Plain(t) => Ok(t),
            Self::Age(a) => a.finish(),
        }
    }
}

/// Writes an artifact into `W` (a file, or a pipe to the destination).
pub struct ArtifactBuilder<W: Write> {
    tar: tar::Builder<Compressor<Sealed<W>>>,
    entries: Vec<ManifestEntry>,
    warnings: Vec<String>,
    pax_sequence: u64,
    copy_buffer: Vec<u8>,
}

/// The size of one read of a source (a file, the dump's pipe).
pub(super) const COPY_BUFFER: usize = 256 * 1024;

impl<W: Write> ArtifactBuilder<W> {
    pub fn new(sink: W, compression: Compression) -> io::Result<Self> {
        Self::sealed(sink, compression, &[])
    }

    /// An artifact encrypted for `recipients` (plain when there are none).
    pub fn sealed(
        sink: W,
        compression: Compression,
        recipients: &[age::x25519::Recipient],
    ) -> io::Result<Self> {
        let tally = Tally {
            inner: sink,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let sealed = if recipients.is_empty() {
            Sealed::Plain(tally)
        } else {
            let encryptor = age::Encryptor::with_recipients(
                recipients.iter().map(|r| r as &dyn age::Recipient),
            )
            .map_err(io::Error::other)?;
            Sealed::Age(Box::new(encryptor.wrap_output(tally)?))
        };
        let encoder = Compressor::new(sealed, compression)?;
        let mut tar = tar::Builder::new(encoder);
        tar.follow_symlinks(false);
        Ok(Self {
            tar,
            entries: Vec::new(),
            warnings: Vec::new(),
            pax_sequence: 0,
            copy_buffer: vec![0; COPY_BUFFER],
        })
    }

    /// Adds everything below `source` under `prefix/` in the archive, in
    /// name order. A missing `source` adds nothing.
    pub fn add_tree(&mut self, source: &Path, prefix: &str) -> io::Result<()> {
        let metadata = match std::fs::symlink_metadata(source) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        self.add_path(source, prefix.trim_end_matches('/'), &metadata)
    }

    /// Adds one file or folder (recursively) at `archive_path`.
    pub fn add_path(
        &mut self,
        source: &Path,
        archive_path: &str,
        metadata: &std::fs::Metadata,
    ) -> io::Result<()> {
        let kind = metadata.file_type();
        if kind.is_symlink() {
            let target = std::fs::read_link(source)?;
            let mut header = self.header(metadata, EntryType::Symlink, 0);
            self.tar.append_link(&mut header, archive_path, &target)?;
            self.entries.push(ManifestEntry {
                path: archive_path.to_string(),
                kind: "symlink".into(),
                size: 0,
                sha256: None,
                link: Some(target.to_string_lossy().into_owned()),
            });
        } else if kind.is_dir() {
            self.append_xattrs(source, archive_path)?;
            let mut header = self.header(metadata, EntryType::Directory, 0);
            self.tar
                .append_data(&mut header, format!("{archive_path}/"), io::empty())?;
            self.entries.push(ManifestEntry {
                path: format!("{archive_path}/"),
                kind: "dir".into(),
                size: 0,
                sha256: None,
                link: None,
            });
            let mut children: Vec<_> = std::fs::read_dir(source)?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .collect();
            children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in children {
                let child = source.join(&name);
                match std::fs::symlink_metadata(&child) {
                    Ok(m) => {
                        let child_path = format!("{archive_path}/{}", name.to_string_lossy());
                        self.add_path(&child, &child_path, &m)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => self.warnings.push(format!(
                        "{archive_path}/{}: vanished while backing up",
                        name.to_string_lossy()
                    )),
                    Err(e) => return Err(e),
                }
            }
        } else if kind.is_file() {
            match File::open(source) {
                Ok(file) => {
                    self.append_xattrs(source, archive_path)?;
                    let size = metadata.len();
                    self.add_reader(archive_path, file, size, Some(metadata))?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self
                    .warnings
                    .push(format!("{archive_path}: vanished while backing up")),
                Err(e) => return Err(e),
            }
        } else {
            self.warnings.push(format!(
                "{archive_path}: not a regular file, folder or link; left out"
            ));
        }
        Ok(())
    }

    /// Adds `size` bytes read from `reader` as a file. The entry is exactly
    /// `size` bytes whatever the reader does: a reader that ends early is
    /// padded with zeros and one that goes on is cut, each with a warning,
    /// so the archive is never corrupt.
    pub fn add_reader(
        &mut self,
        archive_path: &str,
        reader: impl Read,
        size: u64,
        metadata: Option<&std::fs::Metadata>,
    ) -> io::Result<()> {
        let mut header = match metadata {
            Some(m) => self.header(m, EntryType::Regular, size),
            None => produced_file_header(size, 0o600),
        };
        let mut exact = ExactLength {
            inner: reader,
            remaining: size,
            hasher: Sha256::new(),
            short: false,
        };
        // The header (and a long name's extra record) through `tar`, the
        // data here: `tar` copies through an 8 KiB buffer, and each small
        // write costs a syscall and a round in the compressor.
        self.tar
            .append_data(&mut header, archive_path, io::empty())?;
        let sink = self.tar.get_mut();
        loop {
            let n = exact.read(&mut self.copy_buffer)?;
            if n == 0 {
                break;
            }
            sink.write_all(&self.copy_buffer[..n])?;
        }
        sink.write_all(&[0u8; 512][..padding(size)])?;
        let mut rest = exact.inner;
        let longer = rest.read(&mut [0u8; 1]).map(|n| n > 0).unwrap_or(false);
        if exact.short {
            self.warnings.push(format!(
                "{archive_path}: shrank while backing up; padded to its size at the start"
            ));
        } else if longer {
            self.warnings.push(format!(
                "{archive_path}: grew while backing up; cut to its size at the start"
            ));
        }
        self.entries.push(ManifestEntry {
            path: archive_path.to_string(),
            kind: "file".into(),
            size,
            sha256: Some(hex::encode(exact.hasher.finalize())),
            link: None,
        });
        Ok(())
    }

    /// Adds a file of ours (`0600`, the time now) whose bytes were
    /// compressed on their own ([`super::compress_stream`], with the
    /// artifact's compression), read from `compressed`: they are copied in
    /// between two blocks of the artifact, not compressed again. The
    /// archive path must fit a plain tar header (100 bytes).
    pub fn add_precompressed(
        &mut self,
        archive_path: &str,
        mut compressed: impl Read,
        entry: &Precompressed,
    ) -> io::Result<()> {
        let compressor = self.tar.get_mut();
        if compressor.compression() != entry.compression {
            return Err(io::Error::other(format!(
                "{archive_path} was compressed with {:?}, the artifact with {:?}",
                entry.compression,
                compressor.compression()
            )));
        }
        let mut header = produced_file_header(entry.size, 0o600);
        header.set_path(archive_path)?;
        header.set_cksum();
        compressor.write_all(header.as_bytes())?;
        io::copy(&mut compressed, compressor.end_block()?)?;
        compressor.write_all(&[0u8; 512][..padding(entry.size)])?;
        self.entries.push(ManifestEntry {
            path: archive_path.to_string(),
            kind: "file".into(),
            size: entry.size,
            sha256: Some(entry.sha256.clone()),
            link: None,
        });
        Ok(())
    }

    fn header(&self, metadata: &std::fs::Metadata, kind: EntryType, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(metadata.mode() & 0o7777);
        header.set_uid(metadata.uid().into());
        header.set_gid(metadata.gid().into());
        header.set_mtime(metadata.mtime().max(0) as u64);
        header
    }

    /// Writes a PAX extended header carrying `path`'s extended attributes
    /// (as GNU tar and bsdtar read them: `SCHILY.xattr.<name>`).
    fn append_xattrs(&mut self, path: &Path, archive_path: &str) -> io::Result<()> {
        let names = match xattr::list(path) {
            Ok(names) => names,
            // A filesystem without xattr support has none to keep.
            Err(e) if e.raw_os_error() == Some(95) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for name in names {
            let Some(text) = name.to_str() else { continue };
            if let Some(value) = xattr::get(path, &name)? {
                pax_record(&mut records, &format!("SCHILY.xattr.{text}"), &value);
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        self.pax_sequence += 1;
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::XHeader);
        header.set_size(records.len() as u64);
        header.set_mode(0o644);
        let name: String = archive_path
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let pax_name = format!(
            "PaxHeaders.{}/{}",
            self.pax_sequence,
            name.replace('/', "_")
        );
        // The name of a PAX header is informational; keep it short and ASCII.
        let pax_name: String = pax_name
            .chars()
            .map(|c| if c.is_ascii_graphic() { c } else { '_' })
            .take(99)
            .collect();
        header.set_path(&pax_name)?;
        header.set_cksum();
        self.tar.append(&header, records.as_slice())
    }

    /// Appends `manifest.json` and closes the streams; returns what was written.
    pub fn finish(mut self, meta: ManifestMeta) -> io::Result<(W, ArtifactSummary)> {
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            tool: "supascale".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            meta,
            entries: std::mem::take(&mut self.entries),
            warnings: std::mem::take(&mut self.warnings),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
        let mut header = produced_file_header(json.len() as u64, 0o644);
        self.tar
            .append_data(&mut header, "manifest.json", json.as_slice())?;
        let encoder = self.tar.into_inner()?;
        let mut tally = encoder.finish()?.finish()?;
        tally.flush()?;
        let summary = ArtifactSummary {
            bytes: tally.bytes,
            sha256: hex::encode(tally.hasher.finalize()),
            manifest,
        };
        Ok((tally.inner, summary))
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// The zeros after `size` bytes of an entry's data, up to a whole 512-byte
/// record.
fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// The header of a file the backup produced (a dump, the manifest): no
/// source metadata, so `mode` and the time now.
fn produced_file_header(size: u64, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::Regular);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    header
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the
/// whole record, itself included.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Yields exactly `remaining` bytes of `inner`, zero-padded if it ends
/// early, and hashes what it yields.
struct ExactLength<R> {
    inner: R,
    remaining: u64,
    hasher: Sha256,
    short: bool,
}

impl<R: Read> Read for ExactLength<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize).min(COPY_BUFFER);
        let n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::pax_record;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for value_len in [0usize, 1, 5, 6, 7, 85, 90, 95, 100, 995, 1000] {
            let mut out = Vec::new();
            pax_record(&mut out, "SCHILY.xattr.user.x", &vec![b'a'; value_len]);
            let text = String::from_utf8(out.clone()).unwrap();
            let declared: usize = text.split(' ').next().unwrap().parse().unwrap();
            assert_eq!(declared, out.len(), "value of {value_len}");
        }
    }
}
