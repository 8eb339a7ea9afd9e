//! The daily gold aggregates, as pure functions over one day's silver events (plus the
//! per-user summaries of the days before, for weekly / monthly actives and segments).
//!
//! Definitions (also in `docs/lake.md`):
//! - Event counts include bot traffic (as the stream processor's tables do, so the two can
//!   be compared); user-level numbers (actives, segments, category buyers) exclude events
//!   from bot user agents.
//! - Purchases are order lines; orders are distinct `order_id`s.
//! - Conversion per category: distinct users who bought in the category / distinct users
//!   who viewed a product of it.
//! - Segments, over the 30 days ending on the day, of users with any activity: repeat
//!   buyers (2+ orders), one-time buyers (1 order), cart abandoners (no order, 1+ cart
//!   addition), window shoppers (views only).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use clickstream_model::EventType;

use crate::read::{DedupKey, SilverEvent};

/// How many products each top list keeps.
pub const TOP_N: usize = 5;

/// Days of user history behind monthly actives and segments.
pub const MONTH_DAYS: usize = 30;

/// The day's funnel and totals.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DailyFunnel {
    /// Distinct valid events.
    pub events: i64,
    /// Events from bot user agents.
    pub bot_events: i64,
    /// Product page views.
    pub product_views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Distinct orders.
    pub orders: i64,
    /// Units purchased.
    pub units: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// `cart_adds / product_views` in percent.
    pub view_to_cart_pct: Option<f64>,
    /// `purchases / cart_adds` in percent.
    pub cart_to_purchase_pct: Option<f64>,
}

/// One category's day.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CategoryDaily {
    /// Category.
    pub category: String,
    /// Product views.
    pub views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Units purchased.
    pub units: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
    /// Distinct human users who viewed a product of the category.
    pub viewers: i64,
    /// Distinct human users who bought in the category.
    pub buyers: i64,
    /// `buyers / viewers` in percent.
    pub conversion_pct: Option<f64>,
}

/// One entry of a top list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TopProduct {
    /// `most_viewed` or `best_selling`.
    pub list: &'static str,
    /// 1-based rank.
    pub rank: i32,
    /// Product id.
    pub product_id: String,
    /// Category.
    pub category: String,
    /// Views.
    pub views: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Units purchased.
    pub units: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
}

/// Daily, weekly and monthly active (human) users, as of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ActiveUsers {
    /// Users active on the day.
    pub dau: i64,
    /// Users active in the 7 days ending on the day.
    pub wau: i64,
    /// Users active in the 30 days ending on the day.
    pub mau: i64,
}

/// One segment's size and averages (over the segment's 30-day activity).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Segment {
    /// `window_shoppers`, `cart_abandoners`, `one_time_buyers`, `repeat_buyers`.
    pub segment: &'static str,
    /// Users in it.
    pub users: i64,
    /// Mean product views per user.
    pub avg_views: f64,
    /// Mean orders per user.
    pub avg_orders: f64,
    /// Mean purchased order lines per user.
    pub avg_purchases: f64,
}

/// Segment names, in funnel order.
pub const SEGMENTS: [&str; 4] = [
    "window_shoppers",
    "cart_abandoners",
    "one_time_buyers",
    "repeat_buyers",
];

/// One human user's activity on one day (kept in gold so later days' actives and segments
/// need not reread a month of silver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserDay {
    /// User.
    pub user_id: u128,
    /// Product views.
    pub views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchased order lines.
    pub purchases: i64,
    /// Distinct orders.
    pub orders: i64,
    /// Revenue in cents.
    pub revenue_cents: i64,
}

/// Everything the batch computes for one day.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gold {
    /// The day, `YYYY-MM-DD`.
    pub day: String,
    /// Funnel and totals.
    pub funnel: DailyFunnel,
    /// Per category, by name.
    pub categories: Vec<CategoryDaily>,
    /// Most viewed, then best selling.
    pub top_products: Vec<TopProduct>,
    /// Actives.
    pub active_users: ActiveUsers,
    /// Segments, in [`SEGMENTS`] order.
    pub segments: Vec<Segment>,
    /// Per-user summaries of this day, by user id.
    #[serde(skip)]
    pub user_days: Vec<UserDay>,
}

