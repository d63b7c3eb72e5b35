//! Each kind's typed parameters, as the API writes them into the job row
//! (`jobs.payload`, JSON) and the kind's module reads them back. Never a
//! secret: those travel sealed in `jobs.secrets_enc`.

/// The job's typed parameters; a payload that does not read is the
/// record's fault (a permanent failure).
pub fn read<T: serde::de::DeserializeOwned>(
    job: &crate::entities::job::Model,
) -> Result<T, super::JobError> {
    serde_json::from_str(&job.payload)
        .map_err(|e| super::JobError::Record(format!("bad job payload: {e}")))
}

/// A backup job: the backup row it fills.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupPayload {
    pub backup_id: String,
    /// `copyTo`: the destinations whose copy rows this job fills once the
    /// artifact is stored (so that a backup without copies reads none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copy_to: Vec<String>,
}

/// A restore job: the restore row it carries out.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RestorePayload {
    pub restore_id: String,
    #[serde(default)]
    pub force: bool,
    /// Read the replica on this destination only (`?destination=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// A copy job: the backup whose artifact it copies, and where to.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CopyPayload {
    pub backup_id: String,
    pub destination: String,
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

/// A lift & shift job: where it reads from and what it brings. The
/// service-role key and the database password are in
/// [`LiftShiftSecrets`], sealed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiftShiftPayload {
    /// The source's API base (`https://<ref>.supabase.co`).
    pub source_url: String,
    /// The source database's URL, without its password.
    pub database_url: String,
    /// Derived from the project ref (not given as `databaseUrl`).
    pub database_derived: bool,
    /// In the contract's words and order: `database`, `storage`, `auth`.
    pub components: Vec<String>,
}

/// What a lift & shift job needs and nobody may read: sealed with the
/// master key into `jobs.secrets_enc`, wiped when the job ends.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiftShiftSecrets {
    pub service_role_key: String,
    pub database_password: String,
}

impl std::fmt::Debug for LiftShiftSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiftShiftSecrets { .. }")
    }
}
