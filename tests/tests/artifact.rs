//! The artifact opens with the system's `tar` and brings back what was
//! backed up: bytes, awkward names, empty folders, links, modes, mtimes and
//! the storage backend's `user.supabase.*` extended attributes.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use supascale_shared::artifact::{ArtifactBuilder, Compression, Manifest, ManifestMeta};

const XATTRS: [(&str, &[u8]); 3] = [
    ("user.supabase.content-type", b"image/png"),
    ("user.supabase.cache-control", b"max-age=3600"),
    (
        "user.supabase.etag",
        b"\"d41d8cd98f00b204e9800998ecf8427e\"",
    ),
];

/// A project-shaped tree with everything that tends to break archivers.
fn make_tree(root: &Path) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let files = [
        "storage/stub/stub/avatars/résumé 1.png/0b4c7e1a-5f7e-4b6b-9c1a-1d2e3f4a5b6c",
        "storage/stub/stub/documents/a'b \"quoted\" 日本語.txt/9f8e7d6c-1111-2222-3333-444455556666",
        "storage/stub/stub/documents/dir0/dir1/dir2/a-rather-long-name-that-pushes-the-path-well-past-one-hundred-bytes-report-final(1).txt/v1",
        "functions/hello-world/index.ts",
        "functions/_shared/cors.ts",
        "config/.env",
    ];
    for (i, relative) in files.iter().enumerate() {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut bytes = vec![0u8; [0, 100, 70_000, 1_500_000, 10, 33][i]];
        rng.fill(&mut bytes[..]);
        std::fs::write(&path, &bytes).unwrap();
        if relative.starts_with("storage/") {
            for (name, value) in XATTRS {
                xattr::set(&path, name, value).unwrap();
            }
        }
    }
    std::fs::set_permissions(
        root.join("config/.env"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    std::fs::File::options()
        .write(true)
        .open(root.join("functions/hello-world/index.ts"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    std::fs::create_dir_all(root.join("storage/stub/stub/documents/empty-folder")).unwrap();
    symlink(
        "../../../../../outside-secret",
        root.join("storage/stub/stub/documents/link-out"),
    )
    .unwrap();
    files.iter().map(|f| f.to_string()).collect()
}

fn meta() -> ManifestMeta {
    ManifestMeta {
        project_id: "my-project".into(),
        project_name: "My Project".into(),
        backup_type: "full".into(),
        components: vec!["storage".into(), "functions".into(), "config".into()],
        postgres_version: None,
        created_at: "2026-01-19T02:00:00Z".into(),
    }
}

fn build(
    source: &Path,
    artifact: &Path,
    compression: Compression,
) -> supascale_shared::artifact::ArtifactSummary {
    let file = std::fs::File::create(artifact).unwrap();
    let mut builder = ArtifactBuilder::new(file, compression).unwrap();
    for component in ["storage", "functions", "config"] {
        builder
            .add_tree(&source.join(component), component)
            .unwrap();
    }
    let (_, summary) = builder.finish(meta()).unwrap();
    summary
}

fn extract(artifact: &Path, into: &Path, compression: Compression) {
    std::fs::create_dir_all(into).unwrap();
    let flag = match compression {
        Compression::Gzip => "-xzf",
        Compression::Zstd => "--zstd",
    };
    let mut command = Command::new("tar");
    command
        .args(["--xattrs", "--xattrs-include=user.*", "-C"])
        .arg(into);
    match compression {
        Compression::Gzip => command.arg(flag).arg(artifact),
        Compression::Zstd => command.args([flag, "-xf"]).arg(artifact),
    };
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn round_trip(compression: Compression) {
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("project");
    let files = make_tree(&source);
    let artifact = work
        .path()
        .join(format!("backup.{}", compression.extension()));
    let summary = build(&source, &artifact, compression);

    // The summary describes the bytes on disk.
    let bytes = std::fs::read(&artifact).unwrap();
    assert_eq!(summary.bytes, bytes.len() as u64);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(&bytes)));

    let out = work.path().join("out");
    extract(&artifact, &out, compression);
    for relative in &files {
        let original = std::fs::read(source.join(relative)).unwrap();
        let restored =
            std::fs::read(out.join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        assert_eq!(original, restored, "{relative}");
        if relative.starts_with("storage/") {
            for (name, value) in XATTRS {
                assert_eq!(
                    xattr::get(out.join(relative), name).unwrap().as_deref(),
                    Some(value),
                    "{relative} {name}"
                );
            }
        }
    }
    let env = std::fs::metadata(out.join("config/.env")).unwrap();
    assert_eq!(env.permissions().mode() & 0o777, 0o600);
    let index = std::fs::metadata(out.join("functions/hello-world/index.ts")).unwrap();
    assert_eq!(
        index
            .modified()
            .unwrap()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        1_700_000_000
    );
    assert!(
        out.join("storage/stub/stub/documents/empty-folder")
            .is_dir()
    );
    let link = out.join("storage/stub/stub/documents/link-out");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap().to_str().unwrap(),
        "../../../../../outside-secret"
    );

    // manifest.json is the last entry and its checksums match the files.
    let list = Command::new("tar")
        .args(match compression {
            Compression::Gzip => vec!["-tzf"],
            Compression::Zstd => vec!["--zstd", "-tf"],
        })
        .arg(&artifact)
        .output()
        .unwrap();
    let listing = String::from_utf8(list.stdout).unwrap();
    assert_eq!(listing.lines().last(), Some("manifest.json"));
    let manifest: Manifest =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest.format_version, 1);
    assert_eq!(manifest.meta.project_id, "my-project");
    for relative in &files {
        let entry = manifest
            .entries
            .iter()
            .find(|e| &e.path == relative)
            .expect(relative);
        let bytes = std::fs::read(out.join(relative)).unwrap();
        assert_eq!(entry.size, bytes.len() as u64);
        assert_eq!(
            entry.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(&bytes)).as_str())
        );
    }
    assert!(manifest.warnings.is_empty(), "{:?}", manifest.warnings);
}

