//! Lift & shift: a Supabase Cloud project migrated into a self-hosted one.
//! The request's checks ([`source`]), what the migration leaves out of the
//! source ([`exclusions`]), and how the source's roles and schema dumps
//! are rewritten for the target ([`roles`], [`schema`]). The job itself
//! will be `supascale-worker`'s `kinds::lift_shift` (docs/lift-shift.md).

pub mod catalog;
pub mod cloud_api;
pub mod data_plan;
pub mod exclusions;
pub mod fetch;
pub mod managed;
pub mod roles;
pub mod schema;
pub mod source;
pub mod stage;

/// The contract's components, in the order they are migrated.
pub const COMPONENTS: [&str; 3] = ["database", "storage", "auth"];

/// The request's `components`, checked: known words, none twice, not
/// empty; returned in migration order.
pub fn parse_components(asked: &[String]) -> Result<Vec<String>, String> {
    if asked.is_empty() {
        return Err(format!(
            "components must name at least one of {}",
            COMPONENTS.join(", ")
        ));
    }
    if let Some(bad) = asked.iter().find(|c| !COMPONENTS.contains(&c.as_str())) {
        return Err(format!(
            "components: unknown component {bad:?} (one of {})",
            COMPONENTS.join(", ")
        ));
    }
    Ok(COMPONENTS
        .iter()
        .filter(|c| asked.iter().any(|a| a == *c))
        .map(|c| c.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_checked_and_put_in_migration_order() {
        let asked = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_components(&asked(&["auth", "database", "auth"])).unwrap(),
            vec!["database", "auth"]
        );
        assert!(parse_components(&[]).unwrap_err().contains("at least one"));
        assert!(
            parse_components(&asked(&["database", "functions"]))
                .unwrap_err()
                .contains("\"functions\"")
        );
    }
}
