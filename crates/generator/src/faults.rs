//! Malformed records, made by breaking a good event in one of the ways real producers do.
//!
//! Every kind here must be rejected by `clickstream_model::parse_event`; a property test
//! holds the two in step.

use clickstream_model::Event;
use rand::Rng;
use serde_json::{json, Value};

/// How a malformed record was broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// The JSON is cut in half.
    Truncated,
    /// Not JSON at all (a log line).
    Garbage,
    /// `quantity` or `price` as a string.
    WrongType,
    /// `event_id` removed.
    MissingField,
    /// `user_id` set to `null`.
    NullField,
    /// `event_type` not in the contract.
    UnknownEventType,
    /// `session_id` is not a UUID.
    InvalidUuid,
    /// `price` below zero.
    NegativePrice,
    /// `price` written as `NaN`, as Python's `json` does.
    NanPrice,
    /// Timestamp at the Unix epoch.
    AncientTimestamp,
    /// Timestamp in the year 2100.
    FutureTimestamp,
    /// An invalid UTF-8 byte inside a string.
    NotUtf8,
    /// No bytes at all.
    Empty,
}

impl FaultKind {
    /// Every kind, in a fixed order (sampling picks by index).
    pub const ALL: [FaultKind; 13] = [
        FaultKind::Truncated,
        FaultKind::Garbage,
        FaultKind::WrongType,
        FaultKind::MissingField,
        FaultKind::NullField,
        FaultKind::UnknownEventType,
        FaultKind::InvalidUuid,
        FaultKind::NegativePrice,
        FaultKind::NanPrice,
        FaultKind::AncientTimestamp,
        FaultKind::FutureTimestamp,
        FaultKind::NotUtf8,
        FaultKind::Empty,
    ];

    /// The reason code the validator is expected to give this kind.
    pub fn expected_reason(self) -> &'static str {
        match self {
            FaultKind::Truncated | FaultKind::Garbage => "not_json",
            FaultKind::WrongType => "wrong_type",
            FaultKind::MissingField => "missing_field",
            FaultKind::NullField => "null_field",
            FaultKind::UnknownEventType => "unknown_event_type",
            FaultKind::InvalidUuid => "invalid_uuid",
            FaultKind::NegativePrice => "negative_amount",
            FaultKind::NanPrice => "non_finite_number",
            FaultKind::AncientTimestamp => "timestamp_too_old",
            FaultKind::FutureTimestamp => "timestamp_in_future",
            FaultKind::NotUtf8 => "not_utf8",
            FaultKind::Empty => "empty_payload",
        }
    }
}

/// Breaks `event` in a randomly chosen way. Price faults fall back to a wrong type on
/// events that carry no price.
pub fn corrupt(event: &Event, rng: &mut impl Rng) -> (FaultKind, Vec<u8>) {
    let kind = FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())];
    let kind = match kind {
        FaultKind::NegativePrice | FaultKind::NanPrice if event.price.is_none() => {
            FaultKind::WrongType
        }
        k => k,
    };
    (kind, corrupt_as(event, kind))
}

/// Breaks `event` in the given way.
pub fn corrupt_as(event: &Event, kind: FaultKind) -> Vec<u8> {
    let good = event.to_json();
    let mut v: Value = serde_json::from_slice(&good).unwrap_or(Value::Null);
    match kind {
        FaultKind::Truncated => return good[..good.len() / 2].to_vec(),
        FaultKind::Garbage => {
            return format!(
                "ERROR 500 upstream timeout while posting event {}",
                event.event_id
            )
            .into_bytes()
        }
        FaultKind::Empty => return Vec::new(),
        FaultKind::NotUtf8 => {
            let mut b = good;
            // Inside the event_id string value, so only the encoding is wrong.
            let at = b
                .windows(10)
                .position(|w| w == b"\"event_id\"")
                .map_or(2, |p| p + 13);
            b.insert(at.min(b.len()), 0xFF);
            return b;
        }
        FaultKind::NanPrice => {
            let price = serde_json::to_string(&event.price).unwrap_or_default();
            let s = String::from_utf8_lossy(&good).replacen(
                &format!("\"price\":{price}"),
                "\"price\":NaN",
                1,
            );
            return s.into_bytes();
        }
        _ => {}
    }
    let Some(m) = v.as_object_mut() else {
        return good;
    };
    match kind {
        FaultKind::WrongType => match m.get("quantity").cloned() {
            Some(q) => m.insert("quantity".into(), json!(format!("{q} units"))),
            None => m.insert("timestamp".into(), json!(event.timestamp.as_millis())),
        },
        FaultKind::MissingField => m.remove("event_id"),
        FaultKind::NullField => m.insert("user_id".into(), Value::Null),
        FaultKind::UnknownEventType => m.insert("event_type".into(), json!("wishlist_add")),
        FaultKind::InvalidUuid => m.insert("session_id".into(), json!("sess-42")),
        FaultKind::NegativePrice => {
            let p = event.price.map_or(1.0, |p| p.as_f64());
            m.insert("price".into(), json!(-p))
        }
        FaultKind::AncientTimestamp => m.insert("timestamp".into(), json!("1970-01-01T00:00:00Z")),
        FaultKind::FutureTimestamp => m.insert("timestamp".into(), json!("2100-01-01T00:00:00Z")),
        _ => None,
    };
    serde_json::to_vec(&v).unwrap_or_default()
}
