//! The reference project of `supascale_tests::refproject`, at any scale.
//!
//! `refproject::make(scale, seed, false)` hands all the `storage.objects`
//! rows to one `psql -c` argument, which Linux refuses above 128 KiB
//! (`Argument list too long`, from about scale 2). Until it feeds them
//! through standard input, this builds the same project: `make(scale, seed,
//! true)` (roles, schema, config), then the same rows, objects and
//! functions as `make(scale, seed, false)` would (copied from
//! `tests/src/refproject.rs`), the storage rows through standard input.

use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};
use supascale_tests::refproject::{self, RefProject};

/// `refproject::make(scale, seed, false)`, at any scale.
pub async fn make(scale: f64, seed: u64) -> RefProject {
    let mut project = refproject::make(scale, seed, true).await;
    if scale > 0.0 {
        let url = project.database.url.clone();
        run_psql(&url, DATA, &[format!("scale={scale}")]);
        project.objects = write_storage(project.root.path(), &url, scale, seed);
        write_functions(project.root.path());
    }
    project
}

/// Rows in proportion to `:scale` (psql variable).
const DATA: &str = r#"
SELECT setseed(0.42);
INSERT INTO auth.users (email, encrypted_password, raw_user_meta_data, created_at)
SELECT 'user' || g || '@example.com', extensions.crypt('pw' || g, extensions.gen_salt('md5')),
       jsonb_build_object('full_name', 'User ' || g, 'locale', (ARRAY['en','de','ja','pt'])[1 + g % 4]),
       now() - (g || ' minutes')::interval
FROM generate_series(1, (2000 * :scale)::int) g;
CREATE TEMP TABLE authors AS SELECT row_number() OVER (ORDER BY id) - 1 AS n, id FROM public.profiles;
CREATE INDEX ON authors (n);
INSERT INTO public.posts (author_id, title, body, tags, payload, published, created_at)
SELECT (SELECT id FROM authors WHERE n = g % (2000 * :scale)::int),
       'Post ' || g || ' — ünïcödé ✓',
       repeat(md5(g::text) || ' lorem ipsum dolor sit amet ', 12 + g % 20),
       ARRAY['tag' || (g % 50), 'topic' || (g % 7)],
       jsonb_build_object('views', g * 7 % 1000, 'score', random(), 'meta', jsonb_build_object('k', md5(g::text))),
       g % 3 <> 0, now() - (g || ' seconds')::interval
FROM generate_series(1, (40000 * :scale)::int) g;
INSERT INTO public.comments (post_id, author_id, body)
SELECT 1 + (g::bigint * 7919) % (40000 * :scale)::int, (SELECT id FROM authors WHERE n = g % 50),
       'comment ' || g || ' ' || md5(g::text)
FROM generate_series(1, (100000 * :scale)::int) g;
INSERT INTO public.attachments (post_id, blob)
SELECT g, extensions.gen_random_bytes(1024) FROM generate_series(1, (2000 * :scale)::int) g;
INSERT INTO public."Über Tabelle ✓" SELECT g, 'wert ' || g FROM generate_series(1, 10) g;
REFRESH MATERIALIZED VIEW public.tag_counts;
INSERT INTO storage.buckets (id, name, public) VALUES ('avatars', 'avatars', true), ('documents', 'documents', false);
ANALYZE;
"#;

fn run_psql(url: &str, sql: &str, vars: &[String]) {
    use std::io::Write;
    let mut child = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1"])
        .args(vars.iter().flat_map(|v| ["-v", v.as_str()]))
        .arg(url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "the reference data failed");
}

/// Objects in the file backend's layout `stub/stub/<bucket>/<key>/<version>`,
/// images incompressible and documents compressible, with their xattrs and
/// `storage.objects` rows.
fn write_storage(root: &Path, url: &str, scale: f64, seed: u64) -> Vec<(PathBuf, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = root.join("volumes/storage/stub/stub");
    let names = [
        "photo",
        "résumé",
        "scan 2026",
        "notes",
        "日本語",
        "report-final(1)",
        "a'b",
        "data",
    ];
    let mut rows = String::new();
    let mut objects = Vec::new();
    for i in 0..(200.0 * scale).round() as usize {
        let bucket = if i % 3 == 0 { "avatars" } else { "documents" };
        let folders: Vec<String> = (0..i % 4).map(|k| format!("dir{}", (i >> k) % 5)).collect();
        let name = format!(
            "{}-{i}.{}",
            names[i % names.len()],
            if bucket == "avatars" { "png" } else { "txt" }
        );
        let key = if folders.is_empty() {
            name
        } else {
            format!("{}/{name}", folders.join("/"))
        };
        let version = uuid::Uuid::from_u128(rng.random()).to_string();
        let path = store.join(bucket).join(&key).join(&version);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let size = if i % 50 == 0 {
            4_000_000
        } else {
            [0usize, 100, 4096, 65_536, 200_000, 1_000_000][rng.random_range(0..6)]
        };
        let mut bytes = vec![0u8; size];
        if bucket == "avatars" {
            rng.fill_bytes(&mut bytes);
        } else {
            let line = format!("line of document {i} ").repeat(4) + "\n";
            for (b, l) in bytes.iter_mut().zip(line.bytes().cycle()) {
                *b = l;
            }
        }
        std::fs::write(&path, &bytes).unwrap();
        let mime = if bucket == "avatars" {
            "image/png"
        } else {
            "text/plain"
        };
        use sha2::Digest;
        let etag = format!("\"{}\"", hex::encode(&sha2::Sha256::digest(&bytes)[..16]));
        xattr::set(&path, "user.supabase.content-type", mime.as_bytes()).unwrap();
        xattr::set(&path, "user.supabase.cache-control", b"max-age=3600").unwrap();
        xattr::set(&path, "user.supabase.etag", etag.as_bytes()).unwrap();
        let metadata = serde_json::json!({
            "eTag": etag, "size": size, "mimetype": mime, "cacheControl": "max-age=3600",
            "contentLength": size, "httpStatusCode": 200,
        });
        rows.push_str(&format!(
            "INSERT INTO storage.objects (bucket_id, name, version, metadata) VALUES ('{bucket}', '{}', '{version}', '{}');\n",
            key.replace('\'', "''"),
            metadata.to_string().replace('\'', "''"),
        ));
        objects.push((path.strip_prefix(root).unwrap().to_path_buf(), size as u64));
    }
    std::fs::create_dir_all(store.join("documents/empty-folder")).unwrap();
    run_psql(url, &rows, &[]);
    objects
}

fn write_functions(root: &Path) {
    let functions = root.join("volumes/functions");
    for name in [
        "main",
        "hello-world",
        "send-email",
        "process-webhook",
        "stripe-sync",
    ] {
        std::fs::create_dir_all(functions.join(name)).unwrap();
        std::fs::write(
            functions.join(name).join("index.ts"),
            format!(
                "import {{ corsHeaders }} from \"../_shared/cors.ts\";\n\
                 Deno.serve(() => new Response(JSON.stringify({{ fn: \"{name}\" }}), {{ headers: corsHeaders }}));\n"
            ),
        )
        .unwrap();
    }
    std::fs::create_dir_all(functions.join("_shared")).unwrap();
    std::fs::write(
        functions.join("_shared/cors.ts"),
        "export const corsHeaders = { \"Access-Control-Allow-Origin\": \"*\" };\n",
    )
    .unwrap();
    std::fs::write(
        functions.join("send-email/deno.json"),
        "{\"imports\": {\"resend\": \"npm:resend@4\"}}\n",
    )
    .unwrap();
}
