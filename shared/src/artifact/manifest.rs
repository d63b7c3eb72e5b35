use serde::{Deserialize, Serialize};

/// The format of `manifest.json`; bump when it changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// What the caller knows about the backup; the builder adds the entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestMeta {
    pub project_id: String,
    pub project_name: String,
    /// `full | database | storage | functions | config`
    pub backup_type: String,
    /// The components the artifact holds (`database`, `storage`, …).
    pub components: Vec<String>,
    /// `server_version` of the project's PostgreSQL, when a dump is included.
    pub postgres_version: Option<String>,
    /// RFC 3339.
    pub created_at: String,
}

/// One tar entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    pub path: String,
    /// `file | dir | symlink`
    pub kind: String,
    pub size: u64,
    /// SHA-256 of a file's bytes, hex; absent for folders and links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub tool: String,
    pub tool_version: String,
    #[serde(flatten)]
    pub meta: ManifestMeta,
    pub entries: Vec<ManifestEntry>,
    /// Files that changed or vanished while they were read.
    pub warnings: Vec<String>,
}
