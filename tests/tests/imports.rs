//! Imports through HTTP multipart into real projects, with files made by
//! the real tools (`pg_dump`, `tar`, python's `zipfile`): what arrives is
//! intact, and a hostile or broken upload answers 400 and changes nothing.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use supascale_tests::refproject::{self, register, schema_of, table_fingerprints, tree_snapshot};
use supascale_tests::{Backend, Launch, SendJson, TestApp, psql};

/// `curl -F "file=@<path>"` to `/projects/<id>/import/<what>`.
async fn import(app: &TestApp, project_id: &str, what: &str, path: &Path) -> (u16, Value) {
    app.imports(project_id).upload(what, path).await
}

fn run(command: &mut Command) {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pg_dump(url: &str, args: &[&str], out: &Path) {
    run(Command::new("pg_dump")
        .args(args)
        .arg("--file")
        .arg(out)
        .arg("--dbname")
        .arg(url));
}

/// The uploads that wait for a job: none once every import has ended.
fn uploads(app: &TestApp) -> Vec<String> {
    supascale_tests::waiting_uploads(app.data_dir.path())
}

#[tokio::test]
async fn a_custom_format_dump_of_a_supabase_database_imports_into_a_fresh_project() {
    let source = refproject::make(0.05, 21, false).await;
    let target = refproject::make(0.0, 22, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "fresh").await;
    let work = tempfile::tempdir().unwrap();
    let dump = work.path().join("backup.dump");
    pg_dump(&source.database.url, &["-Fc"], &dump);

    let (status, body) = import(&app, "fresh", "database", &dump).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["message"], "Database imported successfully");
    assert!(body["data"]["duration"].as_i64().unwrap() > 0, "{body}");
    assert_eq!(
        table_fingerprints(&target.database.url),
        table_fingerprints(&source.database.url)
    );
    // Policies, triggers, functions, views: the whole schema.
    assert_eq!(
        schema_of(&target.database.url),
        schema_of(&source.database.url)
    );
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
}

#[tokio::test]
async fn data_only_dumps_in_every_format_load_into_an_existing_schema() {
    let source = refproject::make(0.03, 23, false).await;
    let expected = table_fingerprints(&source.database.url);
    let app = TestApp::spawn(Backend::Sqlite).await;
    let work = tempfile::tempdir().unwrap();
    let plain = work.path().join("data.sql");
    pg_dump(&source.database.url, &["--data-only"], &plain);
    let gzipped = work.path().join("data.sql.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -c {} > {}",
        plain.display(),
        gzipped.display()
    )));
    let custom = work.path().join("data.dump");
    pg_dump(&source.database.url, &["-Fc", "--data-only"], &custom);

    for (n, file) in [&plain, &gzipped, &custom].into_iter().enumerate() {
        let target = refproject::make(0.0, 24 + n as u64, true).await;
        let id = format!("p{n}");
        register(&app, &target, &id).await;
        if n == 2 {
            // A data-only custom dump replaces the rows of the tables it
            // fills: a row the project had goes.
            psql(
                &target.database.url,
                "INSERT INTO storage.buckets (id, name) VALUES ('old', 'old')",
            );
        }
        let (status, body) = import(&app, &id, "database", file).await;
        assert_eq!(status, 200, "{}: {body}", file.display());
        assert_eq!(
            table_fingerprints(&target.database.url),
            expected,
            "{}",
            file.display()
        );
    }
}

