use super::*;
use std::os::unix::ffi::OsStringExt;
use tar::Header;

const JOB: &str = "job-1";
const UID: u64 = 1234;
const GID: u64 = 2345;
const T: u64 = 1_600_000_000;

fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Storage is useless without `user.*` xattrs; a test filesystem without
/// them must fail the tests, not skip the checks.
fn assert_user_xattrs_work(dir: &Path) {
    let probe = dir.join("probe");
    fs::write(&probe, b"").unwrap();
    xattr::set(&probe, "user.probe", b"1").expect("the test filesystem must support user.* xattrs");
    fs::remove_file(probe).unwrap();
}

/// Archives as the backup writes them, plus what only a hostile one has.
struct Archive(tar::Builder<Vec<u8>>);

impl Archive {
    fn new() -> Self {
        Archive(tar::Builder::new(Vec::new()))
    }

    fn header(kind: EntryType, size: u64, mode: u32, mtime: u64) -> Header {
        let mut header = Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_uid(UID);
        header.set_gid(GID);
        header
    }

    fn xattrs(&mut self, xattrs: &[(&str, &[u8])]) {
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
    }

    fn dir(mut self, path: &str, mode: u32, mtime: u64, xattrs: &[(&str, &[u8])]) -> Self {
        self.xattrs(xattrs);
        let mut header = Self::header(EntryType::Directory, 0, mode, mtime);
        self.0.append_data(&mut header, path, io::empty()).unwrap();
        self
    }

    fn file(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        mtime: u64,
        xattrs: &[(&str, &[u8])],
    ) -> Self {
        self.xattrs(xattrs);
        let mut header = Self::header(EntryType::Regular, data.len() as u64, mode, mtime);
        self.0.append_data(&mut header, path, data).unwrap();
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut header = Self::header(kind, 0, 0o777, T);
        self.0.append_link(&mut header, path, target).unwrap();
        self
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.link(EntryType::Symlink, path, target)
    }

    /// A name `tar::Builder` refuses (`..`, absolute), written straight
    /// into the header.
    fn raw(mut self, name: &[u8], kind: EntryType, data: &[u8]) -> Self {
        let mut header = Self::header(kind, data.len() as u64, 0o644, T);
        let slot = &mut header.as_old_mut().name;
        slot.fill(0);
        slot[..name.len()].copy_from_slice(name);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        header.set_cksum();
        self.0.append(&header, data).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

type Staged = (StagedTree, Vec<(PathBuf, Added)>);

/// Stages every entry as the restore job will: `storage/` stripped.
fn stage(target: &Path, options: Options, tar: &[u8]) -> Result<Staged, StageError> {
    let mut tree = StagedTree::begin_with(target, JOB, options).unwrap();
    let mut archive = tar::Archive::new(tar);
    let mut added = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let relative = path.strip_prefix("storage").unwrap_or(&path).to_path_buf();
        let what = tree.add(&relative, &mut entry)?;
        added.push((relative, what));
    }
    Ok((tree, added))
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    mtime: (i64, i64),
    owner: (u32, u32),
    ino: u64,
    bytes: Vec<u8>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Everything below `root` (itself included, as ""), links unfollowed.
fn snapshot(root: &Path, dir_mtimes: bool) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let (kind, bytes) = if m.file_type().is_symlink() {
            (
                'l',
                fs::read_link(&path).unwrap().into_os_string().into_vec(),
            )
        } else if m.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                stack.push(rel.join(entry.unwrap().file_name()));
            }
            ('d', Vec::new())
        } else {
            ('f', fs::read(&path).unwrap())
        };
        let mut xattrs = Vec::new();
        if kind != 'l' {
            for name in xattr::list(&path).unwrap() {
                let value = xattr::get(&path, &name).unwrap().unwrap();
                xattrs.push((name, value));
            }
            xattrs.sort();
        }
        let mtime = if kind == 'd' && !dir_mtimes {
            (0, 0)
        } else {
            (m.mtime(), m.mtime_nsec())
        };
        out.insert(
            rel,
            Node {
                kind,
                mode: m.mode() & 0o7777,
                mtime,
                owner: (m.uid(), m.gid()),
                ino: m.ino(),
                bytes,
                xattrs,
            },
        );
    }
    out
}

fn set_mtime_of(path: &Path, seconds: u64) {
    File::open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(UNIX_EPOCH + Duration::from_secs(seconds)))
        .unwrap();
}

