//! Optional token for the page and the API.
//!
//! API clients send `Authorization: Bearer <token>`. A person opens the page once as
//! `/?token=<token>`: the token is checked, exchanged for an `HttpOnly`, `SameSite=Strict`
//! cookie (`Secure` when the request came over HTTPS through a proxy that says so), and the
//! browser is redirected to `/`, so the token leaves the address bar and history at once.
//! The page's own requests and its event stream (`EventSource` cannot send headers) carry
//! the cookie. A token in the query string of any other URL is refused: URLs end up in
//! logs and `Referer` headers.
//!
//! Tokens are compared in constant time (`subtle`), and an address that keeps presenting
//! wrong tokens is answered 429 for the rest of the minute.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::AppState;

/// Name of the cookie carrying the token.
pub const COOKIE: &str = "clickstream_token";

/// Wrong tokens one address may present per window before it gets 429.
pub const MAX_FAILURES: u32 = 20;
/// The failure-counting window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (older windows are dropped first when full).
const MAX_TRACKED: usize = 10_000;

fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The token in the `Authorization` header or the cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, t)| t.to_string())
}

/// `token` from a query string.
pub fn query_token(query: Option<&str>) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query?).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// Whether the original request was HTTPS, as a proxy in front says. Trusting any sender
/// is safe here: the answer only adds `Secure` to the cookie.
fn forwarded_https(headers: &HeaderMap) -> bool {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    proto || forwarded
}

/// Counts wrong tokens per client address.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<IpAddr, (Instant, u32)>>);

impl Failures {
    /// Seconds until `ip` may try again, if it is over the limit.
    fn blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = *map.get(&ip)?;
        let left = FAILURE_WINDOW
            .checked_sub(now.duration_since(start))
            .filter(|l| !l.is_zero())?;
        (n >= MAX_FAILURES).then(|| left.as_secs().max(1))
    }

    fn record(&self, ip: IpAddr, now: Instant) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= FAILURE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

fn client_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

fn too_many(retry_after: u64) -> Response {
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        axum::Json(serde_json::json!({ "error": "too many wrong tokens; try again later" })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Lets the request through if no token is configured or it presents the right one;
/// exchanges a right `/?token=` for the cookie.
pub async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = app.token.as_deref() else {
        return next.run(req).await;
    };
    let ip = client_ip(&req);
    let now = Instant::now();
    if let Some(wait) = app.failures.blocked(ip, now) {
        return too_many(wait);
    }
    if presented(req.headers()).is_some_and(|t| same(&t, expected)) {
        return next.run(req).await;
    }
    let in_query = query_token(req.uri().query());
    if req.uri().path() == "/" {
        if let Some(t) = &in_query {
            if same(t, expected) {
                let secure = if forwarded_https(req.headers()) {
                    "; Secure"
                } else {
                    ""
                };
                let cookie = format!("{COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict{secure}");
                let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    resp.headers_mut().insert(header::SET_COOKIE, v);
                }
                resp.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return resp;
            }
        }
    }
    app.failures.record(ip, now);
    if in_query.is_some() && req.uri().path() != "/" {
        return ApiError::TokenInUrl.into_response();
    }
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_needs_equal_bytes() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
        assert!(!same("", "a"));
    }

    #[test]
    fn token_is_found_in_the_query() {
        assert_eq!(query_token(Some("a=1&token=s%20x")), Some("s x".into()));
        assert_eq!(query_token(Some("a=1")), None);
        assert_eq!(query_token(None), None);
    }

    #[test]
    fn an_address_with_too_many_wrong_tokens_waits_for_the_window() {
        let f = Failures::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(f.blocked(ip, t0), None);
            f.record(ip, t0);
        }
        assert!(f
            .blocked(ip, t0 + Duration::from_secs(1))
            .is_some_and(|s| s <= 60));
        assert_eq!(f.blocked(other, t0), None);
        assert_eq!(f.blocked(ip, t0 + FAILURE_WINDOW), None);
    }

    #[test]
    fn https_is_read_from_the_proxy_headers() {
        let mut h = HeaderMap::new();
        assert!(!forwarded_https(&h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(forwarded_https(&h));
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(forwarded_https(&h));
    }
}
