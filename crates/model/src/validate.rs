//! Turning untrusted record bytes into an [`Event`], or a [`RejectReason`].
//!
//! Good records take a fast path: one typed `serde` pass that borrows strings from the
//! input, then semantic checks. Only when that typed pass fails (bad JSON, wrong types)
//! does a slower pass over a `serde_json::Value` work out exactly which field is wrong,
//! so the common case pays nothing for precise error reporting.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

use foldhash::HashSet;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

use crate::{Event, EventTime, EventType, Money, SCHEMA_VERSION};

/// Bounds a record must respect. Time bounds are relative to `now`, which the caller
/// passes in so validation stays deterministic in tests and replays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValidationPolicy {
    /// Reference "now" for the timestamp bounds.
    pub now: EventTime,
    /// Oldest accepted event time, as microseconds before `now`.
    pub max_age_micros: i64,
    /// Furthest accepted event time in the future (clock skew), as microseconds after `now`.
    pub max_future_micros: i64,
    /// Largest accepted record in bytes.
    pub max_bytes: usize,
    /// Largest accepted unit price or line amount.
    pub max_amount: Money,
    /// Largest accepted quantity.
    pub max_quantity: u32,
}

/// One day in microseconds.
pub const DAY_MICROS: i64 = 86_400 * 1_000_000;

/// The bounds of the contract a deployment chooses (record size, oldest and furthest
/// future event time). Every reader of the raw topic (the processor, the lake writer)
/// validates with the same limits, so they can never accept different records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractLimits {
    /// Oldest accepted event time, as microseconds before now (also the dedup horizon).
    pub max_age_micros: i64,
    /// Furthest accepted event time ahead of now, in microseconds.
    pub max_future_micros: i64,
    /// Largest accepted record in bytes.
    pub max_bytes: usize,
}

impl Default for ContractLimits {
    /// 7 days old, 1 hour ahead, 64 KiB: see [`ValidationPolicy::new`].
    fn default() -> Self {
        let p = ValidationPolicy::new(EventTime::from_micros(0));
        ContractLimits {
            max_age_micros: p.max_age_micros,
            max_future_micros: p.max_future_micros,
            max_bytes: p.max_bytes,
        }
    }
}

impl ContractLimits {
    /// The validation policy with these limits at `now`.
    pub fn policy(&self, now: EventTime) -> ValidationPolicy {
        let mut p = ValidationPolicy::new(now);
        p.max_age_micros = self.max_age_micros;
        p.max_future_micros = self.max_future_micros;
        p.max_bytes = self.max_bytes;
        p
    }
}

impl ValidationPolicy {
    /// Defaults: events up to 7 days old and 1 hour ahead, 64 KiB records, prices and
    /// amounts up to 1,000,000.00, quantities up to 1,000.
    pub fn new(now: EventTime) -> Self {
        ValidationPolicy {
            now,
            max_age_micros: 7 * DAY_MICROS,
            max_future_micros: 3_600 * 1_000_000,
            max_bytes: 64 * 1024,
            max_amount: Money(100_000_000),
            max_quantity: 1_000,
        }
    }
}

/// Longest accepted identifier-like string (`product_id`, `category`, `device`, ...).
pub const MAX_SHORT_FIELD: usize = 64;
/// Longest accepted free-text string (`user_agent`, `referrer`).
pub const MAX_LONG_FIELD: usize = 512;

