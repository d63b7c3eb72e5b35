//! The roles part of a migration: `pg_dumpall --roles-only
//! --no-role-passwords --no-comments --quote-all-identifier` of the source,
//! rewritten as the official guide's script does (see docs/lift-shift.md),
//! plus what makes a second run and an older target work:
//!
//! - reserved roles are never created or altered, except the settings the
//!   guide puts back (`pgaudit.*`, `pgrst.*`, `session_replication_role`,
//!   `statement_timeout`, `track_io_timing`); memberships granted *to* a
//!   reserved role are left out;
//! - ` NOSUPERUSER` and ` NOREPLICATION` are dropped (only a superuser may
//!   say them, and they are the default);
//! - a role the target already has is not created again (its attributes
//!   are still set), so a second run does not fail; one created on the
//!   target's cluster meanwhile is skipped by the `CREATE ROLE` itself
//!   (`duplicate_object` caught in a `DO` block);
//! - on a target older than PostgreSQL 16, a membership's `INHERIT` and
//!   `SET` options (16+ syntax) are dropped, with a warning when that
//!   changes what the membership does.

use super::exclusions::is_reserved_role;
use crate::restore::database::{first_identifier, membership, quoted_len};

/// Settings of reserved roles the guide keeps.
const KEPT_SETTINGS: &[&str] = &[
    "pgaudit.",
    "pgrst.",
    "session_replication_role",
    "statement_timeout",
    "track_io_timing",
];

/// The dollar-quote tag around a `CREATE ROLE` made idempotent.
const DO_TAG: &str = "$supascale$";

