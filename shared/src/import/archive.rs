//! What an upload is, judged by its content (never its name), and its
//! entries read the same way whether it is a ZIP or a (gzip-compressed) tar.
//!
//! # Detection
//!
//! [`detect`] reads the first 64 KiB: `PK\x03\x04` (or the empty archive's
//! `PK\x05\x06`) is a ZIP; `1f 8b` is gzip, whose first decompressed bytes
//! are then judged like an uncompressed file: `ustar` at offset 257 is a tar
//! archive, `PGDMP` a PostgreSQL custom-format dump, valid UTF-8 without NUL
//! bytes plain SQL (a multi-byte character cut by the end of the sample is
//! fine). Anything else is [`Detected::Unknown`]. [`check_claim`] then
//! compares with what the file's extension promises, for a clear message.
//!
//! # Entries
//!
//! Both passes over an archive go through the same code: [`list_entries`]
//! reads only headers, so the caller can choose a layout before anything
//! is written; [`stage_entries`] feeds each entry the caller places to
//! [`StagedTree::add`], the restore's extractor and its checks. A ZIP entry
//! is transcoded into a one-entry tar stream whose data is read from the
//! ZIP as the tree writes it: the tar header carries the ZIP's name (so
//! messages name it), its unix mode (or 0644, 0755 for folders), its time
//! and its *declared* size, so a size over the limit is refused before a
//! byte is inflated; the ZIP reader refuses data longer than declared, and
//! data shorter than declared or a CRC mismatch are errors too.
//!
//! Names are read as UTF-8 (a tar name that is not is refused), with `\` as
//! a separator as Windows tools write it; empty and `.` components are
//! dropped; `..`, a leading `/` and a drive letter (`C:`) are refused.
//! The path the caller places an entry at is checked again by the tree.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use flate2::read::MultiGzDecoder;
use tar::{EntryType, Header};

use super::ImportError;
use crate::restore::staging::{Added, Limits, StagedTree};

/// Whether an I/O error met while reading an archive and writing its
/// entries is ours. Decoders (gzip, tar, zip) report broken input as errors
/// without an OS error code; the kernel's codes are about our disk, except
/// the few an entry's own name causes.
pub(crate) fn is_ours(e: &io::Error) -> bool {
    crate::disk::is_out_of_space(e)
        || e.raw_os_error()
            .is_some_and(|code| !matches!(code, libc::ENAMETOOLONG | libc::EILSEQ))
}

/// An error met while reading the archive, judged by [`is_ours`].
pub(crate) fn reading(what: &str, e: io::Error) -> ImportError {
    if crate::disk::find_out_of_space(&e).is_some() {
        ImportError::Io(e)
    } else if is_ours(&e) {
        ImportError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        ImportError::Invalid(format!("{what}: {e}"))
    }
}

const SAMPLE: usize = 64 * 1024;
/// Longest symlink target read from a ZIP entry's data (Linux's PATH_MAX).
const MAX_LINK_TARGET: u64 = 4096;
const S_IFMT: u32 = 0o170000;
const S_IFLNK: u32 = 0o120000;
const S_IFDIR: u32 = 0o040000;

/// What an upload's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Zip,
    Tar,
    TarGz,
    /// Gzip whose content is none of the below.
    Gzip,
    /// Starts with `PGDMP`.
    CustomDump,
    GzipCustomDump,
    PlainSql,
    GzipPlainSql,
    Unknown,
}

impl Detected {
    /// "a ZIP archive", for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Detected::Zip => "a ZIP archive",
            Detected::Tar => "a tar archive",
            Detected::TarGz => "a gzip-compressed tar archive",
            Detected::Gzip => "gzip-compressed data of an unknown kind",
            Detected::CustomDump => "a PostgreSQL custom-format dump",
            Detected::GzipCustomDump => "a gzip-compressed PostgreSQL custom-format dump",
            Detected::PlainSql => "plain SQL",
            Detected::GzipPlainSql => "gzip-compressed plain SQL",
            Detected::Unknown => "of a kind we do not know",
        }
    }

    /// A ZIP or tar archive, the kinds [`stage_entries`] reads.
    pub fn is_archive(self) -> bool {
        matches!(self, Detected::Zip | Detected::Tar | Detected::TarGz)
    }

    fn is_gzip(self) -> bool {
        matches!(
            self,
            Detected::TarGz | Detected::Gzip | Detected::GzipCustomDump | Detected::GzipPlainSql
        )
    }
}

