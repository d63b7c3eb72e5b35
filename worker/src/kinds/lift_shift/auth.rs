//! The `auth` component: what can be learned of the source's Auth
//! settings with a service-role key (`GET /auth/v1/settings`). Users and
//! their password hashes are rows of `auth.users` and come with
//! `database`; the OAuth providers' client secrets cannot be read at all,
//! so each enabled provider is a warning saying what to enter again.

use crate::reporter::Reporter;
use supascale_shared::jobs::JobError;
use supascale_shared::lift_shift::cloud_api::CloudApi;

/// Warns per enabled OAuth provider and about the JWT secret; returns the
/// enabled providers (email, phone and the OAuth ones) for the summary.
pub async fn detect(
    reporter: &Reporter,
    api: &CloudApi,
    with_database: bool,
) -> Result<Vec<String>, JobError> {
    reporter
        .step("auth", "Reading the source's auth providers", 0, 1)
        .await;
    let settings = api
        .auth_settings()
        .await
        .map_err(|e| super::source_api_error(&e))?;
    for provider in settings.oauth_providers() {
        let upper = provider.to_ascii_uppercase();
        reporter
            .warning(&format!(
                "auth: {provider} sign-in is enabled on the source, and its client secret cannot \
                 be exported: set GOTRUE_EXTERNAL_{upper}_ENABLED, _CLIENT_ID, _SECRET and \
                 _REDIRECT_URI in the project's .env, and add this project's \
                 /auth/v1/callback URL to the redirect URIs in {provider}'s dashboard"
            ))
            .await;
    }
    let users = if with_database {
        "their accounts and password hashes came with the database"
    } else {
        "their accounts come with the database component"
    };
    reporter
        .warning(&format!(
            "auth: this project signs sessions with its own JWT secret, not the source's: \
             signed-in users must sign in again ({users})"
        ))
        .await;
    reporter
        .step("auth", "Read the source's auth providers", 1, 1)
        .await;
    Ok(settings.enabled)
}