#[tokio::test]
async fn broken_dumps_answer_400_and_change_nothing() {
    let source = refproject::make(0.03, 31, false).await;
    let target = refproject::make(0.02, 32, false).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;
    let before = (
        table_fingerprints(&target.database.url),
        schema_of(&target.database.url),
    );
    let work = tempfile::tempdir().unwrap();
    let dump = work.path().join("full.dump");
    pg_dump(&source.database.url, &["-Fc"], &dump);
    let bytes = std::fs::read(&dump).unwrap();

    let truncated = work.path().join("truncated.dump");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let random = work.path().join("random.dump");
    std::fs::write(
        &random,
        (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // Statements that would all succeed: only the cut can fail it.
    let script: String = (0..200_000)
        .map(|i| format!("SELECT {i} AS n, md5('{i}');\n"))
        .collect();
    std::fs::write(work.path().join("data.sql"), &script).unwrap();
    let mut encoder = flate_gzip(script.as_bytes());
    encoder.truncate(encoder.len() / 2);
    let truncated_gz = work.path().join("data.sql.gz");
    std::fs::write(&truncated_gz, &encoder).unwrap();
    let zip_named_dump = work.path().join("really-a-tar.dump");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&zip_named_dump)
        .arg("-C")
        .arg(work.path())
        .arg("data.sql"));

    for (file, words) in [
        (&truncated, "truncated.dump"),
        (&random, "random.dump"),
        (&truncated_gz, "data.sql.gz"),
        (&zip_named_dump, "really-a-tar.dump"),
    ] {
        let (status, body) = import(&app, "t", "database", file).await;
        assert_eq!(status, 400, "{}: {body}", file.display());
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(words), "{error}");
        assert_eq!(body["success"], false);
        assert_eq!(
            (
                table_fingerprints(&target.database.url),
                schema_of(&target.database.url)
            ),
            before,
            "{} changed the project",
            file.display()
        );
    }
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
    assert!(app.spool_files().is_empty(), "{:?}", app.spool_files());
}

/// gzip of `data` through the real `gzip`.
fn flate_gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out.stdout
}

#[tokio::test]
async fn checks_that_need_no_job_answer_at_once() {
    let target = refproject::make(0.0, 41, true).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_MAX_UPLOAD_BYTES", "100000"),
    )
    .await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.sql");
    std::fs::write(&big, "SELECT 1;\n".repeat(20_000)).unwrap();
    let (status, body) = import(&app, "t", "database", &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("100000"), "{body}");

    let small = work.path().join("small.sql");
    std::fs::write(&small, "SELECT 1;\n").unwrap();
    let (status, body) = import(&app, "nope", "database", &small).await;
    assert_eq!(
        (status, body["error"].clone()),
        (404, json!("Project not found"))
    );

    // Not multipart at all.
    let (status, body) = app
        .post_json("/api/v1/projects/t/import/database", &json!({"file": "x"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("multipart/form-data")
    );

    // A project whose database does not answer.
    let down_root = tempfile::tempdir().unwrap();
    let (status, body) = app
        .projects()
        .register(json!({"id": "down", "name": "Down",
                "rootDir": down_root.path().to_str().unwrap(),
                "databaseUrl": "postgres://postgres@127.0.0.1:1/none"}))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = import(&app, "down", "database", &small).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("Project down is not running: "),
        "{body}"
    );
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
}

/// A zip of `files` (path, bytes) made by python's `zipfile`.
fn python_zip(out: &Path, root: &Path, paths: &[&str]) {
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED)\n\
                  [z.write(sys.argv[2] + '/' + p, p) for p in sys.argv[3:]]\n\
                  z.close()\n";
    run(Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(out)
        .arg(root)
        .args(paths));
}

