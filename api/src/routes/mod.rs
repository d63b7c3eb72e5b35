//! The `/api/v1` endpoints, one module per resource.

pub mod api_keys;
pub mod backups;
pub mod ops;
pub mod projects;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Backups: list, inspect, create, download, delete, restore.
    Backups,
    /// Self-hosted Supabase projects that Supascale backs up.
    Projects,
    /// API keys (admin only).
    ApiKeys,
}

/// Splits a comma-separated filter (`completed, failed`) into its values,
/// checking each against `allowed`.
pub fn parse_list_filter(
    name: &str,
    raw: Option<&str>,
    allowed: Option<&[&str]>,
) -> Result<Option<Vec<String>>, crate::error::ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    let values: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .collect();
    if values.is_empty() {
        return Ok(None);
    }
    if let Some(allowed) = allowed
        && let Some(bad) = values.iter().find(|v| !allowed.contains(&v.as_str()))
    {
        return Err(crate::error::ApiError::bad_request(format!(
            "{name}: {bad:?} is not one of {}",
            allowed.join(", ")
        )));
    }
    Ok(Some(values))
}
