//! Statistical and determinism tests of the simulator against its own settings.

use std::collections::{BTreeMap, HashMap, HashSet};

use clickstream_generator::{RecordKind, SimConfig, Simulator};
use clickstream_model::{parse_event, Event, EventTime, EventType, ValidationPolicy, DAY_MICROS};

fn start() -> EventTime {
    EventTime::parse_rfc3339("2026-03-02T10:00:00Z").unwrap()
}

fn config() -> SimConfig {
    SimConfig {
        start: start(),
        ..SimConfig::default()
    }
}

fn policy() -> ValidationPolicy {
    let mut p = ValidationPolicy::new(start().add_micros(DAY_MICROS));
    p.max_age_micros = 10 * DAY_MICROS;
    p
}

struct Sample {
    records: Vec<(Vec<u8>, Vec<u8>, RecordKind)>,
    events: Vec<Event>,
}

fn sample(cfg: SimConfig, n: usize) -> Sample {
    let mut sim = Simulator::new(cfg).unwrap();
    let mut records = Vec::with_capacity(n);
    let mut events = Vec::new();
    let mut last_send = EventTime::from_micros(i64::MIN);
    for _ in 0..n {
        let r = sim.next_record();
        assert!(r.send_at >= last_send, "send times must not go backwards");
        last_send = r.send_at;
        if matches!(r.kind, RecordKind::Event | RecordKind::Late) {
            events.push(parse_event(r.payload, &policy()).expect("valid event"));
        }
        records.push((r.key.to_vec(), r.payload.to_vec(), r.kind));
    }
    Sample { records, events }
}

fn within(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: measured {actual:.4}, setting {expected:.4} (tolerance {tol})"
    );
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = sample(config(), 20_000);
    let b = sample(config(), 20_000);
    assert!(
        a.records == b.records,
        "same seed must give identical records"
    );
    let c = sample(
        SimConfig {
            seed: 43,
            ..config()
        },
        20_000,
    );
    assert!(a.records != c.records);
    // Another start time: same users, but never the same event ids.
    let later = SimConfig {
        start: start().add_micros(1_000_000),
        ..config()
    };
    let mut sim = Simulator::new(later).unwrap();
    let ids_a: HashSet<_> = a.events.iter().map(|e| e.event_id).collect();
    let users_a: HashSet<_> = a.events.iter().map(|e| e.user_id).collect();
    let mut shared_users = 0;
    for _ in 0..20_000 {
        let r = sim.next_record();
        if let Ok(e) = parse_event(r.payload, &policy()) {
            assert!(
                !ids_a.contains(&e.event_id),
                "event ids must not repeat across runs"
            );
            shared_users += usize::from(users_a.contains(&e.user_id));
        }
    }
    assert!(
        shared_users > 1000,
        "the same population returns: {shared_users}"
    );
}

#[test]
fn every_record_is_what_it_claims_to_be() {
    let s = sample(config(), 150_000);
    let mut sent: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (key, payload, kind) in &s.records {
        match kind {
            RecordKind::Event | RecordKind::Late => {
                let e = parse_event(payload, &policy()).unwrap();
                assert_eq!(
                    key,
                    e.user_id.hyphenated().to_string().as_bytes(),
                    "key = user_id"
                );
                assert!(
                    sent.insert(e.event_id.as_bytes().to_vec(), payload.clone())
                        .is_none(),
                    "event ids are unique"
                );
            }
            RecordKind::Duplicate => {
                let e = parse_event(payload, &policy()).unwrap();
                assert_eq!(
                    sent.get(e.event_id.as_bytes().as_slice()),
                    Some(payload),
                    "a duplicate re-sends the same bytes"
                );
            }
            RecordKind::Malformed(fault) => {
                let reason =
                    parse_event(payload, &policy()).expect_err("malformed must be rejected");
                assert_eq!(reason.code(), fault.expected_reason(), "{fault:?}");
                *kinds.entry(fault.expected_reason()).or_default() += 1;
            }
        }
    }
    assert!(kinds.len() >= 10, "most fault kinds appear: {kinds:?}");
}