/// Judges the file at `path` by its first bytes (see the module doc).
pub fn detect(path: &Path) -> io::Result<Detected> {
    let mut file = File::open(path)?;
    let head = read_sample(&mut file).map_err(|(_, e)| e)?;
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Detected::Zip);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        file.rewind()?;
        // Broken gzip: what came out before the break is still judged, and
        // reading it for real reports the break.
        let inner = read_sample(&mut MultiGzDecoder::new(BufReader::new(file)))
            .unwrap_or_else(|(partial, _)| partial);
        return Ok(match judge_plain(&inner) {
            Detected::Tar => Detected::TarGz,
            Detected::CustomDump => Detected::GzipCustomDump,
            Detected::PlainSql => Detected::GzipPlainSql,
            _ => Detected::Gzip,
        });
    }
    Ok(judge_plain(&head))
}

/// Up to [`SAMPLE`] bytes; on error, those read before it with the error.
fn read_sample(reader: &mut impl Read) -> Result<Vec<u8>, (Vec<u8>, io::Error)> {
    let mut sample = Vec::with_capacity(SAMPLE);
    match reader.take(SAMPLE as u64).read_to_end(&mut sample) {
        Ok(_) => Ok(sample),
        Err(e) => Err((sample, e)),
    }
}

fn judge_plain(head: &[u8]) -> Detected {
    if head.get(257..262) == Some(b"ustar") {
        Detected::Tar
    } else if head.starts_with(b"PGDMP") {
        Detected::CustomDump
    } else if is_text(head) {
        Detected::PlainSql
    } else {
        Detected::Unknown
    }
}

fn is_text(head: &[u8]) -> bool {
    if head.is_empty() || head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // `None`: the input ended inside a character, i.e. the sample cut it.
        Err(e) => e.error_len().is_none() && head.len() == SAMPLE,
    }
}

/// What a file name's extension promises, and the message's words for it.
fn claim_of(file_name: &str) -> Option<(&'static [Detected], &'static str)> {
    let lower = file_name.to_ascii_lowercase();
    let claims: [(&str, &[Detected], &str); 9] = [
        (
            ".tar.gz",
            &[Detected::TarGz],
            "is not a gzip-compressed tar archive",
        ),
        (
            ".tgz",
            &[Detected::TarGz],
            "is not a gzip-compressed tar archive",
        ),
        (
            ".sql.gz",
            &[Detected::GzipPlainSql],
            "is not gzip-compressed plain SQL",
        ),
        (
            ".dump.gz",
            &[Detected::GzipCustomDump, Detected::GzipPlainSql],
            "is neither a gzip-compressed PostgreSQL custom-format dump nor gzip-compressed \
             plain SQL",
        ),
        (
            ".gz",
            &[
                Detected::TarGz,
                Detected::Gzip,
                Detected::GzipCustomDump,
                Detected::GzipPlainSql,
            ],
            "is not gzip-compressed",
        ),
        (".zip", &[Detected::Zip], "is not a ZIP archive"),
        (".tar", &[Detected::Tar], "is not a tar archive"),
        (
            ".dump",
            &[Detected::CustomDump, Detected::PlainSql],
            "is neither a PostgreSQL custom-format dump nor plain SQL",
        ),
        (".sql", &[Detected::PlainSql], "is not plain SQL"),
    ];
    claims
        .into_iter()
        .find(|(ext, _, _)| lower.ends_with(ext))
        .map(|(_, kinds, words)| (kinds, words))
}

/// Checks that `detected` is what the extension of `file_name` says (when
/// it says anything we know) and one of `allowed`. The message names the
/// file and both kinds, e.g. `photos.zip is not a ZIP archive (its content
/// is a gzip-compressed tar archive)`.
pub fn check_claim(
    file_name: &str,
    detected: &Detected,
    allowed: &[Detected],
) -> Result<(), String> {
    let detected = *detected;
    if let Some((kinds, words)) = claim_of(file_name)
        && !kinds.contains(&detected)
    {
        return Err(format!(
            "{file_name} {words} (its content is {})",
            detected.describe()
        ));
    }
    if allowed.contains(&detected) {
        return Ok(());
    }
    let expected = allowed
        .iter()
        .map(|kind| kind.describe())
        .collect::<Vec<_>>()
        .join(" or ");
    Err(format!(
        "{file_name} is {}; expected {expected}",
        detected.describe()
    ))
}

