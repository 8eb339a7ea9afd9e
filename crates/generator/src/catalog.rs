//! The simulated shop's product catalog.
//!
//! Deterministic from its own seed so that runs with different simulation seeds still name
//! products the same way in `analytics.dim_product`.

use std::sync::Arc;

use clickstream_model::{Money, Product};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// (category, price range in cents, adjectives, nouns) used to make product names.
type CategorySpec = (
    &'static str,
    (i64, i64),
    &'static [&'static str],
    &'static [&'static str],
);

const CATEGORIES: [CategorySpec; 10] = [
    (
        "electronics",
        (1_999, 149_999),
        &["Wireless", "Smart", "Portable", "Ultra"],
        &[
            "Headphones",
            "Speaker",
            "Monitor",
            "Charger",
            "Camera",
            "Tablet",
        ],
    ),
    (
        "fashion",
        (999, 24_999),
        &["Classic", "Slim", "Vintage", "Linen"],
        &["Jacket", "Sneakers", "Scarf", "Jeans", "Dress", "Shirt"],
    ),
    (
        "home",
        (499, 49_999),
        &["Cozy", "Modern", "Rustic", "Compact"],
        &["Lamp", "Rug", "Blanket", "Shelf", "Vase", "Chair"],
    ),
    (
        "beauty",
        (399, 9_999),
        &["Organic", "Hydrating", "Matte", "Gentle"],
        &["Serum", "Lipstick", "Cleanser", "Moisturizer", "Palette"],
    ),
    (
        "sports",
        (999, 59_999),
        &["Pro", "Lightweight", "Trail", "Indoor"],
        &[
            "Running Shoes",
            "Yoga Mat",
            "Dumbbells",
            "Bike Helmet",
            "Backpack",
        ],
    ),
    (
        "books",
        (499, 4_999),
        &["Illustrated", "Collected", "Pocket", "Annotated"],
        &["Cookbook", "Novel", "Atlas", "Biography", "Guide"],
    ),
    (
        "toys",
        (599, 14_999),
        &["Wooden", "Magnetic", "Giant", "Musical"],
        &["Puzzle", "Train Set", "Robot", "Blocks", "Kite"],
    ),
    (
        "grocery",
        (199, 3_999),
        &["Roasted", "Artisan", "Spicy", "Fair-Trade"],
        &["Coffee", "Olive Oil", "Granola", "Tea", "Chocolate"],
    ),
    (
        "garden",
        (799, 29_999),
        &["Solar", "Heavy-Duty", "Folding", "Self-Watering"],
        &["Planter", "Hose", "Lantern", "Pruner", "Bench"],
    ),
    (
        "automotive",
        (999, 39_999),
        &["Universal", "All-Weather", "Compact", "LED"],
        &["Floor Mats", "Dash Cam", "Jump Starter", "Seat Cover"],
    ),
];

/// The category names, in catalog order.
pub fn categories() -> impl Iterator<Item = &'static str> {
    CATEGORIES.iter().map(|c| c.0)
}

/// Builds `n` products. Popularity rank is a seeded shuffle, so the best sellers are spread
/// across categories rather than all in the first one.
pub fn build_catalog(n: usize, seed: u64) -> Vec<Product> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed ^ 0xC0FF_EE00_CA7A_1061);
    let mut ranks: Vec<u32> = (1..=n as u32).collect();
    for i in (1..ranks.len()).rev() {
        ranks.swap(i, rng.random_range(0..=i));
    }
    let cats: Vec<Arc<str>> = categories().map(Arc::from).collect();
    (0..n)
        .map(|i| {
            let c = rng.random_range(0..CATEGORIES.len());
            let (_, (lo, hi), adjs, nouns) = CATEGORIES[c];
            let adj = adjs[rng.random_range(0..adjs.len())];
            let noun = nouns[rng.random_range(0..nouns.len())];
            // Prices end in .99 or .49 like real shelves.
            let whole = rng.random_range(lo / 100..=hi / 100);
            let cents = if rng.random_bool(0.7) { 99 } else { 49 };
            Product {
                product_id: Arc::from(format!("P{:05}", i + 1)),
                name: format!("{adj} {noun} {}", i + 1),
                category: cats[c].clone(),
                price: Money::from_cents(whole * 100 + cents),
                popularity_rank: ranks[i],
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_deterministic_and_sane() {
        let a = build_catalog(200, 7);
        assert_eq!(a, build_catalog(200, 7));
        assert_ne!(a, build_catalog(200, 8));
        let mut ranks: Vec<u32> = a.iter().map(|p| p.popularity_rank).collect();
        ranks.sort_unstable();
        assert_eq!(ranks, (1..=200).collect::<Vec<_>>());
        assert!(a.iter().all(|p| p.price.cents() > 0));
        let used: std::collections::BTreeSet<_> = a.iter().map(|p| p.category.clone()).collect();
        assert_eq!(used.len(), CATEGORIES.len());
    }
}
