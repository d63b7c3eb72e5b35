//! Restoring a `pg_dump` custom-format dump into a project's database, all
//! or nothing.
//!
//! `pg_restore --single-transaction` stops at the first error and commits
//! on its own, so neither "warnings, not failures" nor "files and database
//! change together" fit it. Instead:
//!
//! 1. The dump's table of contents (`pg_restore -l`) is compared with the
//!    target before anything runs: grants to roles the target cluster lacks
//!    and extensions it does not have are left out (`-L`) and each becomes a
//!    warning; user roles the backup carries (`database/roles.sql`) that the
//!    cluster lacks are created; objects owned by a role that is still
//!    missing stop the restore unless `forceRestore` (then `--no-owner`).
//! 2. One `psql` session (`ON_ERROR_STOP`) runs, inside one transaction:
//!    our preamble (`session_replication_role = replica`, a bounded
//!    `lock_timeout`, then everything the target has is dropped — schemas,
//!    extensions, event triggers, publications, large objects — so objects
//!    created after the backup are gone and a freshly initialised Supabase
//!    project takes the dump without collisions), the SQL that `pg_restore`
//!    streams from the dump, the grants that survived, and
//!    `NOTIFY pgrst, 'reload schema'`.
//! 3. A marker echoed after the last statement says everything ran. The
//!    transaction is still open: the caller swaps its files in, then
//!    [`Loaded::commit`]s — or [`Loaded::roll_back`]s, and the database is
//!    as it was. If the worker dies, the session ends and PostgreSQL rolls
//!    the transaction back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::jobs::JobError;
use crate::pgtools;
use crate::pgtools::child;

/// What a restore needs to know of the target database before it starts.
#[derive(Debug, Clone)]
pub struct TargetFacts {
    pub version: String,
    pub major: u32,
    pub user: String,
    pub superuser: bool,
    pub roles: BTreeSet<String>,
    pub available_extensions: BTreeSet<String>,
    /// The database holds a Supascale control plane's tables.
    pub control_plane: bool,
    /// It has the `auth` and `storage` schemas every Supabase project has.
    pub supabase_schemas: bool,
    /// Tables, views and sequences outside the system schemas.
    pub user_relations: i64,
}

/// Why a restore or import must not write into the database `facts`
/// describe, if it must not. A control plane is never written into; a
/// database that is neither empty nor shaped like a Supabase project (say,
/// another application's, registered by mistake) only with `force`.
pub fn identity_problem(facts: &TargetFacts, force: bool) -> Option<String> {
    if facts.control_plane {
        return Some(
            "its database holds Supascale's own control plane; a project's database must be \
             another one"
                .into(),
        );
    }
    if !force && !facts.supabase_schemas && facts.user_relations > 0 {
        return Some(format!(
            "its database does not look like a Supabase project's (no auth and storage \
             schemas, and {} tables, views or sequences that would be replaced); check the \
             project's databaseUrl, or set forceRestore: true to write into it anyway",
            facts.user_relations
        ));
    }
    None
}

/// Connects to the target and reads what the checks need; the error is the
/// cause a user can act on (never the URL's password).
pub async fn target_facts(url: &str) -> Result<TargetFacts, String> {
    use sqlx::Connection;
    let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| crate::redact::redact_urls(&e.to_string()))?;
    let (version, number, user, superuser): (String, String, String, bool) = sqlx::query_as(
        "SELECT current_setting('server_version'), current_setting('server_version_num'), \
                current_user::text, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
    )
    .fetch_one(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let roles: Vec<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_roles")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let extensions: Vec<String> =
        sqlx::query_scalar("SELECT name::text FROM pg_available_extensions")
            .fetch_all(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    let (control_plane, supabase_schemas, user_relations): (bool, bool, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            // Only constants go into it.
            "SELECT {}, \
                (SELECT count(*) = 2 FROM pg_namespace WHERE nspname IN ('auth', 'storage')), \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
                    AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%' \
                    AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid \
                                     AND d.deptype = 'e'))",
            crate::control_plane::HOLDS_OUR_TABLES
        )))
        .fetch_one(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok(TargetFacts {
        version,
        major: number.parse::<u32>().unwrap_or(0) / 10_000,
        user,
        superuser,
        roles: roles.into_iter().collect(),
        available_extensions: extensions.into_iter().collect(),
        control_plane,
        supabase_schemas,
        user_relations,
    })
}

/// The major version in a `server_version` string (`15.8`, `17.2 (Debian)`).
pub fn major_of_version(version: &str) -> Option<u32> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .find(|part| !part.is_empty())?
        .parse()
        .ok()
}