#[test]
fn a_gzip_artifact_opens_with_tar() {
    round_trip(Compression::Gzip);
}

#[test]
fn a_zstd_artifact_opens_with_tar() {
    round_trip(Compression::Zstd);
}

#[test]
fn a_source_that_changes_size_never_corrupts_the_archive() {
    let work = tempfile::tempdir().unwrap();
    let artifact = work.path().join("a.tar.gz");
    let file = std::fs::File::create(&artifact).unwrap();
    let mut builder = ArtifactBuilder::new(file, Compression::Gzip).unwrap();
    builder
        .add_reader("database/shrank.dump", &b"only ten b"[..], 100, None)
        .unwrap();
    builder
        .add_reader("database/grew.dump", &[7u8; 50][..], 20, None)
        .unwrap();
    let (_, summary) = builder.finish(meta()).unwrap();
    assert_eq!(
        summary.manifest.warnings.len(),
        2,
        "{:?}",
        summary.manifest.warnings
    );
    let out = work.path().join("out");
    extract(&artifact, &out, Compression::Gzip);
    let shrank = std::fs::read(out.join("database/shrank.dump")).unwrap();
    assert_eq!(shrank.len(), 100);
    assert_eq!(&shrank[..10], b"only ten b");
    assert_eq!(
        std::fs::read(out.join("database/grew.dump")).unwrap(),
        vec![7u8; 20]
    );
}

/// The database dump is compressed on its own while `pg_dump` runs and its
/// blocks are copied into the artifact: the system `tar` must still read
/// every entry around it, at any size (the 512-byte padding included).
fn precompressed_round_trip(compression: Compression) {
    use supascale_shared::artifact::compress_stream;
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("project");
    make_tree(&source);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    // Random bytes, then text: blocks that compress and blocks that do not.
    let mut big = vec![0u8; 1_300_001];
    rng.fill(&mut big[..]);
    big.extend(b"COPY public.t (id, name) FROM stdin;\n".repeat(90_000));
    let dumps: Vec<(String, Vec<u8>)> = [vec![], vec![b'x'], vec![7u8; 512], vec![9u8; 513], big]
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| (format!("database/part-{i}.dump"), bytes))
        .collect();

    let artifact = work.path().join(format!("a.{}", compression.extension()));
    let mut builder =
        ArtifactBuilder::new(std::fs::File::create(&artifact).unwrap(), compression).unwrap();
    builder
        .add_tree(&source.join("storage"), "storage")
        .unwrap();
    for (name, bytes) in &dumps {
        let (entry, compressed) =
            compress_stream(bytes.as_slice(), Vec::new(), compression).unwrap();
        assert_eq!(entry.size, bytes.len() as u64);
        builder
            .add_precompressed(name, compressed.as_slice(), &entry)
            .unwrap();
    }
    builder
        .add_tree(&source.join("functions"), "functions")
        .unwrap();
    let (_, summary) = builder.finish(meta()).unwrap();

    let out = work.path().join("out");
    extract(&artifact, &out, compression);
    for (name, bytes) in &dumps {
        assert_eq!(&std::fs::read(out.join(name)).unwrap(), bytes, "{name}");
        let entry = summary
            .manifest
            .entries
            .iter()
            .find(|e| &e.path == name)
            .expect(name);
        assert_eq!(entry.size, bytes.len() as u64);
        assert_eq!(
            entry.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(bytes)).as_str())
        );
    }
    // What follows the spliced entries is intact too.
    assert_eq!(
        std::fs::read(out.join("functions/hello-world/index.ts")).unwrap(),
        std::fs::read(source.join("functions/hello-world/index.ts")).unwrap()
    );
    assert!(out.join("manifest.json").is_file());
    assert_eq!(
        summary.bytes,
        std::fs::metadata(&artifact).unwrap().len(),
        "the summary counts the copied blocks"
    );
}

#[test]
fn a_gzip_artifact_with_a_precompressed_dump_opens_with_tar() {
    precompressed_round_trip(Compression::Gzip);
}

#[test]
fn a_zstd_artifact_with_a_precompressed_dump_opens_with_tar() {
    precompressed_round_trip(Compression::Zstd);
}

#[test]
fn a_dump_compressed_otherwise_is_refused() {
    use supascale_shared::artifact::compress_stream;
    let (entry, compressed) = compress_stream(&b"dump"[..], Vec::new(), Compression::Zstd).unwrap();
    let mut builder = ArtifactBuilder::new(Vec::new(), Compression::Gzip).unwrap();
    let error = builder
        .add_precompressed("database/database.dump", compressed.as_slice(), &entry)
        .unwrap_err();
    assert!(error.to_string().contains("compressed with"), "{error}");
}