/// Why a record was rejected. [`RejectReason::code`] is the stable machine-readable form
/// written to the dead-letter headers and the `rejected_events` table.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RejectReason {
    /// The record value had no bytes at all.
    #[error("empty payload")]
    EmptyPayload,
    /// The record was larger than the policy allows.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Record size.
        size: usize,
        /// The policy's limit.
        limit: usize,
    },
    /// The bytes are not valid UTF-8 (JSON must be).
    #[error("payload is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Not parseable as JSON.
    #[error("payload is not valid JSON: {detail}")]
    NotJson {
        /// The parser's message.
        detail: String,
    },
    /// JSON with `NaN`, `Infinity` or a number beyond f64 range (Python's `json` writes these).
    #[error("payload contains a non-finite number (NaN, Infinity or out of range)")]
    NonFiniteNumber,
    /// Valid JSON, but not an object.
    #[error("payload is JSON but not an object")]
    NotAnObject,
    /// A required field is absent.
    #[error("required field `{field}` is missing")]
    MissingField {
        /// Field name.
        field: &'static str,
    },
    /// A required field is `null`.
    #[error("required field `{field}` is null")]
    NullField {
        /// Field name.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// Field name.
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// `schema_version` is one this build does not read.
    #[error("unsupported schema_version {0}")]
    UnsupportedSchemaVersion(u64),
    /// `event_type` is not one of the known types.
    #[error("unknown event_type `{0}`")]
    UnknownEventType(String),
    /// A UUID field does not parse as a UUID.
    #[error("field `{field}` is not a valid UUID")]
    InvalidUuid {
        /// Field name.
        field: &'static str,
    },
    /// `timestamp` is not RFC 3339.
    #[error("timestamp is not an RFC 3339 date-time")]
    InvalidTimestamp,
    /// `timestamp` is older than the policy allows.
    #[error("timestamp {0} is too far in the past")]
    TimestampTooOld(String),
    /// `timestamp` is further in the future than the policy allows.
    #[error("timestamp {0} is too far in the future")]
    TimestampInFuture(String),
    /// A price or amount is below zero.
    #[error("field `{field}` is negative")]
    NegativeAmount {
        /// Field name.
        field: &'static str,
    },
    /// A price or amount is above the policy's maximum.
    #[error("field `{field}` exceeds the maximum amount")]
    AmountTooLarge {
        /// Field name.
        field: &'static str,
    },
    /// `quantity` is zero or above the policy's maximum.
    #[error("quantity {0} is out of range")]
    InvalidQuantity(u64),
    /// A purchase's `amount` is not `price * quantity` (to the cent).
    #[error("amount {amount} does not equal price {price} x quantity {quantity}")]
    AmountMismatch {
        /// The record's amount.
        amount: Money,
        /// The record's unit price.
        price: Money,
        /// The record's quantity.
        quantity: u32,
    },
    /// A string field is longer than allowed, or empty where a value is needed.
    #[error("field `{field}` is empty or longer than {limit} characters")]
    BadFieldLength {
        /// Field name.
        field: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A text field holds a control character (U+0000-U+001F, U+007F-U+009F).
    /// PostgreSQL's `text` refuses U+0000 outright, and no identifier, label or header a
    /// browser sends carries the others.
    #[error("field `{field}` contains a control character")]
    ControlCharacter {
        /// Field name.
        field: &'static str,
    },
    /// `client_timestamp`, `sent_at` or `received_at` is not RFC 3339, or further from now
    /// than the event-age bound (a device clock that far off cannot be corrected).
    #[error("field `{field}` ({value}) is not an RFC 3339 time within the event-age bound of now")]
    InvalidClockTime {
        /// Field name.
        field: &'static str,
        /// The value, printable.
        value: String,
    },
    /// Structurally invalid in a way none of the above names (e.g. a duplicated key).
    #[error("malformed event: {0}")]
    Malformed(String),
}

impl RejectReason {
    /// Every reason code, for documentation and coverage tests.
    pub const ALL_CODES: [&'static str; 23] = [
        "empty_payload",
        "too_large",
        "not_utf8",
        "not_json",
        "non_finite_number",
        "not_an_object",
        "missing_field",
        "null_field",
        "wrong_type",
        "unsupported_schema_version",
        "unknown_event_type",
        "invalid_uuid",
        "invalid_timestamp",
        "timestamp_too_old",
        "timestamp_in_future",
        "negative_amount",
        "amount_too_large",
        "invalid_quantity",
        "amount_mismatch",
        "bad_field_length",
        "control_character",
        "invalid_clock_time",
        "malformed",
    ];

    /// Stable snake_case code of this reason.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::EmptyPayload => "empty_payload",
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::NotUtf8 { .. } => "not_utf8",
            RejectReason::NotJson { .. } => "not_json",
            RejectReason::NonFiniteNumber => "non_finite_number",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::MissingField { .. } => "missing_field",
            RejectReason::NullField { .. } => "null_field",
            RejectReason::WrongType { .. } => "wrong_type",
            RejectReason::UnsupportedSchemaVersion(_) => "unsupported_schema_version",
            RejectReason::UnknownEventType(_) => "unknown_event_type",
            RejectReason::InvalidUuid { .. } => "invalid_uuid",
            RejectReason::InvalidTimestamp => "invalid_timestamp",
            RejectReason::TimestampTooOld(_) => "timestamp_too_old",
            RejectReason::TimestampInFuture(_) => "timestamp_in_future",
            RejectReason::NegativeAmount { .. } => "negative_amount",
            RejectReason::AmountTooLarge { .. } => "amount_too_large",
            RejectReason::InvalidQuantity(_) => "invalid_quantity",
            RejectReason::AmountMismatch { .. } => "amount_mismatch",
            RejectReason::BadFieldLength { .. } => "bad_field_length",
            RejectReason::ControlCharacter { .. } => "control_character",
            RejectReason::InvalidClockTime { .. } => "invalid_clock_time",
            RejectReason::Malformed(_) => "malformed",
        }
    }

    /// The field the reason is about, when there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            RejectReason::MissingField { field }
            | RejectReason::NullField { field }
            | RejectReason::WrongType { field, .. }
            | RejectReason::InvalidUuid { field }
            | RejectReason::NegativeAmount { field }
            | RejectReason::AmountTooLarge { field }
            | RejectReason::BadFieldLength { field, .. }
            | RejectReason::ControlCharacter { field }
            | RejectReason::InvalidClockTime { field, .. } => Some(field),
            RejectReason::UnknownEventType(_) => Some("event_type"),
            RejectReason::InvalidTimestamp
            | RejectReason::TimestampTooOld(_)
            | RejectReason::TimestampInFuture(_) => Some("timestamp"),
            RejectReason::InvalidQuantity(_) => Some("quantity"),
            RejectReason::AmountMismatch { .. } => Some("amount"),
            RejectReason::UnsupportedSchemaVersion(_) => Some("schema_version"),
            _ => None,
        }
    }
}