/// Why `user` may not restore a database, if it may not. Everything in the
/// dump is dropped and re-created (schemas owned by Supabase's own roles
/// among them) and data loads with triggers off, which only a superuser
/// may do.
pub fn missing_privilege(facts: &TargetFacts) -> Option<String> {
    (!facts.superuser).then(|| {
        format!(
            "role {} cannot restore the database: it is not a superuser, and a restore \
             re-creates every schema (auth, storage, … owned by Supabase's own roles) and \
             loads data with triggers off (session_replication_role = replica); in \
             self-hosted Supabase connect as supabase_admin",
            facts.user
        )
    })
}

/// One line of `pg_restore -l`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocEntry {
    pub line: String,
    pub id: u64,
    pub desc: String,
    pub namespace: String,
    /// The object's name (with its kind for ACLs and comments: `TABLE t`).
    pub tag: String,
    pub owner: String,
}

/// Entry kinds of more than one word, longest first (pg_dump's `desc`).
const MULTI_WORD_DESCS: &[&str] = &[
    "MATERIALIZED VIEW DATA",
    "TEXT SEARCH CONFIGURATION",
    "TEXT SEARCH DICTIONARY",
    "TEXT SEARCH TEMPLATE",
    "TEXT SEARCH PARSER",
    "FOREIGN DATA WRAPPER",
    "PUBLICATION TABLES IN SCHEMA",
    "PUBLICATION TABLE",
    "ROW SECURITY",
    "MATERIALIZED VIEW",
    "SEQUENCE OWNED BY",
    "SEQUENCE SET",
    "FOREIGN TABLE",
    "EVENT TRIGGER",
    "FK CONSTRAINT",
    "DEFAULT ACL",
    "ACCESS METHOD",
    "LARGE OBJECT",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "TABLE ATTACH",
    "INDEX ATTACH",
    "TABLE DATA",
    "BLOB METADATA",
    "BLOBS",
    "USER MAPPING",
    "SERVER",
];

/// Parses `pg_restore -l` (comment lines skipped).
pub fn parse_toc(listing: &str) -> Vec<TocEntry> {
    listing
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(parse_toc_line)
        .collect()
}

