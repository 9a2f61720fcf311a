//! Per-tenant API keys: `Authorization: Bearer <key>`.

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::store::Tenant;

/// The tenant that owns the request's API key.
pub struct AuthTenant(pub Tenant);

impl<S> FromRequestParts<S> for AuthTenant
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = AppState::from_ref(state);
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let tenant = state
            .store
            .tenant_for_key(&crate::keys::hash(key))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(AuthTenant(tenant))
    }
}
