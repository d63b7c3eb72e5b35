//! The one Redis the scale-out deployment shares: the job queue and the
//! job events' pub/sub.

use std::time::Duration;

/// A Redis client and connection for `SUPASCALE_REDIS_URL`, with 5 s
/// timeouts (redis-rs' default 500 ms response timeout makes a push that
/// did happen look failed); errors never show the URL.
pub async fn connect(
    url: &crate::Secret,
) -> anyhow::Result<(redis::Client, redis::aio::ConnectionManager)> {
    let client = redis::Client::open(url.expose())
        .map_err(|_| anyhow::anyhow!("SUPASCALE_REDIS_URL is not a valid Redis URL"))?;
    let conn = client
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(Duration::from_secs(5)))
                .set_connection_timeout(Some(Duration::from_secs(5))),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "SUPASCALE_REDIS_URL: cannot connect to Redis: {}",
                crate::redact::redact_urls(&e.to_string())
            )
        })?;
    Ok((client, conn))
}
