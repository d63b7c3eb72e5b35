//! The master key encrypts secrets at rest (project database URLs, later job
//! credentials and destination keys) with XChaCha20-Poly1305.
//!
//! Every process of one deployment must hold the same key: its fingerprint is
//! stored in the control plane by the first process, and a process whose key
//! does not match refuses to start rather than write rows nobody can read.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "v1:";

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error(
        "master key file {path} is missing (set SUPASCALE_MASTER_KEY_FILE; in scale-out every process needs the same key)"
    )]
    Missing { path: String },
    #[error("master key file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("master key file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("a stored secret could not be decrypted with this master key")]
    Decrypt,
}

#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({})", self.fingerprint())
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self { key }
    }

    /// Loads the key; with `create_if_missing` (embedded default only) a
    /// missing file is created with mode 0600.
    pub fn load(path: &Path, create_if_missing: bool) -> Result<Self, MasterKeyError> {
        let shown = path.display().to_string();
        let io = |source| MasterKeyError::Io {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(text.trim()).map_err(|reason| MasterKeyError::Invalid {
                path: shown.clone(),
                reason,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create_if_missing => {
                if let Some(parent) = path.parent() {
                    crate::private_fs::create_dir_all(parent).map_err(io)?;
                }
                let key = Self::generate();
                let mut file = crate::private_fs::create_new_file(path).map_err(io)?;
                file.write_all(format!("{}\n", hex::encode(key.key)).as_bytes())
                    .map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(MasterKeyError::Missing { path: shown })
            }
            Err(e) => Err(io(e)),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text)
            .or_else(|_| B64.decode(text))
            .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_string())?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "expected 32 bytes as 64 hex digits or base64".to_string())?;
        Ok(Self { key })
    }

    /// A public, stable name for the key: the first 16 hex digits of
    /// SHA-256 over a domain-separated copy of it.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"supascale-master-key-fingerprint\0");
        hasher.update(self.key);
        hex::encode(&hasher.finalize()[..8])
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}", B64.encode(out))
    }

    pub fn decrypt(&self, sealed: &str) -> Result<String, MasterKeyError> {
        let raw = sealed
            .strip_prefix(PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|raw| raw.len() > 24)
            .ok_or(MasterKeyError::Decrypt)?;
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let plain = cipher
            .decrypt(XNonce::from_slice(&raw[..24]), &raw[24..])
            .map_err(|_| MasterKeyError::Decrypt)?;
        String::from_utf8(plain).map_err(|_| MasterKeyError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_key_is_created_private_and_reloads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.key");
        let key = MasterKey::load(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = MasterKey::load(&path, false).unwrap();
        assert_eq!(key.fingerprint(), again.fingerprint());
    }

    #[test]
    fn a_missing_key_is_an_error_when_it_may_not_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let error = MasterKey::load(&dir.path().join("master.key"), false).unwrap_err();
        assert!(matches!(error, MasterKeyError::Missing { .. }));
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let key = MasterKey::generate();
        let sealed = key.encrypt("postgres://u:hunter2@h/db");
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.decrypt(&sealed).unwrap(), "postgres://u:hunter2@h/db");
        assert!(MasterKey::generate().decrypt(&sealed).is_err());
    }
}