#[test]
fn fault_rates_match_settings() {
    let cfg = SimConfig {
        faults: clickstream_generator::config::FaultConfig {
            duplicate_rate: 0.05,
            late_duplicate_share: 0.0,
            late_rate: 0.04,
            late_mean_secs: 30.0,
            malformed_rate: 0.02,
        },
        ..config()
    };
    let s = sample(cfg, 200_000);
    let count = |k: fn(&RecordKind) -> bool| s.records.iter().filter(|r| k(&r.2)).count() as f64;
    let valid = count(|k| matches!(k, RecordKind::Event | RecordKind::Late));
    within(
        count(|k| *k == RecordKind::Duplicate) / valid,
        0.05,
        0.004,
        "duplicate rate",
    );
    within(
        count(|k| matches!(k, RecordKind::Malformed(_))) / valid,
        0.02,
        0.003,
        "malformed rate",
    );
    // Late events still in flight at the end of the sample would bias the rate: count only
    // events old enough that their delivery (mean 30 s) is certainly in the sample.
    let cutoff = s
        .events
        .iter()
        .map(|e| e.timestamp)
        .max()
        .unwrap()
        .add_micros(-150_000_000);
    let mut late_ids = HashSet::new();
    for (_, payload, kind) in &s.records {
        if *kind == RecordKind::Late {
            late_ids.insert(parse_event(payload, &policy()).unwrap().event_id);
        }
    }
    let old: Vec<_> = s.events.iter().filter(|e| e.timestamp < cutoff).collect();
    let old_late = old
        .iter()
        .filter(|e| late_ids.contains(&e.event_id))
        .count() as f64;
    within(old_late / old.len() as f64, 0.04, 0.004, "late rate");
    // Late events really arrive after later event times.
    let mut max_seen = EventTime::from_micros(i64::MIN);
    let mut overtaken = 0;
    for (_, payload, kind) in &s.records {
        if let Ok(e) = parse_event(payload, &policy()) {
            if *kind == RecordKind::Late && e.timestamp < max_seen {
                overtaken += 1;
            }
            max_seen = max_seen.max(e.timestamp);
        }
    }
    assert!(overtaken as f64 > 0.9 * count(|k| *k == RecordKind::Late));
}

#[test]
fn funnel_ratios_match_settings() {
    // A low rate stretches the sample over ~50 minutes, so most visits in it have ended.
    let cfg = SimConfig {
        eps: 100.0,
        bot_share: 0.0,
        flash_sale: clickstream_generator::config::FlashSaleConfig {
            every_secs: 0,
            ..SimConfig::default().flash_sale
        },
        ..config()
    };
    let funnel = cfg.funnel.clone();
    let s = sample(cfg, 300_000);
    let mut by_session: HashMap<_, Vec<&Event>> = HashMap::new();
    for e in &s.events {
        by_session.entry(e.session_id).or_default().push(e);
    }
    // Only visits that have certainly ended (started well before the sample's end).
    let horizon = s
        .events
        .iter()
        .map(|e| e.timestamp)
        .max()
        .unwrap()
        .add_micros(-1_200_000_000);
    let mut visits: Vec<Vec<&Event>> = by_session
        .into_values()
        .map(|mut v| {
            v.sort_by_key(|e| (e.timestamp, e.event_id));
            v
        })
        // Whole visits only: ones that began before the stream did lack their landing.
        .filter(|v| v[0].timestamp < horizon && v[0].referrer.is_some())
        .collect();
    visits.sort_by_key(|v| v[0].timestamp);
    let n = visits.len() as f64;
    let bounced = visits.iter().filter(|v| v.len() == 1).count() as f64;
    within(bounced / n, funnel.bounce_rate, 0.02, "bounce rate");
    let (mut product_views, mut carted_after_view) = (0.0, 0.0);
    for v in &visits {
        for (i, e) in v.iter().enumerate() {
            if e.page.as_deref() == Some("product") && e.event_type == EventType::PageView {
                product_views += 1.0;
                let next = v.get(i + 1);
                if next.is_some_and(|n| {
                    n.event_type == EventType::AddToCart && n.product_id == e.product_id
                }) {
                    carted_after_view += 1.0;
                }
            }
        }
    }
    within(
        carted_after_view / product_views,
        funnel.cart_rate,
        0.015,
        "cart rate",
    );
    let carting: Vec<_> = visits
        .iter()
        .filter(|v| v.iter().any(|e| e.event_type == EventType::AddToCart))
        .collect();
    let bought = carting
        .iter()
        .filter(|v| v.iter().any(|e| e.event_type == EventType::Purchase))
        .count() as f64;
    within(
        bought / carting.len() as f64,
        funnel.purchase_rate,
        0.04,
        "purchase rate given cart",
    );
    // Every purchase line matches a cart addition of the same product, and amounts add up.
    for v in &carting {
        let carted: HashSet<_> = v
            .iter()
            .filter(|e| e.event_type == EventType::AddToCart)
            .map(|e| e.product_id.clone())
            .collect();
        for p in v.iter().filter(|e| e.event_type == EventType::Purchase) {
            assert!(carted.contains(&p.product_id));
            assert_eq!(p.amount, Some(p.price.unwrap().times(p.quantity.unwrap())));
        }
    }
}

