//! What the project itself put on the platform's tables: row-level
//! security policies on `storage.objects` (how buckets are secured) and
//! triggers on `auth.users` that call the project's own functions (the
//! common `handle_new_user`). The official guide's schema dump leaves the
//! `auth` and `storage` schemas out whole, so these are silently lost
//! there; a migration that loses a bucket's policies opens or closes the
//! bucket without a word.
//!
//! From `pg_dump --schema-only --schema=auth --schema=storage` of the
//! source, [`ManagedHooks`] keeps, object by object (pg_dump's `-- Name:
//! …; Type: …` heads):
//!
//! - `POLICY` objects, each preceded by `DROP POLICY IF EXISTS` (the
//!   target's policy of the same name is replaced; a second run gives the
//!   same result);
//! - `ROW SECURITY` objects (`ALTER TABLE … ENABLE ROW LEVEL SECURITY`,
//!   which changes nothing when already on);
//! - `TRIGGER` objects whose function is outside the platform's schemas,
//!   each preceded by `DROP TRIGGER IF EXISTS`. The platform's own
//!   triggers are the target image's business: its version of them stays.
//!
//! Everything else of those schemas (tables, functions, grants) is the
//! target image's.

use super::exclusions::is_managed_schema;
use crate::restore::database::{first_identifier, quote_ident, quoted_len};

/// Collects the objects to keep from a dump fed line by line.
#[derive(Default)]
pub struct ManagedHooks {
    block: Vec<String>,
    kind: Option<String>,
    hooks: Vec<Hook>,
}

/// What [`ManagedHooks::finish`] gives.
#[derive(Debug, Default)]
pub struct Carried {
    pub sql: String,
    /// `policy <name> on <table>` / `trigger <name> on <table>`.
    pub kept: Vec<String>,
    pub warnings: Vec<String>,
}

/// One kept object.
struct Hook {
    /// `(schema, table)` it is on.
    table: (String, String),
    sql: String,
    /// `policy <name> on <table>`, for the user.
    label: Option<String>,
}

impl ManagedHooks {
    pub fn new() -> Self {
        Self::default()
    }

    /// One line of the dump, without its newline.
    pub fn line(&mut self, line: &str) {
        if let Some(kind) = object_kind(line) {
            self.end_block();
            self.kind = Some(kind);
        }
        if self.kind.is_some() {
            self.block.push(line.to_string());
        }
    }

    /// The SQL to run after the schema part, and what it carries over.
    /// A hook on a table the target lacks (an older image) is left out
    /// with a warning: it would fail the whole load.
    pub fn finish(mut self, target_has: impl Fn(&str, &str) -> bool) -> Carried {
        self.end_block();
        let mut carried = Carried::default();
        for hook in self.hooks {
            let (schema, table) = &hook.table;
            if !target_has(schema, table) {
                if let Some(label) = &hook.label {
                    carried.warnings.push(format!(
                        "the {label} was not carried over: the target has no table \
                         {schema}.{table} (its image is older than the source's)"
                    ));
                }
                continue;
            }
            carried.sql.push_str(&hook.sql);
            carried.kept.extend(hook.label);
        }
        carried
    }

