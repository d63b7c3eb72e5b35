//! The `/api/v1` endpoints, one module per resource.

pub mod api_keys;
pub mod backups;
pub mod destinations;
pub mod download;
pub mod imports;
pub mod jobs;
pub mod lift_shift;
pub mod ops;
pub mod projects;
pub mod restores;

use poem_openapi::Tags;

#[derive(Tags)]
pub enum ApiTags {
    /// Backups: list, inspect, create, download, delete, restore.
    Backups,
    /// Self-hosted Supabase projects that Supascale backs up.
    Projects,
    /// API keys (admin only).
    ApiKeys,
    /// Jobs: the long operations behind backups, restores and imports.
    Jobs,
    /// Where backups go, and whether each destination works right now.
    Destinations,
}

/// Checks `limit` (1 to `max`, default `default`) and `offset` (0 or
/// more, default 0).
pub fn page_window(
    limit: Option<i64>,
    offset: Option<i64>,
    default: u64,
    max: u64,
) -> Result<(u64, u64), crate::error::ApiError> {
    use crate::error::ApiError;
    let limit = match limit {
        None => default,
        Some(n) if n >= 1 && n as u64 <= max => n as u64,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {max}, not {n}"
            )));
        }
    };
    let offset = match offset {
        None => 0,
        Some(n) if n >= 0 => n as u64,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "offset must be 0 or more, not {n}"
            )));
        }
    };
    Ok((limit, offset))
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
