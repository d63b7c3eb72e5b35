//! Lift & shift against real PostgreSQL databases (the route and the job
//! arrive in later slices; these cover the pieces landed so far).

use supascale_shared::lift_shift::{catalog, data_plan};
use supascale_tests::{TempDatabase, psql};

async fn connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

#[tokio::test]
async fn the_catalogs_give_the_tables_and_the_columns_copy_fills() {
    let source = TempDatabase::create("ls_source").await;
    let target = TempDatabase::create("ls_target").await;
    psql(
        &source.url,
        "CREATE SCHEMA auth; CREATE SCHEMA billing; \
         CREATE TABLE auth.users (id uuid, email text, is_anonymous bool, gone int); \
         ALTER TABLE auth.users DROP COLUMN gone; \
         CREATE TABLE auth.oauth_clients (id uuid); \
         CREATE TABLE billing.invoices (id int, cents int, euros numeric GENERATED ALWAYS AS (cents / 100.0) STORED); \
         CREATE TABLE public.events (id int, at date) PARTITION BY RANGE (at); \
         CREATE TABLE public.events_2026 PARTITION OF public.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         CREATE VIEW public.v AS SELECT 1;",
    );
    psql(
        &target.url,
        "CREATE SCHEMA auth; CREATE TABLE auth.users (id uuid, email text);",
    );
    let mut source_conn = connect(&source.url).await;
    let mut target_conn = connect(&target.url).await;
    let schemas = catalog::schemas(&mut source_conn).await.unwrap();
    assert_eq!(schemas, vec!["auth", "billing", "public"]);
    let tables = catalog::tables(&mut source_conn).await.unwrap();
    let shown: Vec<String> = tables
        .iter()
        .map(|t| format!("{}({})", t.qualified(), t.columns.join(",")))
        .collect();
    assert_eq!(
        shown,
        vec![
            "auth.oauth_clients(id)",
            "auth.users(id,email,is_anonymous)",
            "billing.invoices(id,cents)",
            "public.events_2026(id,at)",
        ]
    );
    let target_tables = catalog::tables(&mut target_conn).await.unwrap();
    let plan = data_plan::plan(&schemas, &tables, &target_tables);
    assert_eq!(plan.replaced_schemas, vec!["billing", "public"]);
    let copied: Vec<String> = plan
        .copied
        .iter()
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    assert_eq!(
        copied,
        vec!["auth.users", "billing.invoices", "public.events_2026"]
    );
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(
        plan.warnings[1].contains("lacks the columns is_anonymous"),
        "{:?}",
        plan.warnings
    );
}
