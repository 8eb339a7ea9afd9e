//! The event types and their JSON shape.
//!
//! Events are flat JSON objects. Optional fields are omitted rather than written as `null`,
//! so a record's size follows what it carries.

use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};

use aho_corasick::AhoCorasick;

use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::EventTime;

/// What the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Any page was shown; product pages carry the product fields.
    PageView,
    /// A product (with quantity) went into the cart.
    AddToCart,
    /// One order line was paid; lines of one order share `order_id`.
    Purchase,
}

impl EventType {
    /// All event types, in funnel order.
    pub const ALL: [EventType; 3] = [
        EventType::PageView,
        EventType::AddToCart,
        EventType::Purchase,
    ];

    /// The wire name (`page_view`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::AddToCart => "add_to_cart",
            EventType::Purchase => "purchase",
        }
    }

    /// Whether events of this type must name a product, its price and a quantity.
    pub const fn requires_product(self) -> bool {
        matches!(self, EventType::AddToCart | EventType::Purchase)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or(())
    }
}

/// Whether a user agent looks like a crawler or script (the stream processor and the lake
/// flag such events and sessions as bots the same way).
pub fn is_bot_agent(ua: Option<&str>) -> bool {
    let Some(ua) = ua else { return false };
    // One case-insensitive pass for all markers, without a lowercased copy: this runs for
    // every event, and the copy was a measurable share of the processor's time.
    static MARKERS: LazyLock<AhoCorasick> = LazyLock::new(|| {
        AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([
                "bot",
                "crawler",
                "spider",
                "python-requests",
                "scrapy",
                "curl/",
                "wget/",
            ])
            .expect("fixed patterns build")
    });
    MARKERS.is_match(ua)
}

/// Most agents [`bot_agent_seen`] remembers per thread before it starts over.
const BOT_CACHE_LIMIT: usize = 4_096;

thread_local! {
    static BOT_AGENTS: RefCell<foldhash::HashMap<usize, (Arc<str>, bool)>> =
        RefCell::new(foldhash::HashMap::default());
}

/// [`is_bot_agent`] remembered per shared agent string: validation gives the repeats of an
/// agent one allocation, so its address identifies it (the cache holds a reference, so
/// the address cannot be reused while it is cached).
fn bot_agent_seen(ua: &Arc<str>) -> bool {
    BOT_AGENTS.with_borrow_mut(|seen| {
        let addr = Arc::as_ptr(ua).cast::<u8>() as usize;
        if let Some((_, bot)) = seen.get(&addr) {
            return *bot;
        }
        if seen.len() >= BOT_CACHE_LIMIT {
            seen.clear();
        }
        let bot = is_bot_agent(Some(ua));
        seen.insert(addr, (Arc::clone(ua), bot));
        bot
    })
}

/// An amount of money in cents. On the wire it is a JSON number with up to two decimals
/// (`12.34`); inside the pipeline it stays an integer so sums are exact to the cent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub i64);

impl Money {
    /// From whole cents.
    pub const fn from_cents(cents: i64) -> Self {
        Money(cents)
    }

    /// Whole cents.
    pub const fn cents(self) -> i64 {
        self.0
    }

    /// As a decimal number of currency units (exact for every amount below 2^53 cents).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 100.0
    }

    /// Rounds a decimal amount to the nearest cent; `None` if not finite.
    pub fn from_f64(v: f64) -> Option<Self> {
        v.is_finite().then(|| Money((v * 100.0).round() as i64))
    }

    /// `self * n`, saturating.
    pub fn times(self, n: u32) -> Money {
        Money(self.0.saturating_mul(i64::from(n)))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let a = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", a / 100, a % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Shortest round-trip formatting turns 1234 / 100.0 into `12.34`, never `12.340000001`.
        s.serialize_f64(self.as_f64())
    }
}

/// What makes two records the same event: the id and the event time. A re-sent or
/// replayed record is byte-identical, so it matches on both. Keeping the time in the key
/// lets a store order its dedup ledger by time, so inserts land at the end of the index and
/// old entries go by range (the key Spark's `dropDuplicates(id, eventTime)` uses too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    /// Event time first: the order a time-ordered ledger sorts in.
    pub timestamp: EventTime,
    /// The event's id.
    pub event_id: Uuid,
}

