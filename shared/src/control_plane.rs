//! Opening the control-plane database, migrating it, and checking that this
//! process holds the deployment's master key.

use std::str::FromStr;
use std::time::Duration;

use sea_orm::{ActiveValue::Set, ConnectOptions, Database, DatabaseConnection, EntityTrait};
use sea_orm::{ConnectionTrait, SqlxSqliteConnector};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use supascale_migrations::{Migrator, MigratorTrait};

use crate::config::Config;
use crate::entities::setting;
use crate::master_key::MasterKey;

const FINGERPRINT_KEY: &str = "master_key_fingerprint";

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("cannot open the control-plane database: {0}")]
    Connect(String),
    #[error("cannot migrate the control-plane database: {0}")]
    Migrate(String),
    #[error(
        "the master key ({mine}) is not the one this deployment uses ({stored}): \
         every process must read the same SUPASCALE_MASTER_KEY_FILE"
    )]
    KeyMismatch { mine: String, stored: String },
    #[error("control-plane database: {0}")]
    Db(#[from] sea_orm::DbErr),
}

pub use crate::config::CONTROL_PLANE_FILE;

/// Opens the database named by the config: SQLite in WAL mode with
/// `synchronous=NORMAL` (the job rows must survive a crash; apalis' own
/// tables get a pool of their own), or PostgreSQL.
pub async fn connect(config: &Config) -> Result<DatabaseConnection, ControlPlaneError> {
    let url = config.database_url();
    let connect_error = |e: &dyn std::fmt::Display| {
        // sqlx errors can quote the URL; say which kind of database failed instead.
        let kind = if url.starts_with("sqlite:") {
            "SQLite"
        } else {
            "PostgreSQL"
        };
        ControlPlaneError::Connect(format!(
            "{kind}: {}",
            crate::redact::redact_urls(&e.to_string())
        ))
    };
    if url.starts_with("sqlite:") {
        if config.database_url.is_none() {
            crate::private_fs::create_dir_all(&config.data_dir).map_err(|e| connect_error(&e))?;
            crate::private_fs::ensure_file(&config.data_dir.join(CONTROL_PLANE_FILE))
                .map_err(|e| connect_error(&e))?;
        }
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| connect_error(&e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.database_max_connections)
            .connect_with(options)
            .await
            .map_err(|e| connect_error(&e))?;
        Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
    } else {
        let mut options = ConnectOptions::new(url.clone());
        options
            .max_connections(config.database_max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        Database::connect(options)
            .await
            .map_err(|e| connect_error(&e))
    }
}

/// Runs the migrations. Processes that start together race for the same
/// DDL; the loser sees a unique-violation and simply tries again.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), ControlPlaneError> {
    let mut last = None;
    for attempt in 0..8u64 {
        match Migrator::up(db, None).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                last = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
            }
        }
    }
    Err(ControlPlaneError::Migrate(last.unwrap_or_default()))
}

/// Records the master key's fingerprint on first start; afterwards refuses a
/// process whose key differs.
pub async fn check_master_key(
    db: &DatabaseConnection,
    key: &MasterKey,
) -> Result<(), ControlPlaneError> {
    let mine = key.fingerprint();
    let insert = setting::Entity::insert(setting::ActiveModel {
        key: Set(FINGERPRINT_KEY.into()),
        value: Set(mine.clone()),
    })
    .on_conflict_do_nothing_on([setting::Column::Key])
    .exec_without_returning(db)
    .await;
    insert?;
    let stored = setting::Entity::find_by_id(FINGERPRINT_KEY.to_string())
        .one(db)
        .await?
        .map(|s| s.value)
        .unwrap_or_default();
    if stored != mine {
        return Err(ControlPlaneError::KeyMismatch { mine, stored });
    }
    Ok(())
}

/// A cheap round trip, for `/readyz`.
pub async fn ping(db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}

/// A boolean SQL expression, true when the connected database holds a
/// Supascale control plane: our tables side by side in one schema (a
/// project may well have a `jobs` or `backups` table of its own, not all
/// four of these). An expression, so that it rides along with a query the
/// caller makes anyway.
pub const HOLDS_OUR_TABLES: &str = "EXISTS (SELECT 1 FROM pg_catalog.pg_class \
     WHERE relkind IN ('r', 'p') \
       AND relname IN ('seaql_migrations', 'job_events', 'api_keys', 'backup_totals') \
     GROUP BY relnamespace HAVING count(DISTINCT relname) = 4)";

/// Whether `target` names this deployment's own control-plane database:
/// the same database name on the same server, hosts compared by address
/// (any address of this machine counts as the same machine, so neither
/// `localhost`, `127.0.0.2` nor the machine's LAN address gets round it).
pub async fn is_control_plane_address(
    config: &Config,
    target: &crate::domain::DatabaseTarget,
) -> bool {
    let url = config.database_url();
    if url.starts_with("sqlite:") {
        return false;
    }
    let Ok(ours) = crate::domain::parse_database_url(&url) else {
        return false;
    };
    ours.database == target.database
        && same_server(&ours.host, ours.port, &target.host, target.port).await
}

/// Whether two `host:port` pairs reach the same server.
pub async fn same_server(a_host: &str, a_port: u16, b_host: &str, b_port: u16) -> bool {
    if a_port != b_port {
        return false;
    }
    if a_host.eq_ignore_ascii_case(b_host) {
        return true;
    }
    let (a, b) = tokio::join!(addresses(a_host, a_port), addresses(b_host, b_port));
    a.iter().any(|x| b.contains(x))
        || (a.iter().any(|ip| is_this_machine(*ip)) && b.iter().any(|ip| is_this_machine(*ip)))
}

async fn addresses(host: &str, port: u16) -> Vec<std::net::IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(Duration::from_secs(3), lookup).await {
        Ok(Ok(found)) => found.map(|a| a.ip().to_canonical()).collect(),
        _ => Vec::new(),
    }
}

/// An address this machine answers on: loopback, unspecified, or one a
/// socket can bind to.
fn is_this_machine(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}
