//! Where a migration reads from: the source project's HTTP APIs
//! (`sourceUrl`) and its database (derived from the URL, or `databaseUrl`).
//! Both arrive over the API and are hostile until checked here.
//!
//! - `sourceUrl` is `https://…`; plain `http://` only to a loopback
//!   address (a test double on this machine). Link-local and cloud
//!   metadata addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254) are
//!   refused whatever the scheme: they answer with credentials.
//! - `https://<ref>.supabase.co` gives the database
//!   `db.<ref>.supabase.co:5432`, user `postgres`, TLS required; any other
//!   `sourceUrl` needs `databaseUrl`.
//! - `databaseUrl` takes the same parameters a project's may; port 6543 is
//!   Supabase's transaction pooler, which breaks `pg_dump`: refused, naming
//!   the session pooler.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::domain::{self, DatabaseTarget};

/// The length of a Supabase project ref (`https://<ref>.supabase.co`).
const REF_LEN: usize = 20;

/// A checked `sourceUrl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceApi {
    /// Scheme, host and port, without a trailing slash: the Storage API is
    /// `<base>/storage/v1`, Auth `<base>/auth/v1`.
    pub base: String,
    /// The project ref, when the URL is `https://<ref>.supabase.co`.
    pub project_ref: Option<String>,
    /// Whether the host is a loopback or private address (or `localhost`).
    pub local: bool,
}

/// Checks `sourceUrl` (see the module).
pub fn parse_source_url(raw: &str) -> Result<SourceApi, String> {
    let url = url::Url::parse(raw.trim())
        .map_err(|_| "sourceUrl is not a valid URL (e.g. https://<ref>.supabase.co)".to_string())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("sourceUrl may not carry a user or password".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("sourceUrl may not carry a query or fragment".into());
    }
    if !matches!(url.path(), "" | "/") {
        return Err(
            "sourceUrl is the project URL without a path (e.g. https://<ref>.supabase.co)".into(),
        );
    }
    let host = url.host().ok_or("sourceUrl must name a host")?;
    let ip = match &host {
        url::Host::Ipv4(ip) => Some(IpAddr::V4(*ip)),
        url::Host::Ipv6(ip) => Some(IpAddr::V6(*ip)),
        url::Host::Domain(_) => None,
    };
    if let Some(ip) = ip
        && is_metadata_or_link_local(ip)
    {
        return Err(format!(
            "sourceUrl names {ip}, a link-local or cloud metadata address; it is never contacted"
        ));
    }
    let domain = match &host {
        url::Host::Domain(d) => Some(d.to_ascii_lowercase()),
        _ => None,
    };
    let loopback = ip.is_some_and(|ip| ip.is_loopback()) || domain.as_deref() == Some("localhost");
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(
                "sourceUrl must start with https:// (plain http:// is only accepted for a \
                 loopback address)"
                    .into(),
            );
        }
        _ => return Err("sourceUrl must start with https://".into()),
    }
    let project_ref = domain
        .as_deref()
        .and_then(|d| d.strip_suffix(".supabase.co"))
        .filter(|r| {
            url.scheme() == "https"
                && url.port().is_none()
                && r.len() == REF_LEN
                && r.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        .map(str::to_string);
    let mut base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        base.push_str(&format!(":{port}"));
    }
    Ok(SourceApi {
        base,
        project_ref,
        local: loopback || ip.is_some_and(is_private),
    })
}

/// The source database to read: from `databaseUrl` when given, else
/// derived from a `https://<ref>.supabase.co` source. The URL carries no
/// password; it goes to the tools through the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceDatabase {
    /// A `postgres://` URL without a password.
    pub url: String,
    pub target: DatabaseTarget,
    /// Derived from the project ref (so the error for an unreachable host
    /// can name the session pooler).
    pub derived: bool,
}

/// Checks `databaseUrl`, or derives the database from `api`.
pub fn source_database(
    api: &SourceApi,
    database_url: Option<&str>,
) -> Result<SourceDatabase, String> {
    match database_url.map(str::trim).filter(|u| !u.is_empty()) {
        Some(raw) => {
            let target = domain::parse_database_url(raw)
                .map_err(|reason| format!("databaseUrl {reason}"))?;
            if target.port == 6543 {
                return Err(
                    "databaseUrl names port 6543, Supabase's transaction pooler, which pg_dump \
                     cannot use; use the session pooler instead (the same host on port 5432, \
                     user postgres.<ref>)"
                        .into(),
                );
            }
            if let Ok(ip) = target.host.trim_matches(['[', ']']).parse::<IpAddr>()
                && is_metadata_or_link_local(ip)
            {
                return Err(format!(
                    "databaseUrl names {ip}, a link-local or cloud metadata address"
                ));
            }
            let mut url = url::Url::parse(raw).map_err(|_| "databaseUrl is not a valid URL")?;
            let _ = url.set_password(None);
            Ok(SourceDatabase {
                url: url.to_string(),
                target,
                derived: false,
            })
        }
        None => {
            let project_ref = api.project_ref.as_deref().ok_or(
                "databaseUrl is required when sourceUrl is not https://<ref>.supabase.co \
                 (give the session pooler's or any PostgreSQL URL)",
            )?;
            let host = format!("db.{project_ref}.supabase.co");
            Ok(SourceDatabase {
                url: format!("postgres://postgres@{host}:5432/postgres?sslmode=require"),
                target: DatabaseTarget {
                    host,
                    port: 5432,
                    database: "postgres".into(),
                    user: "postgres".into(),
                },
                derived: true,
            })
        }
    }
}