fn parse_toc_line(line: &str) -> Option<TocEntry> {
    let (id, rest) = line.split_once("; ")?;
    let id = id.trim().parse().ok()?;
    // "<tableoid> <oid> <desc> <namespace> <tag…> <owner>"
    let mut parts = rest.splitn(3, ' ');
    let _tableoid = parts.next()?;
    let _oid = parts.next()?;
    let rest = parts.next()?;
    let desc = MULTI_WORD_DESCS
        .iter()
        .find(|d| rest.starts_with(&format!("{d} ")))
        .map(|d| d.to_string())
        .unwrap_or_else(|| rest.split(' ').next().unwrap_or("").to_string());
    let rest = rest.get(desc.len() + 1..).unwrap_or("");
    let (namespace, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    // The owner is the last word, empty for objects without one.
    let (tag, owner) = rest.rsplit_once(' ').unwrap_or((rest, ""));
    Some(TocEntry {
        line: line.to_string(),
        id,
        desc,
        namespace: namespace.to_string(),
        tag: tag.to_string(),
        owner: owner.to_string(),
    })
}

/// What will run, decided from the dump's contents and the target.
#[derive(Debug, Default)]
pub struct Plan {
    /// The `-L` list of everything but grants.
    pub main_list: String,
    /// The `-L` list of the grants (`ACL`, `DEFAULT ACL`), rendered apart and
    /// filtered statement by statement.
    pub acl_list: String,
    /// `CREATE ROLE`/`ALTER ROLE` statements for user roles the cluster lacks.
    pub create_roles: String,
    /// The roles `create_roles` makes.
    pub created_roles: BTreeSet<String>,
    /// Objects whose owner is missing are restored owned by the restoring
    /// role (`--no-owner`); only with `forceRestore`.
    pub no_owner: bool,
    pub warnings: Vec<String>,
}

/// Decides what to leave out. `roles_sql` is the backup's
/// `database/roles.sql` (user roles only).
pub fn plan(
    toc: &[TocEntry],
    facts: &TargetFacts,
    roles_sql: &str,
    force: bool,
) -> Result<Plan, JobError> {
    let mut plan = Plan::default();
    let backup_roles = roles_in(roles_sql);
    let created: BTreeSet<String> = backup_roles
        .keys()
        .filter(|r| !facts.roles.contains(*r))
        .cloned()
        .collect();
    for role in &created {
        plan.create_roles.push_str(&backup_roles[role]);
        plan.warnings.push(format!(
            "Role {role} did not exist in the target cluster; created it from the backup \
             (without a password: set one before it logs in)"
        ));
    }
    let known = |role: &str| facts.roles.contains(role) || created.contains(role);
    plan.created_roles = created.clone();
    // Memberships that concern a created role come back with it (`GRANT
    // reader TO app_user`), when both roles exist by then. `GRANTED BY`
    // names a grantor the target may not have: the restoring role grants.
    for line in roles_sql.lines() {
        let Some((granted, member)) = membership(line) else {
            continue;
        };
        if (created.contains(&granted) || created.contains(&member))
            && known(&granted)
            && known(&member)
        {
            let statement = match line.find(" GRANTED BY ") {
                Some(at) => format!("{};", &line[..at]),
                None => line.to_string(),
            };
            plan.create_roles.push_str(&statement);
            plan.create_roles.push('\n');
        }
    }

    let mut left_out_extensions = BTreeSet::new();
    for entry in toc {
        if entry.desc == "EXTENSION" && !facts.available_extensions.contains(&entry.tag) {
            left_out_extensions.insert(entry.tag.clone());
        }
    }
    for extension in &left_out_extensions {
        plan.warnings.push(format!(
            "Extension {extension} is not available on the target server ({}); it was left \
             out, and objects that need it will fail to restore",
            facts.version
        ));
    }
    let missing_owners: BTreeSet<&str> = toc
        .iter()
        .map(|e| e.owner.as_str())
        .filter(|o| !o.is_empty() && !known(o))
        .collect();
    if !missing_owners.is_empty() {
        let names = missing_owners
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if !force {
            return Err(JobError::Target(format!(
                "the target cluster lacks roles that own objects in the backup: {names}; \
                 create them first, or set forceRestore to restore those objects owned by {}",
                facts.user
            )));
        }
        plan.no_owner = true;
        plan.warnings.push(format!(
            "The target cluster lacks roles that own objects in the backup ({names}); every \
             object was restored owned by {}",
            facts.user
        ));
    }
    for entry in toc {
        let is_left_out_extension = (entry.desc == "EXTENSION"
            && left_out_extensions.contains(&entry.tag))
            || (entry.desc == "COMMENT"
                && entry
                    .tag
                    .strip_prefix("EXTENSION ")
                    .is_some_and(|e| left_out_extensions.contains(e)));
        if is_left_out_extension {
            continue;
        }
        let list = if entry.desc == "ACL" || entry.desc == "DEFAULT ACL" {
            &mut plan.acl_list
        } else {
            &mut plan.main_list
        };
        list.push_str(&entry.line);
        list.push('\n');
    }
    Ok(plan)
}

/// `CREATE ROLE` / `ALTER ROLE` / `COMMENT ON ROLE` statements per role,
/// from `pg_dumpall --roles-only` output.
fn roles_in(roles_sql: &str) -> BTreeMap<String, String> {
    let mut roles: BTreeMap<String, String> = BTreeMap::new();
    for line in roles_sql.lines() {
        let role = ["CREATE ROLE ", "ALTER ROLE ", "COMMENT ON ROLE "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
            .and_then(first_identifier);
        if let Some(role) = role {
            let text = roles.entry(role).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    roles
}

/// `(granted role, member)` of a role membership line of `pg_dumpall
/// --roles-only` (`GRANT reader TO app_user …;`); `None` for anything else
/// (privileges on objects are not in that output).
pub(crate) fn membership(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("GRANT ")?;
    let granted = first_identifier(rest)?;
    let after = &rest[quoted_len(rest, &granted)..];
    let member = first_identifier(after.strip_prefix(" TO ")?)?;
    Some((granted, member))
}

/// How many bytes `name` takes at the start of `text`, quoted or not.
pub(crate) fn quoted_len(text: &str, name: &str) -> usize {
    if text.starts_with('"') {
        name.len() + 2 + name.matches('"').count()
    } else {
        name.len()
    }
}

/// The first SQL identifier of `text` (quoted or not), unquoted.
pub(crate) fn first_identifier(text: &str) -> Option<String> {
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let name: String = text
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            .collect();
        (!name.is_empty()).then_some(name)
    }
}

/// Keeps the grant statements whose roles exist; one warning per missing
/// role. `sql` is `pg_restore` output for grants only (no data, no bodies).
pub fn filter_grants(sql: &str, known: &dyn Fn(&str) -> bool) -> (String, Vec<String>) {
    let mut kept = String::new();
    let mut skipped: BTreeMap<String, usize> = BTreeMap::new();
    // A block run as another role (`SET SESSION AUTHORIZATION x` …
    // `RESET SESSION AUTHORIZATION`) goes only if that role exists.
    let mut skipping_block: Option<String> = None;
    for line in sql.lines() {
        let trimmed = line.trim();
        if let Some(role) = trimmed
            .strip_prefix("SET SESSION AUTHORIZATION ")
            .and_then(first_identifier)
            && !known(&role)
        {
            skipping_block = Some(role);
            continue;
        }
        if trimmed.starts_with("RESET SESSION AUTHORIZATION") && skipping_block.take().is_some() {
            continue;
        }
        if let Some(role) = &skipping_block {
            if trimmed.starts_with("GRANT ") || trimmed.starts_with("REVOKE ") {
                *skipped.entry(role.clone()).or_default() += 1;
            }
            continue;
        }
        if trimmed.starts_with("GRANT ")
            || trimmed.starts_with("REVOKE ")
            || trimmed.starts_with("ALTER DEFAULT PRIVILEGES ")
        {
            let missing: Vec<String> = roles_of_grant(trimmed)
                .into_iter()
                .filter(|r| !known(r))
                .collect();
            if let Some(role) = missing.first() {
                *skipped.entry(role.clone()).or_default() += 1;
                continue;
            }
        }
        kept.push_str(line);
        kept.push('\n');
    }
    let warnings = skipped
        .into_iter()
        .map(|(role, n)| {
            format!(
                "Skipped {n} grant{} to role {role}, which the target cluster lacks",
                if n == 1 { "" } else { "s" }
            )
        })
        .collect();
    (kept, warnings)
}

/// The roles a one-line GRANT/REVOKE names: its grantees, and the target
/// role of `ALTER DEFAULT PRIVILEGES FOR ROLE x`.
fn roles_of_grant(statement: &str) -> Vec<String> {
    let statement = statement.trim_end_matches(';');
    let mut roles = Vec::new();
    if let Some(rest) = statement.strip_prefix("ALTER DEFAULT PRIVILEGES FOR ROLE ")
        && let Some(role) = first_identifier(rest)
    {
        roles.push(role);
    }
    let grantees = [" TO ", " FROM "]
        .iter()
        .filter_map(|k| statement.rfind(k).map(|at| &statement[at + k.len()..]))
        .next_back();
    if let Some(list) = grantees {
        let list = list
            .split(" WITH GRANT OPTION")
            .next()
            .unwrap_or(list)
            .split(" GRANTED BY ")
            .next()
            .unwrap_or(list);
        for part in list.split(',') {
            let part = part.trim();
            if part.eq_ignore_ascii_case("PUBLIC") {
                continue;
            }
            let part = part.strip_prefix("GROUP ").unwrap_or(part);
            if let Some(role) = first_identifier(part) {
                roles.push(role);
            }
        }
    }
    roles
}

/// Drops what the target has, so the dump's objects do not collide and
/// objects made after the backup are gone. Runs as a superuser inside the
/// restore's transaction; `public` comes back as PostgreSQL creates it (the
/// dump never creates it, only changes it).
fn preamble(lock_timeout: Duration, facts: &TargetFacts, end_sessions: bool) -> String {
    let public_owner = if facts.major >= 15 {
        "pg_database_owner"
    } else {
        "CURRENT_USER"
    };
    let public_grant = if facts.major >= 15 {
        "GRANT USAGE ON SCHEMA public TO PUBLIC;"
    } else {
        "GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC;"
    };
    let end = if end_sessions {
        "SELECT count(pg_terminate_backend(pid)) AS ended_sessions FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend';\n"
    } else {
        ""
    };
    format!(
        r#"\set ON_ERROR_STOP 1
BEGIN;
SET lock_timeout = '{ms}ms';
SET session_replication_role = replica;
{end}DO $supascale$
DECLARE r record;
BEGIN
  -- An extension's own event triggers (pgsodium has one) go with it.
  FOR r IN SELECT e.evtname FROM pg_event_trigger e
           WHERE NOT EXISTS (SELECT 1 FROM pg_depend d
                             WHERE d.classid = 'pg_event_trigger'::regclass
                               AND d.objid = e.oid AND d.deptype = 'e') LOOP
    EXECUTE format('DROP EVENT TRIGGER %I CASCADE', r.evtname);
  END LOOP;
  FOR r IN SELECT pubname FROM pg_publication LOOP
    EXECUTE format('DROP PUBLICATION %I', r.pubname);
  END LOOP;
  FOR r IN SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' LOOP
    EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname);
  END LOOP;
  FOR r IN SELECT srvname FROM pg_foreign_server LOOP
    EXECUTE format('DROP SERVER IF EXISTS %I CASCADE', r.srvname);
  END LOOP;
  FOR r IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT IN ('pg_catalog', 'information_schema')
             AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp\_%' LOOP
    EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname);
  END LOOP;
  PERFORM lo_unlink(oid) FROM pg_largeobject_metadata;
END
$supascale$;
CREATE SCHEMA public AUTHORIZATION {public_owner};
{public_grant}
COMMENT ON SCHEMA public IS 'standard public schema';
SET lock_timeout = 0;
"#,
        ms = lock_timeout.as_millis()
    )
}

/// Everything a database restore needs.
pub struct DatabaseRestore<'a> {
    pub url: &'a str,
    pub job_id: &'a str,
    pub dump: &'a Path,
    pub roles_sql: &'a str,
    pub facts: &'a TargetFacts,
    pub backup_major: u32,
    pub force: bool,
    pub lock_timeout: Duration,
    pub postgres_bin_dirs: Option<&'a str>,
    pub mode: LoadMode,
}