/// A field as seen on the wire: absent, `null`, or a value.
#[derive(Debug, Default)]
enum Field<T> {
    #[default]
    Missing,
    Null,
    Present(T),
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            None => Field::Null,
            Some(v) => Field::Present(v),
        })
    }
}

/// The typed first pass; strings borrow from the input where they have no escapes.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    schema_version: Field<u64>,
    #[serde(default, borrow)]
    event_id: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_type: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    timestamp: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_id: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    session_id: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    product_id: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    category: Field<Cow<'a, str>>,
    #[serde(default)]
    price: Field<f64>,
    #[serde(default)]
    quantity: Field<u64>,
    #[serde(default, borrow)]
    order_id: Field<Cow<'a, str>>,
    #[serde(default)]
    amount: Field<f64>,
    #[serde(default, borrow)]
    device: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    country: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_agent: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    referrer: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    utm_source: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    page: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    browser: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    os: Field<Cow<'a, str>>,
    #[serde(default)]
    bot: Field<bool>,
    #[serde(default, borrow)]
    ip: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    client_timestamp: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    sent_at: Field<Cow<'a, str>>,
    #[serde(default, borrow)]
    received_at: Field<Cow<'a, str>>,
}

/// The JSON type each known field must have, for the precise second pass.
const FIELD_TYPES: [(&str, Expected); 25] = [
    ("schema_version", Expected::UnsignedInt),
    ("event_id", Expected::String),
    ("event_type", Expected::String),
    ("timestamp", Expected::String),
    ("user_id", Expected::String),
    ("session_id", Expected::String),
    ("product_id", Expected::String),
    ("category", Expected::String),
    ("price", Expected::Number),
    ("quantity", Expected::UnsignedInt),
    ("order_id", Expected::String),
    ("amount", Expected::Number),
    ("device", Expected::String),
    ("country", Expected::String),
    ("user_agent", Expected::String),
    ("referrer", Expected::String),
    ("utm_source", Expected::String),
    ("page", Expected::String),
    ("browser", Expected::String),
    ("os", Expected::String),
    ("bot", Expected::Bool),
    ("ip", Expected::String),
    ("client_timestamp", Expected::String),
    ("sent_at", Expected::String),
    ("received_at", Expected::String),
];

