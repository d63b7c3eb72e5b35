//! The HTTP side: hyper (HTTP/1.1, keep-alive) on the caller's runtime.
//!
//! Wire formats, from the sources (supabase/storage, supabase/auth):
//! - Storage errors: `{"statusCode": "<code as a string>", "error",
//!   "message", "code"}`, sent with HTTP 400 unless the error is a 500
//!   (`src/internal/errors/storage-error.ts` `userStatusCode`,
//!   `src/http/error-handler.ts`); unknown routes 404 (`not-found-handler.ts`).
//! - JWT refused: `AccessDenied`, `error: "Unauthorized"`, statusCode "403",
//!   HTTP 400, the verifier's message (`src/http/plugins/jwt.ts`,
//!   `src/internal/auth/jwt.ts`: jose's "Invalid Compact JWS" for a
//!   malformed token, "signature verification failed" for a foreign one).
//! - The API gateway in front of both (not in these repositories; the
//!   bodies users report from Supabase Cloud): `401 {"message":"Invalid API
//!   key","hint":...}` and `401 {"message":"No API key found in request",
//!   "hint":...}`.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::listing::{self, SortColumn, V1Row};
use super::{Entry, ListV2, Route, State, content, timestamp};

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

/// An early answer (an error response), boxed: responses are large.
type Early = Box<Response<Body>>;

