//! The operators: pure functions over a partition's events plus its state.
//!
//! Everything here is deterministic in the order of records within one Kafka partition,
//! which is what makes results independent of batch boundaries, crashes and rebalances:
//!
//! - **Watermark** per partition: the largest event time seen minus the allowed lateness,
//!   where an event stamped ahead of the processing clock counts only up to the clock (it
//!   is counted as *future*): a client with a wrong clock cannot make the next hour of its
//!   partition late. An event is *late* when its time is below the watermark as it was just
//!   before it. A partition that has been idle (caught up, no records) for the idle timeout
//!   advances its watermark with the processing clock ([`PartitionState::advance_idle`]),
//!   so a stopped feed still closes its sessions and decides its windows.
//! - **Metrics** (per minute and event type, per product / category per minute) are
//!   additive deltas; late events still count at their own event time.
//! - **Flash-sale windows** (10 minutes sliding by 5 by default): an event counts toward a
//!   window's alert decision only while that window is still open on its partition
//!   (window end > watermark); afterwards it is counted as late for the window.
//! - **Sessions** per user with an inactivity gap in event time. A session closes when the
//!   watermark passes its last event plus the gap, or when the same user's next event
//!   starts after that point. A late event that no open session can take is recorded as
//!   not absorbed; it is never silently dropped.

use std::collections::BTreeSet;
use std::sync::Arc;

// foldhash instead of std's SipHash for the per-event maps (hashing showed as ~9% of the
// processor's time). Its per-process random seed is weaker against deliberate collisions
// than SipHash; the string keys (product ids, categories) are bounded by the contract's
// field length and a map lives for one batch, so a flood costs one slow batch at worst.
use foldhash::{HashMap, HashSet, HashSetExt};

use clickstream_model::{Event, EventTime, EventType};
use uuid::Uuid;

/// Microseconds in a minute.
pub const MINUTE: i64 = 60_000_000;
/// One hour in microseconds.
pub const HOUR: i64 = 3_600_000_000;

/// Tunables of the operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Allowed lateness behind the largest event time seen (default 2 min).
    pub lateness_micros: i64,
    /// Session inactivity gap (default 30 min).
    pub session_gap_micros: i64,
    /// Flash-sale window length (default 10 min).
    pub window_micros: i64,
    /// Flash-sale window slide (default 5 min); must divide the length.
    pub slide_micros: i64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lateness_micros: 2 * MINUTE,
            session_gap_micros: 30 * MINUTE,
            window_micros: 10 * MINUTE,
            slide_micros: 5 * MINUTE,
        }
    }
}

/// A valid event and where it came from.
#[derive(Debug, Clone)]
pub struct SourcedEvent {
    /// The event.
    pub event: Event,
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset.
    pub offset: i64,
}

pub use clickstream_model::event::is_bot_agent;

/// One session's running totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Id of the event that opened the session (stable primary key).
    pub key: Uuid,
    /// Time of that event (never changes; the table's partition key).
    pub opened_at: EventTime,
    /// The user.
    pub user_id: Uuid,
    /// Partition the user's events arrive on.
    pub partition: i32,
    /// First and last event time.
    pub start: EventTime,
    /// Last event time.
    pub end: EventTime,
    /// Events of any type.
    pub events: i32,
    /// Page views.
    pub page_views: i32,
    /// Cart additions.
    pub cart_adds: i32,
    /// Purchase lines.
    pub purchases: i32,
    /// Sum of purchase amounts, cents.
    pub revenue_cents: i64,
    /// Device of the opening event.
    pub device: Option<Arc<str>>,
    /// Country of the opening event.
    pub country: Option<Arc<str>>,
    /// The opening event's user agent looks like a bot.
    pub is_bot: bool,
    /// Still open (the watermark has not passed `end + gap`).
    pub is_open: bool,
}