/// What a load does to what the target already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// A restore: everything the target has is dropped first.
    ReplaceAll,
    /// An import: decided from the dump's table of contents. A dump with
    /// definitions replaces the schemas, extensions, event triggers and
    /// publications it defines (the rest of the database stays); a
    /// data-only dump empties the tables it fills and changes nothing else.
    Import,
}

/// Whether a dump holds only data (`pg_dump --data-only`).
pub fn is_data_only(toc: &[TocEntry]) -> bool {
    const DATA: &[&str] = &[
        "TABLE DATA",
        "SEQUENCE SET",
        "BLOB",
        "BLOBS",
        "BLOB DATA",
        "BLOB METADATA",
        "LARGE OBJECT",
        "MATERIALIZED VIEW DATA",
        "ENCODING",
        "STDSTRINGS",
        "SEARCHPATH",
    ];
    toc.iter().any(|e| e.desc == "TABLE DATA")
        && toc.iter().all(|e| DATA.contains(&e.desc.as_str()))
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The import preamble: the same transaction settings as a restore's, then
/// either the tables a data-only dump fills are emptied (in one statement,
/// so foreign keys between them do not stop it) or what a dump with
/// definitions defines is dropped.
fn import_preamble(lock_timeout: Duration, facts: &TargetFacts, toc: &[TocEntry]) -> String {
    let mut sql = format!(
        "\\set ON_ERROR_STOP 1\nBEGIN;\nSET lock_timeout = '{}ms';\nSET session_replication_role = replica;\n",
        lock_timeout.as_millis()
    );
    if is_data_only(toc) {
        let tables: BTreeSet<String> = toc
            .iter()
            .filter(|e| e.desc == "TABLE DATA")
            .map(|e| format!("{}.{}", quote_ident(&e.namespace), quote_ident(&e.tag)))
            .collect();
        if !tables.is_empty() {
            sql.push_str(&format!(
                "TRUNCATE TABLE {};\n",
                tables.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        return sql;
    }
    let of = |desc: &str| -> BTreeSet<String> {
        toc.iter()
            .filter(|e| e.desc == desc)
            .map(|e| e.tag.clone())
            .collect()
    };
    let mut schemas = of("SCHEMA");
    // pg_dump never creates `public`, only fills it: a dump with objects in
    // it replaces it, and it comes back as PostgreSQL creates it.
    let fills_public = toc
        .iter()
        .any(|e| e.namespace == "public" && e.desc != "ACL" && e.desc != "COMMENT");
    schemas.remove("public");
    for name in of("EVENT TRIGGER") {
        sql.push_str(&format!(
            "DROP EVENT TRIGGER IF EXISTS {} CASCADE;\n",
            quote_ident(&name)
        ));
    }
    for name in of("PUBLICATION") {
        sql.push_str(&format!(
            "DROP PUBLICATION IF EXISTS {};\n",
            quote_ident(&name)
        ));
    }
    for name in of("EXTENSION") {
        if name != "plpgsql" {
            sql.push_str(&format!(
                "DROP EXTENSION IF EXISTS {} CASCADE;\n",
                quote_ident(&name)
            ));
        }
    }
    for name in &schemas {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;\n",
            quote_ident(name)
        ));
    }
    if fills_public {
        sql.push_str(&recreate_public_schema(facts.major));
    }
    sql.push_str("SET lock_timeout = 0;\n");
    sql
}

/// `public` dropped and created again as PostgreSQL `major` creates it
/// (pg_dump never creates `public`, only fills it).
pub fn recreate_public_schema(major: u32) -> String {
    let (owner, grant) = if major >= 15 {
        (
            "pg_database_owner",
            "GRANT USAGE ON SCHEMA public TO PUBLIC;",
        )
    } else {
        (
            "CURRENT_USER",
            "GRANT CREATE, USAGE ON SCHEMA public TO PUBLIC;",
        )
    };
    format!(
        "DROP SCHEMA IF EXISTS public CASCADE;\nCREATE SCHEMA public AUTHORIZATION {owner};\n{grant}\nCOMMENT ON SCHEMA public IS 'standard public schema';\n"
    )
}

/// A loaded database with its transaction still open.
pub struct Loaded {
    psql: Child,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    stderr: tokio::task::JoinHandle<String>,
    /// To name the sessions that held a lock too long.
    url: String,
    lock_timeout: Duration,
    pub warnings: Vec<String>,
}

const READY: &str = "supascale-restore-loaded";
const DONE: &str = "supascale-restore-committed";

impl DatabaseRestore<'_> {
    /// Runs everything up to the commit. On error the session is gone and
    /// its transaction with it.
    pub async fn load(&self) -> Result<Loaded, JobError> {
        let configured = self.postgres_bin_dirs;
        let pg_restore = pgtools::tool_for("pg_restore", self.backup_major, configured)
            .await
            .map_err(JobError::Tool)?;
        let psql = pgtools::tool_for("psql", self.facts.major, configured)
            .await
            .map_err(JobError::Tool)?;
        let listing = run_capture(
            &pg_restore.path,
            &["-l".as_ref(), self.dump.as_os_str()],
            self.job_id,
        )
        .await
        .map_err(|e| {
            JobError::UnreadableDump(format!("the dump's table of contents cannot be read: {e}"))
        })?;
        let toc = parse_toc(&listing);
        let mut plan = plan(&toc, self.facts, self.roles_sql, self.force)?;
        let head = match self.mode {
            LoadMode::ReplaceAll => preamble(self.lock_timeout, self.facts, self.force),
            LoadMode::Import => {
                if is_data_only(&toc) {
                    plan.warnings.push(
                        "The dump holds data only: the tables it fills were emptied first; \
                         nothing else of the database changed"
                            .into(),
                    );
                }
                import_preamble(self.lock_timeout, self.facts, &toc)
            }
        };
        let spool = self.dump.with_extension("lists");
        crate::private_fs::create_dir_all(&spool).map_err(crate::jobs::io_error)?;
        let _cleanup = RemoveDir(spool.clone());
        let main_list = spool.join("main.list");
        let acl_list = spool.join("acl.list");
        crate::private_fs::write(&main_list, &plan.main_list).map_err(crate::jobs::io_error)?;
        crate::private_fs::write(&acl_list, &plan.acl_list).map_err(crate::jobs::io_error)?;
        let grants = if plan.acl_list.is_empty() {
            String::new()
        } else {
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "--single-transaction".as_ref(),
                "-L".as_ref(),
                acl_list.as_os_str(),
                "-f".as_ref(),
                "-".as_ref(),
            ];
            if plan.no_owner {
                args.push("--no-owner".as_ref());
            }
            args.push(self.dump.as_os_str());
            let sql = run_capture(&pg_restore.path, &args, self.job_id)
                .await
                .map_err(|e| JobError::Tool(format!("the dump's grants cannot be read: {e}")))?;
            let known =
                |role: &str| self.facts.roles.contains(role) || plan.created_roles.contains(role);
            // Grants only: no data, so whole lines `BEGIN;`/`COMMIT;` are
            // pg_restore's own transaction, which ours replaces.
            let sql: String = sql
                .lines()
                .filter(|l| *l != "BEGIN;" && *l != "COMMIT;")
                .map(|l| format!("{l}\n"))
                .collect();
            let (kept, warnings) = filter_grants(&sql, &known);
            plan.warnings.extend(warnings);
            kept
        };

        let mut loaded = Loaded::start(
            &psql.path,
            self.url,
            self.job_id,
            self.lock_timeout,
            std::mem::take(&mut plan.warnings),
        )?;
        let mut head = head;
        head.push_str(&plan.create_roles);
        // pg_restore's own SETs follow; `session_replication_role` is not
        // among them, so it holds for the whole load.
        let fed = async {
            loaded.stdin.write_all(head.as_bytes()).await?;
            // `--single-transaction` keeps pg_restore from wrapping large
            // objects in their own BEGIN/COMMIT (which would commit ours);
            // its one final COMMIT is held back (`copy_without_final_commit`)
            // and its opening BEGIN only warns inside our transaction.
            let mut args: Vec<&std::ffi::OsStr> = vec![
                "--single-transaction".as_ref(),
                "-L".as_ref(),
                main_list.as_os_str(),
                "-f".as_ref(),
                "-".as_ref(),
            ];
            if plan.no_owner {
                args.push("--no-owner".as_ref());
            }
            args.push(self.dump.as_os_str());
            let mut restore = child::command(
                pg_restore.path.to_str().unwrap_or("pg_restore"),
                self.job_id,
                None,
            );
            restore
                .args(&args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut restore = restore.spawn()?;
            let out = restore.stdout.take().expect("piped");
            let mut err = restore.stderr.take().expect("piped");
            // Drained beside stdout: a full stderr pipe would stall both.
            let errors = tokio::spawn(async move {
                let mut text = Vec::new();
                let _ = tokio::io::AsyncReadExt::read_to_end(&mut err, &mut text).await;
                text
            });
            copy_without_final_commit(out, &mut loaded.stdin).await?;
            let status = restore.wait().await?;
            let errors = errors.await.unwrap_or_default();
            if !status.success() {
                return Err(std::io::Error::other(format!(
                    "pg_restore: {}",
                    String::from_utf8_lossy(&errors)
                        .lines()
                        .rfind(|l| !l.trim().is_empty())
                        .unwrap_or("failed")
                )));
            }
            loaded.stdin.write_all(b"\n").await?;
            loaded.stdin.write_all(grants.as_bytes()).await?;
            Ok::<(), std::io::Error>(())
        }
        .await;
        loaded.finish_load(fed).await
    }
}

/// Loads a plain-SQL dump (`pg_dump` without `-Fc`, or any SQL script),
/// as it is, on top of the target, in one open transaction like a
/// restore's: `ON_ERROR_STOP`, `session_replication_role = replica`, and
/// the lock timeout for every statement. `sql` yields the script's bytes
/// (decompressed already). Transaction statements of the script (`BEGIN;`,
/// `COMMIT;` lines, which `pg_dump` writes around large objects) are left
/// out so that it cannot commit half of itself, and so are lines older
/// servers refuse that change nothing (`SET transaction_timeout`, psql's
/// `\\restrict`).
#[allow(clippy::too_many_arguments)]
pub async fn load_plain_sql<R: tokio::io::AsyncRead + Unpin>(
    url: &str,
    job_id: &str,
    sql: R,
    facts: &TargetFacts,
    lock_timeout: Duration,
    postgres_bin_dirs: Option<&str>,
) -> Result<Loaded, JobError> {
    let psql = pgtools::tool_for("psql", facts.major, postgres_bin_dirs)
        .await
        .map_err(JobError::Tool)?;
    let mut loaded = Loaded::start(&psql.path, url, job_id, lock_timeout, Vec::new())?;
    let head = format!(
        "\\set ON_ERROR_STOP 1\nBEGIN;\nSET lock_timeout = '{}ms';\nSET session_replication_role = replica;\n",
        lock_timeout.as_millis()
    );
    let major = facts.major;
    let fed = async {
        loaded.stdin.write_all(head.as_bytes()).await?;
        let mut reader = BufReader::with_capacity(256 * 1024, sql);
        let mut in_copy = false;
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).await? == 0 {
                break;
            }
            if in_copy {
                if line == b"\\.\n" || line == b"\\." || line == b"\\.\r\n" {
                    in_copy = false;
                }
                loaded.stdin.write_all(&line).await?;
                continue;
            }
            let text = String::from_utf8_lossy(&line);
            let trimmed = text.trim();
            let upper = trimmed.to_ascii_uppercase();
            if matches!(
                upper.as_str(),
                "BEGIN;" | "COMMIT;" | "END;" | "START TRANSACTION;" | "ROLLBACK;"
            ) || trimmed.starts_with("\\restrict")
                || trimmed.starts_with("\\unrestrict")
                || (major < 17 && upper.starts_with("SET TRANSACTION_TIMEOUT"))
            {
                continue;
            }
            if upper.starts_with("COPY ") && upper.ends_with("FROM STDIN;") {
                in_copy = true;
            }
            loaded.stdin.write_all(&line).await?;
        }
        loaded.stdin.write_all(b"\n").await?;
        Ok::<(), std::io::Error>(())
    }
    .await;
    loaded.finish_load(fed).await
}