// ---------------------------------------------------------------------------
// Entries

/// An entry's kind, as far as the layout decisions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    HardLink,
}

/// One entry of an archive, as [`list_entries`] and [`stage_entries`] see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// Position among the archive's entries (tar's metadata-only records not
    /// counted), the same in both passes.
    pub index: usize,
    /// The name as the archive writes it, for messages.
    pub shown: String,
    /// Normalised (see the module doc); empty for the archive's root.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Declared size of a file's data.
    pub size: u64,
    /// A hard link's target, normalised like `path`.
    pub link: Option<PathBuf>,
}

impl EntryInfo {
    /// The path's components, all plain UTF-8 names.
    pub fn names(&self) -> Vec<&str> {
        self.path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => name.to_str(),
                _ => None,
            })
            .collect()
    }
}

/// `raw` as a relative path, or why it is refused.
pub(crate) fn normalize(raw: &str) -> Result<PathBuf, ImportError> {
    let refuse = |why: &str| Err(ImportError::Invalid(format!("{raw}: refused: {why}")));
    if raw.contains('\0') {
        return refuse("the name holds a NUL byte");
    }
    let unified = raw.replace('\\', "/");
    let bytes = unified.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return refuse("absolute Windows path (drive letter)");
    }
    if unified.starts_with('/') {
        return refuse("absolute path");
    }
    let mut path = PathBuf::new();
    for part in unified.split('/') {
        match part {
            "" | "." => {}
            ".." => return refuse("`..` would climb out of the imported folder"),
            name => path.push(name),
        }
    }
    Ok(path)
}

fn check_stop(stop: &AtomicBool) -> Result<(), ImportError> {
    if stop.load(Ordering::Relaxed) {
        Err(ImportError::Cancelled)
    } else {
        Ok(())
    }
}

fn not_an_archive(detected: Detected) -> ImportError {
    ImportError::Invalid(format!(
        "the upload is {}, not a ZIP or tar archive",
        detected.describe()
    ))
}

/// Counts entries and declared bytes against the limits, so a header pass
/// over a bomb stops as early as the staging would.
struct Tally {
    limits: Limits,
    entries: u64,
    bytes: u64,
}

impl Tally {
    fn add(&mut self, info: &EntryInfo) -> Result<(), ImportError> {
        self.entries += 1;
        if let Some(limit) = self.limits.max_entries
            && self.entries > limit
        {
            return Err(ImportError::Invalid(format!(
                "{}: the archive goes over the limit of {limit} entries",
                info.shown
            )));
        }
        self.bytes = self.bytes.saturating_add(info.size);
        self.limits
            .check_bytes(Path::new(&info.shown), self.bytes)
            .map_err(|e| ImportError::Invalid(e.to_string()))?;
        // Skipping an entry's data means reading it: a header that already
        // does not fit on the disk stops the pass here.
        if let Some(disk) = &self.limits.disk {
            disk.check_declared(self.bytes)?;
        }
        Ok(())
    }
}

/// Every entry's name and kind, from headers only; refuses names, kinds
/// and sizes the staging would refuse anyway, so a layout is never chosen
/// from them. Hostile content still goes through [`stage_entries`].
pub fn list_entries(
    archive: &Path,
    detected: Detected,
    limits: Limits,
    stop: &AtomicBool,
) -> Result<Vec<EntryInfo>, ImportError> {
    let mut tally = Tally {
        limits,
        entries: 0,
        bytes: 0,
    };
    let mut out = Vec::new();
    match detected {
        Detected::Zip => {
            let mut zip = open_zip(archive)?;
            for index in 0..zip.len() {
                check_stop(stop)?;
                let file = zip_entry(&mut zip, index, true)?;
                let info = zip_info(index, &file)?;
                tally.add(&info)?;
                out.push(info);
            }
        }
        Detected::Tar | Detected::TarGz => {
            let mut tar = open_tar(archive, detected)?;
            let mut index = 0;
            for entry in tar.entries().map_err(|e| reading("the tar archive", e))? {
                check_stop(stop)?;
                let entry = entry.map_err(|e| {
                    reading(
                        &damaged_after(out.last().map(|i: &EntryInfo| i.shown.as_str())),
                        e,
                    )
                })?;
                if let Some(info) = tar_info(index, &entry)? {
                    tally.add(&info)?;
                    out.push(info);
                    index += 1;
                }
            }
        }
        other => return Err(not_an_archive(other)),
    }
    Ok(out)
}

