//! Property-based fuzzing of decode -> validate -> operators, on stable Rust: arbitrary
//! bytes, mutations of valid records, and records built from hostile field values. Nothing
//! may panic, and whatever the contract accepts must be storable (no control characters in
//! text, amounts and times within bounds), and the operators' invariants must hold.
//!
//! `FUZZ_CASES` sets the cases per property (default 3,000 in the normal test run);
//! `bench/run.sh fuzz` runs a million each in release mode.

use clickstream_model::{parse_event, Event, EventTime, EventType, Money, ValidationPolicy};
use clickstream_processor::engine::{BatchOutput, EngineConfig, PartitionState, SourcedEvent};
use proptest::prelude::*;
use proptest::test_runner::Config;
use uuid::Uuid;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        // Shrinking a million-case run's failure is worth it; persisting files is not.
        failure_persistence: None,
        ..Config::default()
    }
}

const NOW: i64 = 1_796_040_000_000_000; // 2026-11-30T12:00:00Z

fn policy() -> ValidationPolicy {
    ValidationPolicy::new(EventTime::from_micros(NOW))
}

fn valid_json(seed: u64) -> String {
    let kind = match seed % 3 {
        0 => EventType::PageView,
        1 => EventType::AddToCart,
        _ => EventType::Purchase,
    };
    let t = EventTime::from_micros(NOW - (seed % 3_600) as i64 * 1_000_000);
    let mut e = Event::new(
        Uuid::from_u64_pair(seed, 1),
        kind,
        t,
        Uuid::from_u64_pair(seed % 17, 2),
        Uuid::from_u64_pair(seed % 17, 3),
    );
    e.product_id = Some(format!("P{:05}", seed % 50).into());
    e.category = Some("garden".into());
    e.device = Some("mobile".into());
    e.user_agent = Some("Mozilla/5.0 (X11)".into());
    if kind != EventType::PageView {
        e.price = Some(Money(1999));
        e.quantity = Some(2);
    }
    if kind == EventType::Purchase {
        e.order_id = Some(Uuid::from_u64_pair(seed, 4));
        e.amount = Some(Money(3998));
    }
    String::from_utf8(e.to_json()).expect("JSON is UTF-8")
}

/// What the contract promises about an accepted event: PostgreSQL can store it.
fn assert_storable(e: &Event, p: &ValidationPolicy) {
    let texts = [
        &e.product_id,
        &e.category,
        &e.device,
        &e.country,
        &e.user_agent,
        &e.referrer,
        &e.utm_source,
        &e.page,
    ];
    for t in texts.into_iter().flatten() {
        assert!(!t.is_empty() && t.chars().count() <= 512, "{t:?}");
        assert!(
            !t.chars().any(char::is_control),
            "control character in {t:?}"
        );
    }
    let ts = e.timestamp.as_micros();
    assert!(
        ts >= p.now.as_micros() - p.max_age_micros && ts <= p.now.as_micros() + p.max_future_micros
    );
    for m in [e.price, e.amount].into_iter().flatten() {
        assert!(m.cents() >= 0 && m <= p.max_amount);
    }
    if let Some(q) = e.quantity {
        assert!(q >= 1 && q <= p.max_quantity);
    }
}

/// Runs accepted events through the operators in batches of `cut`, with a processing clock
/// that may lag or lead, and checks the invariants.
fn run_engine(events: Vec<Event>, cut: usize, clock_skew: i64) {
    let cfg = EngineConfig::default();
    let mut st = PartitionState::default();
    let mut last_wm = None;
    let mut applied = 0i64;
    for (b, chunk) in events.chunks(cut.max(1)).enumerate() {
        let mut out = BatchOutput::default();
        for (i, e) in chunk.iter().enumerate() {
            let clock = EventTime::from_micros(NOW + clock_skew);
            let sourced = SourcedEvent {
                event: e.clone(),
                partition: 0,
                offset: (b * cut + i) as i64,
            };
            st.apply(&sourced, &cfg, clock, &mut out);
            applied += 1;
        }
        if b % 3 == 2 {
            st.advance_idle(EventTime::from_micros(NOW + clock_skew), &cfg);
        }
        st.finish_batch(&cfg, &mut out);
        let counted: i64 = out.minutes.values().map(|m| m.events).sum();
        assert_eq!(counted, chunk.len() as i64);
        assert!(out
            .minutes
            .values()
            .all(|m| m.late <= m.events && m.future <= m.events));
        if let (Some(a), Some(w)) = (last_wm, st.watermark) {
            assert!(w >= a, "the watermark never moves back");
        }
        // Never ahead of the clock minus the lateness.
        if let Some(w) = st.watermark {
            assert!(w.as_micros() <= NOW + clock_skew - cfg.lateness_micros);
        }
        last_wm = st.watermark;
        for s in out.sessions.values() {
            assert!(s.start <= s.end && s.events >= 1);
            assert_eq!(s.events, s.page_views + s.cart_adds + s.purchases);
        }
    }
    assert_eq!(applied, events.len() as i64);
}