/// The accept loop of one listening period.
pub(crate) struct Running {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(listener: TcpListener, state: Arc<State>) -> Self {
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state, rx));
        Self { shutdown, task }
    }

    /// Tells the loop to stop (port closed, connections cut) without waiting.
    pub fn signal(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Stops and waits until the port is closed and every connection gone.
    pub async fn stop(self) {
        self.signal();
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    connections.shutdown().await;
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
}

/// Storage's error body, sent with `http` (400 for everything but 500s).
fn storage_error(
    http: u16,
    status_code: &str,
    error: &str,
    message: &str,
    code: &str,
) -> Response<Body> {
    json_response(
        http,
        &json!({"statusCode": status_code, "error": error, "message": message, "code": code}),
    )
}

/// A request-validation failure (fastify's schema error as Storage renders
/// it: `error` is the JavaScript error's name).
fn invalid_request(message: &str) -> Response<Body> {
    storage_error(400, "400", "Error", message, "InvalidRequest")
}

fn gateway_error(message: &str, hint: &str) -> Response<Body> {
    json_response(401, &json!({"message": message, "hint": hint}))
}

/// What a path names.
enum Target {
    Buckets,
    List(String),
    ListV2(String),
    Download(String, String),
    Settings,
    StorageOther,
    AuthOther,
    Nowhere,
}

impl Target {
    fn route(&self) -> Route {
        match self {
            Target::Buckets => Route::Buckets,
            Target::List(_) => Route::List,
            Target::ListV2(_) => Route::ListV2,
            Target::Download(..) => Route::Download,
            Target::Settings => Route::Settings,
            _ => Route::Other,
        }
    }
}

fn decode(segment: &str) -> String {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8_lossy()
        .into_owned()
}

fn target(method: &Method, path: &str, list_v2: ListV2) -> Target {
    if let Some(rest) = path.strip_prefix("/storage/v1/") {
        let get = method == Method::GET;
        let post = method == Method::POST;
        if get && (rest == "bucket" || rest == "bucket/") {
            return Target::Buckets;
        }
        if let Some(bucket) = rest.strip_prefix("object/list/")
            && post
            && !bucket.is_empty()
            && !bucket.contains('/')
        {
            return Target::List(decode(bucket));
        }
        if let Some(bucket) = rest.strip_prefix("object/list-v2/")
            && post
            && !bucket.is_empty()
            && !bucket.contains('/')
            && list_v2 != ListV2::RouteMissing
        {
            return Target::ListV2(decode(bucket));
        }
        if let Some(rest) = rest.strip_prefix("object/authenticated/")
            && get
            && let Some((bucket, key)) = rest.split_once('/')
            && !bucket.is_empty()
            && !key.is_empty()
        {
            return Target::Download(decode(bucket), decode(key));
        }
        return Target::StorageOther;
    }
    if path == "/storage/v1" {
        return Target::StorageOther;
    }
    if let Some(rest) = path.strip_prefix("/auth/v1") {
        if method == Method::GET && (rest == "/settings" || rest == "/settings/") {
            return Target::Settings;
        }
        return Target::AuthOther;
    }
    Target::Nowhere
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let list_v2 = *state.list_v2.lock().unwrap();
    let target = target(req.method(), req.uri().path(), list_v2);
    let route = target.route();
    let nth = state.stats.count_request(route);
    if let Target::Download(bucket, key) = &target {
        state.stats.with_object(bucket, key, |d| d.requests += 1);
    }
    if matches!(target, Target::Nowhere) {
        // Kong's answer for a path no service is mounted on.
        return json_response(
            404,
            &json!({"message": "no Route matched with those values"}),
        );
    }

    // The gateway: a wrong `apikey` is refused everywhere; Auth needs one.
    let apikey = req
        .headers()
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| query_param(req.uri().query(), "apikey"));
    match apikey {
        Some(k) if k != state.key || state.faults.key_rejected() => {
            state.stats.count_rejected();
            return gateway_error(
                "Invalid API key",
                "Double check your Supabase `anon` or `service_role` API key.",
            );
        }
        None if matches!(target, Target::Settings | Target::AuthOther) => {
            state.stats.count_rejected();
            return gateway_error(
                "No API key found in request",
                "No `apikey` request header or url param was found.",
            );
        }
        _ => {}
    }

    let object = match &target {
        Target::Download(b, k) => Some((b.as_str(), k.as_str())),
        _ => None,
    };
    let decision = state.faults.decide(route, nth, object);
    if let Some(delay) = decision.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, retry_after)) = decision.status {
        return fault_response(status, retry_after);
    }

    match target {
        Target::Buckets => buckets(&state, &req),
        Target::List(bucket) => list(&state, req, &bucket).await,
        Target::ListV2(bucket) => list_v2_route(&state, req, &bucket, list_v2).await,
        Target::Download(bucket, key) => {
            download(
                &state,
                &req,
                &bucket,
                &key,
                decision.trickle,
                decision.truncate,
            )
            .await
        }
        Target::Settings => settings(&state),
        Target::StorageOther => {
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            let inner = path.strip_prefix("/storage/v1").unwrap_or(path);
            storage_error(
                404,
                "404",
                "Not Found",
                &format!("Route {}:{inner} not found", req.method()),
                "InvalidRequest",
            )
        }
        // Go's http.NotFound, which Auth's router (chi) answers with.
        Target::AuthOther | Target::Nowhere => {
            let mut r = Response::new(full("404 page not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        }
    }
}

/// An injected status: 429 and 500 in Storage's shape (its database
/// slow-down and its catch-all, `src/http/error-handler.ts`), 502/503/504
/// as the gateway (Kong's stock messages).
fn fault_response(status: u16, retry_after: Option<u64>) -> Response<Body> {
    let mut response = match status {
        429 => storage_error(
            429,
            "429",
            "too_many_connections",
            "Too many connections issued to the database",
            "SlowDown",
        ),
        500 => storage_error(
            500,
            "500",
            "Internal",
            "Internal Server Error",
            "InternalError",
        ),
        502 => json_response(
            502,
            &json!({"message": "An invalid response was received from the upstream server"}),
        ),
        503 => json_response(
            503,
            &json!({"message": "failure to get a peer from the ring-balancer"}),
        ),
        504 => json_response(
            504,
            &json!({"message": "The upstream server is timing out"}),
        ),
        other => json_response(other, &json!({"message": format!("injected {other}")})),
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Storage's JWT check (`Authorization: Bearer <service role key>`).
fn check_jwt(state: &State, req: &Request<Incoming>) -> Result<(), Early> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = match header.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => header[7..].trim_start(),
        _ => header,
    };
    if token == state.key && !state.faults.key_rejected() {
        return Ok(());
    }
    state.stats.count_rejected();
    let message = if token.split('.').count() == 3 {
        "signature verification failed"
    } else {
        "Invalid Compact JWS"
    };
    Err(Box::new(storage_error(
        400,
        "403",
        "Unauthorized",
        message,
        "AccessDenied",
    )))
}

/// `GET /bucket` (`src/http/routes/bucket/getAllBuckets.ts`): every
/// bucket in `bucketSchema`'s fields; a null owner comes out as `""`
/// (fast-json-stringify's rendering of null for a `string` property).
fn buckets(state: &State, req: &Request<Incoming>) -> Response<Body> {
    if let Err(r) = check_jwt(state, req) {
        return *r;
    }
    let query = req.uri().query();
    let store = state.store.read().unwrap();
    let mut list: Vec<_> = store.buckets.iter().collect();
    if let Some(search) = query_param(query, "search").filter(|s| !s.is_empty()) {
        let search = search.to_lowercase();
        list.retain(|b| b.name.to_lowercase().contains(&search));
    }
    if let Some(column) = query_param(query, "sortColumn") {
        list.sort_by(|a, b| match column.as_str() {
            "name" => a.name.cmp(&b.name),
            "created_at" => a.created_at.cmp(&b.created_at),
            "updated_at" => a.updated_at.cmp(&b.updated_at),
            _ => a.id.cmp(&b.id),
        });
        if query_param(query, "sortOrder").as_deref() == Some("desc") {
            list.reverse();
        }
    }
    let offset = query_param(query, "offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0usize);
    let limit = query_param(query, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let body: Vec<Value> = list
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|b| {
            json!({
                "id": b.id,
                "name": b.name,
                "owner": b.owner.map(|o| o.to_string()).unwrap_or_default(),
                "public": b.public,
                "type": "STANDARD",
                "file_size_limit": b.file_size_limit,
                "allowed_mime_types": b.allowed_mime_types,
                "created_at": timestamp(b.created_at),
                "updated_at": timestamp(b.updated_at),
            })
        })
        .collect();
    json_response(200, &Value::Array(body))
}

/// Reads a JSON body as fastify does (`FST_ERR_CTP_*` as Storage renders them).
async fn json_body(req: Request<Incoming>) -> Result<Value, Early> {
    let bytes = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Box::new(invalid_request("Request body could not be read"))),
    };
    if bytes.is_empty() {
        return Err(Box::new(storage_error(
            400,
            "400",
            "FastifyError",
            "Body cannot be empty when content-type is set to 'application/json'",
            "InvalidRequest",
        )));
    }
    serde_json::from_slice(&bytes).map_err(|_| {
        Box::new(storage_error(
            400,
            "400",
            "FastifyError",
            "Body is not valid JSON but content-type is set to 'application/json'",
            "InvalidRequest",
        ))
    })
}

/// An optional integer property of at least `min` (errors: the schema
/// validator's message).
fn int_field(body: &Value, name: &str, min: i64) -> Result<Option<i64>, String> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let n = v
                .as_i64()
                .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| format!("body/{name} must be integer"))?;
            if n < min {
                return Err(format!("body/{name} must be >= {min}"));
            }
            Ok(Some(n))
        }
    }
}

