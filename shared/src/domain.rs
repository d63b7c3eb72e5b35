//! The words of the contract ([`BackupType`], [`Component`], [`DestinationName`],
//! [`Status`]) and the
//! shape of a self-hosted Supabase project on disk.

use std::collections::HashMap;
use std::path::{self, Path, PathBuf};

/// A closed set of words of the contract. Parsed once where the word
/// arrives (a request, a row), then matched as a value.
pub trait Vocabulary: Copy + PartialEq + Sized + 'static {
    /// What the word is called in messages (`type`, `destination`, …).
    const FIELD: &'static str;
    /// Every word, in the contract's order.
    const ALL: &'static [Self];

    fn as_str(self) -> &'static str;

    /// `word` as a value, or a message naming the field and every word
    /// allowed.
    fn parse(word: &str) -> Result<Self, String> {
        Self::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == word)
            .ok_or_else(|| {
                format!(
                    "{} must be one of {}, not {word:?}",
                    Self::FIELD,
                    Self::names().join(", ")
                )
            })
    }

    fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|v| v.as_str()).collect()
    }
}

/// Declares a [`Vocabulary`] enum with its words.
macro_rules! vocabulary {
    ($(#[$meta:meta])* $name:ident, $field:literal, { $($variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl Vocabulary for $name {
            const FIELD: &'static str = $field;
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn as_str(self) -> &'static str {
                self.word()
            }
        }

        impl $name {
            /// The word as the contract and the control plane spell it.
            pub const fn word(self) -> &'static str {
                match self { $(Self::$variant => $word),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary!(
    /// What a backup holds (`type`).
    BackupType, "type", {
        Full = "full",
        Database = "database",
        Storage = "storage",
        Functions = "functions",
        Config = "config",
    }
);

vocabulary!(
    /// One part of a project in an artifact, in restore order.
    Component, "component", {
        Database = "database",
        Storage = "storage",
        Functions = "functions",
        Config = "config",
    }
);

vocabulary!(
    /// Where artifacts are stored.
    DestinationName, "destination", {
        Local = "local",
        S3 = "s3",
        Gcs = "gcs",
        Azure = "azure",
        R2 = "r2",
        Minio = "minio",
        Backblaze = "backblaze",
    }
);

vocabulary!(
    /// Where a job, a backup or a restore is.
    Status, "status", {
        Pending = "pending",
        InProgress = "in_progress",
        Completed = "completed",
        Failed = "failed",
    }
);

impl BackupType {
    /// The parts a backup of this type holds, in restore order.
    pub fn parts(self) -> &'static [Component] {
        match self {
            Self::Full => Component::ALL,
            Self::Database => &[Component::Database],
            Self::Storage => &[Component::Storage],
            Self::Functions => &[Component::Functions],
            Self::Config => &[Component::Config],
        }
    }
}

/// Config files a backup takes, relative to the project root (DOMAIN.md);
/// never `volumes/db/data`, the live PGDATA.
pub const CONFIG_ALLOWLIST: [&str; 7] = [
    ".env",
    "docker-compose.yml",
    "docker-compose.override.yml",
    "volumes/api/kong.yml",
    "volumes/db/*.sql",
    "volumes/logs/vector.yml",
    "volumes/pooler/pooler.exs",
];

/// The folders config files live in (where a restore stages them, beside
/// themselves): the allowlist's, under `root`, and those of the project's
/// extra config paths.
pub fn config_dirs(root: &std::path::Path, extra: &[String]) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<std::path::PathBuf> = CONFIG_ALLOWLIST
        .iter()
        .map(|pattern| match pattern.rsplit_once('/') {
            Some((dir, _)) => root.join(dir),
            None => root.to_path_buf(),
        })
        .chain(
            extra
                .iter()
                .filter_map(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf())),
        )
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A project id: 1 to 63 lowercase letters, digits and hyphens, starting and
/// ending with a letter or digit (it names folders and object prefixes).
pub fn valid_project_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// An absolute path without `.` or `..` parts.
pub fn clean_absolute(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') {
        return None;
    }
    p.components()
        .all(|c| matches!(c, path::Component::RootDir | path::Component::Normal(_)))
        .then(|| p.to_path_buf())
}