fn mtime(path: &Path) -> i64 {
    fs::symlink_metadata(path).unwrap().mtime()
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A project's storage folder with content of every kind.
fn populate(target: &Path) {
    fs::create_dir_all(target.join("stub/stub/old bucket/empty")).unwrap();
    let object = target.join("stub/stub/old bucket/obj");
    fs::write(&object, b"old object").unwrap();
    xattr::set(&object, "user.supabase.etag", b"\"old\"").unwrap();
    fs::set_permissions(&object, Permissions::from_mode(0o604)).unwrap();
    set_mtime_of(&object, T - 50);
    std::os::unix::fs::symlink("stub/old bucket/obj", target.join("stub/link")).unwrap();
    fs::create_dir(target.join("only old")).unwrap();
    fs::write(target.join("only old/x"), b"x").unwrap();
    xattr::set(target, "user.mark", b"old").unwrap();
    fs::set_permissions(target, Permissions::from_mode(0o751)).unwrap();
    for dir in [
        "stub/stub/old bucket/empty",
        "stub/stub/old bucket",
        "stub/stub",
        "stub",
        "only old",
        "",
    ] {
        set_mtime_of(&target.join(dir), T - 100);
    }
}

fn new_content() -> Vec<u8> {
    Archive::new()
        .dir("storage/", 0o700, T, &[("user.mark", b"new")])
        .dir("storage/stub/", 0o755, T, &[])
        .file("storage/stub/new.txt", b"new", 0o644, T, &[])
        .dir("storage/only new/", 0o755, T, &[])
        .bytes()
}

#[test]
fn round_trip_keeps_names_modes_mtimes_xattrs_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_xattrs_work(tmp.path());
    let target = tmp.path().join("storage");
    populate(&target);
    fs::write(target.join("stale.txt"), b"stale").unwrap();

    let key = "stub/stub/bucket one/naïve \"quoted\" it's.txt";
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let etag: &[u8] = b"\"9a0364b9e99bb480dd25e1f0284c8555\"";
    let tar = Archive::new()
        .dir("storage/", 0o750, T, &[("user.mark", b"root")])
        .dir("storage/stub/", 0o755, T + 100, &[])
        .dir("storage/stub/stub/", 0o755, T + 200, &[])
        .dir("storage/stub/stub/bucket one/", 0o700, T + 300, &[])
        .dir(&format!("storage/{key}/"), 0o755, T + 400, &[])
        .file(
            &format!("storage/{key}/v1"),
            b"hello storage",
            0o640,
            T + 500,
            &[
                ("user.supabase.content-type", b"text/plain"),
                ("user.supabase.cache-control", b"max-age=3600"),
                ("user.supabase.etag", etag),
            ],
        )
        .dir(
            "storage/stub/stub/bucket one/empty folder/",
            0o711,
            T + 600,
            &[],
        )
        .symlink(
            "storage/stub/stub/bucket one/latest",
            "naïve \"quoted\" it's.txt/v1",
        )
        .symlink("storage/stub/stub/abs", "/etc/hostname")
        .file("storage/stub/big.bin", &big, 0o600, T + 700, &[])
        .bytes();
    let options = Options {
        symlinks: SymlinkPolicy::KeepAsIs,
        ..Options::default()
    };
    let (tree, added) = stage(&target, options, &tar).unwrap();
    assert_eq!(fs::read(target.join("stale.txt")).unwrap(), b"stale");
    assert_eq!(added[0], (PathBuf::new(), Added::Dir));
    let found = |path: &str| {
        added
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .map(|(_, a)| a.clone())
            .unwrap()
    };
    assert_eq!(
        found(&format!("{key}/v1")),
        Added::File {
            size: 13,
            sha256: sha(b"hello storage")
        }
    );
    assert_eq!(
        found("stub/big.bin"),
        Added::File {
            size: big.len() as u64,
            sha256: sha(&big)
        }
    );
    assert_eq!(
        found("stub/stub/abs"),
        Added::Symlink {
            target: "/etc/hostname".into()
        }
    );

    tree.finish().unwrap().swap_in().unwrap().commit().unwrap();

    let names: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![OsString::from("stub")],
        "absent children and hidden folders are gone"
    );
    assert!(!target.join("stub/link").exists());
    assert!(!target.join("stub/stub/old bucket").exists());

    let v1 = target.join(key).join("v1");
    assert_eq!(fs::read(&v1).unwrap(), b"hello storage");
    assert_eq!((mode(&v1), mtime(&v1)), (0o640, (T + 500) as i64));
    for (name, value) in [
        ("user.supabase.content-type", &b"text/plain"[..]),
        ("user.supabase.cache-control", b"max-age=3600"),
        ("user.supabase.etag", etag),
    ] {
        assert_eq!(
            xattr::get(&v1, name).unwrap().as_deref(),
            Some(value),
            "{name}"
        );
    }
    assert_eq!(fs::read(target.join("stub/big.bin")).unwrap(), big);
    // Folder mtimes survive the children written after them.
    for (dir, mode_bits, time) in [
        ("stub", 0o755, T + 100),
        ("stub/stub", 0o755, T + 200),
        ("stub/stub/bucket one", 0o700, T + 300),
        (key, 0o755, T + 400),
        ("stub/stub/bucket one/empty folder", 0o711, T + 600),
    ] {
        let path = target.join(dir);
        assert_eq!(
            (mode(&path), mtime(&path)),
            (mode_bits, time as i64),
            "{dir}"
        );
    }
    let empty = target.join("stub/stub/bucket one/empty folder");
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
    let latest = target.join("stub/stub/bucket one/latest");
    assert!(
        fs::symlink_metadata(&latest)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&latest).unwrap(),
        Path::new("naïve \"quoted\" it's.txt/v1")
    );
    assert_eq!(fs::read(&latest).unwrap(), b"hello storage");
    let abs = target.join("stub/stub/abs");
    assert_eq!(fs::read_link(&abs).unwrap(), Path::new("/etc/hostname"));
    assert_eq!(mtime(&abs), T as i64);
    // The folder itself: the archive's, though it was never renamed.
    assert_eq!((mode(&target), mtime(&target)), (0o750, T as i64));
    assert_eq!(xattr::get(&target, "user.mark").unwrap().unwrap(), b"root");
    if is_root() {
        let m = fs::metadata(&v1).unwrap();
        assert_eq!((m.uid(), m.gid()), (UID as u32, GID as u32));
    }
}

