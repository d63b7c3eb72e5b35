//! The schema part of a migration: `pg_dump --schema-only
//! --quote-all-identifier --exclude-schema <managed>` of the source, with
//! what the target already has or only a superuser of the platform may do
//! left out, as the official guide's rewrites do (docs/lift-shift.md).
//!
//! pg_dump heads every object with `-- Name: …; Type: …; Schema: …;
//! Owner: …`; the filter decides per object from that head, so a statement
//! over several lines (an event trigger, a function) is kept or left out
//! whole, never cut in the middle as line rewrites can. Left out:
//!
//! - event triggers (the target's images install their own);
//! - the `supabase_realtime` publication itself and the platform's
//!   `supabase_realtime_*` ones (the tables added to `supabase_realtime`
//!   stay: they are the project's Realtime choice);
//! - comments on extensions (owned by the platform's admin);
//! - default privileges of `supabase_admin`;
//! - extensions the target cannot install, each with a warning (what uses
//!   them then fails the load, which is rolled back whole).

/// Decides, line by line, what of a schema dump is loaded.
pub struct SchemaFilter<'a> {
    available_extension: &'a (dyn Fn(&str) -> bool + Sync),
    keeping: bool,
    pub warnings: Vec<String>,
    /// Publications the dump creates (a second run drops them first).
    pub publications: Vec<String>,
}

impl<'a> SchemaFilter<'a> {
    pub fn new(available_extension: &'a (dyn Fn(&str) -> bool + Sync)) -> Self {
        Self {
            available_extension,
            keeping: true,
            warnings: Vec::new(),
            publications: Vec::new(),
        }
    }

    /// Whether `line` (without its newline) is loaded.
    pub fn keep(&mut self, line: &str) -> bool {
        if let Some(head) = ObjectHead::parse(line) {
            self.keeping = self.keeps(&head);
        }
        self.keeping
    }

    fn keeps(&mut self, head: &ObjectHead) -> bool {
        let platform_publication =
            |name: &str| name == "supabase_realtime" || name.starts_with("supabase_realtime_");
        match head.kind.as_str() {
            "EVENT TRIGGER" => false,
            "PUBLICATION" => {
                if platform_publication(&head.name) {
                    return false;
                }
                self.publications.push(head.name.clone());
                true
            }
            "PUBLICATION TABLE" => !head
                .name
                .split_whitespace()
                .next()
                .is_some_and(|p| p.starts_with("supabase_realtime_")),
            "COMMENT" => !head.name.starts_with("EXTENSION "),
            "DEFAULT ACL" => head.owner != "supabase_admin",
            "EXTENSION" => {
                if (self.available_extension)(&head.name) {
                    return true;
                }
                self.warnings.push(format!(
                    "The extension {} is not available on the target; it was left out (objects \
                     that use it cannot be created)",
                    head.name
                ));
                false
            }
            _ => true,
        }
    }
}

/// `-- Name: <name>; Type: <kind>; Schema: <schema>; Owner: <owner>`.
struct ObjectHead {
    name: String,
    kind: String,
    owner: String,
}

impl ObjectHead {
    fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("-- Name: ")?;
        let (name, rest) = rest.split_once("; Type: ")?;
        let (kind, rest) = rest.split_once("; Schema: ")?;
        let owner = rest.split_once("; Owner: ").map(|(_, o)| o).unwrap_or("");
        Some(Self {
            name: name.to_string(),
            kind: kind.to_string(),
            owner: owner.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"--
-- Name: vector; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS "vector" WITH SCHEMA "extensions";

--
-- Name: EXTENSION "vector"; Type: COMMENT; Schema: -; Owner: 
--

COMMENT ON EXTENSION "vector" IS 'vector data type';

--
-- Name: postgis; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS "postgis" WITH SCHEMA "extensions";

--
-- Name: todos; Type: TABLE; Schema: public; Owner: postgres
--

CREATE TABLE "public"."todos" (
    "id" bigint NOT NULL
);

--
-- Name: issue_graphql_placeholder; Type: EVENT TRIGGER; Schema: -; Owner: supabase_admin
--

CREATE EVENT TRIGGER "issue_graphql_placeholder" ON "sql_drop"
         WHEN TAG IN ('DROP EXTENSION')
   EXECUTE FUNCTION "extensions"."set_graphql_placeholder"();

ALTER EVENT TRIGGER "issue_graphql_placeholder" OWNER TO "supabase_admin";

--
-- Name: supabase_realtime; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION "supabase_realtime" WITH (publish = 'insert, update, delete, truncate');

--
-- Name: supabase_realtime todos; Type: PUBLICATION TABLE; Schema: public; Owner: postgres
--

ALTER PUBLICATION "supabase_realtime" ADD TABLE ONLY "public"."todos";

--
-- Name: supabase_realtime_messages_publication; Type: PUBLICATION; Schema: -; Owner: supabase_admin
--

CREATE PUBLICATION "supabase_realtime_messages_publication";

--
-- Name: analytics_feed; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION "analytics_feed";

--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: public; Owner: supabase_admin
--

ALTER DEFAULT PRIVILEGES FOR ROLE "supabase_admin" IN SCHEMA "public" GRANT ALL ON TABLES TO "anon";

--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: public; Owner: postgres
--

ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "public" GRANT ALL ON TABLES TO "anon";
"#;

    #[test]
    fn what_the_target_has_or_the_platform_owns_is_left_out_whole() {
        let available = |name: &str| name != "postgis";
        let mut filter = SchemaFilter::new(&available);
        let kept: Vec<&str> = DUMP
            .lines()
            .filter(|l| filter.keep(l))
            .filter(|l| !l.is_empty() && !l.starts_with("--"))
            .collect();
        assert_eq!(
            kept,
            vec![
                "CREATE EXTENSION IF NOT EXISTS \"vector\" WITH SCHEMA \"extensions\";",
                "CREATE TABLE \"public\".\"todos\" (",
                "    \"id\" bigint NOT NULL",
                ");",
                "ALTER PUBLICATION \"supabase_realtime\" ADD TABLE ONLY \"public\".\"todos\";",
                "CREATE PUBLICATION \"analytics_feed\";",
                "ALTER DEFAULT PRIVILEGES FOR ROLE \"postgres\" IN SCHEMA \"public\" GRANT ALL ON TABLES TO \"anon\";",
            ]
        );
        assert_eq!(filter.publications, vec!["analytics_feed"]);
        assert_eq!(filter.warnings.len(), 1);
        assert!(
            filter.warnings[0].contains("postgis"),
            "{:?}",
            filter.warnings
        );
    }
}
