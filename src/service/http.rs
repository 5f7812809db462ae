//! The HTTP layer: routes, bearer-token check, body limit, JSON parsing and error mapping. The
//! state machine is in `core.rs`; nothing here changes state except through it.
//!
//! Every write is authenticated before its body is read, so an unauthenticated client cannot make
//! the service buffer a large body. Every error is a JSON `{"error": "..."}` with a 4xx/5xx
//! status, including unknown routes and wrong methods.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::{ErrorBody, HistoryQuery, RegisterRequest, UpdateRequest};
use super::core::{ApiError, ServiceCore};
use crate::config::Secret;

/// The OpenAPI description served at `GET /v1/openapi.yaml` (the committed `docs/openapi.yaml`).
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// What every handler shares.
pub(crate) struct App {
    pub(crate) core: Arc<ServiceCore>,
    pub(crate) token: Secret,
    pub(crate) max_body: usize,
}

type Shared = Arc<App>;

/// One route: its method, its path and the handler, in one place, so that the router and the
/// published route list ([`routes`]) cannot disagree.
struct Endpoint {
    method: Method,
    path: &'static str,
    handler: MethodRouter<Shared>,
}

fn endpoint<H, T>(method: Method, path: &'static str, handler: H) -> Endpoint
where
    H: Handler<T, Shared>,
    T: 'static,
{
    let filter = if method == Method::POST {
        MethodFilter::POST
    } else {
        MethodFilter::GET
    };
    Endpoint {
        method,
        path,
        handler: on(filter, handler),
    }
}

fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint(Method::GET, "/v1/health", health),
        endpoint(Method::GET, "/v1/openapi.yaml", openapi),
        endpoint(Method::GET, "/v1/datasets", get_datasets),
        endpoint(Method::POST, "/v1/datasets", post_datasets),
        endpoint(Method::GET, "/v1/mixture", get_mixture),
        endpoint(Method::POST, "/v1/updates", post_updates),
        endpoint(Method::GET, "/v1/history", get_history),
    ]
}

/// Every route the service answers, as (method, path): the list `tests/service.rs` checks against
/// `docs/openapi.yaml`.
pub fn routes() -> Vec<(Method, &'static str)> {
    endpoints()
        .into_iter()
        .map(|e| (e.method, e.path))
        .collect()
}

pub(crate) fn router(app: Shared) -> Router {
    let mut router = Router::new();
    for e in endpoints() {
        // Two endpoints on one path (GET and POST /v1/datasets) merge into one method router.
        router = router.route(e.path, e.handler);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let unauthorized = matches!(self, ApiError::Unauthorized(_));
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if unauthorized {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"mos-runtime\""),
            );
        }
        resp
    }
}

fn ok<T: Serialize>(status: StatusCode, value: T) -> Response {
    (status, Json(value)).into_response()
}

/// Compares in time independent of where the first difference is, so response timing does not
/// reveal a token prefix.
fn same_token(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing `Authorization: Bearer <token>` header: writes need the service token".into(),
        ));
    };
    let given = value.as_bytes().strip_prefix(b"Bearer ").ok_or_else(|| {
        ApiError::Unauthorized("Authorization header: expected `Bearer <token>`".into())
    })?;
    if same_token(given, app.token.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(
            "Authorization header: wrong bearer token".into(),
        ))
    }
}

/// Authenticates, then reads at most `max_body` bytes and parses them as `T`.
async fn read_json<T: DeserializeOwned>(app: &App, req: Request) -> Result<T, ApiError> {
    authorize(app, req.headers())?;
    let too_large = || {
        ApiError::TooLarge(format!(
            "request body larger than service.max_body_bytes = {} bytes",
            app.max_body
        ))
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > app.max_body as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(req.into_body(), app.max_body)
        .await
        .map_err(|e| {
            let inner = e.into_inner();
            if inner.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                ApiError::BadRequest(format!("could not read the request body: {inner}"))
            }
        })?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::BadRequest(format!("malformed JSON body: {inner}"))
        } else {
            ApiError::BadRequest(format!("malformed JSON body at `{path}`: {inner}"))
        }
    })
}

/// Runs a state change off the async workers: an update is a few hundred Adam steps per dataset
/// set, which must not stall the reads served on the same workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("update task failed: {e}")))?
}

async fn health(State(app): State<Shared>) -> Response {
    ok(StatusCode::OK, app.core.health())
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        Body::from(OPENAPI_YAML),
    )
        .into_response()
}

async fn get_datasets(State(app): State<Shared>) -> Response {
    match app.core.registration() {
        Ok(r) => ok(StatusCode::OK, r),
        Err(e) => e.into_response(),
    }
}

async fn post_datasets(State(app): State<Shared>, req: Request) -> Response {
    let result = async {
        let body: RegisterRequest = read_json(&app, req).await?;
        let core = app.core.clone();
        blocking(move || core.register(&body)).await
    }
    .await;
    match result {
        Ok(snap) => ok(StatusCode::CREATED, &*snap),
        Err(e) => e.into_response(),
    }
}

async fn get_mixture(State(app): State<Shared>) -> Response {
    match app.core.mixture() {
        Some(snap) => ok(StatusCode::OK, &*snap),
        None => ApiError::Conflict("no datasets registered yet: POST /v1/datasets first".into())
            .into_response(),
    }
}

async fn post_updates(State(app): State<Shared>, req: Request) -> Response {
    let result = async {
        let body: UpdateRequest = read_json(&app, req).await?;
        let core = app.core.clone();
        blocking(move || core.update(&body)).await
    }
    .await;
    match result {
        Ok(record) => ok(StatusCode::OK, record),
        Err(e) => e.into_response(),
    }
}

async fn get_history(
    State(app): State<Shared>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return ApiError::BadRequest(format!("query string: {}", e.body_text())).into_response()
        }
    };
    match app.core.history(q.since, q.limit) {
        Ok(h) => ok(StatusCode::OK, h),
        Err(e) => e.into_response(),
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::NotFound(format!(
        "no route {method} {}; see GET /v1/openapi.yaml",
        uri.path()
    ))
    .into_response()
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::MethodNotAllowed(format!(
        "{} does not accept {method}; see GET /v1/openapi.yaml",
        uri.path()
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn token_comparison() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"", b"abc"));
    }
}