fn str_field<'a>(body: &'a Value, name: &str) -> Result<Option<&'a str>, String> {
    match body.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("body/{name} must be string")),
    }
}

/// `sortBy`: (column, order), validated against the route's enum.
fn sort_by(body: &Value, columns: &[&str]) -> Result<(Option<String>, Option<String>), String> {
    let Some(sort) = body.get("sortBy") else {
        return Ok((None, None));
    };
    let Some(column) = sort.get("column").and_then(Value::as_str) else {
        return Err("body/sortBy must have required property 'column'".into());
    };
    if !columns.contains(&column) {
        return Err("body/sortBy/column must be equal to one of the allowed values".into());
    }
    let order = match sort.get("order").map(Value::as_str) {
        None => None,
        Some(Some(o @ ("asc" | "desc"))) => Some(o.to_string()),
        Some(_) => {
            return Err("body/sortBy/order must be equal to one of the allowed values".into());
        }
    };
    Ok((Some(column.to_string()), order))
}

/// Computes the MD5s a response needs off the runtime's threads.
async fn ensure_md5(entries: Vec<Arc<Entry>>) {
    if entries.iter().all(|e| e.has_md5()) {
        return;
    }
    tokio::task::spawn_blocking(move || {
        for e in entries {
            e.md5();
        }
    })
    .await
    .unwrap();
}

fn file_json(entry: &Entry) -> (Value, Value, Value, Value, Value) {
    let o = &entry.object;
    (
        json!(entry.id.to_string()),
        json!(timestamp(o.updated_at)),
        json!(timestamp(o.created_at)),
        json!(timestamp(o.last_accessed_at)),
        entry.metadata(),
    )
}

