//! `storage.buckets` / `storage.objects` rows matching the double, for the
//! source database of a lift & shift test (real Storage lists from these
//! tables, so the database and the API must agree).

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Value, json};

use super::{Bucket, Entry, timestamp};

/// Columns the seed can fill, with their types (Supabase's
/// `storage.buckets`; the reference project has a subset).
const BUCKET_COLUMNS: [(&str, &str); 9] = [
    ("id", "text"),
    ("name", "text"),
    ("owner", "uuid"),
    ("owner_id", "text"),
    ("public", "boolean"),
    ("file_size_limit", "bigint"),
    ("allowed_mime_types", "text[]"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
];

/// Supabase's `storage.objects` (`path_tokens` is generated: left out).
const OBJECT_COLUMNS: [(&str, &str); 11] = [
    ("id", "uuid"),
    ("bucket_id", "text"),
    ("name", "text"),
    ("owner", "uuid"),
    ("owner_id", "text"),
    ("created_at", "timestamptz"),
    ("updated_at", "timestamptz"),
    ("last_accessed_at", "timestamptz"),
    ("metadata", "jsonb"),
    ("version", "text"),
    ("user_metadata", "jsonb"),
];

pub(crate) async fn seed(
    url: &str,
    buckets: &[Bucket],
    entries: &[Arc<Entry>],
) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut tx = conn.begin().await?;
    let bucket_rows: Vec<Value> = buckets
        .iter()
        .map(|b| {
            json!({
                "id": b.id, "name": b.name,
                "owner": b.owner, "owner_id": b.owner.map(|o| o.to_string()),
                "public": b.public, "file_size_limit": b.file_size_limit,
                "allowed_mime_types": b.allowed_mime_types,
                "created_at": timestamp(b.created_at), "updated_at": timestamp(b.updated_at),
            })
        })
        .collect();
    upsert(&mut tx, "buckets", &BUCKET_COLUMNS, "id", &bucket_rows).await?;
    for batch in entries.chunks(2000) {
        let rows: Vec<Value> = batch
            .iter()
            .map(|e| {
                let o = &e.object;
                json!({
                    "id": e.id, "bucket_id": o.bucket, "name": o.key,
                    "owner": o.owner, "owner_id": o.owner.map(|u| u.to_string()),
                    "created_at": timestamp(o.created_at), "updated_at": timestamp(o.updated_at),
                    "last_accessed_at": timestamp(o.last_accessed_at),
                    "metadata": e.metadata(), "version": e.version.to_string(),
                    "user_metadata": o.user_metadata,
                })
            })
            .collect();
        upsert(
            &mut tx,
            "objects",
            &OBJECT_COLUMNS,
            "bucket_id, name",
            &rows,
        )
        .await?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// `INSERT … SELECT FROM jsonb_to_recordset($1) … ON CONFLICT (<key>) DO
/// UPDATE` over the columns the table has.
async fn upsert(
    conn: &mut sqlx::PgConnection,
    table: &str,
    known: &[(&str, &str)],
    conflict: &str,
    rows: &[Value],
) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let present: HashSet<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'storage' AND table_name = $1 AND is_generated = 'NEVER'",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    anyhow::ensure!(
        !present.is_empty(),
        "storage.{table} does not exist: is it a Supabase-shaped database?"
    );
    let columns: Vec<&(&str, &str)> = known.iter().filter(|(c, _)| present.contains(*c)).collect();
    let names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let record: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
    let keys: Vec<&str> = conflict.split(',').map(str::trim).collect();
    let updates: Vec<String> = names
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO storage.{table} ({cols}) SELECT {cols} FROM jsonb_to_recordset($1::jsonb) AS r({record}) \
         ON CONFLICT ({conflict}) DO UPDATE SET {updates}",
        cols = names.join(", "),
        record = record.join(", "),
        updates = updates.join(", "),
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(serde_json::to_string(rows)?)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
