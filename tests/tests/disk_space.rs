//! No upload, import or restore fills the disk: bombs are refused within
//! seconds by their expansion ratio, and every writer (the upload, the
//! staging of an import or a restore) stops while
//! `SUPASCALE_DISK_RESERVE_BYTES` are still free, says so, and leaves
//! nothing behind. The small disks are tmpfs mounts (the tests run as root).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use supascale_tests::refproject::{self, register, table_fingerprints, tree_snapshot};
use supascale_tests::{
    Backend, Launch, SendJson, SmallDisk, TestApp, disk_usage, make_project, waiting_uploads,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;
const FULL_UPLOAD_AREA: &str = "Insufficient disk space on the upload area: ";

/// Sends `path` as the multipart field `file` to
/// `/projects/<id>/import/<what>`; the answer and how long it took.
async fn import(
    app: &TestApp,
    project_id: &str,
    what: &str,
    path: &Path,
) -> (u16, Value, Duration) {
    let request = app.imports(project_id).request(what, "", path);
    let started = Instant::now();
    let (status, body) = request.send_json().await;
    (status, body, started.elapsed())
}

/// Runs `command`, which must succeed.
fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a python script with `args`.
fn python(script: &str, args: &[&str]) {
    run(Command::new("python3").arg("-c").arg(script).args(args));
}

/// `tar -czf out -C dir name`, through the real `tar`.
fn tar_gz(out: &Path, dir: &Path, name: &str) {
    run(Command::new("tar")
        .arg("-czf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(name));
}

/// A tar.gz whose one entry is `mib` MiB of zeros, about a thousandth of
/// that on disk: a gzip member of the header, the same member of 64 MiB of
/// zeros over and over (gzip members in a row are one stream), then the
/// end of the archive. Without `entry`, a custom-format dump's signature
/// stands in for the header and nothing ends it: a gzipped "dump".
fn gzip_bomb(out: &Path, entry: Option<&str>, mib: u64) {
    python(
        "import sys, tarfile, gzip\n\
         out, entry, size = sys.argv[1], sys.argv[2], int(sys.argv[3]) << 20\n\
         info = tarfile.TarInfo(entry); info.size = size\n\
         head = info.tobuf(format=tarfile.GNU_FORMAT) if entry else b'PGDMP' + bytes(512)\n\
         chunk = 64 << 20\n\
         member = gzip.compress(bytes(chunk), compresslevel=9)\n\
         with open(out, 'wb') as f:\n\
         \x20   f.write(gzip.compress(head))\n\
         \x20   for _ in range(size // chunk): f.write(member)\n\
         \x20   f.write(gzip.compress(bytes(1024 if entry else 0)))\n",
        &[out.to_str().unwrap(), entry.unwrap_or(""), &mib.to_string()],
    );
}

/// A zip of `entries` files of 2 GiB of zeros each, deflated: written by
/// hand, since deflating 10 GiB would take minutes. Each file's data is
/// one fully flushed deflate block of 64 MiB of zeros repeated, then an
/// empty final block; sizes and CRCs are the true ones.
fn zip_bomb(out: &Path, entries: u32) {
    python(
        "import sys, zlib, struct\n\
         out, entries = sys.argv[1], int(sys.argv[2])\n\
         size, chunk = 2 << 30, 64 << 20\n\
         c = zlib.compressobj(9, zlib.DEFLATED, -15)\n\
         piece = c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)\n\
         tail = zlib.compressobj(9, zlib.DEFLATED, -15).flush()\n\
         zeros, crc = bytes(chunk), 0\n\
         for _ in range(size // chunk): crc = zlib.crc32(zeros, crc)\n\
         packed = len(piece) * (size // chunk) + len(tail)\n\
         central, offset = b'', 0\n\
         with open(out, 'wb') as f:\n\
         \x20   for i in range(entries):\n\
         \x20       name = ('avatars/zeros-%d.bin' % i).encode()\n\
         \x20       local = struct.pack('<IHHHHHIIIHH', 0x04034b50, 20, 0, 8, 0, 0x21, crc, packed, size, len(name), 0) + name\n\
         \x20       f.write(local)\n\
         \x20       for _ in range(size // chunk): f.write(piece)\n\
         \x20       f.write(tail)\n\
         \x20       central += struct.pack('<IHHHHHHIIIHHHHHII', 0x02014b50, 20, 20, 0, 8, 0, 0x21, crc, packed, size, len(name), 0, 0, 0, 0, 0, offset) + name\n\
         \x20       offset += len(local) + packed\n\
         \x20   f.write(central)\n\
         \x20   f.write(struct.pack('<IHHHHIIH', 0x06054b50, 0, 0, entries, entries, len(central), offset, 0))\n",
        &[out.to_str().unwrap(), &entries.to_string()],
    );
}

/// A tar whose header declares 100 GiB and whose data is a few bytes.
fn over_declared_tar(out: &Path, entry: &str) {
    python(
        "import sys, tarfile\n\
         info = tarfile.TarInfo(sys.argv[2]); info.size = 100 << 30\n\
         open(sys.argv[1], 'wb').write(info.tobuf(format=tarfile.GNU_FORMAT) + b'only this')\n",
        &[out.to_str().unwrap(), entry],
    );
}

/// A tar.gz of one file of `mib` MiB of zeros.
fn zeros_tar_gz(out: &Path, entry: &str, mib: u64) {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join(entry);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::File::create(&file)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    tar_gz(out, work.path(), entry);
}

/// What is left of imports and restores in `storage`: staging folders and
/// folders of replaced content.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".supascale-"))
        .collect()
}

/// The error of an answer that must have status `expected`, checked to
/// start with `prefix`.
fn error_of<'a>(status: u16, body: &'a Value, expected: u16, prefix: &str) -> &'a str {
    assert_eq!(status, expected, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with(prefix), "{error}");
    error
}