#[tokio::test]
async fn functions_from_the_contracts_tar_command_and_a_zip() {
    let target = refproject::make(0.0, 51, true).await;
    let functions = target.root.path().join("volumes/functions");
    std::fs::create_dir_all(functions.join("main")).unwrap();
    std::fs::write(functions.join("main/index.ts"), "// the router\n").unwrap();
    std::fs::create_dir_all(functions.join("hello-world")).unwrap();
    std::fs::write(functions.join("hello-world/index.ts"), "old\n").unwrap();
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;

    // What `supabase functions new` leaves, archived as the contract says.
    let work = tempfile::tempdir().unwrap();
    let supabase = work.path().join("supabase/functions");
    for name in ["hello-world", "send-email", "process-webhook"] {
        std::fs::create_dir_all(supabase.join(name)).unwrap();
        std::fs::write(
            supabase.join(name).join("index.ts"),
            format!("Deno.serve(() => new Response(\"{name}\"));\n"),
        )
        .unwrap();
    }
    std::fs::create_dir_all(supabase.join("_shared")).unwrap();
    std::fs::write(
        supabase.join("_shared/cors.ts"),
        "export const cors = {};\n",
    )
    .unwrap();
    let archive = work.path().join("functions.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(work.path().join("supabase"))
        .arg("functions"));
    let (status, body) = import(&app, "t", "functions", &archive).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Edge Functions imported successfully");
    assert!(body["data"]["duration"].is_i64(), "{body}");
    for name in ["hello-world", "send-email", "process-webhook"] {
        assert_eq!(
            std::fs::read_to_string(functions.join(name).join("index.ts")).unwrap(),
            format!("Deno.serve(() => new Response(\"{name}\"));\n")
        );
    }
    assert!(functions.join("_shared/cors.ts").is_file());
    // The project's own router stays.
    assert_eq!(
        std::fs::read_to_string(functions.join("main/index.ts")).unwrap(),
        "// the router\n"
    );

    // A zip with the functions at its root, and a stray file: a warning.
    std::fs::write(supabase.join("README.md"), "notes\n").unwrap();
    std::fs::write(supabase.join("send-email/index.ts"), "v2\n").unwrap();
    let zip = work.path().join("functions.zip");
    python_zip(&zip, &supabase, &["send-email/index.ts", "README.md"]);
    let (status, body) = import(&app, "t", "functions", &zip).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        std::fs::read_to_string(functions.join("send-email/index.ts")).unwrap(),
        "v2\n"
    );
    let warnings = body["data"]["warnings"].to_string();
    assert!(warnings.contains("README.md"), "{body}");
    assert!(!functions.join("README.md").exists());
    assert!(functions.join("hello-world/index.ts").is_file());
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
}

#[tokio::test]
async fn downloaded_buckets_become_objects_the_storage_api_serves() {
    let target = refproject::make(0.0, 61, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let buckets = work.path().join("buckets");
    let files: &[(&str, &[u8])] = &[
        ("avatars/user 1/photo é.png", b"\x89PNG fake image bytes"),
        ("avatars/user 1/notes.txt", b"plain text"),
        ("invoices/2026/it's \"quoted\".pdf", b"%PDF-1.7 fake"),
    ];
    for (path, bytes) in files {
        let file = buckets.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, bytes).unwrap();
    }
    let zip = work.path().join("storage.zip");
    python_zip(
        &zip,
        &buckets,
        &files.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
    );
    let (status, body) = import(&app, "t", "storage", &zip).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Storage files imported successfully");
    assert_eq!(body["data"]["objects"], 3, "{body}");

    let stub = target.root.path().join("volumes/storage/stub/stub");
    for (path, bytes) in files {
        let (bucket, key) = path.split_once('/').unwrap();
        let row = psql(
            &target.database.url,
            &format!(
                "SELECT version || '|' || (metadata->>'mimetype') || '|' || (metadata->>'eTag') \
                 || '|' || (metadata->>'size') FROM storage.objects \
                 WHERE bucket_id = '{bucket}' AND name = '{}'",
                key.replace('\'', "''")
            ),
        );
        let fields: Vec<&str> = row.trim().split('|').collect();
        assert_eq!(fields.len(), 4, "no row for {path}: {row:?}");
        let file = stub.join(bucket).join(key).join(fields[0]);
        assert_eq!(&std::fs::read(&file).unwrap(), bytes, "{path}");
        let xattr = |name: &str| {
            String::from_utf8(xattr::get(&file, name).unwrap().unwrap_or_default()).unwrap()
        };
        assert_eq!(xattr("user.supabase.content-type"), fields[1], "{path}");
        assert_eq!(xattr("user.supabase.etag"), fields[2], "{path}");
        assert!(!xattr("user.supabase.cache-control").is_empty());
        assert_eq!(fields[3], bytes.len().to_string());
    }
    let png = psql(
        &target.database.url,
        "SELECT metadata->>'mimetype' FROM storage.objects WHERE name = 'user 1/photo é.png'",
    );
    assert_eq!(png.trim(), "image/png");
    let created = psql(
        &target.database.url,
        "SELECT string_agg(id, ',' ORDER BY id) FROM storage.buckets",
    );
    assert!(created.contains("invoices"), "{created}");

    // Again, changed: the object is replaced (one row, its old version's
    // file gone), the others stay.
    std::fs::write(buckets.join("avatars/user 1/notes.txt"), b"new text").unwrap();
    let again = work.path().join("again.zip");
    python_zip(&again, &buckets, &["avatars/user 1/notes.txt"]);
    let (status, body) = import(&app, "t", "storage", &again).await;
    assert_eq!(status, 200, "{body}");
    let versions = std::fs::read_dir(stub.join("avatars/user 1/notes.txt"))
        .unwrap()
        .count();
    assert_eq!(versions, 1);
    let rows = psql(&target.database.url, "SELECT count(*) FROM storage.objects");
    assert_eq!(rows.trim(), "3");
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
}