#[test]
fn roll_back_restores_the_original_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_xattrs_work(tmp.path());
    let target = tmp.path().join("storage");
    populate(&target);
    let before = snapshot(&target, true);

    let (tree, _) = stage(&target, Options::default(), &new_content()).unwrap();
    let swapped = tree.finish().unwrap().swap_in().unwrap();
    assert_eq!(fs::read(target.join("stub/new.txt")).unwrap(), b"new");
    assert!(target.join("only new").is_dir());
    assert!(!target.join("only old").exists());
    assert_eq!(mode(&target), 0o700);
    swapped.roll_back().unwrap();

    assert_eq!(snapshot(&target, true), before);
}

#[test]
fn dropping_without_swap_leaves_the_target_alone() {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_xattrs_work(tmp.path());
    let target = tmp.path().join("storage");
    populate(&target);
    let before = snapshot(&target, true);

    let (tree, _) = stage(&target, Options::default(), &new_content()).unwrap();
    assert!(target.join(staging_name(JOB)).is_dir());
    drop(tree);
    assert_eq!(snapshot(&target, true), before);

    let (tree, _) = stage(&target, Options::default(), &new_content()).unwrap();
    drop(tree.finish().unwrap());
    assert_eq!(snapshot(&target, true), before);
}

#[test]
fn later_entries_win_and_hard_links_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("storage");
    let tar = Archive::new()
        .file("storage/a", b"one", 0o644, T, &[])
        .file("storage/a", b"two", 0o644, T, &[])
        .dir("storage/d/", 0o555, T, &[])
        .file("storage/d/x", b"x", 0o644, T, &[])
        .file("storage/d", b"now a file", 0o644, T, &[])
        .file("storage/h.txt", b"hard", 0o644, T, &[])
        .link(EntryType::Link, "storage/h2", "storage/h.txt")
        .bytes();
    let options = Options {
        archive_prefix: Some("storage".into()),
        ..Options::default()
    };
    let (tree, added) = stage(&target, options, &tar).unwrap();
    assert_eq!(
        added.last().unwrap().1,
        Added::HardLink { to: "h.txt".into() }
    );
    tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
    assert_eq!(fs::read(target.join("a")).unwrap(), b"two");
    assert_eq!(fs::read(target.join("d")).unwrap(), b"now a file");
    assert_eq!(
        fs::metadata(target.join("h2")).unwrap().ino(),
        fs::metadata(target.join("h.txt")).unwrap().ino()
    );
}

/// Stages a hostile archive (built knowing the path of a folder outside
/// the target) and checks nothing changed anywhere around the target.
fn refused(options: Options, build: impl FnOnce(&Path) -> Vec<u8>) -> StageError {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("storage");
    let outside = tmp.path().join("outside");
    fs::create_dir_all(target.join("stub")).unwrap();
    fs::write(target.join("stub/keep.txt"), b"keep").unwrap();
    fs::create_dir(&outside).unwrap();
    let before = snapshot(tmp.path(), true);
    let tar = build(&outside);
    let error = match stage(&target, options, &tar) {
        Ok(_) => panic!("a hostile archive was staged"),
        Err(e) => e,
    };
    assert_eq!(snapshot(tmp.path(), true), before, "after {error}");
    error
}

fn keep_links() -> Options {
    Options {
        symlinks: SymlinkPolicy::KeepAsIs,
        ..Options::default()
    }
}

