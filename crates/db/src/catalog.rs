//! The product catalog dimension, `analytics.dim_product`.

use clickstream_model::Product;
use tokio_postgres::Client;

use crate::DbError;

/// Upserts `products` in one statement; rows whose values did not change are left alone,
/// so re-running with the same catalog writes nothing. Returns rows inserted or changed.
pub async fn upsert_products(client: &Client, products: &[Product]) -> Result<u64, DbError> {
    let ids: Vec<&str> = products.iter().map(|p| &*p.product_id).collect();
    let names: Vec<&str> = products.iter().map(|p| p.name.as_str()).collect();
    let cats: Vec<&str> = products.iter().map(|p| &*p.category).collect();
    let cents: Vec<i64> = products.iter().map(|p| p.price.cents()).collect();
    let ranks: Vec<i32> = products.iter().map(|p| p.popularity_rank as i32).collect();
    let n = client
        .execute(
            "INSERT INTO analytics.dim_product (product_id, name, category, price, popularity_rank)
             SELECT id, name, cat, cents::numeric / 100, rank
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int4[])
                  AS t(id, name, cat, cents, rank)
             ON CONFLICT (product_id) DO UPDATE
                SET name = EXCLUDED.name, category = EXCLUDED.category, price = EXCLUDED.price,
                    popularity_rank = EXCLUDED.popularity_rank, updated_at = now()
              WHERE (dim_product.name, dim_product.category, dim_product.price, dim_product.popularity_rank)
                    IS DISTINCT FROM
                    (EXCLUDED.name, EXCLUDED.category, EXCLUDED.price, EXCLUDED.popularity_rank)",
            &[&ids, &names, &cats, &cents, &ranks],
        )
        .await?;
    Ok(n)
}