/// Hostile archives, each made with the real tools where they can make
/// it: 400 naming the problem, the project unchanged, nothing written
/// outside the staging area.
#[tokio::test]
async fn hostile_archives_answer_400_and_change_nothing() {
    let target = refproject::make(0.01, 71, false).await;
    let app = TestApp::spawn_with(
        Backend::Sqlite,
        Launch::default().env("SUPASCALE_IMPORT_MAX_EXPANDED_BYTES", "1000000"),
    )
    .await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let py = |name: &str, script: &str| -> std::path::PathBuf {
        let out = work.path().join(name);
        run(Command::new("python3").arg("-c").arg(script).arg(&out));
        out
    };
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (
            py(
                "traversal.zip",
                "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w')\n\
                 z.writestr('avatars/ok.txt', 'ok')\nz.writestr('../../evil.txt', 'x')\nz.close()",
            ),
            "..",
        ),
        (
            py(
                "traversal.tar.gz",
                "import sys, tarfile, io\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
                 i = tarfile.TarInfo('avatars/../../../evil.txt'); i.size = 1\n\
                 t.addfile(i, io.BytesIO(b'x'))\nt.close()",
            ),
            "..",
        ),
        (
            py(
                "absolute.tar.gz",
                "import sys, tarfile, io\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
                 i = tarfile.TarInfo('/tmp/evil.txt'); i.size = 1\n\
                 t.addfile(i, io.BytesIO(b'x'))\nt.close()",
            ),
            "absolute",
        ),
        (
            py(
                "symlink.tar.gz",
                "import sys, tarfile\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
                 i = tarfile.TarInfo('avatars/escape'); i.type = tarfile.SYMTYPE\n\
                 i.linkname = '../../../../../etc/passwd'\nt.addfile(i)\nt.close()",
            ),
            "symlink",
        ),
        (
            py(
                "hardlink.tar.gz",
                "import sys, tarfile\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
                 i = tarfile.TarInfo('avatars/passwd'); i.type = tarfile.LNKTYPE\n\
                 i.linkname = '/etc/passwd'\nt.addfile(i)\nt.close()",
            ),
            "hard link",
        ),
        (
            py(
                "bomb.tar.gz",
                "import sys, tarfile, io\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
                 i = tarfile.TarInfo('avatars/zeros.bin'); i.size = 1100000\n\
                 t.addfile(i, io.BytesIO(bytes(1100000)))\nt.close()",
            ),
            "limit",
        ),
        (
            py(
                "bomb.zip",
                "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1], 'w', zipfile.ZIP_DEFLATED)\n\
                 z.writestr('avatars/zeros.bin', bytes(1100000))\nz.close()",
            ),
            "limit",
        ),
        (
            {
                let good = py(
                    "good.tar.gz",
                    "import sys, tarfile, io\nt = tarfile.open(sys.argv[1], 'w:gz')\n\
                     import os\nd = os.urandom(200000)\n\
                     i = tarfile.TarInfo('avatars/random.bin'); i.size = len(d)\n\
                     t.addfile(i, io.BytesIO(d))\nt.close()",
                );
                let bytes = std::fs::read(&good).unwrap();
                let cut = work.path().join("truncated.tar.gz");
                std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
                cut
            },
            "truncated.tar.gz",
        ),
        (
            {
                let tar = work.path().join("really-a-tar.zip");
                std::fs::write(outside.path().join("a.txt"), "a").unwrap();
                run(Command::new("tar")
                    .arg("-czf")
                    .arg(&tar)
                    .arg("-C")
                    .arg(outside.path())
                    .arg("a.txt"));
                std::fs::remove_file(outside.path().join("a.txt")).unwrap();
                tar
            },
            "really-a-tar.zip",
        ),
    ];
    for bomb in ["bomb.tar.gz", "bomb.zip"] {
        let size = std::fs::metadata(work.path().join(bomb)).unwrap().len();
        assert!(size <= 1536, "{bomb} is {size} bytes");
    }
    let root = target.root.path();
    // What the traversals aim at, around the project's folder.
    let escapes: Vec<std::path::PathBuf> = root
        .ancestors()
        .take(4)
        .map(|dir| dir.join("evil.txt"))
        .collect();
    let before = (
        tree_snapshot(root),
        table_fingerprints(&target.database.url),
    );
    for what in ["storage", "functions"] {
        for (file, words) in &cases {
            let (status, body) = import(&app, "t", what, file).await;
            assert_eq!(status, 400, "{what} {}: {body}", file.display());
            let error = body["error"].as_str().unwrap();
            assert!(error.contains(words), "{what} {}: {error}", file.display());
            let after = (
                tree_snapshot(root),
                table_fingerprints(&target.database.url),
            );
            assert!(
                after == before,
                "{what} {} changed the project",
                file.display()
            );
            for escape in &escapes {
                assert!(!escape.exists(), "{} was written", escape.display());
            }
        }
    }
    assert!(!Path::new("/tmp/evil.txt").exists());
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
}