#[test]
fn user_mixes_and_traffic_rate_match_settings() {
    let cfg = config();
    let s = sample(cfg.clone(), 200_000);
    let mut first_by_session: HashMap<_, &Event> = HashMap::new();
    for e in &s.events {
        first_by_session.entry(e.session_id).or_insert(e);
    }
    let mut users: HashMap<_, &Event> = HashMap::new();
    let mut ordered: Vec<&Event> = first_by_session.values().copied().collect();
    ordered.sort_by_key(|e| (e.timestamp, e.session_id));
    let (mut returning, mut human) = (0.0, 0.0);
    for e in &ordered {
        let is_bot = e
            .user_agent
            .as_deref()
            .is_some_and(|ua| !ua.starts_with("Mozilla/5.0 (") || ua.contains("bot"));
        if is_bot {
            continue;
        }
        human += 1.0;
        if users.insert(e.user_id, e).is_some() {
            returning += 1.0;
        }
    }
    // Users first seen during the simulator's warm-up look new here, so the observed share
    // is a lower bound; the simulator's own count must match the setting.
    assert!(
        returning / human > 0.2,
        "returning users appear: {}",
        returning / human
    );
    let mut sim = Simulator::new(cfg.clone()).unwrap();
    for _ in 0..100_000 {
        sim.next_record();
    }
    let st = sim.stats();
    within(
        st.returning_sessions as f64 / (st.sessions - st.bot_sessions) as f64,
        cfg.returning_share,
        0.02,
        "returning share",
    );
    let total_w: f64 = cfg.device_mix.iter().map(|d| d.1).sum();
    for (device, w) in &cfg.device_mix {
        let share = users
            .values()
            .filter(|e| e.device.as_deref() == Some(device))
            .count() as f64
            / users.len() as f64;
        within(share, w / total_w, 0.02, device);
    }
    let total_w: f64 = cfg.country_mix.iter().map(|d| d.1).sum();
    for (country, w) in &cfg.country_mix {
        let share = users
            .values()
            .filter(|e| e.country.as_deref() == Some(country))
            .count() as f64
            / users.len() as f64;
        within(share, w / total_w, 0.02, country);
    }
    // Event time advances at --eps.
    let span = (s.events.last().unwrap().timestamp.as_micros() - start().as_micros()) as f64 / 1e6;
    within(
        s.events.len() as f64 / span / cfg.eps,
        1.0,
        0.1,
        "events per second of event time",
    );
}

#[test]
fn flash_sales_make_many_views_and_few_purchases() {
    let cfg = SimConfig {
        eps: 400.0,
        ..config()
    };
    let s = sample(cfg, 240_000);
    let window_end = start().add_micros(600_000_000);
    let mut views: HashMap<_, u32> = HashMap::new();
    let mut purchases: HashMap<_, u32> = HashMap::new();
    let mut promoted = HashSet::new();
    for e in s.events.iter().filter(|e| e.timestamp < window_end) {
        if e.utm_source.as_deref() == Some("flash_sale") {
            promoted.insert(e.product_id.clone());
        }
        match e.event_type {
            EventType::PageView if e.product_id.is_some() => {
                *views.entry(e.product_id.clone()).or_default() += 1
            }
            EventType::Purchase => *purchases.entry(e.product_id.clone()).or_default() += 1,
            _ => {}
        }
    }
    assert!(!promoted.is_empty());
    for p in &promoted {
        let v = views.get(p).copied().unwrap_or(0);
        let b = purchases.get(p).copied().unwrap_or(0);
        assert!(
            v > 100 && b < 5,
            "{p:?}: {v} views, {b} purchases in the first 10 minutes"
        );
    }
}

#[test]
fn bots_appear_at_their_share() {
    let mut sim = Simulator::new(config()).unwrap();
    for _ in 0..200_000 {
        sim.next_record();
    }
    let st = sim.stats();
    within(
        st.bot_sessions as f64 / st.sessions as f64,
        0.02,
        0.006,
        "bot share",
    );
}
