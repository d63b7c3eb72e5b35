//! Lift & shift beside the official migration guide's pipeline (the
//! Supabase CLI's dump scripts, then `psql --single-transaction`): the same
//! source loaded both ways into two fresh projects must leave them with
//! the same tables, rows, policies, functions, triggers and views.

use std::time::Duration;

use serde_json::json;
use supascale_tests::cloud_double::CloudDouble;
use supascale_tests::official_pipeline;
use supascale_tests::refproject::{self, table_fingerprints};
use supascale_tests::{Backend, TestApp, psql, read_events};

/// Where the triggers are in [`definitions`].
const TRIGGERS: usize = 2;

/// What a user sees of a database besides its rows.
fn definitions(url: &str) -> Vec<String> {
    // Each query's rows, one per line, sorted (an aggregate's `ORDER BY 1`
    // would sort by the constant 1, leaving heap order).
    let queries = [
        "SELECT schemaname || '.' || tablename || ' ' || policyname || ' ' || cmd || ' ' || \
         coalesce(qual, '') || ' ' || array_to_string(roles, ',') FROM pg_policies",
        "SELECT p.oid::regprocedure::text || ' ' || md5(pg_get_functiondef(p.oid)) \
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'",
        "SELECT tgrelid::regclass::text || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal",
        "SELECT schemaname || '.' || viewname || ' ' || md5(definition) FROM pg_views \
         WHERE schemaname = 'public'",
        "SELECT schemaname || '.' || matviewname FROM pg_matviews",
        "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'",
        "SELECT c.relname || ' ' || array_to_string(c.relacl, ',') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm')",
    ];
    queries
        .iter()
        .map(|q| {
            let mut lines: Vec<String> = psql(url, q).lines().map(str::to_string).collect();
            lines.sort();
            lines.join("\n")
        })
        .collect()
}

#[tokio::test]
async fn ours_leaves_the_target_as_the_official_pipeline_does() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let source = refproject::make(0.02, 31, false).await;
    let ours = refproject::make_fresh(32).await;
    let theirs = refproject::make_fresh(33).await;
    refproject::register(&app, &ours, "ours").await;
    let double = CloudDouble::builder().start().await;

    let response = app
        .post("/api/v1/projects/ours/import/lift-shift")
        .json(&json!({
            "sourceUrl": double.base_url(),
            "serviceRoleKey": double.service_role_key(),
            "databasePassword": "unused",
            "databaseUrl": source.database.url,
            "components": ["database"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let events = read_events(response, Duration::from_secs(180), |_| false).await;
    assert_eq!(events.last().unwrap().event, "complete", "{events:#?}");

    let dir = tempfile::tempdir().unwrap();
    let dump = official_pipeline::dump(&source.database.url, dir.path());
    // Without its roles file: every role of the source already exists on
    // this machine's one cluster (see `official_pipeline::load`).
    official_pipeline::load(&theirs.database.url, &dump, false)
        .expect("the official pipeline loads");

    assert_eq!(
        table_fingerprints(&ours.database.url),
        table_fingerprints(&theirs.database.url)
    );
    // Where ours does better (docs/lift-shift.md): the project's own
    // triggers on the platform's tables come along; the guide's schema
    // dump leaves `auth` out whole and loses them.
    let (mut ours_defs, mut theirs_defs) = (
        definitions(&ours.database.url),
        definitions(&theirs.database.url),
    );
    let source_defs = definitions(&source.database.url);
    assert_eq!(ours_defs[TRIGGERS], source_defs[TRIGGERS]);
    assert!(
        source_defs[TRIGGERS].contains("auth.users profile_for_new_user")
            && !theirs_defs[TRIGGERS].contains("auth.users profile_for_new_user"),
        "{}",
        theirs_defs[TRIGGERS]
    );
    ours_defs.remove(TRIGGERS);
    theirs_defs.remove(TRIGGERS);
    assert_eq!(ours_defs, theirs_defs);
    // And both hold the source's rows.
    let rows = |url: &str| {
        table_fingerprints(url)
            .into_iter()
            .filter(|t| t.starts_with("public."))
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&ours.database.url), rows(&source.database.url));
}
