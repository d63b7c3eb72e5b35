//! Typed helpers for the HTTP API, zero2prod style: `app.backups().get(id)`,
//! `app.as_key(&key).projects().list()`, `request.send_json()`. Each answers
//! `(status, JSON body)`, so a test still says which status it expects.

use std::future::Future;
use std::path::Path;

use reqwest::{Method, RequestBuilder};
use serde_json::Value;

use crate::{TestApp, status_and_body};

/// `send_json()` on any request: sends it and reads its status and JSON
/// body (for requests with a header or a body of their own).
pub trait SendJson {
    fn send_json(self) -> impl Future<Output = (u16, Value)> + Send;
}

impl SendJson for RequestBuilder {
    async fn send_json(self) -> (u16, Value) {
        status_and_body(self.send().await.expect("send request")).await
    }
}

/// Requests as one caller: the admin (`app.as_admin()`, what `app.get(..)`
/// and the resource helpers on [`TestApp`] use), another key
/// (`app.as_key(&key)`) or nobody (`app.anonymous()`).
#[derive(Clone, Copy)]
pub struct Caller<'a> {
    app: &'a TestApp,
    key: Option<&'a str>,
}

impl TestApp {
    pub fn as_admin(&self) -> Caller<'_> {
        Caller {
            app: self,
            key: Some(&self.admin_key),
        }
    }

    /// Requests sent with `X-API-Key: key`.
    pub fn as_key<'a>(&'a self, key: &'a str) -> Caller<'a> {
        Caller {
            app: self,
            key: Some(key),
        }
    }

    /// Requests sent without any key.
    pub fn anonymous(&self) -> Caller<'_> {
        Caller {
            app: self,
            key: None,
        }
    }

    pub fn backups(&self) -> Backups<'_> {
        self.as_admin().backups()
    }

    pub fn projects(&self) -> Projects<'_> {
        self.as_admin().projects()
    }

    pub fn jobs(&self) -> Jobs<'_> {
        self.as_admin().jobs()
    }

    pub fn api_keys(&self) -> ApiKeys<'_> {
        self.as_admin().api_keys()
    }

    pub fn imports<'a>(&'a self, project: &'a str) -> Imports<'a> {
        self.as_admin().imports(project)
    }
}

impl<'a> Caller<'a> {
    pub fn request(self, method: Method, path: &str) -> RequestBuilder {
        let request = self.app.client.request(method, self.app.url(path));
        match self.key {
            Some(key) => request.header("X-API-Key", key),
            None => request,
        }
    }

    pub fn get(self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    pub fn patch(self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    pub fn delete(self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }

    /// `GET path`: its status and JSON body.
    pub async fn get_json(self, path: &str) -> (u16, Value) {
        self.get(path).send_json().await
    }

    /// `POST path` with the JSON `body`: its status and JSON body.
    pub async fn post_json(self, path: &str, body: &Value) -> (u16, Value) {
        self.post(path).json(body).send_json().await
    }

    /// `PATCH path` with the JSON `body`: its status and JSON body.
    pub async fn patch_json(self, path: &str, body: &Value) -> (u16, Value) {
        self.patch(path).json(body).send_json().await
    }

    /// `DELETE path`: its status and JSON body.
    pub async fn delete_json(self, path: &str) -> (u16, Value) {
        self.delete(path).send_json().await
    }

    pub fn backups(self) -> Backups<'a> {
        Backups(self)
    }

    pub fn projects(self) -> Projects<'a> {
        Projects(self)
    }

    pub fn jobs(self) -> Jobs<'a> {
        Jobs(self)
    }

    pub fn api_keys(self) -> ApiKeys<'a> {
        ApiKeys(self)
    }

    pub fn imports(self, project: &'a str) -> Imports<'a> {
        Imports {
            caller: self,
            project,
        }
    }
}

/// `path` followed by `query` (`""`, or `"status=failed&limit=2"`).
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// `/api/v1/backups`.
#[derive(Clone, Copy)]
pub struct Backups<'a>(Caller<'a>);

impl Backups<'_> {
    /// `POST /backups`, waiting for the backup to end.
    pub async fn create(self, body: Value) -> (u16, Value) {
        self.0.post_json("/api/v1/backups", &body).await
    }

    /// `POST /backups?async=true`: answered once the job is queued.
    pub async fn start(self, body: Value) -> (u16, Value) {
        self.0.post_json("/api/v1/backups?async=true", &body).await
    }

    /// `GET /backups?query`.
    pub async fn list(self, query: &str) -> (u16, Value) {
        self.0.get_json(&with_query("/api/v1/backups", query)).await
    }

    pub async fn get(self, id: &str) -> (u16, Value) {
        self.0.get_json(&format!("/api/v1/backups/{id}")).await
    }

    pub async fn delete(self, id: &str) -> (u16, Value) {
        self.0.delete_json(&format!("/api/v1/backups/{id}")).await
    }

    /// `POST /backups/{id}/restore`, waiting for the restore to end.
    pub async fn restore(self, id: &str, body: Value) -> (u16, Value) {
        self.0
            .post_json(&format!("/api/v1/backups/{id}/restore"), &body)
            .await
    }

    /// `POST /backups/{id}/verify`, waiting for the verification.
    pub async fn verify(self, id: &str) -> (u16, Value) {
        self.0
            .post(&format!("/api/v1/backups/{id}/verify"))
            .send_json()
            .await
    }
}

