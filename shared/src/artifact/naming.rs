//! What a backup's artifact holds and where it lives in its destination:
//! the API names the artifact when it writes the backup row, the backup
//! job writes it there, restores, verifications and downloads read it back.

use chrono::{DateTime, Utc};

use super::Compression;
use crate::entities::backup;

/// Where a backup's artifact lives inside its destination:
/// `<project>/<YYYY-MM-DDTHHMMSSZ>-<type>-<short id>.tar.gz`.
pub fn artifact_key(
    project_id: &str,
    backup_id: &str,
    backup_type: &str,
    created_at: DateTime<Utc>,
    compression: Compression,
) -> String {
    let short: String = backup_id
        .chars()
        .rev()
        .take(8)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "{project_id}/{}-{backup_type}-{short}.{}",
        created_at.format("%Y-%m-%dT%H%M%SZ"),
        compression.extension()
    )
}

/// A backup row's artifact key and compression.
pub fn artifact_of(row: &backup::Model) -> (String, Compression) {
    let compression = Compression::parse(&row.compression).unwrap_or(Compression::Gzip);
    let key = artifact_key(
        &row.project_id,
        &row.id,
        &row.backup_type,
        row.created_at,
        compression,
    );
    (key, compression)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_keys_name_project_time_type_and_id() {
        let at = DateTime::parse_from_rfc3339("2026-01-19T02:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            artifact_key(
                "my-project",
                "backup-0123456789abcdef",
                "full",
                at,
                Compression::Gzip
            ),
            "my-project/2026-01-19T020000Z-full-89abcdef.tar.gz"
        );
    }
}