/// One clickstream event (schema version 1). See `docs/events.md` for the field reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Always [`crate::SCHEMA_VERSION`] for events built by this crate.
    pub schema_version: u32,
    /// Unique per event; a re-sent event keeps its id (deduplication keys on it together
    /// with the timestamp, see [`EventKey`]).
    pub event_id: Uuid,
    /// What happened.
    pub event_type: EventType,
    /// Event time (when it happened on the user's side), UTC.
    pub timestamp: EventTime,
    /// The user; also the Kafka record key, so one user's events stay in order on one partition.
    pub user_id: Uuid,
    /// The visit this event belongs to.
    pub session_id: Uuid,
    /// Product shown / carted / bought.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_id: Option<Arc<str>>,
    /// The product's category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Arc<str>>,
    /// Unit price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<Money>,
    /// Units carted or bought.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    /// Order this purchase line belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Uuid>,
    /// Line amount of a purchase: `price * quantity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<Money>,
    /// `desktop`, `mobile` or `tablet`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<Arc<str>>,
    /// ISO 3166-1 alpha-2 country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Arc<str>>,
    /// Browser user agent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<Arc<str>>,
    /// Where the visit came from (landing events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub referrer: Option<Arc<str>>,
    /// Campaign source (landing events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<Arc<str>>,
    /// Page kind: `home`, `category`, `search`, `product`, `cart`, `checkout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<Arc<str>>,
    /// Browser family and major version (`Chrome 120`), set by the collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub browser: Option<Arc<str>>,
    /// Operating system family (`Android`, `Windows`), set by the collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<Arc<str>>,
    /// Whether the user agent is a known crawler or script, set by the collector; when
    /// absent, readers fall back to [`is_bot_agent`] (see [`Event::is_bot`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bot: Option<bool>,
    /// The client's address, anonymised (IPv4: last octet zeroed; IPv6: last 80 bits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<Arc<str>>,
    /// The device's own clock reading of the event, when the collector corrected
    /// `timestamp` for the device's clock skew. Part of the dedup identity (see
    /// [`Event::key`]): a retried send gets a slightly different correction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_timestamp: Option<EventTime>,
    /// The device's clock when it sent the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<EventTime>,
    /// The collector's clock when it received the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<EventTime>,
}

impl Event {
    /// The deduplication identity of this event: its id and the time the device stamped
    /// on it (`client_timestamp` when the collector corrected `timestamp`, which a retry
    /// with another `sent_at` would correct slightly differently).
    pub fn key(&self) -> EventKey {
        EventKey {
            timestamp: self.client_timestamp.unwrap_or(self.timestamp),
            event_id: self.event_id,
        }
    }

    /// Whether this event came from a crawler or script: the collector's verdict when it
    /// gave one, else the user-agent rule every reader shares ([`is_bot_agent`]).
    pub fn is_bot(&self) -> bool {
        self.bot
            .unwrap_or_else(|| self.user_agent.as_ref().is_some_and(bot_agent_seen))
    }

    /// A bare event of `event_type` with no product, order or context fields.
    pub fn new(
        event_id: Uuid,
        event_type: EventType,
        timestamp: EventTime,
        user_id: Uuid,
        session_id: Uuid,
    ) -> Self {
        Event {
            schema_version: crate::SCHEMA_VERSION,
            event_id,
            event_type,
            timestamp,
            user_id,
            session_id,
            product_id: None,
            category: None,
            price: None,
            quantity: None,
            order_id: None,
            amount: None,
            device: None,
            country: None,
            user_agent: None,
            referrer: None,
            utm_source: None,
            page: None,
            browser: None,
            os: None,
            bot: None,
            ip: None,
            client_timestamp: None,
            sent_at: None,
            received_at: None,
        }
    }

    /// Appends this event's JSON encoding to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Serialising plain data into a Vec cannot fail: every map key is a string and no
        // Serialize impl here returns an error.
        let _ = serde_json::to_writer(out, self);
    }

    /// This event's JSON encoding.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(384);
        self.write_json(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_prints_exact_decimals() {
        let mut v = Vec::new();
        serde_json::to_writer(&mut v, &Money(1234)).unwrap();
        assert_eq!(v, b"12.34");
        assert_eq!(Money(-5).to_string(), "-0.05");
        assert_eq!(Money::from_f64(19.99), Some(Money(1999)));
        assert_eq!(Money::from_f64(f64::NAN), None);
        for c in [0i64, 1, 10, 99, 1999, 123456789, 9_999_999_999] {
            let mut v = Vec::new();
            serde_json::to_writer(&mut v, &Money(c)).unwrap();
            let back: f64 = serde_json::from_slice(&v).unwrap();
            assert_eq!(Money::from_f64(back), Some(Money(c)));
        }
    }
}