/// What the files of `entries` declare, together: what staging them
/// writes at most.
pub fn declared_bytes(entries: &[EntryInfo]) -> u64 {
    entries
        .iter()
        .fold(0u64, |total, entry| total.saturating_add(entry.size))
}

/// An entry [`stage_entries`] handed to the tree.
#[derive(Debug, Clone)]
pub struct StagedEntry {
    pub info: EntryInfo,
    /// Where it went, relative to the staged folder.
    pub rel: PathBuf,
    pub added: Added,
}

/// Stages the entries `place` puts somewhere (`Some(path relative to the
/// staged folder)`; `None` skips the entry) through [`StagedTree::add`].
/// `stop` is looked at between entries.
pub fn stage_entries(
    archive: &Path,
    detected: Detected,
    tree: &mut StagedTree,
    stop: &AtomicBool,
    mut place: impl FnMut(&EntryInfo) -> Result<Option<PathBuf>, ImportError>,
) -> Result<Vec<StagedEntry>, ImportError> {
    let mut staged = Vec::new();
    match detected {
        Detected::Zip => {
            let mut zip = open_zip(archive)?;
            for index in 0..zip.len() {
                check_stop(stop)?;
                let mut file = zip_entry(&mut zip, index, false)?;
                let info = zip_info(index, &file)?;
                let Some(rel) = place(&info)? else {
                    continue;
                };
                let added = add_zip_entry(tree, &rel, &info, &mut file)?;
                staged.push(StagedEntry { info, rel, added });
            }
        }
        Detected::Tar | Detected::TarGz => {
            let mut tar = open_tar(archive, detected)?;
            let mut index = 0;
            let mut last: Option<String> = None;
            for entry in tar.entries().map_err(|e| reading("the tar archive", e))? {
                check_stop(stop)?;
                let mut entry = entry.map_err(|e| reading(&damaged_after(last.as_deref()), e))?;
                let Some(info) = tar_info(index, &entry)? else {
                    continue;
                };
                last = Some(info.shown.clone());
                index += 1;
                let Some(rel) = place(&info)? else {
                    continue;
                };
                let added = tree.add(&rel, &mut entry)?;
                staged.push(StagedEntry { info, rel, added });
            }
        }
        other => return Err(not_an_archive(other)),
    }
    Ok(staged)
}

// ---------------------------------------------------------------------------
// Tar