/// `POST /object/list/<bucket>` (`src/http/routes/object/listObjects.ts`,
/// `storage.search`): an array of `{name, id, updated_at, created_at,
/// last_accessed_at, metadata}`, folders with every field but the name null.
async fn list(state: &State, req: Request<Incoming>, bucket: &str) -> Response<Body> {
    let jwt = check_jwt(state, &req);
    let body = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let parsed = (|| {
        if !body.is_object() {
            return Err("body must be object".to_string());
        }
        let prefix = str_field(&body, "prefix")?
            .ok_or_else(|| "body must have required property 'prefix'".to_string())?
            .to_string();
        let limit = int_field(&body, "limit", 1)?;
        let offset = int_field(&body, "offset", 0)?;
        let search = str_field(&body, "search")?.unwrap_or("").to_string();
        let (column, order) = sort_by(
            &body,
            &["name", "updated_at", "created_at", "last_accessed_at"],
        )?;
        Ok((prefix, limit, offset, search, column, order))
    })();
    let (prefix, limit, offset, search, column, order) = match parsed {
        Ok(p) => p,
        Err(message) => return invalid_request(&message),
    };
    if let Err(r) = jwt {
        return *r;
    }
    let column = match column.as_deref() {
        Some("updated_at") => SortColumn::UpdatedAt,
        Some("created_at") => SortColumn::CreatedAt,
        Some("last_accessed_at") => SortColumn::LastAccessedAt,
        _ => SortColumn::Name,
    };
    let rows = {
        let store = state.store.read().unwrap();
        match store.objects.get(bucket) {
            Some(objects) => listing::list_v1(
                objects,
                &prefix,
                &search,
                limit.unwrap_or(100) as usize,
                offset.unwrap_or(0) as usize,
                column,
                order.as_deref() == Some("desc"),
            ),
            None => Vec::new(),
        }
    };
    ensure_md5(
        rows.iter()
            .filter_map(|r| match r {
                V1Row::File(_, e) => Some(e.clone()),
                V1Row::Folder(_) => None,
            })
            .collect(),
    )
    .await;
    let body: Vec<Value> = rows
        .iter()
        .map(|row| match row {
            V1Row::Folder(name) => json!({
                "name": name, "id": null, "updated_at": null, "created_at": null,
                "last_accessed_at": null, "metadata": null,
            }),
            V1Row::File(name, e) => {
                let (id, updated, created, accessed, metadata) = file_json(e);
                json!({
                    "name": name, "id": id, "updated_at": updated, "created_at": created,
                    "last_accessed_at": accessed, "metadata": metadata,
                })
            }
        })
        .collect();
    json_response(200, &Value::Array(body))
}

