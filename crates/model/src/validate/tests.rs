use std::collections::BTreeSet;

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn policy() -> ValidationPolicy {
    ValidationPolicy::new(EventTime::parse_rfc3339("2025-08-19T15:00:00Z").unwrap())
}

fn good_purchase() -> serde_json::Value {
    json!({
        "schema_version": 1,
        "event_id": "6f1c2a52-3c0e-4f43-9a7e-8c1f3b3c1d01",
        "event_type": "purchase",
        "timestamp": "2025-08-19T14:05:22.120Z",
        "user_id": "0b7a1f5e-9d2c-4a41-8f61-1f2e3d4c5b6a",
        "session_id": "a3c8e2d4-1b2a-4c3d-9e8f-7a6b5c4d3e2f",
        "product_id": "P00042",
        "category": "electronics",
        "price": 19.99,
        "quantity": 3,
        "order_id": "c9d8e7f6-a5b4-4c3d-8e1f-0a9b8c7d6e5f",
        "amount": 59.97,
        "device": "mobile",
        "country": "DE"
    })
}

fn with(field: &str, v: serde_json::Value) -> Vec<u8> {
    let mut e = good_purchase();
    e[field] = v;
    serde_json::to_vec(&e).unwrap()
}

fn without(field: &str) -> Vec<u8> {
    let mut e = good_purchase();
    e.as_object_mut().unwrap().remove(field);
    serde_json::to_vec(&e).unwrap()
}

/// One bad record per reason code, in the spirit of what real producers get wrong.
fn bad_corpus() -> Vec<(&'static str, Vec<u8>)> {
    let good = serde_json::to_vec(&good_purchase()).unwrap();
    let mut non_utf8 = good.clone();
    non_utf8.insert(30, 0xff);
    vec![
        ("empty_payload", vec![]),
        ("too_large", vec![b' '; 70 * 1024]),
        ("not_utf8", non_utf8),
        ("not_json", good[..good.len() / 2].to_vec()),
        ("not_json", b"hello world".to_vec()),
        (
            "non_finite_number",
            String::from_utf8(good.clone())
                .unwrap()
                .replace("19.99", "NaN")
                .into_bytes(),
        ),
        (
            "non_finite_number",
            String::from_utf8(good.clone())
                .unwrap()
                .replace("19.99", "1e400")
                .into_bytes(),
        ),
        ("not_an_object", b"[1,2,3]".to_vec()),
        ("missing_field", without("event_id")),
        ("missing_field", without("order_id")),
        ("null_field", with("user_id", serde_json::Value::Null)),
        ("wrong_type", with("quantity", json!("three"))),
        ("wrong_type", with("price", json!("19.99"))),
        ("wrong_type", with("event_id", json!(42))),
        (
            "unsupported_schema_version",
            with("schema_version", json!(2)),
        ),
        ("unknown_event_type", with("event_type", json!("wishlist"))),
        ("invalid_uuid", with("session_id", json!("not-a-uuid"))),
        ("invalid_timestamp", with("timestamp", json!("yesterday"))),
        (
            "timestamp_too_old",
            with("timestamp", json!("1970-01-01T00:00:00Z")),
        ),
        (
            "timestamp_in_future",
            with("timestamp", json!("2100-01-01T00:00:00Z")),
        ),
        ("negative_amount", with("price", json!(-1.0))),
        ("amount_too_large", with("price", json!(1e12))),
        ("invalid_quantity", with("quantity", json!(0))),
        ("amount_mismatch", with("amount", json!(1.00))),
        (
            "bad_field_length",
            with("product_id", json!("x".repeat(65))),
        ),
        ("bad_field_length", with("category", json!(""))),
        ("control_character", with("product_id", json!("P\u{0}42"))),
        ("invalid_clock_time", with("sent_at", json!("yesterday"))),
        (
            "invalid_clock_time",
            with("client_timestamp", json!("1970-01-01T00:00:00Z")),
        ),
        ("wrong_type", with("bot", json!("yes"))),
        (
            "control_character",
            with("user_agent", json!("Mozilla\u{7}/5.0")),
        ),
        ("control_character", with("country", json!("DE\u{85}"))),
        (
            "unknown_event_type",
            with("event_type", json!("page_view\u{0}")),
        ),
        ("malformed", {
            let mut s = String::from_utf8(good).unwrap();
            s.insert_str(1, "\"device\":\"tablet\",");
            s.into_bytes()
        }),
    ]
}