/// What to say when the derived host has no address this machine can
/// reach (most projects' `db.<ref>` host is IPv6 only).
pub fn unreachable_hint(db: &SourceDatabase, api: &SourceApi) -> Option<String> {
    let project_ref = api.project_ref.as_deref().filter(|_| db.derived)?;
    Some(format!(
        "{} has no address this machine can reach (it is IPv6-only on most projects); give \
         databaseUrl with the session pooler instead: \
         postgres://postgres.{project_ref}@aws-0-<region>.pooler.supabase.com:5432/postgres \
         (Supabase Dashboard → Connect → Session pooler)",
        db.target.host
    ))
}

/// Addresses that are never contacted: link-local (where cloud metadata
/// services answer) and AWS's IPv6 metadata address.
pub fn is_metadata_or_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

/// Loopback or private (RFC 1918, unique local): this machine or its
/// network, not the internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4 == Ipv4Addr::UNSPECIFIED,
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_project_url_gives_its_database() {
        let api = parse_source_url("https://hkajjfcjmpigqaziopzw.supabase.co").unwrap();
        assert_eq!(api.base, "https://hkajjfcjmpigqaziopzw.supabase.co");
        assert_eq!(api.project_ref.as_deref(), Some("hkajjfcjmpigqaziopzw"));
        assert!(!api.local);
        let db = source_database(&api, None).unwrap();
        assert_eq!(db.target.host, "db.hkajjfcjmpigqaziopzw.supabase.co");
        assert_eq!(db.target.port, 5432);
        assert_eq!(db.target.user, "postgres");
        assert!(db.url.contains("sslmode=require"), "{}", db.url);
        assert!(
            unreachable_hint(&db, &api)
                .unwrap()
                .contains("postgres.hkajjfcjmpigqaziopzw@")
        );
    }

    #[test]
    fn hostile_source_urls_are_refused() {
        for (raw, says) in [
            ("http://example.com", "https://"),
            ("ftp://127.0.0.1", "https://"),
            ("http://169.254.169.254", "link-local"),
            ("https://169.254.169.254/", "link-local"),
            ("https://[fd00:ec2::254]", "metadata"),
            ("https://[fe80::1]", "link-local"),
            ("https://user:pw@x.supabase.co", "user or password"),
            ("https://x.supabase.co/rest/v1", "without a path"),
            ("https://x.supabase.co/?a=b", "query"),
            ("not a url", "valid URL"),
        ] {
            let error = parse_source_url(raw).unwrap_err();
            assert!(error.contains(says), "{raw}: {error}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback_and_then_a_database_url_is_needed() {
        let api = parse_source_url("http://127.0.0.1:54321").unwrap();
        assert_eq!(api.base, "http://127.0.0.1:54321");
        assert!(api.local);
        assert_eq!(api.project_ref, None);
        let error = source_database(&api, None).unwrap_err();
        assert!(error.contains("databaseUrl is required"), "{error}");
        let db =
            source_database(&api, Some("postgres://postgres:secret@127.0.0.1:5432/src")).unwrap();
        assert!(!db.url.contains("secret"), "{}", db.url);
        assert_eq!(db.target.database, "src");
        assert!(parse_source_url("http://[::1]:8000").unwrap().local);
        assert!(parse_source_url("https://10.0.0.5").unwrap().local);
    }

    #[test]
    fn the_transaction_pooler_is_refused_with_the_way_out() {
        let api = parse_source_url("https://hkajjfcjmpigqaziopzw.supabase.co").unwrap();
        let error = source_database(
            &api,
            Some("postgres://postgres.hkajjfcjmpigqaziopzw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"),
        )
        .unwrap_err();
        assert!(error.contains("session pooler"), "{error}");
        let error = source_database(&api, Some("postgres://u@169.254.169.254/db")).unwrap_err();
        assert!(error.contains("link-local"), "{error}");
        let error = source_database(&api, Some("postgres://u@h/db?host=other")).unwrap_err();
        assert!(error.contains("host"), "{error}");
    }
}
