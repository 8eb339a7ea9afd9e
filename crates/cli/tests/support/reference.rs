//! A naive, independent implementation of the processor's semantics, computed from the raw
//! Kafka records, for comparing with what the processor wrote to PostgreSQL.
//!
//! Written for clarity, not speed: plain maps, one pass per partition in offset order.

use std::collections::{BTreeMap, HashMap, HashSet};

use clickstream_model::{parse_event, Event, EventType, ValidationPolicy};
use uuid::Uuid;

/// The semantics most end-to-end tests run with: short windows and gaps so a few
/// minutes of event time exercise everything.
pub const TEST_SEM: Semantics = Semantics {
    lateness_s: 20,
    gap_s: 300,
    window_s: 120,
    slide_s: 60,
    min_views: 30,
    max_purchases: 3,
};

/// [`TEST_SEM`] as `clickstream process` flags.
pub const TEST_SEM_FLAGS: [&str; 12] = [
    "--allowed-lateness",
    "20s",
    "--session-gap",
    "5m",
    "--alert-window",
    "2m",
    "--alert-slide",
    "1m",
    "--alert-min-views",
    "30",
    "--alert-max-purchases",
    "3",
];

/// Operator settings the processor was started with.
#[derive(Debug, Clone, Copy)]
pub struct Semantics {
    pub lateness_s: i64,
    pub gap_s: i64,
    pub window_s: i64,
    pub slide_s: i64,
    pub min_views: i64,
    pub max_purchases: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Minute {
    pub events: i64,
    pub units: i64,
    pub revenue: i64,
    pub late: i64,
    pub bot: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Counts {
    pub views: i64,
    pub carts: i64,
    pub purchases: i64,
    pub units: i64,
    pub revenue: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    pub views: i64,
    pub purchases: i64,
    pub late_views: i64,
    pub late_purchases: i64,
}

/// Session as stored: (user, start µs, end µs, events, page views, carts, purchases, revenue, open).
pub type SessionRow = (Uuid, i64, i64, i32, i32, i32, i32, i64, bool);

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub minutes: BTreeMap<(i64, String), Minute>,
    pub products: BTreeMap<(i64, String), Counts>,
    pub categories: BTreeMap<(i64, String), Counts>,
    pub windows: BTreeMap<(i64, String), Window>,
    pub sessions: BTreeMap<Uuid, SessionRow>,
    pub late: BTreeMap<Uuid, bool>,
    pub alerts: BTreeMap<(i64, String), (i64, i64)>,
    pub rejected: BTreeMap<(i32, i64), String>,
    pub distinct_events: usize,
    /// `analytics.purchases`: (event time µs, event id) -> (order, amount cents, quantity, product).
    pub purchases: BTreeMap<(i64, Uuid), (Uuid, i64, i32, String)>,
    /// `analytics.event_stats_hourly`: (hour µs, type) -> (events, users, sessions started, revenue).
    pub hourly: BTreeMap<(i64, String), (i64, i64, i64, i64)>,
}

/// Its own copy of the bot markers: the reference shares no code with the processor.
pub fn is_bot(ua: Option<&str>) -> bool {
    let ua = ua.unwrap_or("").to_lowercase();
    [
        "bot",
        "crawler",
        "spider",
        "python-requests",
        "scrapy",
        "curl/",
        "wget/",
    ]
    .iter()
    .any(|m| ua.contains(m))
}

fn floor(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

struct Open {
    key: Uuid,
    start: i64,
    end: i64,
    events: i32,
    views: i32,
    carts: i32,
    buys: i32,
    revenue: i64,
}

/// Computes the expected tables from `records` = (partition, offset, value).
pub fn compute(
    records: &[(i32, i64, Vec<u8>)],
    policy: &ValidationPolicy,
    s: Semantics,
) -> Expected {
    compute_with(records, policy, s, &Options::default())
}

/// How the stream is read beyond the operator settings.
#[derive(Debug, Default)]
pub struct Options {
    /// The feed has stopped and every partition went idle: its watermark followed the
    /// clock past every session and window (all closed, all decided).
    pub drained: bool,
    /// The processing clock (µs) when each record `(partition, offset)` was read; an event
    /// ahead of it drives the watermark only up to it. Absent: the clock never lags.
    pub clock: HashMap<(i32, i64), i64>,
}

/// [`compute`] with [`Options`].
pub fn compute_with(
    records: &[(i32, i64, Vec<u8>)],
    policy: &ValidationPolicy,
    s: Semantics,
    opts: &Options,
) -> Expected {
    let us = 1_000_000i64;
    let mut x = Expected::default();
    let mut by_partition: BTreeMap<i32, Vec<(i64, &[u8])>> = BTreeMap::new();
    for (p, o, v) in records {
        by_partition.entry(*p).or_default().push((*o, v.as_slice()));
    }
    let mut seen = HashSet::new();
    let mut hourly_users: HashSet<(i64, String, Uuid)> = HashSet::new();
    let mut final_watermarks = Vec::new();
    for (p, mut recs) in by_partition {
        recs.sort_by_key(|r| r.0);
        let mut wm: Option<i64> = None;
        let mut open: HashMap<Uuid, Open> = HashMap::new();
        let finish = |x: &mut Expected, user: Uuid, o: Open, is_open: bool| {
            x.sessions.insert(
                o.key,
                (
                    user, o.start, o.end, o.events, o.views, o.carts, o.buys, o.revenue, is_open,
                ),
            );
        };
        for (offset, bytes) in recs {
            let e: Event = match parse_event(bytes, policy) {
                Ok(e) => e,
                Err(r) => {
                    x.rejected.insert((p, offset), r.code().to_string());
                    continue;
                }
            };
            // Identity is the device's own time: a collector-corrected `timestamp` differs
            // between a send and its retry.
            if !seen.insert((e.event_id, e.client_timestamp.unwrap_or(e.timestamp))) {
                continue;
            }
            x.distinct_events += 1;
            let t = e.timestamp.as_micros();
            let late = matches!(wm, Some(w) if t < w);
            let minute = floor(t, 60 * us);
            let qty = i64::from(e.quantity.unwrap_or(0));
            let revenue = if e.event_type == EventType::Purchase {
                e.amount.map_or(0, |a| a.cents())
            } else {
                0
            };
            let m = x
                .minutes
                .entry((minute, e.event_type.as_str().to_string()))
                .or_default();
            m.events += 1;
            m.units += qty;
            m.revenue += revenue;
            m.late += late as i64;
            m.bot += e.bot.unwrap_or_else(|| is_bot(e.user_agent.as_deref())) as i64;
            hourly_users.insert((
                floor(t, 3600 * us),
                e.event_type.as_str().to_string(),
                e.user_id,
            ));
            if e.event_type == EventType::Purchase {
                x.purchases.insert(
                    (t, e.event_id),
                    (
                        e.order_id.unwrap(),
                        revenue,
                        e.quantity.unwrap() as i32,
                        e.product_id.as_deref().unwrap().to_string(),
                    ),
                );
            }
            if let Some(pid) = e.product_id.as_deref() {
                let view = e.event_type == EventType::PageView;
                let buy = e.event_type == EventType::Purchase;
                let c = x.products.entry((minute, pid.to_string())).or_default();
                c.views += view as i64;
                c.carts += (e.event_type == EventType::AddToCart) as i64;
                c.purchases += buy as i64;
                c.units += if buy { qty } else { 0 };
                c.revenue += revenue;
                if let Some(cat) = e.category.as_deref() {
                    let c = x.categories.entry((minute, cat.to_string())).or_default();
                    c.views += view as i64;
                    c.carts += (e.event_type == EventType::AddToCart) as i64;
                    c.purchases += buy as i64;
                    c.units += if buy { qty } else { 0 };
                    c.revenue += revenue;
                }
                if view || buy {
                    // Every window [start, start + size) with start a multiple of the slide.
                    let first = floor(t, s.slide_s * us) - s.window_s * us + s.slide_s * us;
                    let mut start = first;
                    while start <= t {
                        if start + s.window_s * us > t {
                            let closed = matches!(wm, Some(w) if w >= start + s.window_s * us);
                            let w = x.windows.entry((start, pid.to_string())).or_default();
                            match (closed, view) {
                                (false, true) => w.views += 1,
                                (false, false) => w.purchases += 1,
                                (true, true) => w.late_views += 1,
                                (true, false) => w.late_purchases += 1,
                            }
                        }
                        start += s.slide_s * us;
                    }
                }
            }
            // Sessions.
            let gap = s.gap_s * us;
            let user = e.user_id;
            if let Some(o) = open.get(&user) {
                if matches!(wm, Some(w) if w > o.end + gap) || t > o.end + gap {
                    let o = open.remove(&user).unwrap();
                    finish(&mut x, user, o, false);
                }
            }
            let absorbed = if let Some(o) = open.get_mut(&user) {
                if t < o.start - gap {
                    false
                } else {
                    o.start = o.start.min(t);
                    o.end = o.end.max(t);
                    o.events += 1;
                    match e.event_type {
                        EventType::PageView => o.views += 1,
                        EventType::AddToCart => o.carts += 1,
                        EventType::Purchase => {
                            o.buys += 1;
                            o.revenue += revenue;
                        }
                    }
                    true
                }
            } else if late {
                false
            } else {
                let mut o = Open {
                    key: e.event_id,
                    start: t,
                    end: t,
                    events: 1,
                    views: 0,
                    carts: 0,
                    buys: 0,
                    revenue: 0,
                };
                match e.event_type {
                    EventType::PageView => o.views = 1,
                    EventType::AddToCart => o.carts = 1,
                    EventType::Purchase => {
                        o.buys = 1;
                        o.revenue = revenue;
                    }
                }
                open.insert(user, o);
                true
            };
            if late {
                x.late.insert(e.event_id, absorbed);
            }
            let clock = opts.clock.get(&(p, offset)).copied().unwrap_or(i64::MAX);
            let cand = t.min(clock) - s.lateness_s * us;
            if wm.is_none_or(|w| cand > w) {
                wm = Some(cand);
            }
        }
        for (user, o) in open.drain() {
            let closed = opts.drained || matches!(wm, Some(w) if w > o.end + s.gap_s * us);
            finish(&mut x, user, o, !closed);
        }
        final_watermarks.push(wm);
    }
    // Hourly statistics: the minutes summed per hour, distinct users, sessions by start hour.
    let mut started: HashMap<i64, i64> = HashMap::new();
    for (_, start, ..) in x.sessions.values() {
        *started.entry(floor(*start, 3600 * us)).or_default() += 1;
    }
    for ((minute, ty), m) in &x.minutes {
        let hour = floor(*minute, 3600 * us);
        let h = x.hourly.entry((hour, ty.clone())).or_default();
        h.0 += m.events;
        h.3 += m.revenue;
    }
    for ((hour, ty), h) in x.hourly.iter_mut() {
        h.1 = hourly_users
            .iter()
            .filter(|(uh, ut, _)| uh == hour && ut == ty)
            .count() as i64;
        h.2 = started.get(hour).copied().unwrap_or(0);
    }
    // Alerts: windows closed on every partition, judged by their on-time counts.
    let global = if opts.drained {
        Some(i64::MAX)
    } else if final_watermarks.iter().all(Option::is_some) {
        final_watermarks.iter().flatten().min().copied()
    } else {
        None
    };
    if let Some(g) = global {
        for ((start, pid), w) in &x.windows {
            if start + s.window_s * us <= g
                && w.views > s.min_views
                && w.purchases < s.max_purchases
            {
                x.alerts
                    .insert((*start, pid.clone()), (w.views, w.purchases));
            }
        }
    }
    x
}