#[test]
fn the_good_record_passes() {
    let e = parse_event(&serde_json::to_vec(&good_purchase()).unwrap(), &policy()).unwrap();
    assert_eq!(e.event_type, EventType::Purchase);
    assert_eq!(e.price, Some(Money(1999)));
    assert_eq!(e.amount, Some(Money(5997)));
    assert_eq!(e.quantity, Some(3));
    assert_eq!(e.product_id.as_deref(), Some("P00042"));
}

#[test]
fn every_reason_is_reachable_and_reported() {
    let mut seen = BTreeSet::new();
    for (expected, bytes) in bad_corpus() {
        let got = parse_event(&bytes, &policy()).expect_err(expected);
        assert_eq!(got.code(), expected, "{got}");
        assert!(!got.to_string().is_empty());
        seen.insert(got.code());
    }
    let all: BTreeSet<_> = RejectReason::ALL_CODES.into_iter().collect();
    assert_eq!(seen, all, "codes without a corpus entry");
}

/// Details are stored in `text` columns and Kafka headers: never a raw control character.
#[test]
fn rejection_details_carry_no_control_characters() {
    for (_, bytes) in bad_corpus() {
        let reason = parse_event(&bytes, &policy()).unwrap_err();
        let detail = reason.to_string();
        assert!(!detail.chars().any(char::is_control), "{detail:?}");
    }
    let r = parse_event(&with("event_type", json!("x\u{0}y")), &policy()).unwrap_err();
    assert_eq!(r.to_string(), "unknown event_type `x\\u{0}y`");
}

#[test]
fn page_views_need_no_product() {
    let mut e = good_purchase();
    let m = e.as_object_mut().unwrap();
    for f in [
        "product_id",
        "category",
        "price",
        "quantity",
        "order_id",
        "amount",
    ] {
        m.remove(f);
    }
    e["event_type"] = json!("page_view");
    let ev = parse_event(&serde_json::to_vec(&e).unwrap(), &policy()).unwrap();
    assert_eq!(ev.product_id, None);
    e["event_type"] = json!("add_to_cart");
    let err = parse_event(&serde_json::to_vec(&e).unwrap(), &policy()).unwrap_err();
    assert_eq!(
        err,
        RejectReason::MissingField {
            field: "product_id"
        }
    );
}

#[test]
fn unknown_fields_are_ignored_and_escapes_are_decoded() {
    let mut e = good_purchase();
    e["campaign_color"] = json!("blue");
    e["category"] = json!("home \"&\" garden");
    let ev = parse_event(&serde_json::to_vec(&e).unwrap(), &policy()).unwrap();
    assert_eq!(ev.category.as_deref(), Some("home \"&\" garden"));
}

fn arb_text(max: usize) -> impl Strategy<Value = Arc<str>> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 _./;()\"\\\\é-]{{1,{max}}}"))
        .unwrap()
        .prop_map(Arc::from)
}

fn arb_event() -> impl Strategy<Value = Event> {
    let ids = any::<[u128; 4]>();
    let ts = 0i64..(6 * 86_400 * 1_000_000);
    let kind = prop_oneof![
        Just(EventType::PageView),
        Just(EventType::AddToCart),
        Just(EventType::Purchase)
    ];
    let product = (arb_text(64), arb_text(64), 0i64..100_000, 1u32..1000);
    let context = proptest::option::of((arb_text(64), arb_text(512), arb_text(64)));
    (ids, ts, kind, product, context).prop_map(|(ids, ts, kind, product, context)| {
        let base = EventTime::parse_rfc3339("2025-08-13T15:00:00Z").unwrap();
        let mut e = Event::new(
            Uuid::from_u128(ids[0]),
            kind,
            base.add_micros(ts),
            Uuid::from_u128(ids[1]),
            Uuid::from_u128(ids[2]),
        );
        if kind.requires_product() {
            let (pid, cat, price, qty) = product;
            e.product_id = Some(pid);
            e.category = Some(cat);
            e.price = Some(Money(price));
            e.quantity = Some(qty);
            if kind == EventType::Purchase {
                e.order_id = Some(Uuid::from_u128(ids[3]));
                e.amount = Some(Money(price).times(qty));
            }
        }
        if let Some((device, ua, page)) = context {
            e.device = Some(device);
            e.user_agent = Some(ua);
            e.page = Some(page);
        }
        e
    })
}

