//! API keys: generated here, shown once, stored only as a SHA-256 hash.
//! Keys carry 190 bits of randomness, so a fast hash is the right one: there
//! is nothing for a slow KDF to protect against.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "ssk_";

/// Permission names, exactly as the contract spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    BackupsRead,
    BackupsWrite,
    ProjectsRead,
    ProjectsWrite,
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Permission::BackupsRead,
        Permission::BackupsWrite,
        Permission::ProjectsRead,
        Permission::ProjectsWrite,
        Permission::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::BackupsRead => "backups:read",
            Permission::BackupsWrite => "backups:write",
            Permission::ProjectsRead => "projects:read",
            Permission::ProjectsWrite => "projects:write",
            Permission::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A fresh key: `ssk_` and 32 alphanumeric characters.
pub fn generate() -> String {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("{KEY_PREFIX}{body}")
}

pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// What a listing shows of a key: enough to recognise it, not to use it.
pub fn display_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 6).collect()
}

/// Compares a presented key with a stored hash in constant time.
pub fn matches(key: &str, stored_hash: &str) -> bool {
    hash(key).as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_and_verify_only_themselves() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == 36);
        assert!(matches(&a, &hash(&a)));
        assert!(!matches(&b, &hash(&a)));
    }

    #[test]
    fn permission_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("root"), None);
    }
}