#[derive(Clone, Copy)]
enum Expected {
    String,
    Number,
    UnsignedInt,
    Bool,
}

impl Expected {
    fn matches(self, v: &Value) -> bool {
        match self {
            Expected::String => v.is_string(),
            Expected::Number => v.is_number(),
            Expected::UnsignedInt => v.is_u64(),
            Expected::Bool => v.is_boolean(),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Expected::String => "a string",
            Expected::Number => "a number",
            Expected::UnsignedInt => "a non-negative integer",
            Expected::Bool => "true or false",
        }
    }
}

/// Parses and validates one record value.
pub fn parse_event(bytes: &[u8], policy: &ValidationPolicy) -> Result<Event, RejectReason> {
    if bytes.is_empty() {
        return Err(RejectReason::EmptyPayload);
    }
    if bytes.len() > policy.max_bytes {
        return Err(RejectReason::TooLarge {
            size: bytes.len(),
            limit: policy.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| RejectReason::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    match serde_json::from_str::<Wire<'_>>(text) {
        Ok(wire) => check(wire, policy),
        Err(e) => Err(explain_parse_failure(text, e)),
    }
}

/// Works out the precise reason when the typed pass failed.
fn explain_parse_failure(text: &str, typed_err: serde_json::Error) -> RejectReason {
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return if has_non_finite_number(text) || e.to_string().contains("out of range") {
                RejectReason::NonFiniteNumber
            } else {
                RejectReason::NotJson {
                    detail: printable(&e.to_string(), 200),
                }
            };
        }
    };
    let Value::Object(map) = value else {
        return RejectReason::NotAnObject;
    };
    for (field, expected) in FIELD_TYPES {
        if let Some(v) = map.get(field) {
            if !v.is_null() && !expected.matches(v) {
                return RejectReason::WrongType {
                    field,
                    expected: expected.describe(),
                };
            }
        }
    }
    RejectReason::Malformed(printable(&typed_err.to_string(), 200))
}

/// Whether `text` has a bare `NaN` / `Infinity` token outside strings (Python's `json`
/// module writes these; they are not JSON).
fn has_non_finite_number(text: &str) -> bool {
    let mut in_string = false;
    let mut escaped = false;
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if bytes[i..].starts_with(b"NaN") || bytes[i..].starts_with(b"Infinity") {
            return true;
        }
    }
    false
}

fn required<T>(f: Field<T>, field: &'static str) -> Result<T, RejectReason> {
    match f {
        Field::Present(v) => Ok(v),
        Field::Null => Err(RejectReason::NullField { field }),
        Field::Missing => Err(RejectReason::MissingField { field }),
    }
}

fn optional<T>(f: Field<T>) -> Option<T> {
    match f {
        Field::Present(v) => Some(v),
        _ => None,
    }
}

fn uuid(s: &str, field: &'static str) -> Result<Uuid, RejectReason> {
    Uuid::try_parse(s).map_err(|_| RejectReason::InvalidUuid { field })
}

/// A text field checked for control characters and length, in its own allocation (for
/// values that rarely repeat: referrers, addresses).
fn text(
    v: Option<Cow<'_, str>>,
    field: &'static str,
    limit: usize,
) -> Result<Option<Arc<str>>, RejectReason> {
    Ok(checked(v, field, limit)?.map(|s| Arc::from(s.as_ref())))
}

/// Like [`text`], for values that repeat from event to event (agents, categories,
/// products, countries): the repeats share one allocation (see [`intern`]).
fn shared_text(
    v: Option<Cow<'_, str>>,
    field: &'static str,
    limit: usize,
) -> Result<Option<Arc<str>>, RejectReason> {
    Ok(checked(v, field, limit)?.map(|s| {
        if s.len() <= INTERN_MAX_LEN {
            intern(&s)
        } else {
            Arc::from(s.as_ref())
        }
    }))
}