/// Scale-out: the API streams the upload to the shared location (here S3,
/// on moto) and a worker with a data dir of its own reads it from there;
/// afterwards the upload is gone from the bucket.
#[tokio::test]
async fn a_worker_elsewhere_reads_the_upload_from_the_shared_location() {
    let emulator = supascale_tests::emulators::s3("uploads").await;
    let target = refproject::make(0.0, 81, true).await;
    let queue = supascale_tests::RedisQueue::new();
    let shared = Launch::default()
        .env("SUPASCALE_REDIS_URL", "redis://127.0.0.1:6379")
        .env("SUPASCALE_QUEUE_NAME", queue.name.clone())
        .env("SUPASCALE_DESTINATIONS__S3__BUCKET", "uploads")
        .env(
            "SUPASCALE_DESTINATIONS__S3__ENDPOINT",
            emulator.endpoint.clone(),
        )
        .env("SUPASCALE_DESTINATIONS__S3__ACCESS_KEY_ID", "test")
        .env("SUPASCALE_DESTINATIONS__S3__SECRET_ACCESS_KEY", "test")
        .env("SUPASCALE_UPLOAD_DESTINATION", "s3");
    let app = TestApp::spawn_with(
        Backend::Postgres,
        shared.clone().env("SUPASCALE_WORKERS", "0"),
    )
    .await;
    let elsewhere = tempfile::tempdir().unwrap();
    let _worker = app.start_worker(
        shared
            .clone()
            .env("SUPASCALE_DATA_DIR", elsewhere.path().to_str().unwrap()),
    );
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let functions = work.path().join("functions/hello");
    std::fs::create_dir_all(&functions).unwrap();
    std::fs::write(
        functions.join("index.ts"),
        "Deno.serve(() => new Response('hi'));\n",
    )
    .unwrap();
    let archive = work.path().join("functions.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(work.path())
        .arg("functions"));
    let (status, body) = import(&app, "t", "functions", &archive).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["functions"], json!(["hello"]), "{body}");
    assert!(
        target
            .root
            .path()
            .join("volumes/functions/hello/index.ts")
            .is_file()
    );
    // The API kept nothing locally, and the bucket holds no upload.
    assert!(uploads(&app).is_empty());
    let listing = reqwest::get(format!("{}/uploads?list-type=2", emulator.endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!listing.contains("supascale-uploads"), "{listing}");
    assert!(listing.contains("ListBucketResult"), "{listing}");
}

