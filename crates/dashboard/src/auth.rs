//! Optional bearer token for the page and the API.
//!
//! Accepted as `Authorization: Bearer <token>`, as `?token=<token>` (what a person pastes
//! into a browser), or as the `clickstream_token` cookie the page sets after a `?token=`
//! visit, so that the page's own requests and its event stream (browsers' `EventSource`
//! cannot send headers) need not carry the token in their URLs.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::AppState;

/// Name of the cookie carrying the token.
pub const COOKIE: &str = "clickstream_token";

/// Equal-time comparison so the token cannot be guessed byte by byte from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token the request presents, wherever it is.
fn presented(req: &Request) -> Vec<String> {
    let mut found = Vec::new();
    let headers = req.headers();
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            found.push(t.trim().to_string());
        }
    }
    for v in headers.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for kv in v.split(';') {
            if let Some((k, t)) = kv.trim().split_once('=') {
                if k == COOKIE {
                    found.push(t.to_string());
                }
            }
        }
    }
    if let Some(t) = query_token(req.uri().query()) {
        found.push(t);
    }
    found
}

/// `token` from a query string.
pub fn query_token(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// Lets the request through if no token is configured or it presents the right one.
pub async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = app.token.as_deref() else {
        return next.run(req).await;
    };
    if presented(&req)
        .iter()
        .any(|t| same(t.as_bytes(), expected.as_bytes()))
    {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_needs_equal_bytes() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn token_is_found_in_the_query() {
        assert_eq!(query_token(Some("a=1&token=s%20x")), Some("s x".into()));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }
}
