//! Simulation settings. Every field has a documented default in [`SimConfig::default`];
//! the CLI exposes the ones users tune.

use clickstream_model::EventTime;

/// A categorical mix: `(label, weight)` pairs; weights need not sum to 1.
pub type Mix = Vec<(String, f64)>;

/// Parses `a=45,b=45,c=10` into a [`Mix`].
pub fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not label=weight"))?;
        let w: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("weight `{v}` is not a number"))?;
        if !(w.is_finite() && w >= 0.0) {
            return Err(format!("weight `{v}` must be a non-negative number"));
        }
        out.push((k.trim().to_string(), w));
    }
    if out.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
        return Err("a mix needs at least one positive weight".into());
    }
    Ok(out)
}

/// Probabilities that shape a shopper's visit.
#[derive(Debug, Clone, PartialEq)]
pub struct FunnelConfig {
    /// P(a visit is a single page view). Default 0.35.
    pub bounce_rate: f64,
    /// P(a product view is followed by adding that product to the cart). Default 0.12.
    pub cart_rate: f64,
    /// P(a visit that carted something ends in a purchase). Default 0.35.
    pub purchase_rate: f64,
    /// P(leaving after any page past the landing one); sets visit length. Default 0.18.
    pub exit_rate: f64,
    /// Median seconds between a shopper's page events (log-normal). Default 25.
    pub dwell_median_secs: f64,
}

/// Periodic flash-sale campaigns: a few long-tail products get many views and few purchases.
#[derive(Debug, Clone, PartialEq)]
pub struct FlashSaleConfig {
    /// A campaign starts every this many seconds of event time (0 disables). Default 3600.
    pub every_secs: u64,
    /// Each campaign lasts this long. Default 900.
    pub duration_secs: u64,
    /// Products promoted per campaign. Default 2.
    pub products: usize,
    /// Share of new visits during a campaign that come for it. Default 0.25.
    pub share: f64,
}

/// Fault injection rates; each is a probability per emitted event.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// P(an event is re-sent with the same `event_id`). Default 0.01.
    pub duplicate_rate: f64,
    /// Share of duplicates re-sent minutes later (1 to 15 min) instead of within seconds. Default 0.3.
    pub late_duplicate_share: f64,
    /// P(an event is delivered late, out of order). Default 0.02.
    pub late_rate: f64,
    /// Mean delivery delay of a late event in seconds (exponential). Default 45.
    pub late_mean_secs: f64,
    /// P(a malformed record is emitted next to an event). Default 0.005.
    pub malformed_rate: f64,
}

/// Everything the simulation depends on. Same value, same stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Seed for users, sessions and faults.
    pub seed: u64,
    /// Seed for the catalog (kept apart so runs with different seeds share product names).
    pub catalog_seed: u64,
    /// Number of products. Default 500.
    pub products: usize,
    /// Zipf exponent of product popularity. Default 1.1.
    pub popularity_skew: f64,
    /// Size of the user population. Default 50,000.
    pub users: usize,
    /// P(a visit is by a user who visited before). Default 0.6.
    pub returning_share: f64,
    /// Device mix of users. Default desktop=45, mobile=45, tablet=10.
    pub device_mix: Mix,
    /// Country mix of users (ISO codes).
    pub country_mix: Mix,
    /// Target events per second of event time (and of wall time when paced). Default 1000.
    pub eps: f64,
    /// Event time of the first event.
    pub start: EventTime,
    /// Modulate traffic over the UTC day (peak 20:00, trough 08:00). Default off.
    pub daily_cycle: bool,
    /// Share of visits made by bots (fast, many pages, never buy). Default 0.02.
    pub bot_share: f64,
    /// Shopper funnel.
    pub funnel: FunnelConfig,
    /// Flash-sale campaigns.
    pub flash_sale: FlashSaleConfig,
    /// Fault injection.
    pub faults: FaultConfig,
}

impl SimConfig {
    /// Checks ranges; the message names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        let probs = [
            ("returning-share", self.returning_share),
            ("bot-share", self.bot_share),
            ("bounce-rate", self.funnel.bounce_rate),
            ("cart-rate", self.funnel.cart_rate),
            ("purchase-rate", self.funnel.purchase_rate),
            ("exit-rate", self.funnel.exit_rate),
            ("flash-sale-share", self.flash_sale.share),
            ("duplicate-rate", self.faults.duplicate_rate),
            ("late-duplicate-share", self.faults.late_duplicate_share),
            ("late-rate", self.faults.late_rate),
            ("malformed-rate", self.faults.malformed_rate),
        ];
        for (name, p) in probs {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("--{name} must be within 0..=1, got {p}"));
            }
        }
        if self.funnel.exit_rate <= 0.0 {
            return Err("--exit-rate must be above 0 or visits never end".into());
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("--eps must be positive, got {}", self.eps));
        }
        if self.products == 0 || self.users == 0 {
            return Err("--products and --users must be at least 1".into());
        }
        if self.flash_sale.every_secs > 0 && self.flash_sale.products > self.products / 2 {
            return Err("--flash-sale-products must be at most half of --products".into());
        }
        if !(self.funnel.dwell_median_secs > 0.0 && self.faults.late_mean_secs >= 0.0) {
            return Err("dwell and lateness times must be positive".into());
        }
        if !(self.popularity_skew.is_finite() && self.popularity_skew > 0.0) {
            return Err("--popularity-skew must be positive".into());
        }
        Ok(())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        let mix = |pairs: &[(&str, f64)]| -> Mix {
            pairs.iter().map(|(k, w)| (k.to_string(), *w)).collect()
        };
        SimConfig {
            seed: 42,
            catalog_seed: 7,
            products: 500,
            popularity_skew: 1.1,
            users: 50_000,
            returning_share: 0.6,
            device_mix: mix(&[("desktop", 45.0), ("mobile", 45.0), ("tablet", 10.0)]),
            country_mix: mix(&[
                ("US", 35.0),
                ("GB", 10.0),
                ("DE", 10.0),
                ("IN", 10.0),
                ("FR", 8.0),
                ("BR", 7.0),
                ("CA", 6.0),
                ("JP", 5.0),
                ("NL", 5.0),
                ("AU", 4.0),
            ]),
            eps: 1000.0,
            start: EventTime::from_micros(0),
            daily_cycle: false,
            bot_share: 0.02,
            funnel: FunnelConfig {
                bounce_rate: 0.35,
                cart_rate: 0.12,
                purchase_rate: 0.35,
                exit_rate: 0.18,
                dwell_median_secs: 25.0,
            },
            flash_sale: FlashSaleConfig {
                every_secs: 3600,
                duration_secs: 900,
                products: 2,
                share: 0.25,
            },
            faults: FaultConfig {
                duplicate_rate: 0.01,
                late_duplicate_share: 0.3,
                late_rate: 0.02,
                late_mean_secs: 45.0,
                malformed_rate: 0.005,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_reject_nonsense() {
        assert_eq!(
            parse_mix("a=1, b=2.5").unwrap(),
            vec![("a".into(), 1.0), ("b".into(), 2.5)]
        );
        assert!(parse_mix("a").is_err());
        assert!(parse_mix("a=x").is_err());
        assert!(parse_mix("a=-1").is_err());
        assert!(parse_mix("a=0").is_err());
    }

    #[test]
    fn defaults_are_valid_and_ranges_checked() {
        let mut c = SimConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.funnel.cart_rate = 1.5;
        assert!(c.validate().unwrap_err().contains("cart-rate"));
    }
}