#[test]
fn refuses_climbing_and_absolute_paths() {
    let e = refused(Options::default(), |_| {
        Archive::new()
            .raw(b"storage/../x", EntryType::Regular, b"evil")
            .bytes()
    });
    assert!(
        matches!(&e, StageError::ParentDir { path } if path == Path::new("storage/../x")),
        "{e}"
    );
    assert!(e.to_string().contains("storage/../x"), "{e}");

    let e = refused(Options::default(), |_| {
        Archive::new()
            .raw(b"/etc/x", EntryType::Regular, b"evil")
            .bytes()
    });
    assert!(
        matches!(&e, StageError::Absolute { path } if path == Path::new("/etc/x")),
        "{e}"
    );
}

#[test]
fn refuses_escaping_symlinks_unless_kept_as_is() {
    for (name, target) in [
        ("storage/up", "../x"),
        ("storage/abs", "/etc/passwd"),
        ("storage/a/deep", "../../x"),
        ("storage/a/back", "b/../../.."),
    ] {
        let e = refused(Options::default(), |_| {
            Archive::new().symlink(name, target).bytes()
        });
        assert!(
            matches!(&e, StageError::EscapingSymlink { path, .. } if path == Path::new(name)),
            "{name}: {e}"
        );

        let tmp = tempfile::tempdir().unwrap();
        let restored = tmp.path().join("storage");
        let tar = Archive::new().symlink(name, target).bytes();
        let (tree, _) = stage(&restored, keep_links(), &tar).unwrap();
        tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
        let link = restored.join(name.strip_prefix("storage/").unwrap());
        assert_eq!(fs::read_link(link).unwrap(), Path::new(target));
    }
}

#[test]
fn refuses_writing_through_a_staged_symlink() {
    let e = refused(keep_links(), |outside| {
        Archive::new()
            .symlink("storage/link", outside.to_str().unwrap())
            .file("storage/link/evil", b"evil", 0o644, T, &[])
            .bytes()
    });
    assert!(
        matches!(&e, StageError::ThroughSymlink { link, .. } if link == Path::new("link")),
        "{e}"
    );

    let e = refused(keep_links(), |outside| {
        Archive::new()
            .symlink("storage/a/link", outside.to_str().unwrap())
            .dir("storage/a/link/sub/", 0o755, T, &[])
            .bytes()
    });
    assert!(
        matches!(&e, StageError::ThroughSymlink { link, .. } if link == Path::new("a/link")),
        "{e}"
    );

    let e = refused(keep_links(), |_| {
        Archive::new()
            .file("storage/f", b"f", 0o644, T, &[])
            .file("storage/f/x", b"x", 0o644, T, &[])
            .bytes()
    });
    assert!(matches!(&e, StageError::NotADirectory { .. }), "{e}");
}

#[test]
fn refuses_devices_fifos_and_stray_hard_links() {
    for kind in [EntryType::Fifo, EntryType::Char, EntryType::Block] {
        let e = refused(Options::default(), |_| {
            Archive::new().raw(b"storage/dev", kind, b"").bytes()
        });
        assert!(
            matches!(&e, StageError::Unsupported { .. }),
            "{kind:?}: {e}"
        );
    }
    let e = refused(Options::default(), |_| {
        Archive::new()
            .file("storage/h", b"h", 0o644, T, &[])
            .link(EntryType::Link, "storage/h2", "storage/h")
            .bytes()
    });
    assert!(
        matches!(&e, StageError::Unsupported { .. }),
        "no prefix: {e}"
    );
    let with_prefix = || Options {
        archive_prefix: Some("storage".into()),
        ..Options::default()
    };
    for to in [
        "storage/../etc/passwd",
        "/etc/passwd",
        "database/x",
        "storage/missing",
    ] {
        let e = refused(with_prefix(), |_| {
            Archive::new()
                .link(EntryType::Link, "storage/h2", to)
                .bytes()
        });
        assert!(matches!(&e, StageError::HardLink { .. }), "{to}: {e}");
    }
}

#[test]
fn refuses_reserved_names_and_enforces_limits() {
    let e = refused(Options::default(), |_| {
        Archive::new()
            .dir(&format!("storage/{OLD_PREFIX}{JOB}/"), 0o755, T, &[])
            .bytes()
    });
    assert!(matches!(&e, StageError::Reserved { .. }), "{e}");

    let limited = |max_bytes, max_entries| Options {
        limits: Limits {
            max_bytes,
            max_entries,
            ..Limits::default()
        },
        ..Options::default()
    };
    let three = || {
        Archive::new()
            .dir("storage/", 0o755, T, &[])
            .file("storage/a", b"123456", 0o644, T, &[])
            .file("storage/b", b"123456", 0o644, T, &[])
            .bytes()
    };
    let e = refused(limited(None, Some(2)), |_| three());
    assert!(
        matches!(&e, StageError::TooLarge { unit: "entries", limit: 2, path } if path == Path::new("storage/b")),
        "{e}"
    );
    let e = refused(limited(Some(10), None), |_| three());
    assert!(
        matches!(&e, StageError::TooLarge { unit: "bytes", limit: 10, path } if path == Path::new("storage/b")),
        "{e}"
    );
    let e = refused(limited(Some(5), None), |_| three());
    assert!(
        matches!(&e, StageError::TooLarge { unit: "bytes", path, .. } if path == Path::new("storage/a")),
        "{e}"
    );
}