/// `POST /object/list-v2/<bucket>` (`src/http/routes/object/listObjectsV2.ts`,
/// `ObjectStorage.listObjectsV2` in `src/storage/object.ts`):
/// `{hasNext, nextCursor?, nextCursorKey?, folders, objects}`.
async fn list_v2_route(
    state: &State,
    req: Request<Incoming>,
    bucket: &str,
    mode: ListV2,
) -> Response<Body> {
    let jwt = check_jwt(state, &req);
    let body = match json_body(req).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let parsed = (|| {
        if !body.is_object() {
            return Err("body must be object".to_string());
        }
        let prefix = str_field(&body, "prefix")?.unwrap_or("").to_string();
        let limit = int_field(&body, "limit", 1)?;
        let cursor = str_field(&body, "cursor")?.map(str::to_string);
        let delimiter = match body.get("with_delimiter") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err("body/with_delimiter must be boolean".to_string()),
        };
        let (column, order) = sort_by(&body, &["name", "updated_at", "created_at"])?;
        Ok((prefix, limit, cursor, delimiter, column, order))
    })();
    let (prefix, limit, cursor, delimiter, column, order) = match parsed {
        Ok(p) => p,
        Err(message) => return invalid_request(&message),
    };
    if let Err(r) = jwt {
        return *r;
    }
    if mode == ListV2::NotAvailableForTenant {
        return storage_error(
            400,
            "400",
            "FeatureNotEnabled",
            "This feature is not available for your tenant",
            "FeatureNotEnabled",
        );
    }
    let limit = (limit.unwrap_or(1000) as usize).min(1000);
    let cursor = match cursor.filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => match listing::decode_cursor(&token) {
            Some(c) => Some(c),
            None => {
                return storage_error(
                    400,
                    "400",
                    "InvalidParameter",
                    "Invalid Parameter continuation token",
                    "InvalidParameter",
                );
            }
        },
    };
    let order = cursor.as_ref().map(|c| c.order.clone()).or(order);
    let column = cursor.as_ref().and_then(|c| c.column.clone()).or(column);
    let desc = order.as_deref() == Some("desc");
    let after = cursor
        .as_ref()
        .map(|c| c.start_after.as_str())
        .filter(|s| !s.is_empty());
    let rows = {
        let store = state.store.read().unwrap();
        match store.objects.get(bucket) {
            None => Vec::new(),
            Some(objects) if delimiter => {
                listing::list_v2_delimited(objects, &prefix, after, desc, limit + 1)
            }
            Some(objects) => listing::list_v2_flat(objects, &prefix, after, desc, limit + 1),
        }
    };
    let has_next = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    ensure_md5(rows.iter().filter_map(|r| r.entry.clone()).collect()).await;
    // `search_v2`'s `key` column: the name's part at the prefix's depth.
    let levels = if prefix.is_empty() {
        1
    } else {
        prefix.split('/').count()
    };
    let key_of = |name: &str| name.split('/').nth(levels - 1).unwrap_or("").to_string();
    let mut folders = Vec::new();
    let mut objects = Vec::new();
    for row in rows {
        match &row.entry {
            None => {
                let mut name = row.name.clone();
                if !name.ends_with('/') {
                    name.push('/');
                }
                folders.push(json!({
                    "key": key_of(&row.name), "name": name, "id": null, "updated_at": null,
                    "created_at": null, "last_accessed_at": null, "metadata": null,
                }));
            }
            Some(e) => {
                let (id, updated, created, accessed, metadata) = file_json(e);
                let mut object = json!({
                    "id": id, "name": row.name, "metadata": metadata, "updated_at": updated,
                    "created_at": created, "last_accessed_at": accessed,
                });
                if delimiter {
                    object["key"] = json!(key_of(&row.name));
                }
                objects.push(object);
            }
        }
    }
    let mut body = json!({"hasNext": has_next, "folders": folders, "objects": objects});
    if has_next && let Some(last) = rows.last() {
        body["nextCursor"] = json!(listing::encode_cursor(
            &last.name,
            order.as_deref(),
            column.as_deref()
        ));
        body["nextCursorKey"] = json!(last.name);
    }
    json_response(200, &body)
}

