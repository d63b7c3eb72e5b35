use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Tables shared by both backends. `{ts}` is the timestamp type, `{json}` the
/// JSON text type, `{bool}` the boolean type.
const TABLES: &str = r#"
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    permissions TEXT NOT NULL,
    project_ids TEXT,
    expires_at {ts},
    created_at {ts} NOT NULL,
    revoked_at {ts}
);

CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    database_url_enc TEXT NOT NULL,
    db_host TEXT NOT NULL,
    db_port INTEGER NOT NULL,
    db_name TEXT NOT NULL,
    db_user TEXT NOT NULL,
    root_dir TEXT NOT NULL,
    storage_dir TEXT NOT NULL,
    functions_dir TEXT NOT NULL,
    config_paths TEXT NOT NULL,
    created_at {ts} NOT NULL,
    updated_at {ts} NOT NULL
);

CREATE TABLE IF NOT EXISTS backups (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    project_name TEXT NOT NULL,
    backup_type TEXT NOT NULL,
    status TEXT NOT NULL,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL DEFAULT 0,
    encrypted {bool} NOT NULL DEFAULT {false},
    compression TEXT NOT NULL DEFAULT 'gzip',
    sha256 TEXT,
    duration_secs BIGINT,
    error TEXT,
    manifest TEXT,
    job_id TEXT,
    created_at {ts} NOT NULL,
    completed_at {ts},
    verified_at {ts}
);
CREATE INDEX IF NOT EXISTS backups_created_idx ON backups (created_at, id);
CREATE INDEX IF NOT EXISTS backups_project_created_idx ON backups (project_id, created_at, id);
CREATE INDEX IF NOT EXISTS backups_status_created_idx ON backups (status, created_at, id);
CREATE INDEX IF NOT EXISTS backups_project_status_created_idx ON backups (project_id, status, created_at, id);
CREATE INDEX IF NOT EXISTS backups_destination_created_idx ON backups (destination, created_at, id);

-- One row per (project, status, destination): what `pagination.total` and
-- `stats=true` read, so neither counts the backups table per request.
-- Kept exact by the triggers below, whoever writes `backups`.
CREATE TABLE IF NOT EXISTS backup_stats (
    project_id TEXT NOT NULL,
    status TEXT NOT NULL,
    destination TEXT NOT NULL,
    count BIGINT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (project_id, status, destination)
);

-- The same without the project: what an unfiltered list reads (at most
-- 4 statuses x 7 destinations rows, however many projects there are).
CREATE TABLE IF NOT EXISTS backup_totals (
    status TEXT NOT NULL,
    destination TEXT NOT NULL,
    count BIGINT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (status, destination)
);

CREATE TABLE IF NOT EXISTS restores (
    id TEXT PRIMARY KEY,
    backup_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    restore_types TEXT NOT NULL,
    status TEXT NOT NULL,
    warnings TEXT NOT NULL,
    error TEXT,
    duration_secs BIGINT,
    job_id TEXT,
    created_at {ts} NOT NULL,
    restored_at {ts}
);
CREATE INDEX IF NOT EXISTS restores_backup_idx ON restores (backup_id, created_at);

CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    project_id TEXT,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    payload TEXT NOT NULL,
    secrets_enc TEXT,
    progress TEXT,
    warnings TEXT NOT NULL,
    error TEXT,
    worker_id TEXT,
    idempotency_key TEXT,
    enqueued_at {ts} NOT NULL,
    started_at {ts},
    finished_at {ts},
    heartbeat_at {ts}
);
CREATE INDEX IF NOT EXISTS jobs_status_enqueued_idx ON jobs (status, enqueued_at);
CREATE INDEX IF NOT EXISTS jobs_project_status_idx ON jobs (project_id, status);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency_idx ON jobs (idempotency_key);
"#;

const POSTGRES_TRIGGERS: &str = r#"
-- Statement-level triggers with transition tables: a bulk insert of a million
-- rows updates each summary row once. Every change also notifies the API
-- processes, whose list cache it invalidates (api/src/list_cache.rs).
-- Summary rows are touched in key order so that concurrent statements cannot
-- deadlock on them.
CREATE OR REPLACE FUNCTION backup_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO backup_stats (project_id, status, destination, count, size)
    SELECT project_id, status, destination, count(*), coalesce(sum(size), 0)
    FROM new_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, status, destination) DO UPDATE
        SET count = backup_stats.count + EXCLUDED.count,
            size = backup_stats.size + EXCLUDED.size;
    INSERT INTO backup_totals (status, destination, count, size)
    SELECT status, destination, count(*), coalesce(sum(size), 0)
    FROM new_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (status, destination) DO UPDATE
        SET count = backup_totals.count + EXCLUDED.count,
            size = backup_totals.size + EXCLUDED.size;
    PERFORM pg_notify('supascale_backups_changed', '');
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION backup_stats_remove() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO backup_stats (project_id, status, destination, count, size)
    SELECT project_id, status, destination, -count(*), -coalesce(sum(size), 0)
    FROM old_rows GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, status, destination) DO UPDATE
        SET count = backup_stats.count + EXCLUDED.count,
            size = backup_stats.size + EXCLUDED.size;
    INSERT INTO backup_totals (status, destination, count, size)
    SELECT status, destination, -count(*), -coalesce(sum(size), 0)
    FROM old_rows GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (status, destination) DO UPDATE
        SET count = backup_totals.count + EXCLUDED.count,
            size = backup_totals.size + EXCLUDED.size;
    PERFORM pg_notify('supascale_backups_changed', '');
    RETURN NULL;