/// The parts of a project's database URL that are safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

/// Query parameters a project's database URL may carry. The others would
/// let a URL say one server or database and connect to another (`host`,
/// `hostaddr`, `port`, `dbname`, `service`), or read files of the server
/// (`passfile`, `sslkey`, `sslpassword`).
pub const URL_PARAMETERS: [&str; 7] = [
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "application_name",
    "target_session_attrs",
    "password",
    "options",
];

/// Splits a database URL into the URL a child program may see (no password,
/// in the user info or in a `password` parameter) and the password, which
/// goes to it through the environment (`PGPASSWORD`), never its command
/// line, where `ps` shows it.
pub fn split_password(raw: &str) -> Result<(String, Option<String>), String> {
    let mut url = url::Url::parse(raw).map_err(|_| "is not a valid URL".to_string())?;
    let mut password = url.password().map(percent_decode);
    let _ = url.set_password(None);
    let mut kept = Vec::new();
    let mut had_query = false;
    for (name, value) in url.query_pairs() {
        had_query = true;
        if name == "password" {
            password = Some(value.into_owned());
        } else {
            kept.push((name.into_owned(), value.into_owned()));
        }
    }
    if had_query {
        url.set_query(None);
        if !kept.is_empty() {
            url.query_pairs_mut().extend_pairs(kept);
        }
    }
    Ok((url.to_string(), password))
}

/// Checks a `postgres://` URL and returns its public parts; the error says
/// what is wrong without repeating the URL (it may hold a password).
pub fn parse_database_url(raw: &str) -> Result<DatabaseTarget, String> {
    let url = url::Url::parse(raw).map_err(|_| "is not a valid URL".to_string())?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err("must start with postgres:// or postgresql://".into());
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or("must name a host")?
        .to_string();
    let user = url.username();
    if user.is_empty() {
        return Err("must name a user (postgres://USER:PASSWORD@HOST:PORT/DATABASE)".into());
    }
    if let Some((name, _)) = url
        .query_pairs()
        .find(|(name, _)| !URL_PARAMETERS.contains(&name.as_ref()))
    {
        return Err(format!(
            "may not set the parameter {name:?}: only {} are accepted (the host, port, \
             database and user go in the URL itself)",
            URL_PARAMETERS.join(", ")
        ));
    }
    let database = url.path().trim_start_matches('/');
    Ok(DatabaseTarget {
        host,
        port: url.port().unwrap_or(5432),
        database: if database.is_empty() {
            "postgres".into()
        } else {
            percent_decode(database)
        },
        user: percent_decode(user),
    })
}

/// Percent-decoding as in a URL's user info and path (`+` stays `+`).
fn percent_decode(s: &str) -> String {
    let s = s.replace('+', "%2B");
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or(s)
}

/// Reads a docker-compose `.env` file: `KEY=VALUE` lines, `#` comments,
/// optional `export `, values optionally quoted.
pub fn read_env_file(path: &Path) -> std::io::Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path)?;
    let mut vars = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((key, value)) = line.split_once('=') {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            vars.insert(key.trim().to_string(), value.to_string());
        }
    }
    Ok(vars)
}