    fn end_block(&mut self) {
        let Some(kind) = self.kind.take() else {
            return;
        };
        let statement: String = self
            .block
            .drain(..)
            .filter(|l| !l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let statement = statement.trim();
        if statement.is_empty() {
            return;
        }
        match kind.as_str() {
            "ROW SECURITY" => {
                let Some(table) = statement
                    .strip_prefix("ALTER TABLE ")
                    .and_then(|rest| qualified(rest.trim_start_matches("ONLY ")))
                else {
                    return;
                };
                self.hooks.push(Hook {
                    table,
                    sql: format!("{statement}\n"),
                    label: None,
                });
            }
            "POLICY" => {
                let Some((name, table)) = name_and_table(statement, "CREATE POLICY ") else {
                    return;
                };
                self.hooks.push(Hook {
                    sql: format!(
                        "DROP POLICY IF EXISTS {} ON {};\n{statement}\n",
                        quote_ident(&name),
                        quoted(&table)
                    ),
                    label: Some(format!("policy {name} on {}.{}", table.0, table.1)),
                    table,
                });
            }
            "TRIGGER" => {
                let Some((name, table)) = name_and_table(statement, "CREATE TRIGGER ")
                    .or_else(|| name_and_table(statement, "CREATE CONSTRAINT TRIGGER "))
                else {
                    return;
                };
                let Some(function_schema) = executed_schema(statement) else {
                    return;
                };
                if is_managed_schema(&function_schema) {
                    return;
                }
                self.hooks.push(Hook {
                    sql: format!(
                        "DROP TRIGGER IF EXISTS {} ON {};\n{statement}\n",
                        quote_ident(&name),
                        quoted(&table)
                    ),
                    label: Some(format!("trigger {name} on {}.{}", table.0, table.1)),
                    table,
                });
            }
            _ => {}
        }
    }
}

/// The `Type:` of a pg_dump object head line.
fn object_kind(line: &str) -> Option<String> {
    let rest = line.strip_prefix("-- Name: ")?;
    let (_, rest) = rest.split_once("; Type: ")?;
    let (kind, _) = rest.split_once("; Schema: ")?;
    Some(kind.to_string())
}

/// The object's name and its table in `<create><name> … ON <table> …`.
fn name_and_table(statement: &str, create: &str) -> Option<(String, (String, String))> {
    let rest = statement.strip_prefix(create)?;
    let name = first_identifier(rest)?;
    let after = &rest[quoted_len(rest, &name)..];
    let on = after.find(" ON ")?;
    Some((name, qualified(&after[on + 4..])?))
}

/// `schema.table` at the start of `text`, unquoted.
fn qualified(text: &str) -> Option<(String, String)> {
    let schema = first_identifier(text)?;
    let rest = text[quoted_len(text, &schema)..].strip_prefix('.')?;
    let table = first_identifier(rest)?;
    Some((schema, table))
}

fn quoted((schema, table): &(String, String)) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// The schema of the function a trigger executes.
fn executed_schema(statement: &str) -> Option<String> {
    let at = statement
        .find("EXECUTE FUNCTION ")
        .map(|i| i + "EXECUTE FUNCTION ".len())
        .or_else(|| {
            statement
                .find("EXECUTE PROCEDURE ")
                .map(|i| i + "EXECUTE PROCEDURE ".len())
        })?;
    let text = &statement[at..];
    let first = first_identifier(text)?;
    // `schema.function(…)`: a name followed by a dot is the schema.
    text[quoted_len(text, &first)..]
        .starts_with('.')
        .then_some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"--
-- PostgreSQL database dump
--

SET statement_timeout = 0;

--
-- Name: auth; Type: SCHEMA; Schema: -; Owner: supabase_admin
--

CREATE SCHEMA "auth";

--
-- Name: users; Type: TABLE; Schema: auth; Owner: supabase_auth_admin
--

CREATE TABLE "auth"."users" (
    "id" "uuid" NOT NULL
);

--
-- Name: users on_auth_user_created; Type: TRIGGER; Schema: auth; Owner: supabase_auth_admin
--

CREATE TRIGGER "on_auth_user_created" AFTER INSERT ON "auth"."users" FOR EACH ROW EXECUTE FUNCTION "public"."handle_new_user"();

--
-- Name: objects update_objects_updated_at; Type: TRIGGER; Schema: storage; Owner: supabase_storage_admin
--

CREATE TRIGGER "update_objects_updated_at" BEFORE UPDATE ON "storage"."objects" FOR EACH ROW EXECUTE FUNCTION "storage"."update_updated_at_column"();

--
-- Name: objects Avatar images are "public"; Type: POLICY; Schema: storage; Owner: supabase_storage_admin
--

CREATE POLICY "Avatar images are ""public""" ON "storage"."objects" FOR SELECT USING (("bucket_id" = 'avatars'::"text"));

--
-- Name: objects; Type: ROW SECURITY; Schema: storage; Owner: supabase_storage_admin
--

ALTER TABLE "storage"."objects" ENABLE ROW LEVEL SECURITY;

--
-- Name: TABLE "users"; Type: ACL; Schema: auth; Owner: supabase_auth_admin
--

GRANT ALL ON TABLE "auth"."users" TO "dashboard_user";
"#;

    #[test]
    fn the_projects_policies_and_triggers_are_kept_the_platforms_are_not() {
        let mut hooks = ManagedHooks::new();
        for line in DUMP.lines() {
            hooks.line(line);
        }
        let carried = hooks.finish(|_, _| true);
        let (sql, kept) = (carried.sql, carried.kept);
        assert_eq!(
            kept,
            vec![
                "trigger on_auth_user_created on auth.users",
                "policy Avatar images are \"public\" on storage.objects",
            ]
        );
        assert_eq!(
            sql,
            "DROP TRIGGER IF EXISTS \"on_auth_user_created\" ON \"auth\".\"users\";\n\
             CREATE TRIGGER \"on_auth_user_created\" AFTER INSERT ON \"auth\".\"users\" FOR EACH ROW EXECUTE FUNCTION \"public\".\"handle_new_user\"();\n\
             DROP POLICY IF EXISTS \"Avatar images are \"\"public\"\"\" ON \"storage\".\"objects\";\n\
             CREATE POLICY \"Avatar images are \"\"public\"\"\" ON \"storage\".\"objects\" FOR SELECT USING ((\"bucket_id\" = 'avatars'::\"text\"));\n\
             ALTER TABLE \"storage\".\"objects\" ENABLE ROW LEVEL SECURITY;\n"
        );
        assert!(!sql.contains("CREATE TABLE") && !sql.contains("GRANT"));
        // An older target without the table: left out, with a warning.
        let mut hooks = ManagedHooks::new();
        for line in DUMP.lines() {
            hooks.line(line);
        }
        let carried = hooks.finish(|schema, _| schema == "auth");
        assert_eq!(
            carried.kept,
            vec!["trigger on_auth_user_created on auth.users"]
        );
        assert_eq!(carried.warnings.len(), 1, "{:?}", carried.warnings);
        assert!(carried.warnings[0].contains("storage.objects"));
    }
}