END $$;

-- An update is the old rows removed and the new rows added, netted per key.
CREATE OR REPLACE FUNCTION backup_stats_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO backup_stats (project_id, status, destination, count, size)
    SELECT project_id, status, destination, sum(n), sum(bytes) FROM (
        SELECT project_id, status, destination, -1 AS n, -size AS bytes FROM old_rows
        UNION ALL
        SELECT project_id, status, destination, 1, size FROM new_rows
    ) d GROUP BY 1, 2, 3 HAVING sum(n) <> 0 OR sum(bytes) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, status, destination) DO UPDATE
        SET count = backup_stats.count + EXCLUDED.count,
            size = backup_stats.size + EXCLUDED.size;
    INSERT INTO backup_totals (status, destination, count, size)
    SELECT status, destination, sum(n), sum(bytes) FROM (
        SELECT status, destination, -1 AS n, -size AS bytes FROM old_rows
        UNION ALL
        SELECT status, destination, 1, size FROM new_rows
    ) d GROUP BY 1, 2 HAVING sum(n) <> 0 OR sum(bytes) <> 0 ORDER BY 1, 2
    ON CONFLICT (status, destination) DO UPDATE
        SET count = backup_totals.count + EXCLUDED.count,
            size = backup_totals.size + EXCLUDED.size;
    PERFORM pg_notify('supascale_backups_changed', '');
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS backups_stats_insert ON backups;
CREATE TRIGGER backups_stats_insert AFTER INSERT ON backups
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION backup_stats_add();
DROP TRIGGER IF EXISTS backups_stats_delete ON backups;
CREATE TRIGGER backups_stats_delete AFTER DELETE ON backups
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION backup_stats_remove();
DROP TRIGGER IF EXISTS backups_stats_update ON backups;
CREATE TRIGGER backups_stats_update AFTER UPDATE ON backups
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_stats_change();
"#;

const SQLITE_TRIGGERS: &str = r#"
CREATE TRIGGER IF NOT EXISTS backups_stats_insert AFTER INSERT ON backups BEGIN
    INSERT INTO backup_stats (project_id, status, destination, count, size)
    VALUES (NEW.project_id, NEW.status, NEW.destination, 1, NEW.size)
    ON CONFLICT (project_id, status, destination) DO UPDATE
        SET count = count + 1, size = size + excluded.size;
    INSERT INTO backup_totals (status, destination, count, size)
    VALUES (NEW.status, NEW.destination, 1, NEW.size)
    ON CONFLICT (status, destination) DO UPDATE
        SET count = count + 1, size = size + excluded.size;
END;
CREATE TRIGGER IF NOT EXISTS backups_stats_delete AFTER DELETE ON backups BEGIN
    UPDATE backup_stats SET count = count - 1, size = size - OLD.size
    WHERE project_id = OLD.project_id AND status = OLD.status AND destination = OLD.destination;
    UPDATE backup_totals SET count = count - 1, size = size - OLD.size
    WHERE status = OLD.status AND destination = OLD.destination;
END;
CREATE TRIGGER IF NOT EXISTS backups_stats_update
AFTER UPDATE OF project_id, status, destination, size ON backups BEGIN
    UPDATE backup_stats SET count = count - 1, size = size - OLD.size
    WHERE project_id = OLD.project_id AND status = OLD.status AND destination = OLD.destination;
    UPDATE backup_totals SET count = count - 1, size = size - OLD.size
    WHERE status = OLD.status AND destination = OLD.destination;
    INSERT INTO backup_stats (project_id, status, destination, count, size)
    VALUES (NEW.project_id, NEW.status, NEW.destination, 1, NEW.size)
    ON CONFLICT (project_id, status, destination) DO UPDATE
        SET count = count + 1, size = size + excluded.size;
    INSERT INTO backup_totals (status, destination, count, size)
    VALUES (NEW.status, NEW.destination, 1, NEW.size)
    ON CONFLICT (status, destination) DO UPDATE
        SET count = count + 1, size = size + excluded.size;
END;
"#;

fn tables_for(backend: DbBackend) -> String {
    let (ts, boolean, false_) = match backend {
        DbBackend::Postgres => ("TIMESTAMPTZ", "BOOLEAN", "FALSE"),
        _ => ("TEXT", "INTEGER", "0"),
    };
    TABLES
        .replace("{ts}", ts)
        .replace("{bool}", boolean)
        .replace("{false}", false_)
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        db.execute_unprepared(&tables_for(backend)).await?;
        match backend {
            DbBackend::Postgres => db.execute_unprepared(POSTGRES_TRIGGERS).await?,
            _ => db.execute_unprepared(SQLITE_TRIGGERS).await?,
        };
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP TABLE IF EXISTS jobs; DROP TABLE IF EXISTS restores; \
                 DROP TABLE IF EXISTS backup_stats; DROP TABLE IF EXISTS backup_totals; \
                 DROP TABLE IF EXISTS backups; \
                 DROP TABLE IF EXISTS projects; DROP TABLE IF EXISTS api_keys; \
                 DROP TABLE IF EXISTS settings;",
            )
            .await?;
        Ok(())
    }
}