/// Builds the database URL of a self-hosted project from its `.env`.
///
/// The compose file does not publish the database port by default and names
/// the host `db`, which only resolves inside the compose network: `db` (or no
/// host) becomes `127.0.0.1`, where operators publish the port for backups.
/// The user is `supabase_admin`, the role that can dump and restore every
/// schema (in the supabase/postgres image `postgres` is not a superuser); its
/// password is `POSTGRES_PASSWORD`.
pub fn database_url_from_env(vars: &HashMap<String, String>) -> Result<String, String> {
    let password = vars
        .get("POSTGRES_PASSWORD")
        .filter(|p| !p.is_empty())
        .ok_or("the project's .env has no POSTGRES_PASSWORD")?;
    let host = match vars.get("POSTGRES_HOST").map(String::as_str) {
        None | Some("") | Some("db") => "127.0.0.1",
        Some(h) => h,
    };
    let port = vars
        .get("POSTGRES_PORT")
        .filter(|p| !p.is_empty())
        .map(String::as_str)
        .unwrap_or("5432");
    port.parse::<u16>()
        .map_err(|_| "the project's .env has a POSTGRES_PORT that is not a port number")?;
    let database = vars
        .get("POSTGRES_DB")
        .filter(|d| !d.is_empty())
        .map(String::as_str)
        .unwrap_or("postgres");
    let mut url = url::Url::parse("postgres://supabase_admin@localhost/").expect("static URL");
    url.set_host(Some(host))
        .map_err(|_| "the project's .env has a POSTGRES_HOST that is not a host name")?;
    url.set_port(port.parse().ok())
        .expect("postgres URLs take a port");
    url.set_password(Some(password))
        .expect("postgres URLs take a password");
    url.set_path(database);
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_ids_are_slugs() {
        for ok in ["my-project", "a", "p1", "abc-123-x"] {
            assert!(valid_project_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "My", "a_b", "a b", "é", &"a".repeat(64)] {
            assert!(!valid_project_id(bad), "{bad}");
        }
    }

    #[test]
    fn database_urls_show_only_their_public_parts() {
        let t = parse_database_url("postgres://supabase_admin:pw@10.0.0.5:6543/app").unwrap();
        assert_eq!(
            t,
            DatabaseTarget {
                host: "10.0.0.5".into(),
                port: 6543,
                database: "app".into(),
                user: "supabase_admin".into()
            }
        );
        let e = parse_database_url("mysql://u:secretpw@h/db").unwrap_err();
        assert!(!e.contains("secretpw"));
        assert!(parse_database_url("postgres://h/db").is_err());
    }

    #[test]
    fn database_urls_cannot_point_elsewhere_through_parameters() {
        for bad in [
            "postgres://u:p@h/db?host=/var/run/postgresql",
            "postgres://u:p@h/db?sslmode=disable&dbname=supascale",
            "postgres://u:p@h/db?port=6000",
            "postgres://u:p@h/db?passfile=/root/.pgpass",
        ] {
            let e = parse_database_url(bad).unwrap_err();
            assert!(e.contains("may not set the parameter"), "{bad}: {e}");
        }
        assert!(parse_database_url("postgres://u@h/db?sslmode=require&password=x").is_ok());
    }

    #[test]
    fn passwords_leave_the_url_wherever_they_were() {
        let (url, password) =
            split_password("postgres://u:p%40ss@h:5/db?sslmode=require&password=q%20s").unwrap();
        assert_eq!(url, "postgres://u@h:5/db?sslmode=require");
        assert_eq!(password.as_deref(), Some("q s"));
        let (url, password) = split_password("postgres://u:p%40ss@h/db").unwrap();
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(password.as_deref(), Some("p@ss"));
        let (_, password) = split_password("postgres://u:a+b@h/db").unwrap();
        assert_eq!(password.as_deref(), Some("a+b"));
    }

    #[test]
    fn the_env_file_gives_the_admin_url() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join(".env");
        std::fs::write(
            &env,
            "# comment\nPOSTGRES_HOST=db\nPOSTGRES_PORT=5433\nPOSTGRES_DB=postgres\n\
             POSTGRES_PASSWORD=\"p@ss word\"\nJWT_SECRET=x\n",
        )
        .unwrap();
        let url = database_url_from_env(&read_env_file(&env).unwrap()).unwrap();
        let target = parse_database_url(&url).unwrap();
        assert_eq!(target.host, "127.0.0.1");
        assert_eq!(target.port, 5433);
        assert_eq!(target.user, "supabase_admin");
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(percent_decode(parsed.password().unwrap()), "p@ss word");
        assert!(database_url_from_env(&HashMap::new()).is_err());
    }

    #[test]
    fn paths_must_be_clean_and_absolute() {
        assert!(clean_absolute("/srv/supabase").is_some());
        assert!(clean_absolute("srv").is_none());
        assert!(clean_absolute("/srv/../etc").is_none());
    }
}
