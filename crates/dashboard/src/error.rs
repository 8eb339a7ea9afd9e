//! API errors and how they map to HTTP responses (always a JSON body `{"error": "..."}`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use thiserror::Error;

/// What can go wrong answering a dashboard request.
#[derive(Debug, Error)]
pub enum ApiError {
    /// A query parameter is missing, malformed or out of range (400).
    #[error("{0}")]
    BadRequest(String),
    /// The bearer token is missing or wrong (401).
    #[error("a valid token is required (Authorization: Bearer <token>; people open /?token=<token> once)")]
    Unauthorized,
    /// A token in the URL of an API call (401): URLs end up in logs.
    #[error("send the token in the Authorization header (Bearer), not in the URL")]
    TokenInUrl,
    /// PostgreSQL is unreachable or a query failed (503: the dashboard itself is fine).
    /// The detail is logged, not sent to clients.
    #[error("database unavailable")]
    Database(String),
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        ApiError::Database(clickstream_db::pg_detail(&e))
    }
}

impl From<clickstream_db::DbError> for ApiError {
    fn from(e: clickstream_db::DbError) -> Self {
        ApiError::Database(e.to_string())
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::TokenInUrl => StatusCode::UNAUTHORIZED,
            ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Database(e) = &self {
            tracing::warn!(error = %e, "dashboard query failed");
        }
        let status = self.status();
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut resp = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}