/// A copy of another project's `volumes/storage` (what `tar --xattrs`
/// makes of it) is kept as it is: same paths, same attributes, and a row
/// for every object. Asked for with `?async=true`, the import answers 202
/// and its `complete` event carries the body the waiting request answers.
#[tokio::test]
async fn a_copy_of_a_storage_folder_is_kept_as_it_is() {
    let source = refproject::make(0.02, 91, false).await;
    let target = refproject::make(0.0, 92, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("storage.tar.gz");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(source.root.path().join("volumes"))
        .arg("storage"));
    let (status, accepted) = app
        .imports("t")
        .request("storage", "async=true", &archive)
        .send_json()
        .await;
    assert_eq!(status, 202, "{accepted}");
    let events = app
        .get(accepted["job"]["eventsUrl"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let events = supascale_tests::read_events(events, std::time::Duration::from_secs(60), |e| {
        e.event == "complete" || e.event == "error"
    })
    .await;
    let last = events.last().unwrap();
    assert_eq!(last.event, "complete", "{events:?}");
    assert_eq!(last.data["message"], "Storage files imported successfully");
    assert_eq!(
        last.data["data"]["objects"],
        source.objects.len(),
        "{:?}",
        last.data
    );

    for (path, size) in &source.objects {
        let (from, to) = (source.root.path().join(path), target.root.path().join(path));
        assert_eq!(
            std::fs::metadata(&to).unwrap().len(),
            *size,
            "{}",
            path.display()
        );
        assert_eq!(std::fs::read(&from).unwrap(), std::fs::read(&to).unwrap());
        for attr in [
            "user.supabase.content-type",
            "user.supabase.cache-control",
            "user.supabase.etag",
        ] {
            assert_eq!(
                xattr::get(&from, attr).unwrap(),
                xattr::get(&to, attr).unwrap(),
                "{attr} of {}",
                path.display()
            );
        }
    }
    let rows = psql(
        &target.database.url,
        "SELECT count(*) FROM storage.objects o WHERE o.metadata->>'eTag' IS NOT NULL",
    );
    assert_eq!(rows.trim(), source.objects.len().to_string());
}

/// A retried request with the same `Idempotency-Key` gets the first
/// import back instead of importing again.
#[tokio::test]
async fn an_idempotency_key_returns_the_first_import() {
    let target = refproject::make(0.0, 101, true).await;
    let app = TestApp::spawn(Backend::Sqlite).await;
    register(&app, &target, "t").await;
    let work = tempfile::tempdir().unwrap();
    let send = |version: &'static str| {
        let work = work.path().to_path_buf();
        let app = &app;
        async move {
            let dir = work.join(version).join("hello");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("index.ts"), version).unwrap();
            let archive = work.join(format!("{version}.tar.gz"));
            run(Command::new("tar")
                .arg("-czf")
                .arg(&archive)
                .arg("-C")
                .arg(work.join(version))
                .arg("hello"));
            let part = reqwest::multipart::Part::bytes(std::fs::read(&archive).unwrap())
                .file_name("functions.tar.gz");
            app.post("/api/v1/projects/t/import/functions")
                .header("Idempotency-Key", "import-1")
                .multipart(reqwest::multipart::Form::new().part("file", part))
                .send_json()
                .await
        }
    };
    let (status, first) = send("v1").await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = send("v2").await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(first["data"]["jobId"], again["data"]["jobId"]);
    let index = target.root.path().join("volumes/functions/hello/index.ts");
    assert_eq!(std::fs::read_to_string(index).unwrap(), "v1");
    assert!(uploads(&app).is_empty(), "{:?}", uploads(&app));
}