#[test]
fn expansion_past_the_ratio_is_refused_naming_the_entry() {
    let limits = Limits {
        expansion: Some(Expansion {
            ratio: 200,
            upload_bytes: 1000,
        }),
        ..Limits::default()
    };
    let e = refused(
        Options {
            limits,
            ..Options::default()
        },
        |_| {
            Archive::new()
                .file("storage/a", &[0; 150_000], 0o644, T, &[])
                .file("storage/b", &[0; 60_000], 0o644, T, &[])
                .bytes()
        },
    );
    assert_eq!(
        e.to_string(),
        "storage/b: the archive expands past the limit of 200 times the upload's size \
         (1000 B)"
    );
}

/// Files that fill the disk are stopped at the reserve, by the header's
/// size or while they are written, and nothing stays behind.
#[test]
fn staging_stops_at_the_disk_reserve_and_leaves_nothing() {
    const MIB: usize = 1024 * 1024;
    let disk = crate::disk::SmallDisk::new(48 * MIB as u64);
    let target = disk.dir.path().join("storage");
    fs::create_dir_all(&target).unwrap();
    let free_before = crate::disk::available_bytes(&target).unwrap();
    // Room for 12 MiB: the look after 8 MiB passes, the one after 16
    // MiB does not.
    let reserve = disk.reserve_leaving(12 * MIB as u64);
    let options = Options {
        limits: Limits {
            disk: Some(DiskReserve {
                area: "the storage folder",
                reserve,
                free: None,
            }),
            ..Limits::default()
        },
        ..Options::default()
    };
    let chunk = vec![7u8; 4 * MIB];
    let small_files = (0..6).fold(Archive::new(), |tar, i| {
        tar.file(&format!("storage/f{i}"), &chunk, 0o644, T, &[])
    });
    let one_large = Archive::new().file("storage/big", &vec![7u8; 16 * MIB], 0o644, T, &[]);
    for (what, tar) in [("small files", small_files), ("one large file", one_large)] {
        let e = match stage(&target, options.clone(), &tar.bytes()) {
            Err(e) => e,
            Ok(_) => panic!("{what}: staged past the reserve"),
        };
        let StageError::Io { source, .. } = &e else {
            panic!("{what}: {e}")
        };
        assert!(crate::disk::is_out_of_space(source), "{what}: {e}");
        let message = crate::disk::find_out_of_space(source).unwrap().to_string();
        assert!(
            message.starts_with("Insufficient disk space on the storage folder: "),
            "{what}: {message}"
        );
        assert_eq!(names(&target), Vec::<String>::new(), "{what}");
        let free_after = crate::disk::available_bytes(&target).unwrap();
        assert!(
            free_after + MIB as u64 >= free_before,
            "{what}: {free_after} of {free_before} bytes free afterwards"
        );
    }
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn symlink_targets_inside_and_out() {
    for (link, target) in [
        ("l", "x"),
        ("l", "."),
        ("a/l", ".."),
        ("a/l", "../b/c"),
        ("a/b/l", "../../c"),
        ("a/l", "./b"),
    ] {
        assert!(
            stays_inside(Path::new(link), Path::new(target)),
            "{link} -> {target}"
        );
    }
    for (link, target) in [
        ("l", ".."),
        ("l", "/x"),
        ("a/l", "../.."),
        ("a/l", "b/../.."),
        ("a/l", "b/../c"),
    ] {
        assert!(
            !stays_inside(Path::new(link), Path::new(target)),
            "{link} -> {target}"
        );
    }
}

#[test]
fn begin_refuses_an_interrupted_swap_and_leftovers_can_be_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("functions");
    fs::create_dir_all(target.join(staging_name(JOB)).join("half")).unwrap();
    fs::create_dir_all(target.join("hello")).unwrap();

    // A stale staging folder of the same job is just replaced.
    let tree = StagedTree::begin(&target, JOB).unwrap();
    assert!(!target.join(staging_name(JOB)).join("half").exists());
    drop(tree);
    assert!(!target.join(staging_name(JOB)).exists());

    fs::create_dir_all(target.join(old_name(JOB)).join("hello")).unwrap();
    fs::create_dir_all(target.join(format!("{STAGING_PREFIX}other"))).unwrap();
    let e = StagedTree::begin(&target, JOB).err().unwrap();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    assert!(target.join(old_name(JOB)).join("hello").is_dir());

    let mut removed = remove_leftovers(&target).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            target.join(old_name(JOB)),
            target.join(format!("{STAGING_PREFIX}other"))
        ]
    );
    assert!(target.join("hello").is_dir());
    StagedTree::begin(&target, JOB).unwrap();
    assert!(StagedTree::begin(&target, "../x").is_err());
}

