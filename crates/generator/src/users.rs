//! The user population: who visits, on what device, from where, with which browser.

use std::sync::Arc;

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::Rng;
use uuid::Uuid;

use crate::config::SimConfig;

/// One simulated user; visits by the same user share id, device, country and user agent.
#[derive(Debug, Clone)]
pub struct User {
    /// Stable id (the Kafka key of every event of this user).
    pub id: Uuid,
    /// `desktop`, `mobile`, `tablet` (or whatever the device mix names).
    pub device: Arc<str>,
    /// ISO country code.
    pub country: Arc<str>,
    /// Browser user agent.
    pub user_agent: Arc<str>,
}

/// A random version-4 UUID drawn from `rng` (deterministic for a seeded generator).
pub fn uuid_from(rng: &mut impl Rng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.random()).into_uuid()
}

/// A plausible user agent for a device kind.
pub fn user_agent_for(device: &str, rng: &mut impl Rng) -> String {
    let chrome = rng.random_range(118..=131);
    let safari = rng.random_range(15..=18);
    match device {
        "mobile" => match rng.random_range(0..3) {
            0 => format!("Mozilla/5.0 (iPhone; CPU iPhone OS {safari}_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{safari}.1 Mobile/15E148 Safari/604.1"),
            1 => format!("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Mobile Safari/537.36"),
            _ => format!("Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Mobile Safari/537.36"),
        },
        "tablet" => match rng.random_range(0..2) {
            0 => format!("Mozilla/5.0 (iPad; CPU OS {safari}_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{safari}.0 Mobile/15E148 Safari/604.1"),
            _ => format!("Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Safari/537.36"),
        },
        _ => match rng.random_range(0..4) {
            0 => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Safari/537.36"),
            1 => format!("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/{safari}.0 Safari/605.1.15"),
            2 => format!("Mozilla/5.0 (X11; Linux x86_64; rv:{chrome}.0) Gecko/20100101 Firefox/{chrome}.0"),
            _ => format!("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome}.0.0.0 Safari/537.36 Edg/{chrome}.0.0.0"),
        },
    }
}

/// Builds the population described by `cfg` (device and country drawn from the mixes).
pub fn build_users(cfg: &SimConfig, rng: &mut impl Rng) -> Vec<User> {
    let devices: Vec<Arc<str>> = cfg
        .device_mix
        .iter()
        .map(|(k, _)| Arc::from(k.as_str()))
        .collect();
    let countries: Vec<Arc<str>> = cfg
        .country_mix
        .iter()
        .map(|(k, _)| Arc::from(k.as_str()))
        .collect();
    // `SimConfig::validate` guarantees at least one positive weight in each mix.
    let dev_w = WeightedIndex::new(cfg.device_mix.iter().map(|(_, w)| *w)).ok();
    let cty_w = WeightedIndex::new(cfg.country_mix.iter().map(|(_, w)| *w)).ok();
    (0..cfg.users)
        .map(|_| {
            let d = dev_w.as_ref().map_or(0, |w| w.sample(rng));
            let c = cty_w.as_ref().map_or(0, |w| w.sample(rng));
            let ua = user_agent_for(&devices[d], rng);
            User {
                id: uuid_from(rng),
                device: devices[d].clone(),
                country: countries[c].clone(),
                user_agent: Arc::from(ua),
            }
        })
        .collect()
}
