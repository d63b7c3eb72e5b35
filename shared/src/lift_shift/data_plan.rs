//! Which tables' rows a migration copies, and what it empties first.
//!
//! The project's own schemas are replaced whole (the schema part recreates
//! them), so their tables always take the source's rows. The managed
//! schemas that hold data (`auth`, `storage`, …) keep the target's
//! definitions: a table there takes the source's rows only when the target
//! has it with every column the source fills; otherwise COPY would fail
//! and roll back everything, so the table is left out and a warning names
//! it (an older self-hosted image than the Cloud project's). The tables
//! that are filled are emptied first, so a second run gives the same rows,
//! not doubled ones.

use std::collections::{BTreeMap, BTreeSet};

use super::exclusions::{copies_rows_of, is_managed_schema};

/// A table as the catalog shows it: the columns COPY fills (not dropped,
/// not generated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
    pub columns: Vec<String>,
}

impl Table {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// What the data part does.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DataPlan {
    /// The source's own schemas, which replace the target's of that name.
    pub replaced_schemas: Vec<String>,
    /// Tables whose rows are copied, `schema.name`, sorted.
    pub copied: Vec<(String, String)>,
    /// Tables of managed schemas emptied before the copy.
    pub emptied: Vec<(String, String)>,
    /// Tables whose rows pg_dump leaves behind (its
    /// `--exclude-table-data`): those the target lacks, and the
    /// [`partial`](Self::partial) ones.
    pub left_out: Vec<(String, String)>,
    /// Tables the target has without some of the source's columns: their
    /// rows are copied with the columns both have (`COPY (SELECT …)`), not
    /// by pg_dump. Also in `copied` and `emptied`.
    pub partial: Vec<PartialTable>,
    pub warnings: Vec<String>,
}

/// A table copied with the columns the target has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialTable {
    pub schema: String,
    pub name: String,
    /// The columns both have, in the source's order.
    pub columns: Vec<String>,
    /// The source's columns the target lacks.
    pub missing: Vec<String>,
}

