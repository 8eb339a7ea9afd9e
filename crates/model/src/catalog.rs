//! Catalog rows: what a product is called, where it belongs and what it costs.

use std::sync::Arc;

use crate::Money;

/// One product of the simulated shop, as written to `analytics.dim_product`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Stable identifier used in events (`P00042`).
    pub product_id: Arc<str>,
    /// Human-readable name shown on dashboards.
    pub name: String,
    /// Category the product is listed under; events carry the same string.
    pub category: Arc<str>,
    /// List price.
    pub price: Money,
    /// 1 = most popular; views follow a Zipf law over this rank.
    pub popularity_rank: u32,
}
