use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use xattr::FileExt;

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::compress::{COPY_BUFFER, Compression, Compressor, Precompressed};
use super::manifest::{FORMAT_VERSION, Manifest, ManifestEntry, ManifestMeta};

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
    /// name order. A missing `source` adds nothing; a symlink is added as
    /// the link. The folders above `source` are followed as given.
    pub fn add_tree(&mut self, source: &Path, prefix: &str) -> io::Result<()> {
        let (parent, name) = match (source.parent(), source.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => (source, OsStr::new(".")),
        };
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        let dir = match rustix::fs::open(parent, dir_path_flags(), Mode::empty()) {
            Ok(dir) => dir,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.add_at(dir.as_fd(), name, prefix.trim_end_matches('/'))
    }

    /// Adds the folder `dir` (held open, e.g. a pinned project folder) and
    /// everything below it under `prefix/`.
    pub fn add_folder(&mut self, dir: BorrowedFd<'_>, prefix: &str) -> io::Result<()> {
        let folder = rustix::fs::openat(dir, ".", dir_read_flags(), Mode::empty())?;
        self.add_open_folder(File::from(folder), prefix.trim_end_matches('/'))
    }

    /// Adds `name` in `dir` at `archive_path` (a folder recursively),
    /// never following a symlink; a missing `name` adds nothing.
    pub fn add_at(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        archive_path: &str,
    ) -> io::Result<()> {
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(listed) => self.add_listed(dir, name, archive_path, &listed),
            Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds one entry of `dir` that was listed (`lstat`) as `listed`. It is
    /// opened with `O_NOFOLLOW` and read through that fd, its size and mode
    /// taken from the fd: a name that became a symlink or another kind
    /// since the listing is left out with a warning, never read through.
    pub fn add_listed(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        archive_path: &str,
        listed: &Stat,
    ) -> io::Result<()> {
        let kind = FileType::from_raw_mode(listed.st_mode);
        let opened = match kind {
            FileType::Symlink => {
                let target = match rustix::fs::readlinkat(dir, name, Vec::new()) {
                    Ok(target) => PathBuf::from(OsStr::from_bytes(target.as_bytes())),
                    Err(rustix::io::Errno::NOENT) => return self.vanished(archive_path),
                    Err(rustix::io::Errno::INVAL) => return self.changed(archive_path),
                    Err(e) => return Err(e.into()),
                };
                let mut header = self.header(&Meta::of_stat(listed), EntryType::Symlink, 0);
                self.tar.append_link(&mut header, archive_path, &target)?;
                self.entries.push(ManifestEntry {
                    path: archive_path.to_string(),
                    kind: "symlink".into(),
                    size: 0,
                    sha256: None,
                    link: Some(target.to_string_lossy().into_owned()),
                });
                return Ok(());
            }
            FileType::Directory => rustix::fs::openat(dir, name, dir_read_flags(), Mode::empty()),
            // Non-blocking: a FIFO put there since is not waited on.
            FileType::RegularFile => rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                Mode::empty(),
            ),
            _ => {
                self.warnings.push(format!(
                    "{archive_path}: not a regular file, folder or link; left out"
                ));
                return Ok(());
            }
        };
        let file = match opened {
            Ok(fd) => File::from(fd),
            Err(rustix::io::Errno::NOENT) => return self.vanished(archive_path),
            // A symlink (`O_NOFOLLOW`) or no longer a folder.
            Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
                return self.changed(archive_path);
            }
            Err(e) => return Err(e.into()),
        };
        let metadata = file.metadata()?;
        match kind {
            FileType::Directory if metadata.is_dir() => self.add_open_folder(file, archive_path),
            FileType::RegularFile if metadata.is_file() => {
                self.append_xattrs(&file, archive_path)?;
                let size = metadata.len();
                self.add_reader(archive_path, file, size, Some(&metadata))
            }
            _ => self.changed(archive_path),
        }
    }

    /// Adds an opened folder and, in name order, what it holds.
    fn add_open_folder(&mut self, folder: File, archive_path: &str) -> io::Result<()> {
        let metadata = folder.metadata()?;
        self.append_xattrs(&folder, archive_path)?;
        let mut header = self.header(&Meta::of(&metadata), EntryType::Directory, 0);
        self.tar
            .append_data(&mut header, format!("{archive_path}/"), io::empty())?;
        self.entries.push(ManifestEntry {
            path: format!("{archive_path}/"),
            kind: "dir".into(),
            size: 0,
            sha256: None,
            link: None,
        });
        let mut children = Vec::new();
        for entry in rustix::fs::Dir::read_from(&folder)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                children.push(name);
            }
        }
        children.sort();
        for name in children {
            let name = OsStr::from_bytes(&name);
            let child_path = format!("{archive_path}/{}", name.to_string_lossy());
            match rustix::fs::statat(&folder, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(listed) => self.add_listed(folder.as_fd(), name, &child_path, &listed)?,
                Err(rustix::io::Errno::NOENT) => self.vanished(&child_path)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn vanished(&mut self, archive_path: &str) -> io::Result<()> {
        self.warnings
            .push(format!("{archive_path}: vanished while backing up"));
        Ok(())
    }

    fn changed(&mut self, archive_path: &str) -> io::Result<()> {
        self.warnings.push(format!(
            "{archive_path}: changed while backing up (replaced by a symbolic link or \
             another kind of file); left out"
        ));
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
            Some(m) => self.header(&Meta::of(m), EntryType::Regular, size),
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

    fn header(&self, meta: &Meta, kind: EntryType, size: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(meta.mode & 0o7777);
        header.set_uid(meta.uid.into());
        header.set_gid(meta.gid.into());
        header.set_mtime(meta.mtime.max(0) as u64);
        header
    }

    /// Writes a PAX extended header carrying the extended attributes of
    /// the opened `file` (as GNU tar and bsdtar read them:
    /// `SCHILY.xattr.<name>`).
    fn append_xattrs(&mut self, file: &File, archive_path: &str) -> io::Result<()> {
        let names = match file.list_xattr() {
            Ok(names) => names,
            // A filesystem without xattr support has none to keep.
            Err(e) if e.raw_os_error() == Some(95) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for name in names {
            let Some(text) = name.to_str() else { continue };
            if let Some(value) = file.get_xattr(&name)? {
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

    /// Adds a warning of the caller's to the manifest.
    pub fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

/// What a header takes of a file's metadata, from `fstat` or `lstat`.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

impl Meta {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            mode: metadata.mode(),
            uid: metadata.uid(),
            gid: metadata.gid(),
            mtime: metadata.mtime(),
        }
    }

    fn of_stat(stat: &Stat) -> Self {
        Self {
            mode: stat.st_mode,
            uid: stat.st_uid,
            gid: stat.st_gid,
            mtime: stat.st_mtime,
        }
    }
}

/// A folder to open others from (`O_PATH`).
fn dir_path_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
}

/// A folder to list and read the xattrs of, never through a symlink.
fn dir_read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
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
    use super::*;

    const SECRET: &[u8] = b"not the project's";

    /// A builder's manifest and the artifact's bytes, decompressed.
    fn finish(builder: ArtifactBuilder<Vec<u8>>) -> (Vec<u8>, ArtifactSummary) {
        let meta = ManifestMeta {
            project_id: "p".into(),
            project_name: "P".into(),
            backup_type: "storage".into(),
            components: vec!["storage".into()],
            postgres_version: None,
            created_at: "2026-01-01T00:00:00Z".into(),
        };
        let (bytes, summary) = builder.finish(meta).unwrap();
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut plain)
            .unwrap();
        (plain, summary)
    }

    #[test]
    fn an_entry_that_became_a_symlink_after_its_listing_is_not_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), SECRET).unwrap();
        std::fs::write(dir.path().join("file"), b"public").unwrap();
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let folder = rustix::fs::open(dir.path(), dir_path_flags(), Mode::empty()).unwrap();
        let listed =
            |name: &str| rustix::fs::statat(&folder, name, AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let (file, sub) = (listed("file"), listed("folder"));
        // Swapped between the listing and the open.
        std::fs::remove_file(dir.path().join("file")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("file")).unwrap();
        std::fs::remove_dir(dir.path().join("folder")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("folder")).unwrap();
        let mut builder = ArtifactBuilder::new(Vec::new(), Compression::Gzip).unwrap();
        builder
            .add_listed(folder.as_fd(), OsStr::new("file"), "storage/file", &file)
            .unwrap();
        builder
            .add_listed(folder.as_fd(), OsStr::new("folder"), "storage/folder", &sub)
            .unwrap();
        let (plain, summary) = finish(builder);
        assert!(!plain.windows(SECRET.len()).any(|w| w == SECRET));
        let paths: Vec<_> = summary.manifest.entries.iter().map(|e| &e.path).collect();
        assert!(
            !paths.iter().any(|p| p.starts_with("storage/")),
            "{paths:?}"
        );
        for name in ["storage/file", "storage/folder"] {
            assert!(
                summary
                    .manifest
                    .warnings
                    .iter()
                    .any(|w| w.starts_with(name) && w.contains("changed while backing up")),
                "{name}: {:?}",
                summary.manifest.warnings
            );
        }
    }

    #[test]
    fn a_tree_keeps_its_symlinks_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), SECRET).unwrap();
        let tree = dir.path().join("storage");
        std::fs::create_dir_all(tree.join("a")).unwrap();
        std::fs::write(tree.join("a/file"), b"public").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), tree.join("a/link")).unwrap();
        let mut builder = ArtifactBuilder::new(Vec::new(), Compression::Gzip).unwrap();
        builder.add_tree(&tree, "storage").unwrap();
        let (plain, summary) = finish(builder);
        assert!(!plain.windows(SECRET.len()).any(|w| w == SECRET));
        let kinds: Vec<_> = summary
            .manifest
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("storage/", "dir"),
                ("storage/a/", "dir"),
                ("storage/a/file", "file"),
                ("storage/a/link", "symlink"),
            ]
        );
    }

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