/// The plan for `source_schemas`/`source_tables` into a target that has
/// `target_tables`.
pub fn plan(
    source_schemas: &[String],
    source_tables: &[Table],
    target_tables: &[Table],
) -> DataPlan {
    let target: BTreeMap<(&str, &str), BTreeSet<&str>> = target_tables
        .iter()
        .map(|t| {
            (
                (t.schema.as_str(), t.name.as_str()),
                t.columns.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut plan = DataPlan {
        replaced_schemas: source_schemas
            .iter()
            .filter(|s| !is_managed_schema(s))
            .cloned()
            .collect(),
        ..DataPlan::default()
    };
    plan.replaced_schemas.sort();
    let mut tables: Vec<&Table> = source_tables.iter().collect();
    tables.sort_by(|a, b| (&a.schema, &a.name).cmp(&(&b.schema, &b.name)));
    for table in tables {
        let key = (table.schema.clone(), table.name.clone());
        if !copies_rows_of(&table.schema, &table.name) {
            // Outside the data dump already (an excluded schema or table).
            continue;
        }
        if !is_managed_schema(&table.schema) {
            plan.copied.push(key);
            continue;
        }
        match target.get(&(table.schema.as_str(), table.name.as_str())) {
            None => {
                plan.warnings.push(format!(
                    "{}: the target has no such table (its image is older than the source's); \
                     its rows were not copied",
                    table.qualified()
                ));
                plan.left_out.push(key);
            }
            Some(columns) => {
                let missing: Vec<&str> = table
                    .columns
                    .iter()
                    .map(String::as_str)
                    .filter(|c| !columns.contains(c))
                    .collect();
                if !missing.is_empty() {
                    plan.warnings.push(format!(
                        "{}: the target's table lacks the columns {} (its image is older than \
                         the source's); its rows were copied without them",
                        table.qualified(),
                        missing.join(", ")
                    ));
                    plan.left_out.push(key.clone());
                    plan.partial.push(PartialTable {
                        schema: table.schema.clone(),
                        name: table.name.clone(),
                        columns: table
                            .columns
                            .iter()
                            .filter(|c| columns.contains(c.as_str()))
                            .cloned()
                            .collect(),
                        missing: missing.iter().map(|c| c.to_string()).collect(),
                    });
                }
                plan.emptied.push(key.clone());
                plan.copied.push(key);
            }
        }
    }
    plan
}

/// The statements that run first, in the load's transaction: the
/// project's own publications (a second run creates them again), its
/// schemas (replaced whole, `public` recreated as PostgreSQL `major` makes
/// it), and the managed tables the data fills, emptied in one statement so
/// that foreign keys between them do not stop it.
pub fn preamble(plan: &DataPlan, publications: &[String], major: u32) -> String {
    use crate::restore::database::{quote_ident, recreate_public_schema};
    let mut sql = String::new();
    for name in publications {
        sql.push_str(&format!(
            "DROP PUBLICATION IF EXISTS {};\n",
            quote_ident(name)
        ));
    }
    for schema in plan.replaced_schemas.iter().filter(|s| *s != "public") {
        sql.push_str(&format!(
            "DROP SCHEMA IF EXISTS {} CASCADE;\n",
            quote_ident(schema)
        ));
    }
    if plan.replaced_schemas.iter().any(|s| s == "public") {
        sql.push_str(&recreate_public_schema(major));
    }
    if !plan.emptied.is_empty() {
        let tables: Vec<String> = plan
            .emptied
            .iter()
            .map(|(s, t)| format!("{}.{}", quote_ident(s), quote_ident(t)))
            .collect();
        sql.push_str(&format!("TRUNCATE TABLE {};\n", tables.join(", ")));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str, columns: &[&str]) -> Table {
        Table {
            schema: schema.into(),
            name: name.into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn pairs(list: &[(String, String)]) -> Vec<String> {
        list.iter().map(|(s, t)| format!("{s}.{t}")).collect()
    }

    #[test]
    fn an_older_targets_missing_tables_and_columns_are_left_out_with_a_warning() {
        let schemas: Vec<String> = ["public", "billing", "auth", "storage", "vault"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let source = vec![
            table("public", "todos", &["id", "title"]),
            table("billing", "invoices", &["id"]),
            table("auth", "users", &["id", "email", "is_anonymous"]),
            table("auth", "identities", &["id", "user_id"]),
            table("auth", "oauth_clients", &["id"]),
            table("auth", "schema_migrations", &["version"]),
            table("storage", "objects", &["id", "name"]),
            table("vault", "secrets", &["id"]),
        ];
        let target = vec![
            table("public", "old_table", &["id"]),
            table("auth", "users", &["id", "email"]),
            table("auth", "identities", &["id", "user_id", "extra"]),
            table("auth", "schema_migrations", &["version"]),
            table("storage", "objects", &["id", "name"]),
        ];
        let plan = plan(&schemas, &source, &target);
        assert_eq!(plan.replaced_schemas, vec!["billing", "public"]);
        assert_eq!(
            pairs(&plan.copied),
            vec![
                "auth.identities",
                "auth.users",
                "billing.invoices",
                "public.todos",
                "storage.objects"
            ]
        );
        assert_eq!(
            pairs(&plan.emptied),
            vec!["auth.identities", "auth.users", "storage.objects"]
        );
        assert_eq!(
            plan.partial,
            vec![PartialTable {
                schema: "auth".into(),
                name: "users".into(),
                columns: vec!["id".into(), "email".into()],
                missing: vec!["is_anonymous".into()],
            }]
        );
        assert_eq!(
            pairs(&plan.left_out),
            vec!["auth.oauth_clients", "auth.users"]
        );
        assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
        assert!(plan.warnings[0].starts_with("auth.oauth_clients: the target has no such table"));
        assert!(
            plan.warnings[1].contains("lacks the columns is_anonymous"),
            "{:?}",
            plan.warnings
        );
    }
}
