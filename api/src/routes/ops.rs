//! Liveness and readiness, outside `/api/v1` and without authentication, for
//! load balancers and orchestrators.

use poem::web::{Data, Json};
use poem::{IntoResponse, Response, handler, http::StatusCode};
use serde_json::json;

use crate::state::AppState;

/// The process is up.
#[handler]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The control-plane database and the queue answer; 503 otherwise.
#[handler]
pub async fn readyz(state: Data<&AppState>) -> Response {
    let database = supascale_shared::control_plane::ping(&state.db)
        .await
        .map_err(|_| "control-plane database does not answer");
    let queue = match &state.redis {
        // The embedded queue lives in the control-plane database.
        None => database,
        Some(redis) => {
            let mut conn = redis.clone();
            let mut cmd = redis::cmd("PING");
            let ping = cmd.query_async::<String>(&mut conn);
            match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => Ok(()),
                _ => Err("Redis does not answer"),
            }
        }
    };
    match (database, queue) {
        (Ok(()), Ok(())) => {
            Json(json!({"status": "ready", "database": "ok", "queue": "ok"})).into_response()
        }
        (database, queue) => {
            let problems: Vec<&str> = [database.err(), queue.err()]
                .into_iter()
                .flatten()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let body =
                json!({"success": false, "error": format!("Not ready: {}", problems.join("; "))});
            Json(body)
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .into_response()
        }
    }
}