/// A gzip bomb (100 GiB in one entry), a zip bomb (10 GiB) and a tar whose
/// header claims 100 GiB: each answers 400 naming the file and the entry
/// within 10 s, by the expansion ratio, and the data dir and the project
/// take as much disk afterwards as before.
#[tokio::test]
async fn bombs_are_refused_within_seconds_and_leave_the_disk_as_it_was() {
    let target = refproject::make(0.0, 101, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let tar_gz = work.path().join("storage.tar.gz");
    gzip_bomb(&tar_gz, Some("avatars/zeros.bin"), 100 * 1024);
    let zip = work.path().join("storage.zip");
    zip_bomb(&zip, 5);
    let tar = work.path().join("storage.tar");
    over_declared_tar(&tar, "avatars/huge.bin");
    let storage = target.root.path().join("volumes/storage");
    let before = (
        tree_snapshot(&storage),
        table_fingerprints(&target.database.url),
    );
    let usage_before = disk_usage(app.data_dir.path());
    for (file, entry) in [
        (&tar_gz, "avatars/zeros.bin"),
        (&zip, "avatars/zeros-0.bin"),
        (&tar, "avatars/huge.bin"),
    ] {
        let name = file.file_name().unwrap().to_str().unwrap();
        let size = std::fs::metadata(file).unwrap().len();
        let (status, body, took) = import(&app, "t", "storage", file).await;
        eprintln!("{name} ({size} bytes): {status} after {took:?}: {body}");
        let error = error_of(status, &body, 400, &format!("{name}: {entry}: "));
        assert!(
            error.contains("expands past the limit of 200 times the upload's size"),
            "{name}: {error}"
        );
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
        assert_eq!(
            (
                tree_snapshot(&storage),
                table_fingerprints(&target.database.url)
            ),
            before,
            "{name} changed the project"
        );
        assert!(leftovers(&storage).is_empty(), "{:?}", leftovers(&storage));
        assert!(waiting_uploads(app.data_dir.path()).is_empty());
        let usage = disk_usage(app.data_dir.path());
        assert!(
            usage < usage_before + 4 * MIB,
            "{name}: the data dir takes {usage} bytes, {usage_before} before"
        );
    }
}

/// A gzipped "custom-format dump" of 1 GiB of zeros (1 MB) sent to a
/// database import answers 400 naming it once it has expanded 200 times
/// its size, not once the disk is full, and nothing stays in the spool.
#[tokio::test]
async fn a_gzipped_dump_bomb_stops_at_the_expansion_ratio() {
    let target = refproject::make(0.0, 103, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let dump = work.path().join("backup.dump.gz");
    gzip_bomb(&dump, None, 1024);
    let usage_before = disk_usage(app.data_dir.path());
    let (status, body, took) = import(&app, "t", "database", &dump).await;
    eprintln!("backup.dump.gz: {status} after {took:?}: {body}");
    error_of(
        status,
        &body,
        400,
        "backup.dump.gz expands past the limit of 200 times the upload's size",
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(app.spool_files().is_empty(), "{:?}", app.spool_files());
    assert!(waiting_uploads(app.data_dir.path()).is_empty());
    assert!(disk_usage(app.data_dir.path()) < usage_before + 4 * MIB);
}

/// An HTTP/1.1 request written by hand, so that the test decides how much
/// of the body is sent and in what framing; reads the answer while the
/// body is still going out.
async fn upload_raw(app: &TestApp, path: &str, body_bytes: u64, framing: Framing) -> (u16, Value) {
    let address = app.address.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let boundary = "disk-space-boundary";
    let preamble = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"big.tar.gz\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let epilogue = format!("\r\n--{boundary}--\r\n");
    let length = match framing {
        Framing::Chunked => "Transfer-Encoding: chunked".to_string(),
        Framing::LengthOnly => format!(
            "Content-Length: {}",
            preamble.len() as u64 + body_bytes + epilogue.len() as u64
        ),
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nX-API-Key: {}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n{length}\r\n\
         Connection: close\r\n\r\n",
        app.admin_key
    );
    let sending = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        match framing {
            // Only the start of the body: the answer must not wait for it.
            Framing::LengthOnly => {
                write.write_all(preamble.as_bytes()).await?;
                write.write_all(&[0u8; 64 * 1024]).await?;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Framing::Chunked => {
                let chunk = |data: &[u8]| {
                    let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                    framed.extend_from_slice(data);
                    framed.extend_from_slice(b"\r\n");
                    framed
                };
                write.write_all(&chunk(preamble.as_bytes())).await?;
                let zeros = chunk(&vec![0u8; MIB as usize]);
                for _ in 0..body_bytes / MIB {
                    write.write_all(&zeros).await?;
                }
                write.write_all(&chunk(epilogue.as_bytes())).await?;
                write.write_all(b"0\r\n\r\n").await?;
            }
        }
        std::io::Result::Ok(())
    });
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("an answer within 60 s");
    sending.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let json = text
        .find('{')
        .zip(text.rfind('}'))
        .and_then(|(from, to)| serde_json::from_str(&text[from..=to]).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[derive(Clone, Copy)]
enum Framing {
    /// `Content-Length` of the whole body; only its first bytes are sent.
    LengthOnly,
    /// `Transfer-Encoding: chunked`: the size is known only at the end.
    Chunked,
}

/// The data dir on a 64 MiB disk keeping 16 MiB free: an upload whose
/// `Content-Length` does not fit answers 507 before its body is read; one
/// without a length answers 507 once it reaches the reserve, and its
/// partial file is gone. The space is there for the next upload.
#[tokio::test]
async fn an_upload_that_does_not_fit_answers_507_and_leaves_nothing() {
    let project = make_project().await;
    let holder = tempfile::tempdir().unwrap();
    let data_dir = holder.path().join("data");
    let disk = SmallDisk::mount(&data_dir, 64 * MIB);
    let reserve = disk.reserve_leaving(48 * MIB);
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default()
            .env("SUPASCALE_DATA_DIR", data_dir.to_str().unwrap())
            .env("SUPASCALE_DISK_RESERVE_BYTES", reserve.to_string()),
    )
    .await;
    supascale_tests::register(&app, &project, "p").await;
    let free_before = disk.free();
    let path = "/api/v1/projects/p/import/functions";

    let started = Instant::now();
    let (status, body) = upload_raw(&app, path, 100 * MIB, Framing::LengthOnly).await;
    let error = error_of(status, &body, 507, FULL_UPLOAD_AREA);
    assert!(
        error.contains(" left, ") && error.ends_with(" needed"),
        "{error}"
    );
    // Answered without the 30 s the sender waits before anything more.
    assert!(started.elapsed() < Duration::from_secs(20));

    let (status, body) = upload_raw(&app, path, 100 * MIB, Framing::Chunked).await;
    error_of(status, &body, 507, FULL_UPLOAD_AREA);
    assert!(
        waiting_uploads(&data_dir).is_empty(),
        "{:?}",
        waiting_uploads(&data_dir)
    );
    let free_after = disk.free();
    assert!(
        free_after + 2 * MIB >= free_before,
        "{free_after} bytes free afterwards, {free_before} before"
    );

    // What fits still goes through.
    let work = tempfile::tempdir().unwrap();
    let small = work.path().join("functions.tar.gz");
    std::fs::create_dir_all(work.path().join("functions/hi")).unwrap();
    std::fs::write(work.path().join("functions/hi/index.ts"), "// hi\n").unwrap();
    tar_gz(&small, work.path(), "functions");
    let (status, body, _) = import(&app, "p", "functions", &small).await;
    assert_eq!(status, 200, "{body}");
    drop(app);
}

/// A storage import whose archive declares more than the project's storage
/// disk has beside the reserve fails with the space message before it
/// writes, and the project is as it was.
#[tokio::test]
async fn an_import_that_does_not_fit_fails_with_the_space_message_and_changes_nothing() {
    let target = refproject::make(0.0, 102, true).await;
    let storage = target.root.path().join("volumes/storage");
    let disk = SmallDisk::mount(&storage, 32 * MIB);
    let object = storage.join("stub/stub/avatars/me.png/v1");
    std::fs::create_dir_all(object.parent().unwrap()).unwrap();
    std::fs::write(&object, b"the project's own").unwrap();
    let reserve = disk.reserve_leaving(24 * MIB);
    // The ratio would refuse these zeros first; this is about the disk.
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default()
            .env("SUPASCALE_DISK_RESERVE_BYTES", reserve.to_string())
            .env("SUPASCALE_IMPORT_MAX_EXPANSION_RATIO", "100000"),
    )
    .await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("storage.tar.gz");
    zeros_tar_gz(&archive, "avatars/big.bin", 40);
    let before = (
        tree_snapshot(&storage),
        table_fingerprints(&target.database.url),
    );
    let free_before = disk.free();

    let (status, body, _) = import(&app, "t", "storage", &archive).await;
    let prefix = "Storage import failed: Insufficient disk space on the storage folder: ";
    error_of(status, &body, 500, prefix);
    assert_eq!(
        (
            tree_snapshot(&storage),
            table_fingerprints(&target.database.url)
        ),
        before
    );
    assert!(leftovers(&storage).is_empty(), "{:?}", leftovers(&storage));
    assert!(waiting_uploads(app.data_dir.path()).is_empty());
    assert!(disk.free() + MIB >= free_before);
    // One attempt: a full disk is not worth another.
    let (_, jobs) = app.jobs().list("").await;
    assert_eq!(jobs["jobs"][0]["attempt"], 1, "{jobs}");
    drop(app);
}

/// Backs up `component` of project `p`, moves the project's folder of it
/// (`dir`) to a 16 MiB disk holding only `file` with `room` bytes left
/// beside the reserve, and restores it: the restore must fail, once, with
/// the space message naming `area`, and change nothing.
async fn restore_onto_a_small_disk(
    app: &mut TestApp,
    component: &str,
    dir: &Path,
    file: &str,
    room: u64,
    area: &str,
) {
    let (status, body) = app
        .backups()
        .create(json!({"projectId": "p", "type": component}))
        .await;
    assert_eq!(status, 200, "{body}");
    let backup = body["backup"]["id"].as_str().unwrap().to_string();

    let disk = SmallDisk::mount(dir, 16 * MIB);
    std::fs::create_dir_all(dir.join(file).parent().unwrap()).unwrap();
    std::fs::write(dir.join(file), b"what the project has now").unwrap();
    app.set_env(
        "SUPASCALE_DISK_RESERVE_BYTES",
        disk.reserve_leaving(room).to_string(),
    );
    app.restart();
    let before = tree_snapshot(dir);
    let free_before = disk.free();

    let (status, body) = app
        .backups()
        .restore(&backup, json!({ "restoreTypes": [component] }))
        .await;
    let prefix = format!("Restore failed: Insufficient disk space on {area}: ");
    error_of(status, &body, 500, &prefix);
    assert_eq!(tree_snapshot(dir), before);
    assert!(leftovers(dir).is_empty(), "{:?}", leftovers(dir));
    assert!(app.spool_files().is_empty(), "{:?}", app.spool_files());
    assert!(disk.free() + MIB >= free_before);
    let (_, jobs) = app.jobs().list("kind=restore").await;
    assert_eq!(jobs["jobs"][0]["attempt"], 1, "{jobs}");
}

/// A restore whose storage (24 MiB) does not fit beside the target's
/// reserve (12 MiB of room) fails before it stages anything.
#[tokio::test]
async fn a_restore_that_does_not_fit_fails_with_the_space_message_and_changes_nothing() {
    let project = make_project().await;
    let storage = project.root.path().join("volumes/storage");
    let big = storage.join("stub/stub/avatars/big.bin/v1");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    std::fs::File::create(&big)
        .unwrap()
        .set_len(24 * MIB)
        .unwrap();
    let mut app = TestApp::spawn(Backend::Sqlite).await;
    supascale_tests::register(&app, &project, "p").await;
    let object = "stub/stub/avatars/me.png/v2";
    let area = "the storage folder";
    restore_onto_a_small_disk(&mut app, "storage", &storage, object, 12 * MIB, area).await;
}

/// Thousands of tiny files: the manifest's bytes (30 KB) fit, the blocks
/// they take (12 MiB) do not. The staging stops at the reserve while it
/// writes, with the space message, and takes its files with it.
#[tokio::test]
async fn a_restore_of_many_small_files_stops_at_the_reserve_while_staging() {
    let project = make_project().await;
    let functions = project.root.path().join("volumes/functions");
    let many = functions.join("many");
    std::fs::create_dir_all(&many).unwrap();
    std::fs::write(many.join("index.ts"), "// many\n").unwrap();
    for i in 0..3000 {
        std::fs::write(many.join(format!("part-{i}.ts")), "// a part\n").unwrap();
    }
    let mut app = TestApp::spawn(Backend::Sqlite).await;
    supascale_tests::register(&app, &project, "p").await;
    let area = "the functions folder";
    restore_onto_a_small_disk(
        &mut app,
        "functions",
        &functions,
        "hello/index.ts",
        6 * MIB,
        area,
    )
    .await;
}
