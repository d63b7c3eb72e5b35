//! A reference self-hosted Supabase project for round-trip tests and
//! benchmarks: a database shaped like Supabase's (reserved roles, `auth`
//! and `storage` schemas, RLS policies, a trigger, a view and a
//! materialized view, extensions, unicode) filled in proportion to `scale`,
//! and a project directory laid out like the docker setup, whose storage
//! objects carry the file backend's `user.supabase.*` xattrs and matching
//! `storage.objects` rows.
//!
//! Sizes: `scale` 1 is about 90 MB of database and 60 MB of storage files.
//! Fractions work (`0.1` for a quick test). `empty` gives a freshly initialised project: roles,
//! schemas, tables and config files, no rows, objects or functions.

use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};

use crate::{TempDatabase, psql};

pub struct RefProject {
    pub root: tempfile::TempDir,
    pub database: TempDatabase,
    /// Storage objects written: (path relative to the root, bytes).
    pub objects: Vec<(PathBuf, u64)>,
}

/// Roles every self-hosted Supabase cluster has (created once per cluster,
/// left in place: other tests' databases use them too).
const ROLES: &str = r#"
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'anon') THEN CREATE ROLE anon NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'authenticated') THEN CREATE ROLE authenticated NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'service_role') THEN CREATE ROLE service_role NOLOGIN BYPASSRLS; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'supabase_auth_admin') THEN CREATE ROLE supabase_auth_admin NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'supabase_storage_admin') THEN CREATE ROLE supabase_storage_admin NOLOGIN; END IF;
EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL; -- another test created it first
END $$;
"#;

/// The schema of a fresh project.
const SCHEMA: &str = r#"
CREATE SCHEMA IF NOT EXISTS extensions;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA extensions;
CREATE SCHEMA auth AUTHORIZATION supabase_auth_admin;
CREATE SCHEMA storage AUTHORIZATION supabase_storage_admin;
CREATE TABLE auth.users (
  id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
  email text UNIQUE,
  encrypted_password text,
  raw_user_meta_data jsonb DEFAULT '{}'::jsonb,
  created_at timestamptz DEFAULT now(),
  last_sign_in_at timestamptz
);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS
  $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
CREATE TABLE storage.buckets (
  id text PRIMARY KEY, name text NOT NULL UNIQUE, public boolean DEFAULT false,
  created_at timestamptz DEFAULT now()
);
CREATE TABLE storage.objects (
  id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
  bucket_id text REFERENCES storage.buckets(id),
  name text NOT NULL, owner uuid, version text, metadata jsonb,
  created_at timestamptz DEFAULT now(),
  UNIQUE (bucket_id, name)
);
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
CREATE POLICY "avatars are public" ON storage.objects FOR SELECT USING (bucket_id = 'avatars');
CREATE TABLE public.profiles (
  id uuid PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
  username text UNIQUE, bio text, updated_at timestamptz DEFAULT now()
);
CREATE TABLE public.posts (
  id bigserial PRIMARY KEY,
  author_id uuid REFERENCES public.profiles(id) ON DELETE CASCADE,
  title text NOT NULL, body text, tags text[], payload jsonb,
  published boolean DEFAULT false, created_at timestamptz DEFAULT now()
);
CREATE INDEX posts_by_author ON public.posts (author_id, created_at DESC);
CREATE INDEX posts_by_tag ON public.posts USING gin (tags);
CREATE TABLE public.comments (
  id bigserial PRIMARY KEY,
  post_id bigint REFERENCES public.posts(id) ON DELETE CASCADE,
  author_id uuid REFERENCES public.profiles(id) ON DELETE CASCADE,
  body text, created_at timestamptz DEFAULT now()
);
CREATE TABLE public.attachments (id bigserial PRIMARY KEY, post_id bigint REFERENCES public.posts(id), blob bytea);
CREATE TABLE public."Über Tabelle ✓" (id int PRIMARY KEY, "naïve column" text);
ALTER TABLE public.posts ENABLE ROW LEVEL SECURITY;
CREATE POLICY "published posts are public" ON public.posts FOR SELECT TO anon, authenticated USING (published);
CREATE POLICY "authors own their posts" ON public.posts FOR ALL TO authenticated USING (author_id = auth.uid());
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO anon;
GRANT ALL ON ALL TABLES IN SCHEMA public TO authenticated, service_role;
CREATE FUNCTION public.create_profile() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  INSERT INTO public.profiles (id, username) VALUES (NEW.id, split_part(NEW.email, '@', 1));
  RETURN NEW;
END $$;
CREATE TRIGGER profile_for_new_user AFTER INSERT ON auth.users
  FOR EACH ROW EXECUTE FUNCTION public.create_profile();
CREATE VIEW public.author_stats AS
  SELECT author_id, count(*) AS posts, max(created_at) AS last_post FROM public.posts GROUP BY 1;
CREATE MATERIALIZED VIEW public.tag_counts AS
  SELECT unnest(tags) AS tag, count(*) FROM public.posts GROUP BY 1;
"#;

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

/// Builds a reference project (`empty`: a freshly initialised one).
pub async fn make(scale: f64, seed: u64, empty: bool) -> RefProject {
    let database = TempDatabase::create("supascale_ref").await;
    psql(&database.url, ROLES);
    psql(&database.url, SCHEMA);
    if !empty && scale > 0.0 {
        run_psql_with_scale(&database.url, DATA, scale);
    }
    let root = tempfile::tempdir().unwrap();
    let mut objects = Vec::new();
    if !empty && scale > 0.0 {
        objects = write_storage(root.path(), &database.url, scale, seed);
        write_functions(root.path());
    }
    std::fs::create_dir_all(root.path().join("volumes/storage/stub/stub")).unwrap();
    std::fs::create_dir_all(root.path().join("volumes/functions")).unwrap();
    write_config(root.path());
    RefProject {
        root,
        database,
        objects,
    }
}

