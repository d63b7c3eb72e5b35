//! A `gcs` destination's service-account key (`credential_file`): checked
//! when the destination is built, and its `token_uri` honoured.
//!
//! OpenDAL's signer (reqsign-google 3.2) exchanges a JWT signed with the
//! key for an access token at Google's fixed address. Google's own client
//! libraries send that exchange to the key file's `token_uri` instead
//! (Google's keys name one of [`GOOGLE_TOKEN_URIS`], left as they are: the
//! JWT's audience is always the first). The exchange goes through
//! the operator's HTTP transport, so [`TokenUriTransport`] sends that one
//! request to the file's `token_uri`, and every other request as it is:
//! the key file decides where its token comes from, and the exchange can
//! be tested against a double of the endpoint.
//!
//! The key is handed to OpenDAL as [`token_provider`], not as a
//! `credential_path`: given the path, reqsign-google 3.2 exchanges the JWT
//! for a token before every request (measured: 9 exchanges for one small
//! backup), which for a large upload is a request to Google per 8 MiB
//! chunk. The provider returns the token itself, which OpenDAL's signer
//! keeps until it nears its expiry (an hour).
//!
//! Nothing of the key reaches an error: they name the file and the field.

use std::path::Path;
use std::sync::{Arc, Mutex};

use opendal::{Buffer, HttpBody, HttpTransport, HttpTransporter};
use serde::Deserialize;

/// Where reqsign asks for tokens, and Google's keys say they come from.
pub const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Google's token endpoints as its keys have named them (older keys the
/// second); a key naming either is sent to the first.
pub const GOOGLE_TOKEN_URIS: [&str; 2] = [
    GOOGLE_TOKEN_URI,
    "https://accounts.google.com/o/oauth2/token",
];

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    token_uri: Option<String>,
}

/// Reads the key file at `path`: a service-account key with an email and
/// a PEM private key. Returns its `token_uri` when that is not Google's
/// (`https`, or `http` on a loopback address only).
pub fn token_uri_of(path: &Path) -> Result<Option<http::Uri>, String> {
    let shown = path.display();
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("credential_file {shown}: {e}"))?;
    let key: KeyFile = serde_json::from_str(&text)
        .map_err(|_| format!("credential_file {shown}: not a JSON key file"))?;
    if key.kind.as_deref() != Some("service_account") {
        return Err(format!(
            "credential_file {shown}: \"type\" must be \"service_account\" (a service-account key \
             from IAM > Service accounts > Keys)"
        ));
    }
    if key.client_email.as_deref().is_none_or(str::is_empty) {
        return Err(format!(
            "credential_file {shown}: \"client_email\" is missing"
        ));
    }
    if !key
        .private_key
        .as_deref()
        .is_some_and(|k| k.trim_start().starts_with("-----BEGIN"))
    {
        return Err(format!(
            "credential_file {shown}: \"private_key\" is missing or not a PEM key"
        ));
    }
    let Some(raw) = key
        .token_uri
        .filter(|u| !GOOGLE_TOKEN_URIS.contains(&u.as_str()))
    else {
        return Ok(None);
    };
    let bad = || {
        format!(
            "credential_file {shown}: \"token_uri\" must be an https URL (http only on a \
             loopback address)"
        )
    };
    let url = url::Url::parse(&raw).map_err(|_| bad())?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if !(url.scheme() == "https" || (url.scheme() == "http" && loopback)) {
        return Err(bad());
    }
    raw.parse::<http::Uri>().map(Some).map_err(|_| bad())
}

/// The scope OpenDAL asks for by default: read and write objects, no more.
pub const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// The key file at `path` as a source of access tokens, each kept by the
/// signer until it nears expiry.
pub fn token_provider(path: &Path) -> KeyFileTokens {
    KeyFileTokens {
        inner: reqsign_google::ServiceAccountTokenCredentialProvider::from_provider(
            reqsign_google::FileCredentialProvider::new(path.to_string_lossy()),
        )
        .with_scope(SCOPE),
        last_error: Arc::default(),
    }
}

/// Tokens from a key file, remembering why the last exchange failed:
/// OpenDAL's chain of providers goes on to the next one on an error and
/// ends with "failed to load signing credential", dropping the endpoint's
/// answer (`invalid_grant`) that an operator needs.
#[derive(Debug)]
pub struct KeyFileTokens {
    inner: reqsign_google::ServiceAccountTokenCredentialProvider,
    last_error: Arc<Mutex<Option<String>>>,
}

impl KeyFileTokens {
    /// Where the last failure is kept (cleared by a success).
    pub fn last_error(&self) -> Arc<Mutex<Option<String>>> {
        self.last_error.clone()
    }
}

impl reqsign_core::ProvideCredential for KeyFileTokens {
    type Credential = reqsign_google::Credential;

    async fn provide_credential(
        &self,
        ctx: &reqsign_core::Context,
    ) -> reqsign_core::Result<Option<Self::Credential>> {
        let provided = self.inner.provide_credential(ctx).await;
        let error = provided.as_ref().err().map(|e| {
            // The message and its context (`oauth_status: 400`,
            // `oauth_error: invalid_grant`); never the key or the JWT.
            let mut text = e.to_string();
            if !e.context().is_empty() {
                text = format!("{text} ({})", e.context().join(", "));
            }
            tracing::warn!(error = %text, "the GCS key file's token exchange failed");
            text
        });
        *self.last_error.lock().expect("token error lock") = error;
        provided
    }
}

/// The operator's HTTP transport, with the token exchange sent to the key
/// file's `token_uri`.
pub struct TokenUriTransport {
    pub token_uri: http::Uri,
    pub inner: HttpTransporter,
}

impl HttpTransport for TokenUriTransport {
    async fn fetch(
        &self,
        mut request: http::Request<Buffer>,
    ) -> opendal::Result<http::Response<HttpBody>> {
        if request.uri() == GOOGLE_TOKEN_URI {
            *request.uri_mut() = self.token_uri.clone();
        }
        self.inner.fetch(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(json: serde_json::Value) -> (tempfile::NamedTempFile, std::path::PathBuf) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), json.to_string()).unwrap();
        let path = file.path().to_path_buf();
        (file, path)
    }

    #[test]
    fn a_key_file_is_checked_and_its_token_uri_kept() {
        let key = |token_uri: &str| {
            serde_json::json!({"type": "service_account", "client_email": "b@p.iam.gserviceaccount.com",
                "private_key": "-----BEGIN PRIVATE KEY-----\nsecretbits\n-----END PRIVATE KEY-----\n",
                "token_uri": token_uri})
        };
        for google in GOOGLE_TOKEN_URIS {
            let (_f, path) = key_file(key(google));
            assert_eq!(token_uri_of(&path), Ok(None));
        }
        let (_f, path) = key_file(key("http://127.0.0.1:9/token"));
        assert_eq!(
            token_uri_of(&path).unwrap().unwrap().to_string(),
            "http://127.0.0.1:9/token"
        );
        for bad in [
            "http://tokens.example.com/token",
            "ftp://127.0.0.1/token",
            "nope",
        ] {
            let (_f, path) = key_file(key(bad));
            let error = token_uri_of(&path).unwrap_err();
            assert!(error.contains("token_uri"), "{bad}: {error}");
        }
        let (_f, path) = key_file(serde_json::json!({"type": "authorized_user",
            "private_key": "-----BEGIN PRIVATE KEY-----\nsecretbits\n"}));
        let error = token_uri_of(&path).unwrap_err();
        assert!(
            error.contains("service_account") && !error.contains("secretbits"),
            "{error}"
        );
    }
}