/// Stages `config/...` entries as the restore job will: project files
/// under `root`, `config/extra/<absolute>` under `host` (standing in
/// for `/`).
fn stage_config(
    root: &Path,
    host: &Path,
    options: Options,
    tar: &[u8],
) -> Result<(StagedFiles, Vec<Added>), StageError> {
    let mut files = StagedFiles::begin_with(JOB, options).unwrap();
    let mut archive = tar::Archive::new(tar);
    let mut added = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        let relative = path.strip_prefix("config").unwrap_or(&path);
        let what = match relative.strip_prefix("extra") {
            Ok(extra) => files.add(host, extra, &mut entry)?,
            Err(_) => files.add(root, relative, &mut entry)?,
        };
        added.push(what);
    }
    Ok((files, added))
}

fn config_archive() -> Vec<u8> {
    Archive::new()
        .file(
            "config/.env",
            b"NEW=1\n",
            0o640,
            T,
            &[("user.mark", b"new")],
        )
        .file("config/volumes/api/kong.yml", b"kong", 0o644, T, &[])
        .file(
            "config/extra/etc/supabase/root.key",
            b"NEWKEY",
            0o400,
            T,
            &[],
        )
        .bytes()
}

fn config_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_xattrs_work(tmp.path());
    let root = tmp.path().join("project");
    let host = tmp.path().join("host");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join(".env"), b"OLD=1\n").unwrap();
    xattr::set(root.join(".env"), "user.mark", b"old").unwrap();
    fs::set_permissions(root.join(".env"), Permissions::from_mode(0o600)).unwrap();
    set_mtime_of(&root.join(".env"), T - 100);
    fs::create_dir_all(host.join("etc/supabase")).unwrap();
    fs::write(host.join("etc/supabase/root.key"), b"OLDKEY").unwrap();
    (tmp, root, host)
}

#[test]
fn config_files_swap_in_roll_back_and_commit() {
    let (tmp, root, host) = config_setup();
    let before = snapshot(tmp.path(), false);

    let (files, added) = stage_config(&root, &host, Options::default(), &config_archive()).unwrap();
    assert_eq!(
        added[0],
        Added::File {
            size: 6,
            sha256: sha(b"NEW=1\n")
        }
    );
    assert_eq!(fs::read(root.join(".env")).unwrap(), b"OLD=1\n");
    assert_eq!(
        fs::read(root.join(format!("..env.supascale-{JOB}"))).unwrap(),
        b"NEW=1\n"
    );

    let swapped = files.swap_in().unwrap();
    let env = root.join(".env");
    assert_eq!(fs::read(&env).unwrap(), b"NEW=1\n");
    assert_eq!((mode(&env), mtime(&env)), (0o640, T as i64));
    assert_eq!(xattr::get(&env, "user.mark").unwrap().unwrap(), b"new");
    assert_eq!(
        fs::read(root.join(format!("..env.supascale-old-{JOB}"))).unwrap(),
        b"OLD=1\n"
    );
    assert_eq!(
        fs::read(root.join("volumes/api/kong.yml")).unwrap(),
        b"kong"
    );
    assert_eq!(
        fs::read(host.join("etc/supabase/root.key")).unwrap(),
        b"NEWKEY"
    );
    swapped.roll_back().unwrap();
    assert_eq!(snapshot(tmp.path(), false), before);

    let (files, _) = stage_config(&root, &host, Options::default(), &config_archive()).unwrap();
    files.swap_in().unwrap().commit().unwrap();
    let after = snapshot(tmp.path(), false);
    assert!(
        after
            .keys()
            .all(|p| !p.to_string_lossy().contains(".supascale-")),
        "{:?}",
        after.keys().collect::<Vec<_>>()
    );
    assert_eq!(fs::read(root.join(".env")).unwrap(), b"NEW=1\n");
    assert_eq!(
        fs::read(host.join("etc/supabase/root.key")).unwrap(),
        b"NEWKEY"
    );
}