fn open_tar(
    archive: &Path,
    detected: Detected,
) -> Result<tar::Archive<Box<dyn Read>>, ImportError> {
    let file = BufReader::new(File::open(archive)?);
    let reader: Box<dyn Read> = if detected.is_gzip() {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(tar::Archive::new(reader))
}

/// `None` for records that only carry metadata for others.
fn tar_info<R: Read>(
    index: usize,
    entry: &tar::Entry<'_, R>,
) -> Result<Option<EntryInfo>, ImportError> {
    let raw = entry.path_bytes();
    let shown = match std::str::from_utf8(&raw) {
        Ok(name) => name.to_string(),
        Err(_) => {
            return Err(ImportError::Invalid(format!(
                "{}: refused: the name is not UTF-8",
                String::from_utf8_lossy(&raw)
            )));
        }
    };
    let kind = match entry.header().entry_type() {
        EntryType::XGlobalHeader | EntryType::XHeader => return Ok(None),
        EntryType::Directory => EntryKind::Dir,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => EntryKind::File,
        EntryType::Symlink => EntryKind::Symlink,
        EntryType::Link => EntryKind::HardLink,
        EntryType::Char => return Err(unsupported(&shown, "character device")),
        EntryType::Block => return Err(unsupported(&shown, "block device")),
        EntryType::Fifo => return Err(unsupported(&shown, "FIFO")),
        other => return Err(unsupported(&shown, &format!("{other:?}"))),
    };
    let path = normalize(&shown)?;
    let link = match kind {
        EntryKind::HardLink => {
            let target = entry.link_name_bytes().unwrap_or_default();
            let target = String::from_utf8_lossy(&target);
            Some(normalize(&target).map_err(|_| {
                ImportError::Invalid(format!(
                    "{shown}: refused: hard link to {target} leads out of the imported folder"
                ))
            })?)
        }
        _ => None,
    };
    let size = if kind == EntryKind::File {
        entry.size()
    } else {
        0
    };
    Ok(Some(EntryInfo {
        index,
        shown,
        path,
        kind,
        size,
        link,
    }))
}

/// The place of a break in a tar stream: reading the next header skips the
/// previous entry's data, so the break is in that data or after it.
fn damaged_after(last: Option<&str>) -> String {
    match last {
        Some(shown) => format!("the tar archive, at or after {shown}"),
        None => "the tar archive".to_string(),
    }
}

fn unsupported(shown: &str, kind: &str) -> ImportError {
    ImportError::Invalid(format!("{shown}: refused: {kind} entries are not imported"))
}

// ---------------------------------------------------------------------------
// Zip

fn open_zip(archive: &Path) -> Result<zip::ZipArchive<BufReader<File>>, ImportError> {
    let file = BufReader::new(File::open(archive)?);
    zip::ZipArchive::new(file).map_err(|e| zip_error("the ZIP archive", e))
}

fn zip_entry<'a>(
    zip: &'a mut zip::ZipArchive<BufReader<File>>,
    index: usize,
    raw: bool,
) -> Result<zip::read::ZipFile<'a, BufReader<File>>, ImportError> {
    let what = match zip.name_for_index(index) {
        Some(Ok(name)) => format!("{name} (in the ZIP archive)"),
        _ => format!("entry {index} of the ZIP archive"),
    };
    let file = if raw {
        zip.by_index_raw(index)
    } else {
        zip.by_index(index)
    };
    file.map_err(|e| zip_error(&what, e))
}

fn zip_error(what: &str, e: zip::result::ZipError) -> ImportError {
    match e {
        zip::result::ZipError::Io(e) => reading(what, e),
        other => ImportError::Invalid(format!("{what}: {other}")),
    }
}

fn zip_info<R: Read>(
    index: usize,
    file: &zip::read::ZipFile<'_, R>,
) -> Result<EntryInfo, ImportError> {
    let shown = match file.name() {
        Ok(name) => name.into_owned(),
        Err(e) => return Err(zip_error(&format!("entry {index} of the ZIP archive"), e)),
    };
    let kind = match file.unix_mode().map(|mode| mode & S_IFMT) {
        Some(S_IFLNK) => EntryKind::Symlink,
        Some(S_IFDIR) => EntryKind::Dir,
        _ if file.is_dir() => EntryKind::Dir,
        Some(0) | None => EntryKind::File,
        Some(0o100000) => EntryKind::File,
        Some(_) => return Err(unsupported(&shown, "device, FIFO or socket")),
    };
    let path = normalize(&shown)?;
    let size = if kind == EntryKind::File {
        file.size()
    } else {
        0
    };
    Ok(EntryInfo {
        index,
        shown,
        path,
        kind,
        size,
        link: None,
    })
}