proptest! {
    #[test]
    fn serialise_then_parse_round_trips(e in arb_event()) {
        let bytes = e.to_json();
        let back = parse_event(&bytes, &policy()).map_err(|r| TestCaseError::fail(r.to_string()))?;
        prop_assert_eq!(back, e);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_event(&bytes, &policy());
    }

    #[test]
    fn mutated_good_records_never_panic(cut in 0usize..400, byte in any::<u8>()) {
        let mut good = serde_json::to_vec(&good_purchase()).unwrap();
        let at = cut.min(good.len() - 1);
        good[at] = byte;
        let _ = parse_event(&good, &policy());
    }
}

/// The user-facing JSON Schema must describe the same contract as the validator.
#[test]
fn json_schema_document_matches_the_validator() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/event-schema.json")).unwrap();
    let props: BTreeSet<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let known: BTreeSet<&str> = FIELD_TYPES.iter().map(|(f, _)| *f).collect();
    assert_eq!(props, known);
    let types: Vec<&str> = schema["properties"]["event_type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(types, EventType::ALL.map(EventType::as_str).to_vec());
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for field in [
        "event_id",
        "event_type",
        "timestamp",
        "user_id",
        "session_id",
    ] {
        assert!(required.contains(field));
        let mut e = good_purchase();
        e.as_object_mut().unwrap().remove(field);
        assert!(parse_event(&serde_json::to_vec(&e).unwrap(), &policy()).is_err());
    }
    assert_eq!(required.len(), 5);
}

#[test]
fn collector_fields_round_trip_and_the_key_uses_the_device_time() {
    let mut v = good_purchase();
    let m = v.as_object_mut().unwrap();
    let ts = m["timestamp"].as_str().unwrap().to_string();
    m.insert("client_timestamp".into(), json!(ts));
    m.insert("timestamp".into(), json!("2025-08-19T14:00:00Z"));
    m.insert("sent_at".into(), json!(ts));
    m.insert("received_at".into(), json!("2025-08-19T14:00:00Z"));
    m.insert("browser".into(), json!("Firefox 128"));
    m.insert("os".into(), json!("Linux"));
    m.insert("bot".into(), json!(false));
    m.insert("ip".into(), json!("203.0.113.0"));
    let e = parse_event(&serde_json::to_vec(&v).unwrap(), &policy()).unwrap();
    assert_eq!(e.key().timestamp, EventTime::parse_rfc3339(&ts).unwrap());
    assert_ne!(e.key().timestamp, e.timestamp);
    assert_eq!(e.browser.as_deref(), Some("Firefox 128"));
    assert_eq!(e.bot, Some(false));
    let again = parse_event(&e.to_json(), &policy()).unwrap();
    assert_eq!(again, e);
}

#[test]
fn repeated_values_share_one_allocation_and_keep_their_checks() {
    let ua = "Mozilla/5.0 (X11; Linux x86_64) Googlebot/2.1";
    let a = parse_event(&with("user_agent", json!(ua)), &policy()).unwrap();
    let b = parse_event(&with("user_agent", json!(ua)), &policy()).unwrap();
    let (ua_a, ua_b) = (a.user_agent.clone().unwrap(), b.user_agent.clone().unwrap());
    assert!(Arc::ptr_eq(&ua_a, &ua_b));
    assert_eq!(&*ua_a, ua);
    assert!(a.is_bot() && b.is_bot());
    // The same text in an allocation of its own is judged alike.
    let mut own = Event::new(
        a.event_id,
        a.event_type,
        a.timestamp,
        a.user_id,
        a.session_id,
    );
    own.user_agent = Some(Arc::from("curl/8.5.0"));
    assert!(own.is_bot());
    own.user_agent = Some(Arc::from(
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
    ));
    assert!(!own.is_bot());

    // Non-ASCII text is measured in characters and still refused with a control character.
    let long = "é".repeat(MAX_SHORT_FIELD);
    assert!(parse_event(&with("country", json!(long)), &policy()).is_ok());
    let longer = "é".repeat(MAX_SHORT_FIELD + 1);
    assert_eq!(
        parse_event(&with("country", json!(longer)), &policy())
            .unwrap_err()
            .code(),
        "bad_field_length"
    );
    assert_eq!(
        parse_event(&with("category", json!("sports\u{85}")), &policy())
            .unwrap_err()
            .code(),
        "control_character"
    );
    assert_eq!(
        parse_event(&with("category", json!("\u{7f}sports")), &policy())
            .unwrap_err()
            .code(),
        "control_character"
    );
}
