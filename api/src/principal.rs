//! Who is calling: what a verified key may do and see.

use std::collections::HashSet;

use chrono::Utc;
use supascale_shared::api_key::Permission;

use crate::error::ApiError;

/// Who is calling: a verified key's permissions and project restriction.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: String,
    pub(crate) permissions: HashSet<Permission>,
    /// `Some` when the key is limited to these projects.
    pub project_ids: Option<Vec<String>>,
    pub(crate) expires_at: Option<chrono::DateTime<Utc>>,
}

impl Principal {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.contains(&Permission::Admin) || self.permissions.contains(&permission)
    }

    /// 403 unless the key holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "API key lacks the {} permission",
                permission.as_str()
            )))
        }
    }

    /// Whether the key may see this project's data at all.
    pub fn may_see(&self, project_id: &str) -> bool {
        self.project_ids
            .as_ref()
            .is_none_or(|ids| ids.iter().any(|id| id == project_id))
    }

    /// Managing keys needs an admin key that is not limited to projects: a
    /// limited key must not be able to mint an unlimited one.
    pub fn require_unrestricted_admin(&self) -> Result<(), ApiError> {
        self.require(Permission::Admin)?;
        if self.project_ids.is_some() {
            return Err(ApiError::forbidden(
                "API keys can only be managed with an admin key that is not limited to projects",
            ));
        }
        Ok(())
    }
}