/// Stages one ZIP entry through a one-entry tar stream (see the module doc).
fn add_zip_entry<R: Read + Seek>(
    tree: &mut StagedTree,
    rel: &Path,
    info: &EntryInfo,
    file: &mut zip::read::ZipFile<'_, R>,
) -> Result<Added, ImportError> {
    let shown = &info.shown;
    let mode = file.unix_mode().map(|mode| mode & 0o7777);
    let mtime = file.last_modified().map_or(0, zip_time);
    let mut link_target = Vec::new();
    let (kind, mode, size) = match info.kind {
        EntryKind::Dir => (EntryType::Directory, mode.unwrap_or(0o755), 0),
        EntryKind::Symlink => {
            file.by_ref()
                .take(MAX_LINK_TARGET + 1)
                .read_to_end(&mut link_target)
                .map_err(|e| reading(shown, e))?;
            if link_target.len() as u64 > MAX_LINK_TARGET {
                return Err(ImportError::Invalid(format!(
                    "{shown}: refused: symlink target longer than {MAX_LINK_TARGET} bytes"
                )));
            }
            (EntryType::Symlink, mode.unwrap_or(0o777), 0)
        }
        _ => (EntryType::Regular, mode.unwrap_or(0o644), file.size()),
    };
    let mut stream = Vec::with_capacity(1536);
    if shown.len() > 100 {
        long_name_record(&mut stream, EntryType::GNULongName, shown.as_bytes());
    }
    if link_target.len() > 100 {
        long_name_record(&mut stream, EntryType::GNULongLink, &link_target);
    }
    let mut header = Header::new_gnu();
    copy_truncated(&mut header.as_old_mut().name, shown.as_bytes());
    copy_truncated(&mut header.as_old_mut().linkname, &link_target);
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_size(size);
    header.set_cksum();
    stream.extend_from_slice(header.as_bytes());
    let added = {
        let mut one = tar::Archive::new(io::Cursor::new(stream).chain(file.by_ref()));
        let mut entries = one.entries().map_err(|e| reading(shown, e))?;
        let mut entry = match entries.next() {
            Some(entry) => entry.map_err(|e| reading(shown, e))?,
            None => return Err(ImportError::Invalid(format!("{shown}: unreadable"))),
        };
        tree.add(rel, &mut entry)?
    };
    // Reading on to the end makes the ZIP reader compare the CRC and the
    // size with the declared ones.
    let mut rest = [0u8; 1];
    match file.read(&mut rest) {
        Ok(0) => Ok(added),
        Ok(_) => Err(ImportError::Invalid(format!(
            "{shown}: the data is longer than the ZIP declares"
        ))),
        Err(e) => Err(reading(shown, e)),
    }
}

/// A GNU record giving the next entry's name (or link target) in full.
fn long_name_record(stream: &mut Vec<u8>, kind: EntryType, name: &[u8]) {
    let mut header = Header::new_gnu();
    copy_truncated(&mut header.as_old_mut().name, b"././@LongLink");
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(name.len() as u64 + 1);
    header.set_cksum();
    stream.extend_from_slice(header.as_bytes());
    stream.extend_from_slice(name);
    stream.push(0);
    let padding = (512 - (name.len() + 1) % 512) % 512;
    stream.resize(stream.len() + padding, 0);
}