fn pct(num: i64, den: i64) -> Option<f64> {
    (den > 0).then(|| (10_000.0 * num as f64 / den as f64).round() / 100.0)
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Keeps the first event of every (id, event time) key (in partition and offset order).
pub fn dedup(mut events: Vec<SilverEvent>) -> Vec<SilverEvent> {
    events.sort_by_key(|e| (e.kafka_partition, e.kafka_offset));
    let mut seen = HashSet::with_capacity(events.len());
    events.retain(|e| seen.insert(e.key()));
    events
}

/// Per-user summaries of one day's (deduplicated) events, humans only, by user id.
pub fn user_days(events: &[SilverEvent]) -> Vec<UserDay> {
    let mut users = Users::default();
    for e in events {
        users.add(e);
    }
    users.finish()
}

/// Human users' activity of a day, with each user's distinct orders.
#[derive(Default)]
struct Users(HashMap<u128, (UserDay, HashSet<u128>)>);

impl Users {
    fn add(&mut self, e: &SilverEvent) {
        if e.is_bot {
            return;
        }
        let (u, orders) = self.0.entry(e.user_id).or_insert_with(|| {
            (
                UserDay {
                    user_id: e.user_id,
                    ..UserDay::default()
                },
                HashSet::new(),
            )
        });
        match e.event_type {
            EventType::PageView if e.product_id.is_some() => u.views += 1,
            EventType::PageView => {}
            EventType::AddToCart => u.cart_adds += 1,
            EventType::Purchase => {
                u.purchases += 1;
                u.revenue_cents += e.amount_cents.unwrap_or(0);
                if let Some(o) = e.order_id {
                    orders.insert(o);
                }
            }
        }
    }

    fn finish(self) -> Vec<UserDay> {
        let mut out: Vec<UserDay> = self
            .0
            .into_values()
            .map(|(mut u, orders)| {
                u.orders = orders.len() as i64;
                u
            })
            .collect();
        out.sort_unstable_by_key(|u| u.user_id);
        out
    }
}

#[derive(Default)]
struct ProductAcc {
    category: Option<Arc<str>>,
    views: i64,
    purchases: i64,
    units: i64,
    revenue_cents: i64,
}

#[derive(Default)]
struct CategoryAcc {
    views: i64,
    cart_adds: i64,
    purchases: i64,
    units: i64,
    revenue_cents: i64,
    viewers: HashSet<u128>,
    buyers: HashSet<u128>,
}

/// One day's gold, accumulated event by event (the day is never held in memory whole):
/// duplicates (same event id and event time) are skipped.
#[derive(Default)]
pub struct DayAccumulator {
    /// (id, event time) keys added so far.
    seen: HashSet<DedupKey>,
    events: i64,
    bot_events: i64,
    product_views: i64,
    cart_adds: i64,
    purchases: i64,
    units: i64,
    revenue_cents: i64,
    orders: HashSet<u128>,
    categories: BTreeMap<Arc<str>, CategoryAcc>,
    products: BTreeMap<Arc<str>, ProductAcc>,
    users: Users,
}

impl DayAccumulator {
    /// An empty accumulator whose dedup set has room for `events` keys.
    pub fn with_capacity(events: usize) -> Self {
        DayAccumulator {
            seen: HashSet::with_capacity(events),
            ..Default::default()
        }
    }

    /// Adds `e` unless an event with its id and time was added before; returns whether it
    /// was new.
    pub fn add(&mut self, e: &SilverEvent) -> bool {
        if !self.seen.insert(e.key()) {
            return false;
        }
        self.events += 1;
        self.bot_events += i64::from(e.is_bot);
        self.users.add(e);
        let Some(pid) = &e.product_id else {
            return true;
        };
        let units = i64::from(e.quantity.unwrap_or(0));
        let (v, c, p) = match e.event_type {
            EventType::PageView => (1, 0, 0),
            EventType::AddToCart => (0, 1, 0),
            EventType::Purchase => (0, 0, 1),
        };
        let (bought, revenue) = if p == 1 {
            (units, e.amount_cents.unwrap_or(0))
        } else {
            (0, 0)
        };
        self.product_views += v;
        self.cart_adds += c;
        self.purchases += p;
        self.units += bought;
        self.revenue_cents += revenue;
        if let Some(o) = e.order_id.filter(|_| p == 1) {
            self.orders.insert(o);
        }
        let acc = self.products.entry(pid.clone()).or_default();
        if acc.category.is_none() {
            acc.category = e.category.clone();
        }
        acc.views += v;
        acc.purchases += p;
        acc.units += bought;
        acc.revenue_cents += revenue;
        if let Some(cat) = &e.category {
            let cd = self.categories.entry(cat.clone()).or_default();
            cd.views += v;
            cd.cart_adds += c;
            cd.purchases += p;
            cd.units += bought;
            cd.revenue_cents += revenue;
            if !e.is_bot && v == 1 {
                cd.viewers.insert(e.user_id);
            }
            if !e.is_bot && p == 1 {
                cd.buyers.insert(e.user_id);
            }
        }
        true
    }

    /// Distinct events added.
    pub fn events(&self) -> i64 {
        self.events
    }

    /// The day's per-user summaries only (for days used as history).
    pub fn into_user_days(self) -> Vec<UserDay> {
        self.users.finish()
    }

    /// The day's gold, given the user summaries of the days before it (`history[0]` = the
    /// day before; missing days empty).
    pub fn finish(self, day: &str, history: &[Vec<UserDay>]) -> Gold {
        let funnel = DailyFunnel {
            events: self.events,
            bot_events: self.bot_events,
            product_views: self.product_views,
            cart_adds: self.cart_adds,
            purchases: self.purchases,
            orders: self.orders.len() as i64,
            units: self.units,
            revenue_cents: self.revenue_cents,
            view_to_cart_pct: pct(self.cart_adds, self.product_views),
            cart_to_purchase_pct: pct(self.purchases, self.cart_adds),
        };
        let categories = self
            .categories
            .into_iter()
            .map(|(name, c)| CategoryDaily {
                category: name.to_string(),
                views: c.views,
                cart_adds: c.cart_adds,
                purchases: c.purchases,
                units: c.units,
                revenue_cents: c.revenue_cents,
                viewers: c.viewers.len() as i64,
                buyers: c.buyers.len() as i64,
                conversion_pct: pct(c.buyers.len() as i64, c.viewers.len() as i64),
            })
            .collect();
        let mut top_products = Vec::new();
        let mut ranked: Vec<(&Arc<str>, &ProductAcc)> = self.products.iter().collect();
        ranked.sort_by(|a, b| b.1.views.cmp(&a.1.views).then_with(|| a.0.cmp(b.0)));
        push_top(&mut top_products, "most_viewed", &ranked, |p| p.views);
        ranked.sort_by(|a, b| {
            (b.1.units, b.1.revenue_cents)
                .cmp(&(a.1.units, a.1.revenue_cents))
                .then_with(|| a.0.cmp(b.0))
        });
        push_top(&mut top_products, "best_selling", &ranked, |p| p.units);
        let today = self.users.finish();
        let active = |days: usize| -> i64 {
            let mut set: HashSet<u128> = today.iter().map(|u| u.user_id).collect();
            for h in history.iter().take(days.saturating_sub(1)) {
                set.extend(h.iter().map(|u| u.user_id));
            }
            set.len() as i64
        };
        let active_users = ActiveUsers {
            dau: today.len() as i64,
            wau: active(7),
            mau: active(MONTH_DAYS),
        };
        let segments = segment(&today, history);
        Gold {
            day: day.to_string(),
            funnel,
            categories,
            top_products,
            active_users,
            segments,
            user_days: today,
        }
    }
}

/// Computes the day's gold from its events (duplicates skipped) and the user summaries of
/// the days before it.
pub fn compute(day: &str, events: &[SilverEvent], history: &[Vec<UserDay>]) -> Gold {
    let mut acc = DayAccumulator::default();
    for e in events {
        acc.add(e);
    }
    acc.finish(day, history)
}

fn push_top(
    out: &mut Vec<TopProduct>,
    list: &'static str,
    ranked: &[(&Arc<str>, &ProductAcc)],
    metric: fn(&ProductAcc) -> i64,
) {
    for (i, (pid, p)) in ranked
        .iter()
        .filter(|(_, p)| metric(p) > 0)
        .take(TOP_N)
        .enumerate()
    {
        out.push(TopProduct {
            list,
            rank: i as i32 + 1,
            product_id: pid.to_string(),
            category: p.category.as_deref().unwrap_or_default().to_string(),
            views: p.views,
            purchases: p.purchases,
            units: p.units,
            revenue_cents: p.revenue_cents,
        });
    }
}

/// Segments over the 30 days ending today.
fn segment(today: &[UserDay], history: &[Vec<UserDay>]) -> Vec<Segment> {
    let mut month: HashMap<u128, UserDay> = HashMap::new();
    let days =
        std::iter::once(today).chain(history.iter().take(MONTH_DAYS - 1).map(|h| h.as_slice()));
    for day in days {
        for u in day {
            let m = month.entry(u.user_id).or_default();
            m.views += u.views;
            m.cart_adds += u.cart_adds;
            m.purchases += u.purchases;
            m.orders += u.orders;
            m.revenue_cents += u.revenue_cents;
        }
    }
    let mut acc = [(0i64, 0i64, 0i64, 0i64); 4];
    for u in month.values() {
        let s = match (u.orders, u.cart_adds) {
            (o, _) if o >= 2 => 3,
            (1, _) => 2,
            (_, c) if c > 0 => 1,
            _ => 0,
        };
        if s == 0 && u.views == 0 {
            continue; // active only on non-product pages: no segment
        }
        let a = &mut acc[s];
        a.0 += 1;
        a.1 += u.views;
        a.2 += u.orders;
        a.3 += u.purchases;
    }
    SEGMENTS
        .iter()
        .zip(acc)
        .map(|(name, (users, views, orders, lines))| {
            let avg = |x: i64| {
                if users == 0 {
                    0.0
                } else {
                    round4(x as f64 / users as f64)
                }
            };
            Segment {
                segment: name,
                users,
                avg_views: avg(views),
                avg_orders: avg(orders),
                avg_purchases: avg(lines),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(
        id: u128,
        user: u128,
        t: EventType,
        product: Option<&str>,
        order: Option<u128>,
    ) -> SilverEvent {
        SilverEvent {
            event_id: id,
            event_type: t,
            event_time_us: 0,
            client_time_us: None,
            user_id: user,
            session_id: user,
            product_id: product.map(Into::into),
            category: product.map(|_| "toys".into()),
            quantity: (t != EventType::PageView).then_some(2),
            order_id: order,
            amount_cents: (t == EventType::Purchase).then_some(500),
            is_bot: false,
            kafka_partition: 0,
            kafka_offset: id as i64,
        }
    }

    #[test]
    fn segments_follow_the_definitions() {
        use EventType::*;
        let events = vec![
            ev(1, 10, PageView, Some("P1"), None), // window shopper
            ev(2, 20, PageView, Some("P1"), None), // cart abandoner
            ev(3, 20, AddToCart, Some("P1"), None),
            ev(4, 30, Purchase, Some("P1"), Some(1)), // one-time buyer: two lines, one order
            ev(5, 30, Purchase, Some("P2"), Some(1)),
            ev(6, 40, Purchase, Some("P2"), Some(2)), // repeat buyer across days
            ev(7, 50, PageView, None, None),          // home page only: no segment
        ];
        let yesterday = vec![UserDay {
            user_id: 40,
            orders: 1,
            purchases: 1,
            ..UserDay::default()
        }];
        let g = compute("2026-11-23", &events, &[yesterday]);
        let users: Vec<i64> = g.segments.iter().map(|s| s.users).collect();
        assert_eq!(users, vec![1, 1, 1, 1]);
        assert_eq!(g.segments[2].avg_purchases, 2.0);
        assert_eq!(g.segments[3].avg_orders, 2.0);
        assert_eq!(
            g.active_users,
            ActiveUsers {
                dau: 5,
                wau: 5,
                mau: 5
            }
        );
        assert_eq!(g.funnel.orders, 2);
        assert_eq!(g.funnel.purchases, 3);
        assert_eq!(g.funnel.units, 6);
        assert_eq!(g.funnel.revenue_cents, 1500);
        let toys = &g.categories[0];
        assert_eq!((toys.viewers, toys.buyers), (2, 2));
        assert_eq!(toys.conversion_pct, Some(100.0));
        let best: Vec<&str> = g
            .top_products
            .iter()
            .filter(|t| t.list == "best_selling")
            .map(|t| t.product_id.as_str())
            .collect();
        assert_eq!(best, vec!["P2", "P1"], "P2: 4 units, P1: 2 units");
    }

    #[test]
    fn dedup_keeps_the_first_occurrence() {
        let a = ev(1, 10, EventType::PageView, Some("P1"), None);
        let mut b = a.clone();
        b.kafka_offset = 99;
        let out = dedup(vec![b, a.clone()]);
        assert_eq!(out, vec![a]);
    }
}
