//! A corpus of trouble for the processor: records the contract must reject (each with the
//! reason it must be rejected with) and valid edge cases it must count, with the keys a
//! careless producer sends (none, oversized). Built relative to "now" so the time bounds
//! classify them the same way whenever the test runs.

use clickstream_model::{Event, EventTime, EventType, Money};
use serde_json::{json, Value};
use uuid::Uuid;

/// What must become of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Rejected with this reason code.
    Rejected(&'static str),
    /// A valid event: counted once.
    Valid,
}

/// One record of the corpus.
#[derive(Debug, Clone)]
pub struct Case {
    /// What it is, for failure messages.
    pub name: &'static str,
    /// Record key (`None`: no key).
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub value: Vec<u8>,
    /// What must become of it.
    pub outcome: Outcome,
}

/// A valid purchase `minutes_ago` minutes before now, as a JSON value.
pub fn purchase(minutes_ago: i64) -> Value {
    let now = EventTime::now().as_micros() - minutes_ago * 60_000_000;
    let mut e = Event::new(
        Uuid::new_v4(),
        EventType::Purchase,
        EventTime::from_micros(now),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    e.product_id = Some("P00001".into());
    e.category = Some("toys".into());
    e.price = Some(Money(1999));
    e.quantity = Some(2);
    e.order_id = Some(Uuid::new_v4());
    e.amount = Some(Money(3998));
    e.device = Some("mobile".into());
    e.country = Some("DE".into());
    e.user_agent = Some("Mozilla/5.0".into());
    e.referrer = Some("https://example.com/".into());
    e.utm_source = Some("newsletter".into());
    e.page = Some("/checkout".into());
    serde_json::from_slice(&e.to_json()).expect("event JSON")
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON")
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut v = purchase(5);
    v[field] = value;
    bytes(&v)
}

fn without(field: &str) -> Vec<u8> {
    let mut v = purchase(5);
    v.as_object_mut().expect("object").remove(field);
    bytes(&v)
}

/// `purchase(5)` as text with `from` replaced by `to` (for what `serde_json` will not write).
fn raw(from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(bytes(&purchase(5))).expect("utf-8");
    assert!(text.contains(from), "{from} not in {text}");
    text.replacen(from, to, 1).into_bytes()
}

fn bad(name: &'static str, reason: &'static str, value: Vec<u8>) -> Case {
    Case {
        name,
        key: Some(b"user-key".to_vec()),
        value,
        outcome: Outcome::Rejected(reason),
    }
}

fn good(name: &'static str, value: Vec<u8>) -> Case {
    Case {
        name,
        key: Some(b"user-key".to_vec()),
        value,
        outcome: Outcome::Valid,
    }
}

/// The corpus: over 40 kinds of bad records and a dozen valid edge cases.
pub fn corpus() -> Vec<Case> {
    let good_bytes = bytes(&purchase(5));
    let mut not_utf8 = good_bytes.clone();
    not_utf8.insert(20, 0xC3);
    not_utf8.insert(21, 0x28);
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(&good_bytes);
    let deep = {
        let mut s = "[".repeat(100_000);
        s.push_str(&"]".repeat(100_000));
        s.into_bytes()
    };
    let deep_inside = {
        let mut v = String::from_utf8(good_bytes.clone()).expect("utf-8");
        v.pop();
        v.push_str(",\"extra\":");
        v.push_str(&"{\"a\":".repeat(100_000));
        v.push('1');
        v.push_str(&"}".repeat(100_000));
        v.push('}');
        v.into_bytes()
    };
    let two_mb = {
        let mut v = purchase(5);
        v["padding"] = json!("x".repeat(2 * 1024 * 1024));
        bytes(&v)
    };
    let mut cases = vec![
        bad("empty value", "empty_payload", Vec::new()),
        bad("2 MB compressible record", "too_large", two_mb),
        bad("invalid UTF-8", "not_utf8", not_utf8),
        bad(
            "Latin-1 bytes",
            "not_utf8",
            b"{\"category\":\"caf\xe9\"}".to_vec(),
        ),
        bad(
            "truncated JSON",
            "not_json",
            good_bytes[..good_bytes.len() / 2].to_vec(),
        ),
        bad(
            "HTML error page",
            "not_json",
            b"<html>502 Bad Gateway</html>".to_vec(),
        ),
        bad("byte-order mark before the JSON", "not_json", bom),
        bad(
            "100,000-deep array (over the size bound)",
            "too_large",
            deep,
        ),
        bad(
            "100,000-deep object in an unknown field",
            "too_large",
            deep_inside,
        ),
        bad("30,000-deep array", "not_json", {
            let mut s = "[".repeat(30_000);
            s.push_str(&"]".repeat(30_000));
            s.into_bytes()
        }),
        // Unknown fields are skipped without recursion: valid.
        good("30,000-deep array in an unknown field", {
            let mut v = String::from_utf8(good_bytes.clone()).expect("utf-8");
            v.pop();
            v.push_str(",\"extra\":");
            v.push_str(&"[".repeat(30_000));
            v.push_str(&"]".repeat(30_000));
            v.push('}');
            v.into_bytes()
        }),
        bad(
            "lone surrogate escape",
            "not_json",
            raw("\"category\":\"toys\"", "\"category\":\"to\\ud800ys\""),
        ),
        bad("trailing garbage", "not_json", {
            let mut v = good_bytes.clone();
            v.extend_from_slice(b" {}");
            v
        }),
        bad(
            "duplicate key",
            "malformed",
            raw(
                "\"device\":\"mobile\"",
                "\"device\":\"mobile\",\"device\":\"tv\"",
            ),
        ),
        bad(
            "NaN price",
            "non_finite_number",
            raw("\"price\":19.99", "\"price\":NaN"),
        ),
        bad(
            "1e400 amount",
            "non_finite_number",
            raw("\"amount\":39.98", "\"amount\":1e400"),
        ),
        bad("JSON array", "not_an_object", b"[\"page_view\"]".to_vec()),
        bad("JSON string", "not_an_object", b"\"page_view\"".to_vec()),
        bad("JSON null", "not_an_object", b"null".to_vec()),
        bad("no event_id", "missing_field", without("event_id")),
        bad(
            "purchase without order_id",
            "missing_field",
            without("order_id"),
        ),
        bad("null user_id", "null_field", with("user_id", Value::Null)),
        bad(
            "quantity as a string",
            "wrong_type",
            with("quantity", json!("2")),
        ),
        bad(
            "price as a string",
            "wrong_type",
            with("price", json!("19.99")),
        ),
        bad(
            "event_id as a number",
            "wrong_type",
            with("event_id", json!(42)),
        ),
        bad(
            "quantity of 10^30",
            "wrong_type",
            raw(
                "\"quantity\":2",
                "\"quantity\":1000000000000000000000000000000",
            ),
        ),
        bad(
            "negative quantity",
            "wrong_type",
            with("quantity", json!(-1)),
        ),
        bad(
            "category as an object",
            "wrong_type",
            with("category", json!({"a": 1})),
        ),
        bad(
            "schema_version 2",
            "unsupported_schema_version",
            with("schema_version", json!(2)),
        ),
        bad(
            "event_type refund",
            "unknown_event_type",
            with("event_type", json!("refund")),
        ),
        bad(
            "event_type with NUL",
            "unknown_event_type",
            with("event_type", json!("purchase\u{0}")),
        ),
        bad(
            "user_id 12345",
            "invalid_uuid",
            with("user_id", json!("12345")),
        ),
        bad(
            "event_id with NUL",
            "invalid_uuid",
            with(
                "event_id",
                json!("\u{0}6f1c2a52-3c0e-4f43-9a7e-8c1f3b3c1d01"),
            ),
        ),
        bad(
            "timestamp 'yesterday'",
            "invalid_timestamp",
            with("timestamp", json!("yesterday")),
        ),
        bad(
            "timestamp without offset",
            "invalid_timestamp",
            with("timestamp", json!("2026-11-30T10:00:00")),
        ),
        bad(
            "timestamp 1970",
            "timestamp_too_old",
            with("timestamp", json!("1970-01-01T00:00:00Z")),
        ),
        bad(
            "timestamp 2100",
            "timestamp_in_future",
            with("timestamp", json!("2100-01-01T00:00:00Z")),
        ),
        bad(
            "negative price",
            "negative_amount",
            with("price", json!(-19.99)),
        ),
        bad(
            "price 10^12",
            "amount_too_large",
            with("price", json!(1e12)),
        ),
        bad("quantity 0", "invalid_quantity", with("quantity", json!(0))),
        bad(
            "quantity 1001",
            "invalid_quantity",
            with("quantity", json!(1001)),
        ),
        bad(
            "amount != price x quantity",
            "amount_mismatch",
            with("amount", json!(1.0)),
        ),
        bad(
            "65-character product_id",
            "bad_field_length",
            with("product_id", json!("p".repeat(65))),
        ),
        bad(
            "empty category",
            "bad_field_length",
            with("category", json!("")),
        ),
        bad(
            "NUL in product_id",
            "control_character",
            with("product_id", json!("P0\u{0}01")),
        ),
        bad(
            "NUL in category",
            "control_character",
            with("category", json!("\u{0}")),
        ),
        bad(
            "NUL in country",
            "control_character",
            with("country", json!("D\u{0}E")),
        ),
        bad(
            "BEL in user_agent",
            "control_character",
            with("user_agent", json!("Moz\u{7}illa")),
        ),
        bad(
            "ESC in referrer",
            "control_character",
            with("referrer", json!("https://x/\u{1b}[31m")),
        ),
        bad(
            "newline in device",
            "control_character",
            with("device", json!("mob\nile")),
        ),
        bad(
            "tab in utm_source",
            "control_character",
            with("utm_source", json!("news\tletter")),
        ),
        bad(
            "C1 control in page",
            "control_character",
            with("page", json!("/check\u{85}out")),
        ),
        bad(
            "DEL in product_id",
            "control_character",
            with("product_id", json!("P\u{7f}1")),
        ),
    ];
    let mut no_key = bad("bad record without a key", "not_json", b"{".to_vec());
    no_key.key = None;
    cases.push(no_key);
    let mut big_key = bad("bad record with a 100 KiB key", "not_json", b"}".to_vec());
    big_key.key = Some(vec![b'k'; 100 * 1024]);
    cases.push(big_key);

    // Valid edge cases: each must be counted exactly once.
    let mut offset = purchase(5);
    let t = EventTime::now().as_micros() - 5 * 60_000_000;
    let utc = chrono::DateTime::from_timestamp_micros(t).expect("time");
    let ist = utc.with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).expect("offset"));
    offset["timestamp"] = json!(ist.to_rfc3339_opts(chrono::SecondsFormat::Millis, false));
    cases.push(good("timestamp at +05:30", bytes(&offset)));
    let mut nanos = purchase(4);
    let t = nanos["timestamp"]
        .as_str()
        .expect("ts")
        .trim_end_matches('Z')
        .to_string();
    nanos["timestamp"] = json!(format!("{}789Z", t));
    cases.push(good("nanosecond timestamp", bytes(&nanos)));
    let mut unknown = purchase(5);
    unknown["campaign"] = json!({"id": [1, 2, {"deep": null}], "tags": ["a", "b"]});
    unknown["ab_test"] = json!(null);
    cases.push(good("unknown fields", bytes(&unknown)));
    let mut text = purchase(5);
    text["product_id"] = json!("Ü-雨-🛒");
    text["category"] = json!("العربية");
    text["page"] = json!("/produkt/größe");
    cases.push(good("non-ASCII text", bytes(&text)));
    let mut long = purchase(5);
    long["product_id"] = json!("é".repeat(64));
    cases.push(good("64 two-byte characters", bytes(&long)));
    let mut escaped = purchase(5);
    escaped["category"] = json!("x");
    let escaped = String::from_utf8(bytes(&escaped))
        .expect("utf-8")
        .replace(
            "\"category\":\"x\"",
            "\"category\":\"caf\\u00e9 \\ud83d\\ude00\"",
        )
        .into_bytes();
    cases.push(good("escaped non-ASCII and a surrogate pair", escaped));
    let mut feff = purchase(5);
    feff["category"] = json!("\u{feff}toys");
    cases.push(good("U+FEFF inside a value", bytes(&feff)));
    let mut max = purchase(5);
    max["price"] = json!(1_000_000);
    max["quantity"] = json!(1);
    max["amount"] = json!(1_000_000);
    cases.push(good("largest price", bytes(&max)));
    let mut upper = purchase(5);
    let id = upper["user_id"].as_str().expect("id").to_uppercase();
    upper["user_id"] = json!(id);
    cases.push(good("upper-case UUID", bytes(&upper)));
    let mut view = purchase(5);
    for f in [
        "product_id",
        "category",
        "price",
        "quantity",
        "order_id",
        "amount",
        "schema_version",
    ] {
        view.as_object_mut().expect("object").remove(f);
    }
    view["event_type"] = json!("page_view");
    cases.push(good(
        "page view without product or schema_version",
        bytes(&view),
    ));
    let mut keyless = good("valid record without a key", bytes(&purchase(5)));
    keyless.key = None;
    cases.push(keyless);
    let mut big = good("valid record with a 100 KiB key", bytes(&purchase(5)));
    big.key = Some(vec![b'u'; 100 * 1024]);
    cases.push(big);
    let mut spaced = String::from_utf8(bytes(&purchase(5))).expect("utf-8");
    spaced = spaced.replace(",\"", " ,\n\t\"");
    cases.push(good("whitespace between members", spaced.into_bytes()));
    cases
}