fn copy_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// A ZIP's local time, read as UTC: the format has no zone.
fn zip_time(time: zip::DateTime) -> u64 {
    chrono::NaiveDate::from_ymd_opt(
        i32::from(time.year()),
        u32::from(time.month()),
        u32::from(time.day()),
    )
    .and_then(|date| {
        date.and_hms_opt(
            u32::from(time.hour()),
            u32::from(time.minute()),
            u32::from(time.second()),
        )
    })
    .and_then(|at| u64::try_from(at.and_utc().timestamp()).ok())
    .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::testing::*;
    use std::fs;
    use std::io::Write;

    fn detect_bytes(name: &str, bytes: &[u8]) -> Detected {
        let dir = tempfile::tempdir().unwrap();
        detect(&upload(dir.path(), name, bytes)).unwrap()
    }

    #[test]
    fn detects_by_content_not_name() {
        let tar = Tar::new().file("a.txt", b"hi").bytes();
        let zip = Zip::new().file("a.txt", b"hi").bytes();
        let sql = b"-- dump\nCREATE TABLE t (id int);\n".to_vec();
        let custom = b"PGDMP\x01\x0e\x00\x04\x08\x01\x01".to_vec();
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let cases: Vec<(&str, Vec<u8>, Detected)> = vec![
            ("x.tar.gz", zip.clone(), Detected::Zip),
            ("x.zip", Zip::new().bytes(), Detected::Zip),
            ("x.zip", tar.clone(), Detected::Tar),
            ("x.sql", gzip(&tar), Detected::TarGz),
            ("x", custom.clone(), Detected::CustomDump),
            ("x", gzip(&custom), Detected::GzipCustomDump),
            ("x.zip", sql.clone(), Detected::PlainSql),
            ("x", gzip(&sql), Detected::GzipPlainSql),
            ("x.gz", gzip(&random), Detected::Gzip),
            ("x.sql", random.clone(), Detected::Unknown),
            ("x.sql", b"SELECT 1;\0".to_vec(), Detected::Unknown),
            ("x.sql", Vec::new(), Detected::Unknown),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(detect_bytes(name, &bytes), expected, "{name} {expected:?}");
        }
        // A multi-byte character cut by the end of the 64 KiB sample.
        let mut long = vec![b'-'; SAMPLE - 1];
        long.extend_from_slice("é;\n".as_bytes());
        assert_eq!(detect_bytes("x", &long), Detected::PlainSql);
        // The same cut at the end of the file is not text.
        assert_eq!(detect_bytes("x", &"é".as_bytes()[..1]), Detected::Unknown);
        // A truncated tar.gz is still a tar.gz (reading it says it is cut).
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
            .collect();
        let whole = Tar::new().file("big", &big).gz();
        assert_eq!(
            detect_bytes("x", &whole[..whole.len() / 2]),
            Detected::TarGz
        );
    }

    #[test]
    fn claims_are_checked_against_the_content() {
        let archives = [Detected::Zip, Detected::Tar, Detected::TarGz];
        assert_eq!(
            check_claim("photos.zip", &Detected::TarGz, &archives).unwrap_err(),
            "photos.zip is not a ZIP archive (its content is a gzip-compressed tar archive)"
        );
        assert_eq!(
            check_claim("f.tgz", &Detected::Zip, &archives).unwrap_err(),
            "f.tgz is not a gzip-compressed tar archive (its content is a ZIP archive)"
        );
        let dumps = [
            Detected::CustomDump,
            Detected::PlainSql,
            Detected::GzipCustomDump,
            Detected::GzipPlainSql,
        ];
        assert!(
            check_claim("backup.dump", &Detected::Unknown, &dumps)
                .unwrap_err()
                .starts_with(
                    "backup.dump is neither a PostgreSQL custom-format dump nor plain SQL"
                )
        );
        assert!(check_claim("backup.dump", &Detected::CustomDump, &dumps).is_ok());
        assert!(check_claim("backup.gz", &Detected::GzipCustomDump, &dumps).is_ok());
        assert!(check_claim("backup.gz", &Detected::GzipPlainSql, &dumps).is_ok());
        assert!(check_claim("BACKUP.SQL", &Detected::PlainSql, &dumps).is_ok());
        assert!(check_claim("backup.sql", &Detected::CustomDump, &dumps).is_err());
        // No extension we know: the content alone decides.
        assert!(check_claim("upload", &Detected::TarGz, &archives).is_ok());
        assert!(check_claim("photos.7z", &Detected::Zip, &archives).is_ok());
        assert_eq!(
            check_claim("upload", &Detected::PlainSql, &archives).unwrap_err(),
            "upload is plain SQL; expected a ZIP archive or a tar archive or a gzip-compressed \
             tar archive"
        );
    }

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(normalize("./a/./b//c").unwrap(), PathBuf::from("a/b/c"));
        assert_eq!(
            normalize("a\\b\\c.txt").unwrap(),
            PathBuf::from("a/b/c.txt")
        );
        assert_eq!(normalize("./").unwrap(), PathBuf::new());
        for (raw, why) in [
            ("../evil", "`..`"),
            ("a/../../evil", "`..`"),
            ("..\\..\\evil", "`..`"),
            ("/etc/evil", "absolute path"),
            ("C:\\Windows\\evil", "drive letter"),
            ("c:/evil", "drive letter"),
        ] {
            match normalize(raw) {
                Err(ImportError::Invalid(message)) => {
                    assert!(message.starts_with(raw), "{message}");
                    assert!(message.contains(why), "{message}");
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    fn stage_all(
        archive: &Path,
        target: &Path,
        limits: Limits,
        stop: &AtomicBool,
    ) -> Result<(StagedTree, Vec<StagedEntry>), ImportError> {
        let detected = detect(archive)?;
        list_entries(archive, detected, limits, stop)?;
        let options = crate::restore::staging::Options {
            limits,
            ..Default::default()
        };
        let mut tree = StagedTree::begin_with(target, JOB, options)?;
        let staged = stage_entries(archive, detected, &mut tree, stop, |info| {
            Ok(Some(info.path.clone()))
        })?;
        Ok((tree, staged))
    }

    #[test]
    fn zip_entries_become_files_folders_and_symlinks_with_their_names() {
        let uploads = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("t");
        let long = format!("{}/{}.txt", "d".repeat(120), "é".repeat(60));
        let zip = Zip::new()
            .dir("dir/")
            .file("dir/a b.txt", b"hello")
            .file(&long, b"long")
            .symlink("dir/link", "a b.txt")
            .file("win\\path.txt", b"w")
            .bytes();
        let archive = upload(uploads.path(), "x.zip", &zip);
        let (_tree, staged) = stage_all(&archive, &target, no_limits(), &GO).unwrap();
        let kinds: Vec<(String, &Added)> = staged
            .iter()
            .map(|s| (s.info.shown.clone(), &s.added))
            .collect();
        assert!(
            matches!(kinds[1].1, Added::File { size: 5, .. }),
            "{kinds:?}"
        );
        assert!(matches!(kinds[3].1, Added::Symlink { .. }), "{kinds:?}");
        let dir = target.join(format!(".supascale-restore-{JOB}"));
        assert_eq!(fs::read(dir.join("dir/a b.txt")).unwrap(), b"hello");
        assert_eq!(fs::read(dir.join(&long)).unwrap(), b"long");
        assert_eq!(
            fs::read_link(dir.join("dir/link")).unwrap(),
            PathBuf::from("a b.txt")
        );
        assert_eq!(fs::read(dir.join("win/path.txt")).unwrap(), b"w");
    }

    #[test]
    fn a_zip_crc_mismatch_is_invalid_and_names_the_entry() {
        let uploads = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut writer = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        writer.start_file("victim.txt", stored).unwrap();
        writer.write_all(b"0123456789abcdef").unwrap();
        let mut bytes = writer.finish().unwrap().into_inner();
        let at = bytes
            .windows(16)
            .position(|w| w == b"0123456789abcdef")
            .unwrap();
        bytes[at + 3] = b'X';
        let archive = upload(uploads.path(), "x.zip", &bytes);
        match stage_all(&archive, &root.path().join("t"), no_limits(), &GO) {
            Err(ImportError::Invalid(message)) => {
                assert!(message.contains("victim.txt"), "{message}");
                assert!(message.to_lowercase().contains("checksum"), "{message}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a CRC mismatch was accepted"),
        }
    }

    /// A ZIP whose entry declares fewer bytes than its data inflates to:
    /// the declared size passes the limit, the inflating must stop.
    #[test]
    fn a_zip_entry_longer_than_declared_is_stopped_while_inflating() {
        let uploads = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let mut bytes = Zip::new().file("bomb.bin", &vec![0u8; 4 << 20]).bytes();
        assert!(bytes.len() < 8192, "{}", bytes.len());
        for (signature, offset) in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)] {
            let at = bytes.windows(4).position(|w| w == signature).unwrap() + offset;
            bytes[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        }
        let archive = upload(uploads.path(), "x.zip", &bytes);
        let limits = Limits {
            max_bytes: Some(1 << 20),
            ..Limits::default()
        };
        let target = root.path().join("t");
        match stage_all(&archive, &target, limits, &GO) {
            Err(ImportError::Invalid(message)) => {
                assert!(message.contains("bomb.bin"), "{message}");
                assert!(message.contains("declared"), "{message}");
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a lying ZIP was accepted"),
        }
        assert_eq!(names(&target), Vec::<String>::new());
    }

    #[test]
    fn a_raised_stop_flag_cancels_between_entries() {
        let uploads = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        let stop = AtomicBool::new(true);
        for (name, bytes) in [
            ("x.zip", Zip::new().file("a", b"a").bytes()),
            ("x.tar", Tar::new().file("a", b"a").bytes()),
        ] {
            let archive = upload(uploads.path(), name, &bytes);
            assert!(matches!(
                stage_all(&archive, &root.path().join("t"), no_limits(), &stop),
                Err(ImportError::Cancelled)
            ));
        }
    }
}
