//! Choosing the Postgres client programs for a server.
//!
//! `pg_dump` refuses a server of a newer major version, and `pg_restore`
//! cannot read an archive written by a newer `pg_dump`. Self-hosted
//! Supabase runs Postgres 15 or 17, so a worker may need both: the programs
//! are looked up per server major in `SUPASCALE_POSTGRES_BIN_DIRS` (a
//! `:`-separated list of directories, like `PATH`) or, by default, in the
//! Debian/Ubuntu and RHEL layouts (`/usr/lib/postgresql/<major>/bin`,
//! `/usr/pgsql-<major>/bin`) and then `PATH`. The same major is preferred;
//! otherwise the oldest newer one. No match is a clear error before any work
//! starts.

pub mod child;

use std::path::{Path, PathBuf};

/// A client program and the major version it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTool {
    pub path: PathBuf,
    pub major: u32,
}

/// Where to look, in order.
pub fn search_dirs(configured: Option<&str>) -> Vec<PathBuf> {
    if let Some(list) = configured {
        return list
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    let mut dirs = Vec::new();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        let mut found: Vec<(u32, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let major = name.strip_prefix(prefix)?.parse::<u32>().ok()?;
                Some((major, e.path().join("bin")))
            })
            .collect();
        found.sort();
        dirs.extend(found.into_iter().map(|(_, dir)| dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs
}

/// The major version a program reports (`pg_dump (PostgreSQL) 15.19 …`).
pub async fn major_of(program: &Path) -> Option<u32> {
    let output = tokio::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    version.split('.').next()?.parse().ok()
}

/// `program` for a server of `server_major`, or why there is none.
pub async fn tool_for(
    program: &str,
    server_major: u32,
    configured: Option<&str>,
) -> Result<PgTool, String> {
    let mut found: Vec<PgTool> = Vec::new();
    for dir in search_dirs(configured) {
        let path = dir.join(program);
        if !path.is_file() || found.iter().any(|t| t.path == path) {
            continue;
        }
        if let Some(major) = major_of(&path).await {
            found.push(PgTool { path, major });
        }
    }
    let best = found
        .iter()
        .filter(|t| t.major >= server_major)
        .min_by_key(|t| t.major)
        .cloned();
    best.ok_or_else(|| {
        let seen = if found.is_empty() {
            "none found".to_string()
        } else {
            found
                .iter()
                .map(|t| format!("{} is {}", t.path.display(), t.major))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "no {program} for PostgreSQL {server_major} ({seen}); install the PostgreSQL \
             {server_major} client programs or list their directory in SUPASCALE_POSTGRES_BIN_DIRS"
        )
    })
}

/// Roles that a self-hosted Supabase database creates itself: never part
/// of a backup's roles, since the target has its own.
pub fn is_reserved_role(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "anon",
        "authenticated",
        "authenticator",
        "service_role",
        "pgbouncer",
        "postgres",
        "dashboard_user",
    ];
    EXACT.contains(&name)
        || name.starts_with("supabase_")
        || name.starts_with("pgsodium_")
        || name.starts_with("pg_")
}

/// Keeps the statements of `pg_dumpall --roles-only` that concern roles of
/// the user's own: `CREATE`/`ALTER`/`COMMENT ON ROLE` of a reserved role go,
/// and so do grants made *to* a reserved role; a grant of a reserved role to
/// one of the user's (`GRANT authenticated TO app`) stays.
pub fn user_roles_only(dump: &str) -> String {
    let mut kept = String::new();
    for line in dump.lines() {
        if let Some(role) = role_defined_by(line)
            && is_reserved_role(&role)
        {
            continue;
        }
        if let Some(member) = grant_member(line)
            && is_reserved_role(&member)
        {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept
}

fn unquote(name: &str) -> String {
    let name = name.trim_end_matches(';');
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => name.to_string(),
    }
}

fn role_defined_by(line: &str) -> Option<String> {
    for prefix in ["CREATE ROLE ", "ALTER ROLE ", "COMMENT ON ROLE "] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Some(unquote(first_identifier(rest)));
        }
    }
    None
}

fn grant_member(line: &str) -> Option<String> {
    let rest = line.strip_prefix("GRANT ")?;
    let after_to = rest.split(" TO ").nth(1)?;
    Some(unquote(first_identifier(after_to)))
}

/// The first identifier of `text`, quoted or not.
fn first_identifier(text: &str) -> &str {
    if text.starts_with('"') {
        let mut end = 1;
        let bytes = text.as_bytes();
        while end < bytes.len() {
            if bytes[end] == b'"' {
                if bytes.get(end + 1) == Some(&b'"') {
                    end += 2;
                    continue;
                }
                return &text[..=end];
            }
            end += 1;
        }
        text
    } else {
        text.split([' ', ';']).next().unwrap_or(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_roles_and_grants_to_them_are_left_out() {
        let dump = "CREATE ROLE anon;\nALTER ROLE anon WITH NOLOGIN;\nCREATE ROLE app_reader;\n\
                    ALTER ROLE app_reader WITH LOGIN;\nCREATE ROLE \"Odd \"\"Name\";\n\
                    CREATE ROLE supabase_admin;\nGRANT authenticated TO app_reader GRANTED BY postgres;\n\
                    GRANT app_reader TO supabase_admin GRANTED BY postgres;\n\
                    COMMENT ON ROLE service_role IS 'x';\n";
        let kept = user_roles_only(dump);
        assert_eq!(
            kept,
            "CREATE ROLE app_reader;\nALTER ROLE app_reader WITH LOGIN;\nCREATE ROLE \"Odd \"\"Name\";\n\
             GRANT authenticated TO app_reader GRANTED BY postgres;\n"
        );
    }

    #[tokio::test]
    async fn a_missing_major_is_named_with_what_was_found() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("pg_dump");
        std::fs::write(&fake, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let configured = dir.path().to_str().unwrap().to_string();
        let error = tool_for("pg_dump", 15, Some(&configured))
            .await
            .unwrap_err();
        assert!(
            error.starts_with("no pg_dump for PostgreSQL 15 ("),
            "{error}"
        );
        assert!(error.contains("is 14"), "{error}");
        let found = tool_for("pg_dump", 14, Some(&configured)).await.unwrap();
        assert_eq!(
            found,
            PgTool {
                path: fake,
                major: 14
            }
        );
    }
}