impl Session {
    fn open(e: &SourcedEvent) -> Self {
        let ev = &e.event;
        let mut s = Session {
            key: ev.event_id,
            opened_at: ev.timestamp,
            user_id: ev.user_id,
            partition: e.partition,
            start: ev.timestamp,
            end: ev.timestamp,
            events: 0,
            page_views: 0,
            cart_adds: 0,
            purchases: 0,
            revenue_cents: 0,
            device: ev.device.clone(),
            country: ev.country.clone(),
            is_bot: ev.is_bot(),
            is_open: true,
        };
        s.absorb(ev);
        s
    }

    fn absorb(&mut self, ev: &Event) {
        self.start = self.start.min(ev.timestamp);
        self.end = self.end.max(ev.timestamp);
        self.events += 1;
        match ev.event_type {
            EventType::PageView => self.page_views += 1,
            EventType::AddToCart => self.cart_adds += 1,
            EventType::Purchase => {
                self.purchases += 1;
                self.revenue_cents += ev.amount.map_or(0, |a| a.cents());
            }
        }
    }
}

/// Per-minute totals of one event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinuteDelta {
    /// Events.
    pub events: i64,
    /// Units carted or bought.
    pub units: i64,
    /// Purchase amounts, cents.
    pub revenue_cents: i64,
    /// Events that arrived late.
    pub late: i64,
    /// Events from bot-like user agents.
    pub bot: i64,
    /// Events stamped ahead of the processing clock.
    pub future: i64,
}

/// Per-minute totals of one product or category.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductDelta {
    /// Category (for products).
    pub category: Option<Arc<str>>,
    /// Product page views.
    pub views: i64,
    /// Cart additions.
    pub cart_adds: i64,
    /// Purchase lines.
    pub purchases: i64,
    /// Units bought.
    pub units: i64,
    /// Purchase amounts, cents.
    pub revenue_cents: i64,
}

/// Per-window counts of one product.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowDelta {
    /// Views while the window was open.
    pub views: i64,
    /// Purchases while the window was open.
    pub purchases: i64,
    /// Views after it closed on their partition.
    pub late_views: i64,
    /// Purchases after it closed on their partition.
    pub late_purchases: i64,
}

/// A late event, for the audit table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateRecord {
    /// The event.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: EventType,
    /// Its time.
    pub event_time: EventTime,
    /// The partition watermark it was behind.
    pub watermark: EventTime,
    /// Where it came from.
    pub partition: i32,
    /// Where it came from.
    pub offset: i64,
    /// Whether an open session took it.
    pub absorbed: bool,
}

/// Everything one batch changes, as deltas (metrics) or latest values (sessions).
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// `(minute start µs, type)` -> delta.
    pub minutes: HashMap<(i64, EventType), MinuteDelta>,
    /// `(minute, product_id)` -> delta.
    pub products: HashMap<(i64, Arc<str>), ProductDelta>,
    /// `(minute, category)` -> delta.
    pub categories: HashMap<(i64, Arc<str>), ProductDelta>,
    /// `(window start µs, product_id)` -> delta.
    pub windows: HashMap<(i64, Arc<str>), WindowDelta>,
    /// Latest state of every session touched, by key.
    pub sessions: HashMap<Uuid, Session>,
    /// Late events.
    pub late: Vec<LateRecord>,
    /// Per event applied, in order: was it late (for the audit table).
    pub late_flags: Vec<bool>,
    /// `(hour start µs, type, user)` of every event applied (distinct users per hour).
    pub hourly_users: HashSet<(i64, EventType, Uuid)>,
}

impl BatchOutput {
    /// Events stamped ahead of the processing clock (they do not drive the watermark).
    pub fn future_events(&self) -> i64 {
        self.minutes.values().map(|m| m.future).sum()
    }
}