/// Hostile values for a field: control characters, surrogate escapes, huge numbers, deep
/// nesting, wrong types.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"\\ud83d\\ude00\"".to_string()),
        Just("1e400".to_string()),
        Just("NaN".to_string()),
        Just("-0".to_string()),
        Just("100000000000000000000000000000".to_string()),
        Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_string()),
        Just("{\"a\":{\"b\":[1,{\"c\":null}]}}".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:e}")),
        "\\PC{0,80}".prop_map(|s| serde_json::to_string(&s).expect("string")),
        proptest::collection::vec(any::<char>(), 0..70)
            .prop_map(|cs| serde_json::to_string(&cs.into_iter().collect::<String>()).expect("string")),
    ]
}

const FIELDS: [&str; 19] = [
    "schema_version",
    "event_id",
    "event_type",
    "timestamp",
    "user_id",
    "session_id",
    "product_id",
    "category",
    "price",
    "quantity",
    "order_id",
    "amount",
    "device",
    "country",
    "user_agent",
    "referrer",
    "utm_source",
    "page",
    "unknown_field",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let p = policy();
        if let Ok(e) = parse_event(&bytes, &p) {
            assert_storable(&e, &p);
            run_engine(vec![e], 1, 0);
        }
    }

    #[test]
    fn mutated_valid_records(
        seed in any::<u64>(),
        edits in proptest::collection::vec((any::<usize>(), 0u8..4, any::<u8>(), 0usize..8), 1..6),
    ) {
        const TOKENS: [&str; 8] = ["\\u0000", "\\ud800", "NaN", "1e400", "[", "\"", "\\u001b", "{\"a\":"];
        let mut bytes = valid_json(seed).into_bytes();
        for (at, op, byte, token) in edits {
            let at = at % (bytes.len() + 1);
            match op {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => {
                    for (i, b) in TOKENS[token].bytes().enumerate() {
                        bytes.insert((at + i).min(bytes.len()), b);
                    }
                }
            }
        }
        let p = policy();
        if let Ok(e) = parse_event(&bytes, &p) {
            assert_storable(&e, &p);
            run_engine(vec![e], 1, 0);
        }
    }

    #[test]
    fn hostile_fields(
        seed in any::<u64>(),
        field in 0usize..FIELDS.len(),
        value in hostile_value(),
    ) {
        let text = valid_json(seed);
        let field = FIELDS[field];
        // Replace the field's value, or add it.
        let json = match text.find(&format!("\"{field}\":")) {
            Some(at) => {
                let start = at + field.len() + 3;
                let rest = &text[start..];
                let end = rest.find(",\"").unwrap_or(rest.len() - 1);
                format!("{}{}{}", &text[..start], value, &rest[end..])
            }
            None => format!("{},\"{field}\":{value}}}", &text[..text.len() - 1]),
        };
        let p = policy();
        if let Ok(e) = parse_event(json.as_bytes(), &p) {
            assert_storable(&e, &p);
            run_engine(vec![e], 1, 0);
        }
    }

    #[test]
    fn streams_of_valid_events(
        seeds in proptest::collection::vec(any::<u64>(), 1..60),
        cut in 1usize..20,
        skew in -7_200_000_000i64..7_200_000_000,
    ) {
        let p = policy();
        let events: Vec<Event> = seeds
            .iter()
            .map(|s| parse_event(valid_json(*s).as_bytes(), &p).expect("valid"))
            .collect();
        run_engine(events, cut, skew);
    }
}