fn checked<'a>(
    v: Option<Cow<'a, str>>,
    field: &'static str,
    limit: usize,
) -> Result<Option<Cow<'a, str>>, RejectReason> {
    let Some(s) = v else { return Ok(None) };
    // Printable ASCII (nearly every value) is checked byte by byte, with its length in
    // characters known; anything else takes the full Unicode path.
    let (control, chars) = if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        (false, s.len())
    } else {
        (s.chars().any(char::is_control), s.chars().count())
    };
    if control {
        return Err(RejectReason::ControlCharacter { field });
    }
    if chars == 0 || chars > limit {
        return Err(RejectReason::BadFieldLength { field, limit });
    }
    Ok(Some(s))
}

/// Most distinct values [`intern`] keeps per thread before it starts over...
const INTERN_LIMIT: usize = 16_384;
/// ... and the longest (in bytes): at most 4 MB per thread, whatever clients send.
const INTERN_MAX_LEN: usize = 256;

thread_local! {
    static INTERNED: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::default());
}

/// The shared copy of `s`. An allocation per field per event (and its free) was the
/// largest single cost of validation; a stream repeats a few thousand agents, pages and
/// products. The set is bounded: a flood of distinct values only empties it again.
fn intern(s: &str) -> Arc<str> {
    INTERNED.with_borrow_mut(|set| {
        if let Some(shared) = set.get(s) {
            return Arc::clone(shared);
        }
        if set.len() >= INTERN_LIMIT {
            set.clear();
        }
        let shared: Arc<str> = Arc::from(s);
        set.insert(Arc::clone(&shared));
        shared
    })
}

fn money(
    v: Option<f64>,
    field: &'static str,
    policy: &ValidationPolicy,
) -> Result<Option<Money>, RejectReason> {
    let Some(v) = v else { return Ok(None) };
    let m = Money::from_f64(v).ok_or(RejectReason::NonFiniteNumber)?;
    if m.cents() < 0 {
        return Err(RejectReason::NegativeAmount { field });
    }
    if m > policy.max_amount {
        return Err(RejectReason::AmountTooLarge { field });
    }
    Ok(Some(m))
}

