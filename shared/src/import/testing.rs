//! Archives built in tests, and what a folder looks like on disk.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Cursor, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};
use zip::write::SimpleFileOptions;

use crate::restore::staging::Limits;

pub const JOB: &str = "import-1";
pub const T: u64 = 1_600_000_000;
pub static GO: AtomicBool = AtomicBool::new(false);

pub fn no_limits() -> Limits {
    Limits::default()
}

/// Storage is useless without `user.*` xattrs; a test filesystem without
/// them must fail the tests, not skip the checks.
pub fn assert_user_xattrs_work(dir: &Path) {
    let probe = dir.join("probe");
    fs::write(&probe, b"").unwrap();
    xattr::set(&probe, "user.probe", b"1").expect("the test filesystem must support user.* xattrs");
    fs::remove_file(probe).unwrap();
}

pub struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    pub fn new() -> Self {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, size: u64, mode: u32) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(T);
        header
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut header = Self::header(EntryType::Directory, 0, 0o755);
        self.0.append_data(&mut header, path, io::empty()).unwrap();
        self
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        let mut header = Self::header(EntryType::Regular, data.len() as u64, 0o644);
        self.0.append_data(&mut header, path, data).unwrap();
        self
    }

    pub fn file_with_xattrs(mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let keys: Vec<String> = xattrs
            .iter()
            .map(|(k, _)| format!("SCHILY.xattr.{k}"))
            .collect();
        self.0
            .append_pax_extensions(
                keys.iter()
                    .map(String::as_str)
                    .zip(xattrs.iter().map(|(_, v)| *v)),
            )
            .unwrap();
        self.file(path, data)
    }

    pub fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut header = Self::header(kind, 0, 0o777);
        self.0.append_link(&mut header, path, target).unwrap();
        self
    }

    /// A name `tar::Builder` refuses (`..`, absolute), written as is.
    pub fn raw(mut self, name: &str, kind: EntryType, data: &[u8]) -> Self {
        let mut header = Self::header(kind, data.len() as u64, 0o644);
        let slot = &mut header.as_old_mut().name;
        slot.fill(0);
        slot[..name.len()].copy_from_slice(name.as_bytes());
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    /// A hard link whose target `tar::Builder` refuses.
    pub fn raw_link(mut self, name: &str, target: &str) -> Self {
        let mut header = Self::header(EntryType::Link, 0, 0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        header.set_cksum();
        self.0.append(&header, io::empty()).unwrap();
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }

    pub fn gz(self) -> Vec<u8> {
        gzip(&self.bytes())
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub struct Zip(zip::ZipWriter<Cursor<Vec<u8>>>);

impl Zip {
    pub fn new() -> Self {
        Zip(zip::ZipWriter::new(Cursor::new(Vec::new())))
    }

    fn options() -> SimpleFileOptions {
        SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
    }

    pub fn dir(mut self, path: &str) -> Self {
        self.0.add_directory(path, Self::options()).unwrap();
        self
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        self.0.start_file(path, Self::options()).unwrap();
        self.0.write_all(data).unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        self.0.add_symlink(path, target, Self::options()).unwrap();
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.0.finish().unwrap().into_inner()
    }
}

/// Writes `bytes` as `name` in a folder of its own, away from the target.
pub fn upload(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

/// Everything about a tree a user could notice: kinds, bytes, modes, link
/// targets, `user.*` xattrs, inodes and mtimes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub inode: u64,
    pub mtime_ns: i128,
}

pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let metadata = fs::symlink_metadata(&path).unwrap();
        let (kind, data) = if metadata.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(entry.unwrap().file_name()));
            }
            ("dir", Vec::new())
        } else if metadata.file_type().is_symlink() {
            let target = fs::read_link(&path).unwrap();
            ("symlink", target.into_os_string().into_encoded_bytes())
        } else {
            ("file", fs::read(&path).unwrap())
        };
        let xattrs = if kind == "symlink" {
            BTreeMap::new()
        } else {
            xattr::list(&path)
                .unwrap()
                .filter_map(|name| {
                    let name = name.to_string_lossy().into_owned();
                    let value = xattr::get(&path, &name).unwrap()?;
                    Some((name, value))
                })
                .collect()
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: metadata.permissions().mode() & 0o7777,
                data,
                xattrs,
                inode: metadata.ino(),
                mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                    + i128::from(metadata.mtime_nsec()),
            },
        );
    }
    out
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Checks that `result` is `Invalid` with all of `words` in its message, and
/// that the target is as it was, with nothing left beside or inside it.
pub fn assert_refused<T>(
    result: Result<T, super::ImportError>,
    target: &Path,
    before: &BTreeMap<PathBuf, Node>,
    words: &[&str],
) -> String {
    let message = match result {
        Err(super::ImportError::Invalid(message)) => message,
        Err(other) => panic!("expected Invalid, got {other:?}"),
        Ok(_) => panic!("expected Invalid, got success"),
    };
    for word in words {
        assert!(
            message.contains(word),
            "{message:?} should contain {word:?}"
        );
    }
    assert_eq!(&snapshot(target), before, "the target changed: {message}");
    let parent = target.parent().unwrap();
    assert_eq!(
        names(parent),
        vec![target.file_name().unwrap().to_string_lossy().into_owned()],
        "strays beside the target: {message}"
    );
    message
}
