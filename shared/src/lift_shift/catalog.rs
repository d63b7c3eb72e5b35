//! What the source and the target hold, read from their catalogs: the
//! schemas, and every table with the columns COPY fills.

use super::data_plan::Table;

/// Schemas other than PostgreSQL's own.
pub async fn schemas(conn: &mut sqlx::PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace \
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' \
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await
}

/// Tables that hold rows (plain tables and partitions, not the parents of
/// partitions), each with its columns in order, without dropped and
/// generated ones (pg_dump's COPY leaves those out too).
pub async fn tables(conn: &mut sqlx::PgConnection) -> Result<Vec<Table>, sqlx::Error> {
    let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text, \
                COALESCE(array_agg(a.attname::text ORDER BY a.attnum) \
                         FILTER (WHERE a.attnum IS NOT NULL), '{}') \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 \
              AND NOT a.attisdropped AND a.attgenerated = '' \
         WHERE c.relkind = 'r' \
           AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(schema, name, columns)| Table {
            schema,
            name,
            columns,
        })
        .collect())
}
