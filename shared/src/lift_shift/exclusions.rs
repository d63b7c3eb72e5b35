//! What a migration leaves out of the source, after the official guide
//! (Supabase CLI `db dump`, pinned 2.117.0): the schemas Supabase manages
//! (the target's own images create them), their migration bookkeeping, and
//! the roles every Supabase project has.

/// Schemas whose definitions are never copied: the target's services
/// create and migrate them (the CLI's schema dump `--exclude-schema`
/// list). `auth` and `storage` rows are still copied ([`DATA_SCHEMAS`]).
pub const MANAGED_SCHEMAS: &[&str] = &[
    "information_schema",
    "_analytics",
    "_realtime",
    "_supavisor",
    "auth",
    "etl",
    "extensions",
    "pgbouncer",
    "realtime",
    "storage",
    "supabase_functions",
    "supabase_migrations",
    "cron",
    "dbdev",
    "graphql",
    "graphql_public",
    "net",
    "pgmq",
    "pgsodium",
    "pgsodium_masks",
    "pgtle",
    "repack",
    "tiger",
    "tiger_data",
    "topology",
    "vault",
];

/// Prefixes of managed schemas (`pg_catalog`, `pg_toast`, `pg_temp_N`,
/// `timescaledb_*`, `_timescaledb_*`).
pub const MANAGED_PREFIXES: &[&str] = &["pg_", "timescaledb_", "_timescaledb_"];

/// Managed schemas whose rows are the project's own data (the managed
/// schemas the CLI's data dump does not exclude): users and identities,
/// buckets and objects, hooks, cron jobs, HTTP requests, queues, packages.
pub const DATA_SCHEMAS: &[&str] = &[
    "auth",
    "storage",
    "supabase_functions",
    "cron",
    "net",
    "pgmq",
    "dbdev",
];

/// Tables never copied: each service's migration bookkeeping (the target's
/// own versions stay), and Storage's vector tables, which the
/// platform-to-platform guide leaves out.
pub const EXCLUDED_TABLES: &[(&str, &str)] = &[
    ("auth", "schema_migrations"),
    ("storage", "migrations"),
    ("supabase_functions", "migrations"),
    ("storage", "buckets_vectors"),
    ("storage", "vector_indexes"),
];

/// Roles every Supabase project has (the CLI's role dump comments out
/// their `CREATE ROLE`/`ALTER ROLE` and the memberships granted to them):
/// the target has its own, with its own passwords.
pub const RESERVED_ROLES: &[&str] = &[
    "anon",
    "authenticated",
    "authenticator",
    "dashboard_user",
    "pgbouncer",
    "postgres",
    "service_role",
    "pgsodium_keyholder",
    "pgsodium_keyiduser",
    "pgsodium_keymaker",
    "pgtle_admin",
];

/// Prefixes of reserved roles: `supabase_admin`, `supabase_auth_admin`, …,
/// the CLI's `cli_login_*`, PostgreSQL's own `pg_*`.
pub const RESERVED_ROLE_PREFIXES: &[&str] = &["supabase_", "cli_login_", "pg_"];

/// Whether the schema's definitions are Supabase's, not the project's.
pub fn is_managed_schema(name: &str) -> bool {
    MANAGED_SCHEMAS.contains(&name) || MANAGED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether the table's rows are copied: the project's own schemas, and the
/// managed schemas that hold data, without the excluded tables.
pub fn copies_rows_of(schema: &str, table: &str) -> bool {
    if EXCLUDED_TABLES.contains(&(schema, table)) {
        return false;
    }
    !is_managed_schema(schema) || DATA_SCHEMAS.contains(&schema)
}

pub fn is_reserved_role(name: &str) -> bool {
    RESERVED_ROLES.contains(&name) || RESERVED_ROLE_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projects_schemas_move_and_supabases_stay() {
        assert!(!is_managed_schema("public"));
        assert!(!is_managed_schema("billing"));
        for managed in [
            "auth",
            "storage",
            "graphql_public",
            "pg_toast",
            "_timescaledb_cache",
        ] {
            assert!(is_managed_schema(managed), "{managed}");
        }
        assert!(copies_rows_of("public", "todos"));
        assert!(copies_rows_of("auth", "users"));
        assert!(copies_rows_of("storage", "objects"));
        assert!(!copies_rows_of("auth", "schema_migrations"));
        assert!(!copies_rows_of("storage", "migrations"));
        assert!(!copies_rows_of("vault", "secrets"));
        assert!(!copies_rows_of("realtime", "subscription"));
        assert!(copies_rows_of("cron", "job"));
        assert!(!copies_rows_of("supabase_migrations", "schema_migrations"));
        assert!(!copies_rows_of("timescaledb_information", "jobs"));
    }

    #[test]
    fn supabases_roles_are_reserved() {
        for reserved in [
            "anon",
            "service_role",
            "supabase_auth_admin",
            "pgsodium_keyiduser",
            "postgres",
            "cli_login_x",
        ] {
            assert!(is_reserved_role(reserved), "{reserved}");
        }
        assert!(!is_reserved_role("reporting"));
        assert!(!is_reserved_role("pgsodium_reader"));
    }
}