/// `GET /auth/v1/settings` (supabase/auth `internal/api/settings.go`).
fn settings(state: &State) -> Response<Body> {
    let s = state.auth.lock().unwrap().clone();
    let external: serde_json::Map<String, Value> = super::AUTH_PROVIDERS
        .iter()
        .map(|p| {
            (
                p.to_string(),
                json!(s.external.get(*p).copied().unwrap_or(false)),
            )
        })
        .collect();
    json_response(
        200,
        &json!({
            "external": external,
            "disable_signup": s.disable_signup,
            "mailer_autoconfirm": s.mailer_autoconfirm,
            "phone_autoconfirm": s.phone_autoconfirm,
            "sms_provider": s.sms_provider,
            "saml_enabled": s.saml_enabled,
            "saml_private_key_next_configured": s.saml_private_key_next_configured,
            "passkeys_enabled": s.passkeys_enabled,
        }),
    )
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (supabase/storage
/// `src/storage/range.ts`): the inclusive range, or `None` when invalid.
fn parse_range(header: &str, size: u64) -> Option<(u64, u64)> {
    let spec = header.strip_prefix("bytes=")?;
    let (start, end) = spec.split_once('-')?;
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if !digits(start) || !digits(end) || size == 0 || (start.is_empty() && end.is_empty()) {
        return None;
    }
    if start.is_empty() {
        let n: u64 = end.parse().ok()?;
        if n == 0 {
            return None;
        }
        return Some((size.saturating_sub(n), size - 1));
    }
    let from: u64 = start.parse().ok()?;
    let to: u64 = if end.is_empty() {
        size - 1
    } else {
        end.parse().ok()?
    };
    if to < from || from >= size {
        return None;
    }
    Some((from, to.min(size - 1)))
}

/// `GET /object/authenticated/<bucket>/<key>` (`src/http/routes/object/
/// getObject.ts`, headers from `src/storage/renderer/renderer.ts`).
async fn download(
    state: &Arc<State>,
    req: &Request<Incoming>,
    bucket: &str,
    key: &str,
    trickle: Option<(usize, Duration)>,
    truncate: Option<u64>,
) -> Response<Body> {
    // The route's header schema wants an Authorization header at all.
    if !req.headers().contains_key(header::AUTHORIZATION) {
        return invalid_request("headers must have required property 'authorization'");
    }
    if let Err(r) = check_jwt(state, req) {
        return *r;
    }
    let (bucket_exists, entry) = {
        let store = state.store.read().unwrap();
        (
            store.buckets.iter().any(|b| b.id == bucket),
            store.entry(bucket, key),
        )
    };
    if !bucket_exists {
        return storage_error(
            400,
            "404",
            "Bucket not found",
            "Bucket not found",
            "NoSuchBucket",
        );
    }
    let Some(entry) = entry else {
        return storage_error(400, "404", "not_found", "Object not found", "NoSuchKey");
    };
    ensure_md5(vec![entry.clone()]).await;
    let size = entry.object.size;
    let etag = entry.etag();
    let range = match req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
    {
        None => None,
        Some(r) => match parse_range(r, size) {
            Some(range) => Some(range),
            None => {
                return storage_error(
                    416,
                    "416",
                    "invalid_range",
                    "invalid range provided",
                    "InvalidRange",
                );
            }
        },
    };
    let mime = if entry.object.mimetype.contains("text/html") {
        "text/plain"
    } else {
        entry.object.mimetype.as_str()
    };
    let not_modified = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str());
    let (status, start, end) = match (not_modified, range) {
        (true, _) => (304, 0, 0),
        (false, Some((a, b))) => (206, a, b + 1),
        (false, None) => (200, 0, size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, mime)
        .header(header::ETAG, &etag)
        .header("X-Robots-Tag", "none")
        .header(
            header::LAST_MODIFIED,
            entry
                .object
                .updated_at
                .format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string(),
        )
        .header(header::CONTENT_LENGTH, end - start);
    if !entry.object.cache_control.is_empty() {
        builder = builder.header(header::CACHE_CONTROL, &entry.object.cache_control);
    }
    if status == 206 {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    if status == 304 {
        return builder.body(full(Bytes::new())).unwrap();
    }
    state.stats.with_object(bucket, key, |d| d.started += 1);
    if start == end {
        state.stats.sent(bucket, key, 0, true);
        return builder.body(full(Bytes::new())).unwrap();
    }
    state.stats.body_started();
    let body = DownloadBody {
        state: state.clone(),
        bucket: bucket.to_string(),
        key: key.to_string(),
        content: entry.content,
        pos: start,
        end,
        stop_at: truncate.map(|t| start.saturating_add(t)),
        cut: None,
        trickle: trickle.map(|(chunk, interval)| Trickle {
            chunk,
            interval,
            wait: None,
        }),
    };
    builder.body(body.boxed()).unwrap()
}

/// A download's bytes, generated chunk by chunk as the connection takes them.
struct DownloadBody {
    state: Arc<State>,
    bucket: String,
    key: String,
    content: u64,
    pos: u64,
    end: u64,
    /// Where a truncation fault cuts the connection.
    stop_at: Option<u64>,
    cut: Option<Pin<Box<tokio::time::Sleep>>>,
    trickle: Option<Trickle>,
}

/// A trickle fault's pace and the wait before its next chunk.
struct Trickle {
    chunk: usize,
    interval: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

const CHUNK: usize = 64 * 1024;

impl hyper::body::Body for DownloadBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.pos >= this.end {
            return Poll::Ready(None);
        }
        if this.stop_at.is_some_and(|s| this.pos >= s) {
            // Let the connection flush what was sent before cutting it.
            let timer = this
                .cut
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(20))));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(std::io::Error::other(
                "the cloud double cut the body (truncate fault)",
            ))));
        }
        let mut chunk = CHUNK;
        if let Some(t) = this.trickle.as_mut() {
            let interval = t.interval;
            let timer = t
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            t.wait = None;
            chunk = t.chunk;
        }
        let mut n = (this.end - this.pos).min(chunk as u64);
        if let Some(s) = this.stop_at {
            n = n.min(s - this.pos);
        }
        let mut buf = BytesMut::zeroed(n as usize);
        content::fill(this.content, this.pos, &mut buf);
        this.pos += n;
        this.state
            .stats
            .sent(&this.bucket, &this.key, n, this.pos >= this.end);
        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.pos)
    }
}

impl Drop for DownloadBody {
    fn drop(&mut self) {
        self.state.stats.body_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_as_storage_reads_them() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-4", 100), None);
        assert_eq!(parse_range("bytes=-", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