impl Loaded {
    /// Starts the `psql` session a load is fed through.
    fn start(
        psql: &Path,
        url: &str,
        job_id: &str,
        lock_timeout: Duration,
        warnings: Vec<String>,
    ) -> Result<Loaded, JobError> {
        let (address, password) = child::split_password(url)?;
        let mut command =
            child::command(psql.to_str().unwrap_or("psql"), job_id, password.as_deref());
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "--no-password",
            ])
            .arg("--dbname")
            .arg(&address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut psql_child = command
            .spawn()
            .map_err(|e| JobError::Tool(format!("cannot run psql: {e}")))?;
        let stdin = psql_child.stdin.take().expect("piped");
        let stdout = psql_child.stdout.take().expect("piped");
        let stderr = psql_child.stderr.take().expect("piped");
        let (line_tx, lines) = tokio::sync::mpsc::unbounded_channel();
        // Both pipes are drained to their end as bytes (a database in
        // another encoding must not stop the drain and stall psql).
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if text == READY || text == DONE {
                    let _ = line_tx.send(text.to_string());
                }
                line.clear();
            }
        });
        let stderr = tokio::spawn(async move {
            let mut tail: Vec<String> = Vec::new();
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                line.clear();
                // Only errors explain a failure (NOTICEs about cascades do not).
                if text.starts_with("FATAL") || text.starts_with("psql:") || text.contains("ERROR:")
                {
                    tail.push(text);
                    if tail.len() > 5 {
                        tail.remove(0);
                    }
                }
            }
            tail.join("; ")
        });
        Ok(Loaded {
            psql: psql_child,
            stdin,
            lines,
            stderr,
            url: url.to_string(),
            lock_timeout,
            warnings,
        })
    }

    /// After the load's statements: PostgREST reloads its schema cache at
    /// the commit, and the marker says everything ran.
    async fn finish_load(mut self, fed: std::io::Result<()>) -> Result<Loaded, JobError> {
        let fed = match fed {
            Ok(()) => {
                let tail = format!("NOTIFY pgrst, 'reload schema';\n\\echo {READY}\n");
                match self.stdin.write_all(tail.as_bytes()).await {
                    Ok(()) => self.stdin.flush().await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let ready = match fed {
            Ok(()) => self.lines.recv().await.as_deref() == Some(READY),
            Err(_) => false,
        };
        if !ready {
            return Err(self.failure(fed.err()).await);
        }
        Ok(self)
    }
    /// Makes the restore permanent.
    pub async fn commit(mut self) -> Result<(), JobError> {
        let sent = self
            .stdin
            .write_all(format!("COMMIT;\n\\echo {DONE}\n\\q\n").as_bytes())
            .await;
        let done = match sent {
            Ok(()) => self.lines.recv().await.as_deref() == Some(DONE),
            Err(_) => false,
        };
        if !done {
            return Err(self.failure(sent.err()).await);
        }
        let _ = self.psql.wait().await;
        Ok(())
    }

    /// Leaves the database as it was.
    pub async fn roll_back(mut self) {
        let _ = self.stdin.write_all(b"ROLLBACK;\n\\q\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.psql.wait()).await;
        let _ = self.psql.kill().await;
    }

    /// Why the session ended; it is killed if it has not.
    async fn failure(mut self, io: Option<std::io::Error>) -> JobError {
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.psql.wait()).await;
        let _ = self.psql.kill().await;
        let stderr = self.stderr.await.unwrap_or_default();
        // pg_restore's own failure explains psql's, not the other way round.
        let cause = if let Some(e) = io.filter(|e| e.to_string().starts_with("pg_restore")) {
            crate::redact::redact_urls(&e.to_string())
        } else if !stderr.is_empty() {
            crate::redact::redact_urls(&stderr)
        } else {
            "psql ended without a cause".into()
        };
        if cause.contains("lock timeout") {
            return JobError::Target(format!(
                "other sessions hold locks on the project database (waited {} s): {}; stop \
                 them (e.g. the project's containers) or set forceRestore to end them",
                self.lock_timeout.as_secs(),
                blocking_sessions(&self.url).await
            ));
        }
        JobError::Tool(format!("the database restore was rolled back: {cause}"))
    }
}

/// Copies pg_restore's SQL to psql, leaving out its final `COMMIT;` (the
/// one `--single-transaction` ends with): the transaction is ours to end.
/// Lines are held back a few at a time, so the last `COMMIT;` line of the
/// stream is known when the stream ends; COPY data always comes before it.
async fn copy_without_final_commit(
    out: tokio::process::ChildStdout,
    sink: &mut ChildStdin,
) -> std::io::Result<()> {
    use std::collections::VecDeque;
    const HOLD: usize = 32;
    let mut reader = BufReader::with_capacity(256 * 1024, out);
    let mut held: VecDeque<Vec<u8>> = VecDeque::with_capacity(HOLD + 1);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            break;
        }
        held.push_back(line);
        if held.len() > HOLD {
            let line = held.pop_front().expect("held lines");
            sink.write_all(&line).await?;
        }
    }
    if let Some(at) = held.iter().rposition(|l| l.as_slice() == b"COMMIT;\n") {
        held.remove(at);
    }
    for line in held {
        sink.write_all(&line).await?;
    }
    Ok(())
}

/// Runs a client program without a database connection (reading a dump),
/// returning its standard output.
async fn run_capture(
    program: &Path,
    args: &[&std::ffi::OsStr],
    job_id: &str,
) -> Result<String, String> {
    let output = child::command(program.to_str().unwrap_or("pg_restore"), job_id, None)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_string());
    }
    String::from_utf8(output.stdout).map_err(|e| e.to_string())
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The sessions that hold the target's locks, named for the error.
pub async fn blocking_sessions(url: &str) -> String {
    use sqlx::Connection;
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(url)).await
    else {
        return "other sessions".into();
    };
    type Session = (i32, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Session> = sqlx::query_as(
        "SELECT pid, usename::text, application_name, state FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND backend_type = 'client backend' \
         AND application_name NOT LIKE 'supascale-job-%' ORDER BY pid LIMIT 10",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default();
    let _ = conn.close().await;
    if rows.is_empty() {
        return "other sessions (gone by now)".into();
    }
    rows.into_iter()
        .map(|(pid, user, app, state)| {
            format!(
                "pid {pid} (user {}, application {:?}, {})",
                user.unwrap_or_default(),
                app.unwrap_or_default(),
                state.unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