/// The state of one partition: its watermark and open sessions.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    /// Partition number.
    pub partition: i32,
    /// Largest event time seen minus the lateness; `None` before the first event.
    pub watermark: Option<EventTime>,
    /// Largest event time seen.
    pub max_event_time: Option<EventTime>,
    open: HashMap<Uuid, Session>,
    /// `(end + gap, user)` of every open session, to close them in watermark order.
    closing: BTreeSet<(i64, Uuid)>,
    touched: HashSet<Uuid>,
}

fn floor(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

impl PartitionState {
    /// State restored from storage.
    pub fn restore(
        partition: i32,
        watermark: Option<EventTime>,
        max_event_time: Option<EventTime>,
        open_sessions: Vec<Session>,
        cfg: &EngineConfig,
    ) -> Self {
        let mut s = PartitionState {
            partition,
            watermark,
            max_event_time,
            ..Default::default()
        };
        for sess in open_sessions {
            s.closing
                .insert((sess.end.as_micros() + cfg.session_gap_micros, sess.user_id));
            s.open.insert(sess.user_id, sess);
        }
        s
    }

    /// Open sessions right now.
    pub fn open_sessions(&self) -> usize {
        self.open.len()
    }

    fn close(&mut self, user: Uuid, cfg: &EngineConfig, out: &mut BatchOutput) {
        if let Some(mut s) = self.open.remove(&user) {
            self.closing
                .remove(&(s.end.as_micros() + cfg.session_gap_micros, user));
            s.is_open = false;
            self.touched.remove(&user);
            out.sessions.insert(s.key, s);
        }
    }

    /// Applies one distinct, valid event of this partition (in offset order); `now` is
    /// the processing clock (events ahead of it drive the watermark only up to it).
    pub fn apply(
        &mut self,
        e: &SourcedEvent,
        cfg: &EngineConfig,
        now: EventTime,
        out: &mut BatchOutput,
    ) {
        let ev = &e.event;
        let ts = ev.timestamp.as_micros();
        let future = ts > now.as_micros();
        let wm = self.watermark.map(EventTime::as_micros);
        let late = wm.is_some_and(|w| ts < w);
        let bot = ev.is_bot();
        let units = i64::from(ev.quantity.unwrap_or(0));
        let revenue = if ev.event_type == EventType::Purchase {
            ev.amount.map_or(0, |a| a.cents())
        } else {
            0
        };

        let minute = floor(ts, MINUTE);
        out.hourly_users
            .insert((floor(ts, HOUR), ev.event_type, ev.user_id));
        let m = out.minutes.entry((minute, ev.event_type)).or_default();
        m.events += 1;
        m.units += units;
        m.revenue_cents += revenue;
        m.late += i64::from(late);
        m.bot += i64::from(bot);
        m.future += i64::from(future);

        if let Some(pid) = &ev.product_id {
            let (views, carts, buys) = match ev.event_type {
                EventType::PageView => (1, 0, 0),
                EventType::AddToCart => (0, 1, 0),
                EventType::Purchase => (0, 0, 1),
            };
            let bought_units = if buys == 1 { units } else { 0 };
            let p = out.products.entry((minute, pid.clone())).or_default();
            if p.category.is_none() {
                p.category = ev.category.clone();
            }
            p.views += views;
            p.cart_adds += carts;
            p.purchases += buys;
            p.units += bought_units;
            p.revenue_cents += revenue;
            if let Some(cat) = &ev.category {
                let c = out.categories.entry((minute, cat.clone())).or_default();
                c.views += views;
                c.cart_adds += carts;
                c.purchases += buys;
                c.units += bought_units;
                c.revenue_cents += revenue;
            }
            if views + buys > 0 {
                let mut start = floor(ts, cfg.slide_micros);
                while start + cfg.window_micros > ts {
                    let open = wm.is_none_or(|w| start + cfg.window_micros > w);
                    let w = out.windows.entry((start, pid.clone())).or_default();
                    match (open, views == 1) {
                        (true, true) => w.views += 1,
                        (true, false) => w.purchases += 1,
                        (false, true) => w.late_views += 1,
                        (false, false) => w.late_purchases += 1,
                    }
                    start -= cfg.slide_micros;
                }
            }
        }

        let absorbed = self.sessionize(e, wm, cfg, out);
        if late {
            out.late.push(LateRecord {
                event_id: ev.event_id,
                event_type: ev.event_type,
                event_time: ev.timestamp,
                watermark: EventTime::from_micros(wm.unwrap_or(ts)),
                partition: e.partition,
                offset: e.offset,
                absorbed,
            });
        }
        out.late_flags.push(late);

        let cand = ts.min(now.as_micros()) - cfg.lateness_micros;
        if wm.is_none_or(|w| cand > w) {
            self.watermark = Some(EventTime::from_micros(cand));
        }
        if self.max_event_time.is_none_or(|m| ev.timestamp > m) {
            self.max_event_time = Some(ev.timestamp);
        }
    }

    /// Session logic for one event; returns whether a session took it.
    fn sessionize(
        &mut self,
        e: &SourcedEvent,
        wm: Option<i64>,
        cfg: &EngineConfig,
        out: &mut BatchOutput,
    ) -> bool {
        let ev = &e.event;
        let ts = ev.timestamp.as_micros();
        let gap = cfg.session_gap_micros;
        let user = ev.user_id;
        if let Some(s) = self.open.get(&user) {
            let close_at = s.end.as_micros() + gap;
            if wm.is_some_and(|w| w > close_at) || ts > close_at {
                self.close(user, cfg, out);
            }
        }
        if let Some(s) = self.open.get_mut(&user) {
            if ts < s.start.as_micros() - gap {
                return false;
            }
            let old_close = s.end.as_micros() + gap;
            s.absorb(ev);
            let new_close = s.end.as_micros() + gap;
            if new_close != old_close {
                self.closing.remove(&(old_close, user));
                self.closing.insert((new_close, user));
            }
            self.touched.insert(user);
            return true;
        }
        if wm.is_some_and(|w| ts < w) {
            return false;
        }
        let s = Session::open(e);
        self.closing.insert((s.end.as_micros() + gap, user));
        self.open.insert(user, s);
        self.touched.insert(user);
        true
    }

    /// An idle partition (caught up, no records for the idle timeout): its watermark
    /// follows the processing clock `now`, as if an event stamped `now` had arrived, and
    /// the sessions it passes close. Returns whether the watermark moved.
    pub fn advance_idle(&mut self, now: EventTime, cfg: &EngineConfig) -> bool {
        let cand = now.as_micros() - cfg.lateness_micros;
        if self.watermark.is_some_and(|w| w.as_micros() >= cand) {
            return false;
        }
        self.watermark = Some(EventTime::from_micros(cand));
        true
    }

    /// Ends the batch: closes sessions the watermark has passed and reports the latest
    /// state of every session touched.
    pub fn finish_batch(&mut self, cfg: &EngineConfig, out: &mut BatchOutput) {
        if let Some(w) = self.watermark.map(EventTime::as_micros) {
            while let Some(&(close_at, user)) = self.closing.first() {
                if w <= close_at {
                    break;
                }
                self.close(user, cfg, out);
            }
        }
        for user in self.touched.drain() {
            if let Some(s) = self.open.get(&user) {
                out.sessions.insert(s.key, s.clone());
            }
        }
    }
}

/// Keeps the first occurrence of each event key (id and event time; input in
/// partition/offset order); returns the kept events and how many were dropped as duplicates.
pub fn dedup_batch(mut events: Vec<SourcedEvent>) -> (Vec<SourcedEvent>, usize) {
    let mut seen = HashSet::with_capacity(events.len());
    let before = events.len();
    // In place: the events are large, and `retain` moves none until the first duplicate.
    events.retain(|e| seen.insert(e.event.key()));
    let dropped = before - events.len();
    (events, dropped)
}

#[cfg(test)]
mod tests;