#[test]
fn config_files_dropped_without_swap_leave_nothing() {
    let (tmp, root, host) = config_setup();
    let before = snapshot(tmp.path(), false);
    let (files, _) = stage_config(&root, &host, Options::default(), &config_archive()).unwrap();
    assert!(root.join("volumes/api").is_dir());
    drop(files);
    assert_eq!(snapshot(tmp.path(), false), before);
}

#[test]
fn config_files_refuse_hostile_entries() {
    type Expected = fn(&StageError) -> bool;
    let cases: Vec<(Options, Vec<u8>, Expected)> = vec![
        (
            Options::default(),
            Archive::new()
                .raw(b"config/../x", EntryType::Regular, b"evil")
                .bytes(),
            |e| matches!(e, StageError::ParentDir { .. }),
        ),
        (
            Options::default(),
            Archive::new()
                .raw(b"/etc/x", EntryType::Regular, b"evil")
                .bytes(),
            |e| matches!(e, StageError::Absolute { .. }),
        ),
        (
            Options::default(),
            Archive::new()
                .raw(b"config/fifo", EntryType::Fifo, b"")
                .bytes(),
            |e| matches!(e, StageError::Unsupported { .. }),
        ),
        (
            Options::default(),
            Archive::new().symlink("config/.env", "/etc/shadow").bytes(),
            |e| matches!(e, StageError::EscapingSymlink { .. }),
        ),
        (
            keep_links(),
            Archive::new()
                .symlink("config/volumes", "/tmp")
                .file("config/volumes/x", b"evil", 0o644, T, &[])
                .bytes(),
            |e| matches!(e, StageError::ThroughSymlink { .. }),
        ),
        (
            Options::default(),
            Archive::new()
                .file(
                    &format!("config/.env.supascale-old-{JOB}"),
                    b"x",
                    0o644,
                    T,
                    &[],
                )
                .bytes(),
            |e| matches!(e, StageError::Reserved { .. }),
        ),
    ];
    for (options, tar, expected) in cases {
        let (tmp, root, host) = config_setup();
        let before = snapshot(tmp.path(), false);
        let e = match stage_config(&root, &host, options, &tar) {
            Ok(_) => panic!("a hostile config entry was staged"),
            Err(e) => e,
        };
        assert!(expected(&e), "{e}");
        assert_eq!(snapshot(tmp.path(), false), before, "after {e}");
    }
}

#[test]
fn merge_in_swaps_only_the_staged_names_and_rolls_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_xattrs_work(tmp.path());
    let target = tmp.path().join("functions");
    populate(&target);
    let before = snapshot(&target, true);
    let archive = Archive::new()
        .dir("storage/only new/", 0o755, T, &[])
        .file("storage/only new/f", b"new", 0o644, T, &[])
        .file("storage/only old/y", b"y", 0o644, T, &[])
        .bytes();

    let (tree, _) = stage(&target, Options::default(), &archive).unwrap();
    let swapped = tree.finish().unwrap().merge_in().unwrap();
    let after = snapshot(&target, false);
    assert_eq!(fs::read(target.join("only new/f")).unwrap(), b"new");
    // Brought by the archive: replaced wholesale.
    assert_eq!(fs::read(target.join("only old/y")).unwrap(), b"y");
    assert!(!target.join("only old/x").exists());
    // Absent from the archive: not moved, not touched.
    for (rel, node) in &after {
        if rel.starts_with("stub") {
            let was = &before[rel];
            assert_eq!(
                (node.kind, node.mode, node.ino, &node.bytes, &node.xattrs),
                (was.kind, was.mode, was.ino, &was.bytes, &was.xattrs),
                "{}",
                rel.display()
            );
        }
    }
    assert_eq!(
        mode(&target),
        0o751,
        "no root entry, so the folder keeps its mode"
    );
    swapped.roll_back().unwrap();
    assert_eq!(snapshot(&target, true), before);

    let (tree, _) = stage(&target, Options::default(), &archive).unwrap();
    tree.finish().unwrap().merge_in().unwrap().commit().unwrap();
    let mut names: Vec<_> = fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["only new", "only old", "stub"]);
    assert_eq!(fs::read(target.join("only old/y")).unwrap(), b"y");
    let stub = snapshot(&target.join("stub"), true);
    for (rel, node) in stub {
        assert_eq!(node.ino, before[&Path::new("stub").join(&rel)].ino);
    }
}