/// Semantic checks on a typed record, in a fixed order so each bad record gets one
/// deterministic reason.
fn check(w: Wire<'_>, policy: &ValidationPolicy) -> Result<Event, RejectReason> {
    if let Some(v) = optional(w.schema_version) {
        if v != u64::from(SCHEMA_VERSION) {
            return Err(RejectReason::UnsupportedSchemaVersion(v));
        }
    }
    let event_id = required(w.event_id, "event_id")?;
    let event_type = required(w.event_type, "event_type")?;
    let timestamp = required(w.timestamp, "timestamp")?;
    let user_id = required(w.user_id, "user_id")?;
    let session_id = required(w.session_id, "session_id")?;

    let event_type: EventType = event_type
        .parse()
        .map_err(|()| RejectReason::UnknownEventType(printable(&event_type, 64)))?;
    let event_id = uuid(&event_id, "event_id")?;
    let user_id = uuid(&user_id, "user_id")?;
    let session_id = uuid(&session_id, "session_id")?;

    let ts = EventTime::parse_rfc3339(&timestamp).ok_or(RejectReason::InvalidTimestamp)?;
    if ts.as_micros() < policy.now.as_micros().saturating_sub(policy.max_age_micros) {
        return Err(RejectReason::TimestampTooOld(printable(&timestamp, 40)));
    }
    if ts.as_micros()
        > policy
            .now
            .as_micros()
            .saturating_add(policy.max_future_micros)
    {
        return Err(RejectReason::TimestampInFuture(printable(&timestamp, 40)));
    }

    let needs_product = event_type.requires_product();
    let product_id = if needs_product {
        Some(required(w.product_id, "product_id")?)
    } else {
        optional(w.product_id)
    };
    let category = if needs_product {
        Some(required(w.category, "category")?)
    } else {
        optional(w.category)
    };
    let price = if needs_product {
        Some(required(w.price, "price")?)
    } else {
        optional(w.price)
    };
    let quantity = if needs_product {
        Some(required(w.quantity, "quantity")?)
    } else {
        optional(w.quantity)
    };
    let is_purchase = event_type == EventType::Purchase;
    let order_id = if is_purchase {
        Some(required(w.order_id, "order_id")?)
    } else {
        optional(w.order_id)
    };
    let amount = if is_purchase {
        Some(required(w.amount, "amount")?)
    } else {
        optional(w.amount)
    };

    let price = money(price, "price", policy)?;
    let amount = money(amount, "amount", policy)?;
    let quantity = match quantity {
        None => None,
        Some(q) if q == 0 || q > u64::from(policy.max_quantity) => {
            return Err(RejectReason::InvalidQuantity(q))
        }
        Some(q) => Some(q as u32),
    };
    if let (Some(amount), Some(price), Some(quantity)) = (amount, price, quantity) {
        if (amount.cents() - price.times(quantity).cents()).abs() > 1 {
            return Err(RejectReason::AmountMismatch {
                amount,
                price,
                quantity,
            });
        }
    }
    let order_id = order_id.map(|s| uuid(&s, "order_id")).transpose()?;
    let client_timestamp = optional(w.client_timestamp)
        .map(|s| client_time(&s, "client_timestamp", policy))
        .transpose()?;
    let sent_at = optional(w.sent_at)
        .map(|s| client_time(&s, "sent_at", policy))
        .transpose()?;
    let received_at = optional(w.received_at)
        .map(|s| client_time(&s, "received_at", policy))
        .transpose()?;

    Ok(Event {
        schema_version: SCHEMA_VERSION,
        event_id,
        event_type,
        timestamp: ts,
        user_id,
        session_id,
        product_id: shared_text(product_id, "product_id", MAX_SHORT_FIELD)?,
        category: shared_text(category, "category", MAX_SHORT_FIELD)?,
        price,
        quantity,
        order_id,
        amount,
        device: shared_text(optional(w.device), "device", MAX_SHORT_FIELD)?,
        country: shared_text(optional(w.country), "country", MAX_SHORT_FIELD)?,
        user_agent: shared_text(optional(w.user_agent), "user_agent", MAX_LONG_FIELD)?,
        referrer: text(optional(w.referrer), "referrer", MAX_LONG_FIELD)?,
        utm_source: shared_text(optional(w.utm_source), "utm_source", MAX_SHORT_FIELD)?,
        page: shared_text(optional(w.page), "page", MAX_SHORT_FIELD)?,
        browser: shared_text(optional(w.browser), "browser", MAX_SHORT_FIELD)?,
        os: shared_text(optional(w.os), "os", MAX_SHORT_FIELD)?,
        bot: optional(w.bot),
        ip: text(optional(w.ip), "ip", MAX_SHORT_FIELD)?,
        client_timestamp,
        sent_at,
        received_at,
    })
}

/// A device or collector clock reading: RFC 3339, and within the event-age bound of now
/// in either direction. The bound keeps a key time (`client_timestamp`) inside the dedup
/// ledger's horizon; a device clock further off than that cannot be corrected reliably.
fn client_time(
    s: &str,
    field: &'static str,
    policy: &ValidationPolicy,
) -> Result<EventTime, RejectReason> {
    let bad = || RejectReason::InvalidClockTime {
        field,
        value: printable(s, 40),
    };
    let t = EventTime::parse_rfc3339(s).ok_or_else(bad)?;
    if (t.as_micros() - policy.now.as_micros()).abs() > policy.max_age_micros {
        return Err(bad());
    }
    Ok(t)
}

/// At most `max_chars` characters of untrusted text, with control characters written as
/// `\u{..}` escapes: rejection details are stored in PostgreSQL `text` columns and Kafka
/// headers, which must never receive raw input (U+0000 alone would make the row unstorable).
pub fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars));
    for c in s.chars().take(max_chars) {
        if c.is_control() {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