/// The roles script rewritten for a target of `target_major` that already
/// has the roles `existing`; and the warnings for the user.
pub fn rewrite_roles(
    dump: &str,
    existing: &dyn Fn(&str) -> bool,
    target_major: u32,
) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut warnings = Vec::new();
    let mut passwordless = Vec::new();
    for line in dump.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") || trimmed.starts_with('\\') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("CREATE ROLE ") {
            let Some(role) = first_identifier(rest) else {
                continue;
            };
            if is_reserved_role(&role) || existing(&role) {
                continue;
            }
            // A role created on the target's cluster since its roles were
            // read (roles are cluster-wide) must not fail the load.
            if !trimmed.contains(DO_TAG) {
                out.push_str(&format!(
                    "DO {DO_TAG} BEGIN {}; EXCEPTION WHEN duplicate_object THEN NULL; END {DO_TAG};\n",
                    trimmed.trim_end_matches(';')
                ));
                continue;
            }
        } else if let Some(rest) = trimmed.strip_prefix("ALTER ROLE ") {
            let Some(role) = first_identifier(rest) else {
                continue;
            };
            let after = rest[quoted_len(rest, &role)..].trim_start();
            if is_reserved_role(&role) {
                // `SET "pgrst.db_schemas"` or `SET "pgrst"."db_schemas"`.
                let setting = after
                    .strip_prefix("SET ")
                    .map(|s| s.replace('"', ""))
                    .unwrap_or_default();
                if !KEPT_SETTINGS.iter().any(|k| setting.starts_with(k)) {
                    continue;
                }
            } else if after.starts_with("WITH ") && after.contains(" LOGIN") {
                passwordless.push(role.clone());
            }
            let line = line
                .replace(" NOSUPERUSER", "")
                .replace(" NOREPLICATION", "");
            out.push_str(&line);
            out.push('\n');
            continue;
        } else if let Some((granted, member)) = membership(trimmed) {
            if is_reserved_role(&member) {
                continue;
            }
            if target_major < 16 {
                let (line, lost) = without_membership_options(line);
                if lost {
                    warnings.push(format!(
                        "The membership of {member} in {granted} uses INHERIT FALSE or SET \
                         FALSE, which the target's PostgreSQL {target_major} cannot say; it \
                         was granted with the defaults"
                    ));
                }
                out.push_str(&line);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if !passwordless.is_empty() {
        warnings.push(format!(
            "Roles that log in were created without their passwords (Supabase Cloud does not \
             export them): {}; set them with ALTER ROLE … PASSWORD",
            passwordless.join(", ")
        ));
    }
    (out, warnings)
}

/// A PostgreSQL 16+ membership (`WITH ADMIN OPTION, INHERIT TRUE, SET
/// TRUE`) in 15's words: only `WITH ADMIN OPTION` stays. Whether an
/// option that changes the membership (`INHERIT FALSE`, `SET FALSE`) was lost.
fn without_membership_options(line: &str) -> (String, bool) {
    let Some(with) = line.find(" WITH ") else {
        return (line.to_string(), false);
    };
    let end = line[with..]
        .find(" GRANTED BY ")
        .map(|i| with + i)
        .unwrap_or_else(|| line.trim_end().trim_end_matches(';').len());
    let options = &line[with + " WITH ".len()..end];
    let upper = options.to_ascii_uppercase();
    let lost = upper.contains("INHERIT FALSE") || upper.contains("SET FALSE");
    let admin = upper.contains("ADMIN OPTION") || upper.contains("ADMIN TRUE");
    let kept = if admin { " WITH ADMIN OPTION" } else { "" };
    let mut rewritten = format!("{}{kept}{}", &line[..with], &line[end..]);
    if !rewritten.trim_end().ends_with(';') {
        rewritten.push(';');
    }
    (rewritten, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict abc
SET default_transaction_read_only = off;

CREATE ROLE "anon";
ALTER ROLE "anon" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "reporting";
ALTER ROLE "reporting" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "already_there";
ALTER ROLE "already_there" WITH NOSUPERUSER INHERIT NOLOGIN NOREPLICATION;
CREATE ROLE "supabase_admin";
ALTER ROLE "authenticator" SET "pgrst"."db_schemas" TO 'public, api';
ALTER ROLE "authenticator" SET "search_path" TO 'x';
ALTER ROLE "authenticator" SET "pgrst.db_extra_search_path" TO 'public';
ALTER ROLE "anon" SET "statement_timeout" TO '3s';
GRANT "authenticated" TO "reporting" WITH INHERIT TRUE GRANTED BY "postgres";
GRANT "reporting" TO "authenticator" GRANTED BY "postgres";
GRANT "already_there" TO "reporting" WITH ADMIN OPTION, INHERIT FALSE, SET TRUE GRANTED BY "postgres";
\unrestrict abc
"#;

    #[test]
    fn reserved_roles_stay_and_the_projects_own_come_over() {
        let (sql, warnings) = rewrite_roles(DUMP, &|r| r == "already_there", 15);
        let lines: Vec<&str> = sql.lines().collect();
        assert_eq!(
            lines,
            vec![
                "SET default_transaction_read_only = off;",
                "DO $supascale$ BEGIN CREATE ROLE \"reporting\"; EXCEPTION WHEN duplicate_object THEN NULL; END $supascale$;",
                "ALTER ROLE \"reporting\" WITH INHERIT NOCREATEROLE NOCREATEDB LOGIN NOBYPASSRLS;",
                "ALTER ROLE \"already_there\" WITH INHERIT NOLOGIN;",
                "ALTER ROLE \"authenticator\" SET \"pgrst\".\"db_schemas\" TO 'public, api';",
                "ALTER ROLE \"authenticator\" SET \"pgrst.db_extra_search_path\" TO 'public';",
                "ALTER ROLE \"anon\" SET \"statement_timeout\" TO '3s';",
                "GRANT \"authenticated\" TO \"reporting\" GRANTED BY \"postgres\";",
                "GRANT \"already_there\" TO \"reporting\" WITH ADMIN OPTION GRANTED BY \"postgres\";",
            ][..]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("reporting in already_there"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("export them): reporting;"),
            "{warnings:?}"
        );
    }

    #[test]
    fn a_target_of_16_or_newer_keeps_the_membership_options() {
        let (sql, warnings) = rewrite_roles(DUMP, &|_| false, 16);
        assert!(
            sql.contains("WITH ADMIN OPTION, INHERIT FALSE, SET TRUE GRANTED BY"),
            "{sql}"
        );
        assert!(sql.contains("CREATE ROLE \"already_there\";"), "{sql}");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn identifiers_with_quotes_are_read_whole() {
        let (sql, _) = rewrite_roles(
            "DO $supascale$ BEGIN CREATE ROLE \"a\"\"b\"; EXCEPTION WHEN duplicate_object THEN NULL; END $supascale$;\nGRANT \"x y\" TO \"a\"\"b\" GRANTED BY \"postgres\";\nGRANT \"x y\" TO \"anon\";\n",
            &|_| false,
            15,
        );
        assert_eq!(
            sql,
            "DO $supascale$ BEGIN CREATE ROLE \"a\"\"b\"; EXCEPTION WHEN duplicate_object THEN NULL; END $supascale$;\nGRANT \"x y\" TO \"a\"\"b\" GRANTED BY \"postgres\";\n"
        );
    }
}