#[test]
fn link_from_target_shares_inodes_and_new_entries_never_write_through() {
    let tmp = tempfile::tempdir().unwrap();
    assert_user_xattrs_work(tmp.path());
    let target = tmp.path().join("storage");
    populate(&target);
    let before = snapshot(&target, true);
    let archive = Archive::new()
        .file(
            "storage/stub/stub/old bucket/obj",
            b"replaced",
            0o644,
            T,
            &[],
        )
        .file("storage/stub/stub/new bucket/o", b"o", 0o644, T, &[])
        .bytes();

    let mut tree = StagedTree::begin(&target, JOB).unwrap();
    assert_eq!(tree.link_from_target(OsStr::new("stub")).unwrap(), 2);
    assert_eq!(tree.link_from_target(OsStr::new("absent")).unwrap(), 0);
    assert!(tree.link_from_target(OsStr::new("..")).is_err());
    assert!(tree.link_from_target(OsStr::new("a/b")).is_err());
    let staged = tree.staging_dir().to_path_buf();
    let link = fs::symlink_metadata(staged.join("stub/link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(link.ino(), before[Path::new("stub/link")].ino);
    let mut archive = tar::Archive::new(archive.as_slice());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        tree.add(path.strip_prefix("storage").unwrap(), &mut entry)
            .unwrap();
    }
    let swapped = tree.finish().unwrap().merge_in().unwrap();
    assert_eq!(
        fs::read(target.join("stub/stub/old bucket/obj")).unwrap(),
        b"replaced"
    );
    assert_eq!(
        fs::read(target.join("stub/stub/new bucket/o")).unwrap(),
        b"o"
    );
    let now = snapshot(&target, true);
    for rel in ["stub", "stub/stub", "stub/stub/old bucket/empty"] {
        let (was, is) = (&before[Path::new(rel)], &now[Path::new(rel)]);
        assert_eq!(
            (is.mode, is.owner, &is.xattrs),
            (was.mode, was.owner, &was.xattrs),
            "{rel}"
        );
        assert_ne!(is.ino, was.ino, "{rel}: a copy, not the folder itself");
    }
    assert_eq!(
        now[Path::new("stub/stub/old bucket/empty")].mtime,
        before[Path::new("stub/stub/old bucket/empty")].mtime
    );
    assert_eq!(now[Path::new("stub/link")], before[Path::new("stub/link")]);
    assert!(
        target.join("only old/x").exists(),
        "merge leaves other children"
    );
    swapped.roll_back().unwrap();
    // The original object's inode was never written through.
    assert_eq!(snapshot(&target, true), before);
}

#[test]
fn ignore_owners_keeps_the_files_our_own() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("functions");
    let archive = Archive::new()
        .dir("storage/f/", 0o755, T, &[])
        .file("storage/f/index.ts", b"x", 0o644, T, &[])
        .symlink("storage/f/l", "index.ts")
        .bytes();
    let (mut tree, _) = stage(&target, Options::default(), b"").unwrap();
    tree.ignore_owners();
    let mut entries = tar::Archive::new(archive.as_slice());
    for entry in entries.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        tree.add(path.strip_prefix("storage").unwrap(), &mut entry)
            .unwrap();
    }
    tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
    // SAFETY: no arguments, cannot fail.
    let me = unsafe { (libc::geteuid(), libc::getegid()) };
    for path in ["f", "f/index.ts", "f/l"] {
        let m = fs::symlink_metadata(target.join(path)).unwrap();
        assert_eq!((m.uid(), m.gid()), me, "{path}");
    }
    if is_root() {
        let (tree, _) = stage(&target, Options::default(), &archive).unwrap();
        tree.finish().unwrap().swap_in().unwrap().commit().unwrap();
        let m = fs::metadata(target.join("f/index.ts")).unwrap();
        assert_eq!((u64::from(m.uid()), u64::from(m.gid())), (UID, GID));
    }
}

/// A dead restore's config leftovers are found by job, and the file a
/// swap replaced goes back over the one it put there.
#[test]
fn config_file_leftovers_are_found_and_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join(".env");
    fs::write(&live, "restored").unwrap();
    fs::write(dir.path().join("..env.supascale-old-job-abc"), "previous").unwrap();
    fs::write(dir.path().join("..env.supascale-job-abc"), "staged").unwrap();
    fs::write(dir.path().join("kong.yml.supascale-job-abc"), "not hidden").unwrap();
    fs::write(dir.path().join(".other.supascale-old-notajob"), "x").unwrap();
    let mut found = file_leftovers_by_job(dir.path());
    found.sort();
    assert_eq!(
        found,
        vec![
            (
                "job-abc".to_string(),
                dir.path().join("..env.supascale-job-abc"),
                false
            ),
            (
                "job-abc".to_string(),
                dir.path().join("..env.supascale-old-job-abc"),
                true
            ),
        ]
    );
    put_back_file(&dir.path().join("..env.supascale-old-job-abc")).unwrap();
    assert_eq!(fs::read_to_string(&live).unwrap(), "previous");
    assert!(!dir.path().join("..env.supascale-old-job-abc").exists());
    assert!(put_back_file(&dir.path().join("kong.yml.supascale-job-abc")).is_err());
}