/// `/api/v1/projects`.
#[derive(Clone, Copy)]
pub struct Projects<'a>(Caller<'a>);

impl Projects<'_> {
    /// `POST /projects` with `body` (see [`crate::register`] for a
    /// [`crate::Project`]).
    pub async fn register(self, body: Value) -> (u16, Value) {
        self.0.post_json("/api/v1/projects", &body).await
    }

    pub async fn list(self) -> (u16, Value) {
        self.0.get_json("/api/v1/projects").await
    }

    pub async fn get(self, id: &str) -> (u16, Value) {
        self.0.get_json(&format!("/api/v1/projects/{id}")).await
    }

    pub async fn patch(self, id: &str, body: Value) -> (u16, Value) {
        self.0
            .patch_json(&format!("/api/v1/projects/{id}"), &body)
            .await
    }

    pub async fn delete(self, id: &str) -> (u16, Value) {
        self.0.delete_json(&format!("/api/v1/projects/{id}")).await
    }
}

/// `/api/v1/jobs`.
#[derive(Clone, Copy)]
pub struct Jobs<'a>(Caller<'a>);

impl Jobs<'_> {
    /// `GET /jobs?query`.
    pub async fn list(self, query: &str) -> (u16, Value) {
        self.0.get_json(&with_query("/api/v1/jobs", query)).await
    }

    pub async fn get(self, id: &str) -> (u16, Value) {
        self.0.get_json(&format!("/api/v1/jobs/{id}")).await
    }

    pub async fn cancel(self, id: &str) -> (u16, Value) {
        self.0
            .post(&format!("/api/v1/jobs/{id}/cancel"))
            .send_json()
            .await
    }

    /// `GET /jobs/{id}/events`, to send (an SSE stream: read it with
    /// [`crate::read_events`]) or to add `Last-Event-ID` to.
    pub fn events(self, id: &str) -> RequestBuilder {
        self.0.get(&format!("/api/v1/jobs/{id}/events"))
    }
}

/// `/api/v1/api-keys`.
#[derive(Clone, Copy)]
pub struct ApiKeys<'a>(Caller<'a>);

impl ApiKeys<'_> {
    pub async fn create(self, body: Value) -> (u16, Value) {
        self.0.post_json("/api/v1/api-keys", &body).await
    }

    pub async fn list(self) -> (u16, Value) {
        self.0.get_json("/api/v1/api-keys").await
    }

    pub async fn revoke(self, id: &str) -> (u16, Value) {
        self.0.delete_json(&format!("/api/v1/api-keys/{id}")).await
    }
}

/// `/api/v1/projects/{project}/import/*`: `file` sent as the multipart
/// field `file` under its own name, as `curl -F "file=@<path>"` does.
#[derive(Clone, Copy)]
pub struct Imports<'a> {
    caller: Caller<'a>,
    project: &'a str,
}

/// A form with `file` as its field `file`.
pub fn file_form(file: &Path) -> reqwest::multipart::Form {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let part = reqwest::multipart::Part::bytes(std::fs::read(file).unwrap()).file_name(name);
    reqwest::multipart::Form::new().part("file", part)
}

impl Imports<'_> {
    /// The request importing `file` as `what` (`database`, `storage`,
    /// `functions`), `query` appended (`""`, `"async=true"`).
    pub fn request(self, what: &str, query: &str, file: &Path) -> RequestBuilder {
        let path = format!("/api/v1/projects/{}/import/{what}", self.project);
        self.caller
            .post(&with_query(&path, query))
            .multipart(file_form(file))
    }

    /// Imports `file` as `what`, waiting for the import to end.
    pub async fn upload(self, what: &str, file: &Path) -> (u16, Value) {
        self.request(what, "", file).send_json().await
    }

    pub async fn database(self, file: &Path) -> (u16, Value) {
        self.upload("database", file).await
    }

    pub async fn storage(self, file: &Path) -> (u16, Value) {
        self.upload("storage", file).await
    }

    pub async fn functions(self, file: &Path) -> (u16, Value) {
        self.upload("functions", file).await
    }
}