/// A project as Supabase's images initialise it, the target of a
/// migration: `auth` and `storage`, and an empty `public`.
pub async fn make_fresh(seed: u64) -> RefProject {
    let project = make(0.0, seed, true).await;
    psql(
        &project.database.url,
        "DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION pg_database_owner; \
         GRANT USAGE ON SCHEMA public TO PUBLIC;",
    );
    project
}

fn run_psql_with_scale(url: &str, sql: &str, scale: f64) {
    use std::io::Write;
    let mut child = std::process::Command::new("psql")
        .args([
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            &format!("scale={scale}"),
            url,
        ])
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
/// Object names that trip careless code: spaces, quotes, brackets,
/// non-ASCII. The reference project's files and the Cloud double's objects
/// are named from these.
pub const AWKWARD_NAMES: [&str; 8] = [
    "photo",
    "résumé",
    "scan 2026",
    "notes",
    "日本語",
    "report-final(1)",
    "a'b",
    "data",
];

fn write_storage(root: &Path, url: &str, scale: f64, seed: u64) -> Vec<(PathBuf, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let store = root.join("volumes/storage/stub/stub");
    let names = AWKWARD_NAMES;
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
    // Through standard input: one `psql -c` argument of every row exceeds
    // the kernel's argument limit from about scale 2.
    run_psql_with_scale(url, &rows, scale);
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

fn write_config(root: &Path) {
    std::fs::write(
        root.join(".env"),
        format!(
            "POSTGRES_PASSWORD=super-secret-password\nJWT_SECRET={}\n\
             ANON_KEY=eyJhbGciOiJIUzI1NiJ9.anon\nSERVICE_ROLE_KEY=eyJhbGciOiJIUzI1NiJ9.service\n\
             SITE_URL=http://localhost:3000\n",
            "x".repeat(40)
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("docker-compose.yml"),
        "name: supabase\nservices:\n  db:\n    image: supabase/postgres:15.8.1.060\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("volumes/api")).unwrap();
    std::fs::write(
        root.join("volumes/api/kong.yml"),
        "_format_version: '2.1'\nservices:\n  - name: rest-v1\n    url: http://rest:3000/\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("volumes/db/data")).unwrap();
    std::fs::write(root.join("volumes/db/data/PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        root.join("volumes/db/init-roles.sql"),
        "-- roles the project creates at first start\n",
    )
    .unwrap();
}

/// Row count and a content checksum of every table of the `public`, `auth`
/// and `storage` schemas: what a round trip must preserve.
pub fn table_fingerprints(url: &str) -> Vec<String> {
    let tables = psql(
        url,
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname IN ('public', 'auth', 'storage') ORDER BY 1",
    );
    tables
        .lines()
        .filter(|t| !t.is_empty())
        .map(|table| {
            let sums = psql(
                url,
                &format!(
                    "SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM {table} t"
                ),
            );
            format!("{table} {}", sums.trim())
        })
        .collect()
}

/// Everything a restore must bring back of a folder, one line per entry:
/// path, kind, mode, mtime, bytes (SHA-256), link target and `user.*`
/// xattrs. Two trees are the same to a user when their snapshots are equal.
pub fn tree_snapshot(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut children: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        children.sort();
        for path in children {
            // A restore's own hidden folders: listed (a test may require
            // them gone) but not read, since a running restore changes them.
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".supascale-"))
            {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push(format!("{rel} (a restore's working folder)"));
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let kind = meta.file_type();
            let content = if kind.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if kind.is_file() {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()))
            } else {
                "dir".into()
            };
            let mut xattrs: Vec<String> = if kind.is_symlink() {
                Vec::new()
            } else {
                xattr::list(&path)
                    .unwrap()
                    .filter(|n| n.to_string_lossy().starts_with("user."))
                    .map(|n| {
                        let value = xattr::get(&path, &n).unwrap().unwrap_or_default();
                        format!(
                            "{}={}",
                            n.to_string_lossy(),
                            String::from_utf8_lossy(&value)
                        )
                    })
                    .collect()
            };
            xattrs.sort();
            // A folder's mtime changes whenever its children do; files and
            // links carry theirs.
            let mtime = if kind.is_dir() { 0 } else { meta.mtime() };
            out.push(format!(
                "{rel} mode={:o} mtime={mtime} {content} [{}]",
                meta.mode() & 0o7777,
                xattrs.join(" ")
            ));
            if kind.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// The database's schema as `pg_dump -s` prints it (owners and grants
/// included).
pub fn schema_of(url: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["-s", "--dbname", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump -s: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // The header names the versions; `\restrict` carries a random key.
        .filter(|l| {
            !l.starts_with("-- Dumped")
                && !l.starts_with("\\restrict")
                && !l.starts_with("\\unrestrict")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Registers `project` with the API as `id` (its folder and database).
pub async fn register(app: &crate::TestApp, project: &RefProject, id: &str) {
    let (status, body) = app
        .projects()
        .register(
            serde_json::json!({"id": id, "name": format!("Project {id}"),
            "rootDir": project.root.path().to_str().unwrap(),
            "databaseUrl": project.database.url}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}
