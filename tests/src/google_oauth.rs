//! A double of Google's OAuth 2.0 token endpoint, for the exchange a `gcs`
//! destination with a service-account `credential_file` makes (Google's
//! endpoint cannot run here). It speaks the real wire format (RFC 7523, as
//! Google documents it for service accounts): `POST` of a form with
//! `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an RS256
//! JWT `assertion`, answered with `{"access_token", "expires_in",
//! "token_type": "Bearer"}`, or 400 `{"error": "invalid_grant"}` when the
//! assertion's signature does not verify against the key's public half
//! (checked with `openssl`). It records every exchange.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use serde_json::{Value, json};

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A service account's key pair, made by `openssl` in a folder of its own.
pub struct ServiceAccount {
    pub client_email: String,
    private_key: PathBuf,
    public_key: PathBuf,
    dir: tempfile::TempDir,
}

impl ServiceAccount {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let private_key = dir.path().join("key.pem");
        let public_key = dir.path().join("key.pub.pem");
        run(Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&private_key));
        run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&private_key)
            .arg("-out")
            .arg(&public_key));
        Self {
            client_email: format!("{name}@test-project.iam.gserviceaccount.com"),
            private_key,
            public_key,
            dir,
        }
    }

    /// Writes the key file Google hands out, with `token_uri`; its path.
    pub fn key_file(&self, token_uri: &str) -> PathBuf {
        let path = self.dir.path().join("service-account.json");
        let key = json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "0123456789abcdef",
            "private_key": std::fs::read_to_string(&self.private_key).unwrap(),
            "client_email": self.client_email,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        });
        std::fs::write(&path, key.to_string()).unwrap();
        path
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One exchange as the endpoint received it.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub grant_type: String,
    pub header: Value,
    pub claims: Value,
    pub signature_valid: bool,
    /// The token handed out (empty when refused).
    pub access_token: String,
}

/// The endpoint, on a loopback port until dropped.
pub struct TokenEndpoint {
    /// `http://127.0.0.1:<port>/token`
    pub uri: String,
    pub exchanges: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    /// Starts the endpoint for `account`'s key.
    pub async fn start(account: &ServiceAccount) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/token", listener.local_addr().unwrap());
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let (recorded, public_key) = (exchanges.clone(), account.public_key.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (recorded, public_key) = (recorded.clone(), public_key.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (recorded, public_key) = (recorded.clone(), public_key.clone());
                        async move {
                            Ok::<_, Infallible>(exchange(request, &public_key, &recorded).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            uri,
            exchanges,
            task,
        }
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().unwrap().clone()
    }
}

async fn exchange(
    request: Request<hyper::body::Incoming>,
    public_key: &Path,
    recorded: &Mutex<Vec<Exchange>>,
) -> Response<Full<Bytes>> {
    let answer = |status: u16, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json; charset=utf-8")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    if request.method() != hyper::Method::POST || request.uri().path() != "/token" {
        return answer(404, json!({"error": "not_found"}));
    }
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let parts: Vec<&str> = assertion.split('.').collect();
    let decode = |part: &str| -> Value {
        URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    };
    let (header, claims, signature_valid) = match parts.as_slice() {
        [header, claims, signature] => (
            decode(header),
            decode(claims),
            verify(
                public_key,
                format!("{header}.{claims}").as_bytes(),
                &URL_SAFE_NO_PAD.decode(signature).unwrap_or_default(),
            ),
        ),
        _ => (Value::Null, Value::Null, false),
    };
    let granted = grant_type == JWT_BEARER && signature_valid;
    let access_token = if granted {
        format!("ya29.double-{}", uuid::Uuid::new_v4().simple())
    } else {
        String::new()
    };
    recorded.lock().unwrap().push(Exchange {
        grant_type,
        header,
        claims,
        signature_valid,
        access_token: access_token.clone(),
    });
    if !granted {
        return answer(
            400,
            json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        );
    }
    answer(
        200,
        json!({"access_token": access_token, "expires_in": 3599, "token_type": "Bearer"}),
    )
}

/// RS256: SHA-256 with RSA PKCS#1 v1.5, as `openssl dgst` checks it.
fn verify(public_key: &Path, signed: &[u8], signature: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (data, sig) = (dir.path().join("data"), dir.path().join("sig"));
    std::fs::write(&data, signed).unwrap();
    std::fs::write(&sig, signature).unwrap();
    Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(public_key)
        .arg("-signature")
        .arg(&sig)
        .arg(&data)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
