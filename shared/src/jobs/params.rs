//! Each kind's typed parameters, as the API writes them into the job row
//! (`jobs.payload`, JSON) and the kind's module reads them back. Never a
//! secret: those travel sealed in `jobs.secrets_enc`.

/// A backup job: the backup row it fills.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupPayload {
    pub backup_id: String,
}

/// A restore job: the restore row it carries out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePayload {
    pub restore_id: String,
    #[serde(default)]
    pub force: bool,
}

/// A verify job: the backup it reads back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPayload {
    pub backup_id: String,
}

/// What the API puts in an import job's row.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportPayload {
    /// The name the client gave the file (its extension is a claim the
    /// content must agree with).
    pub file_name: String,
    pub size: u64,
    /// Write into a database that does not look like a Supabase project's
    /// (`forceRestore`).
    #[serde(default)]
    pub force: bool,
}
