//! The demo shop (`clickstream collect --demo-shop`): a few static pages (catalog,
//! product, cart, checkout) that use `tracker.js`, with the catalog read from
//! `analytics.dim_product` (written by `clickstream generate`). It exists so a person can
//! click through a shop and watch the dashboard react, and so the browser test can.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::http::App;

/// How long the catalog is cached.
const CATALOG_TTL: Duration = Duration::from_secs(60);
/// Products shown (the most popular first).
const CATALOG_SIZE: i64 = 48;

/// One product as the shop's pages see it.
#[derive(Debug, Clone, Serialize)]
pub struct ShopProduct {
    /// Id (`P00042`).
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Category.
    pub category: String,
    /// Unit price in cents (the pages compute amounts in cents, like the pipeline).
    pub price_cents: i64,
}

/// The shop's state: where the catalog comes from and the write key its pages use.
pub struct Shop {
    database_url: String,
    write_key: String,
    cache: Mutex<Option<(Instant, Arc<Vec<ShopProduct>>)>>,
}

impl Shop {
    /// A shop reading its catalog from `database_url`; its pages send with `write_key`.
    pub fn new(database_url: String, write_key: String) -> Self {
        Shop {
            database_url,
            write_key,
            cache: Mutex::new(None),
        }
    }

    async fn catalog(&self) -> Result<Arc<Vec<ShopProduct>>, String> {
        let mut slot = self.cache.lock().await;
        if let Some((at, c)) = slot.as_ref() {
            if at.elapsed() < CATALOG_TTL {
                return Ok(c.clone());
            }
        }
        let client = clickstream_db::connect(&self.database_url)
            .await
            .map_err(|e| format!("catalog database: {e}"))?;
        let rows = client
            .query(
                "SELECT product_id, name, category, (price * 100)::bigint
                   FROM analytics.dim_product ORDER BY popularity_rank, product_id LIMIT $1",
                &[&CATALOG_SIZE],
            )
            .await
            .map_err(|e| format!("reading analytics.dim_product: {e}"))?;
        let products: Arc<Vec<ShopProduct>> = Arc::new(
            rows.iter()
                .map(|r| ShopProduct {
                    product_id: r.get(0),
                    name: r.get(1),
                    category: r.get(2),
                    price_cents: r.get(3),
                })
                .collect(),
        );
        *slot = Some((Instant::now(), products.clone()));
        Ok(products)
    }
}

/// The shop's routes under `/shop/`.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            "/shop",
            get(|| async { axum::response::Redirect::permanent("/shop/") }),
        )
        .route("/shop/", get(|s| page(s, INDEX)))
        .route("/shop/product.html", get(|s| page(s, PRODUCT)))
        .route("/shop/cart.html", get(|s| page(s, CART)))
        .route("/shop/checkout.html", get(|s| page(s, CHECKOUT)))
        .route(
            "/shop/shop.js",
            get(|| asset(SHOP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/shop/shop.css",
            get(|| asset(SHOP_CSS, "text/css; charset=utf-8")),
        )
        .route("/shop/api/products", get(products))
}

const INDEX: &str = include_str!("../assets/shop/index.html");
const PRODUCT: &str = include_str!("../assets/shop/product.html");
const CART: &str = include_str!("../assets/shop/cart.html");
const CHECKOUT: &str = include_str!("../assets/shop/checkout.html");
const SHOP_JS: &str = include_str!("../assets/shop/shop.js");
const SHOP_CSS: &str = include_str!("../assets/shop/shop.css");

async fn page(State(app): State<Arc<App>>, html: &'static str) -> Response {
    let Some(shop) = app.shop.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    // The key is an attribute value; keys are configured by the operator, but escape anyway.
    let key: String = shop
        .write_key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.~".contains(*c))
        .collect();
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html.replace("{{WRITE_KEY}}", &key),
    )
        .into_response()
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn products(State(app): State<Arc<App>>) -> Response {
    let Some(shop) = app.shop.as_ref() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match shop.catalog().await {
        Ok(p) => Json(p.as_ref().clone()).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "demo shop catalog unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"error": "catalog_unavailable"})),
            )
                .into_response()
        }
    }
}
