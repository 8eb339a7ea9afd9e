use std::collections::BTreeMap;

use clickstream_model::Money;
use proptest::prelude::*;

use super::*;

const T0: i64 = 1_772_445_600_000_000; // 2026-03-02T10:00:00Z

fn ev(i: u128, user: u128, ty: EventType, at_secs: i64, product: Option<&str>) -> SourcedEvent {
    let mut e = Event::new(
        Uuid::from_u128(i),
        ty,
        EventTime::from_micros(T0 + at_secs * 1_000_000),
        Uuid::from_u128(user),
        Uuid::from_u128(user + 1000),
    );
    if let Some(p) = product {
        e.product_id = Some(p.into());
        e.category = Some("toys".into());
        e.price = Some(Money(250));
        if ty != EventType::PageView {
            e.quantity = Some(2);
        }
        if ty == EventType::Purchase {
            e.order_id = Some(Uuid::from_u128(i + 99));
            e.amount = Some(Money(500));
        }
    }
    SourcedEvent {
        event: e,
        partition: 0,
        offset: i as i64,
    }
}

/// Runs `events` through one partition in batches of the given sizes, restoring the state
/// from its persisted form (watermark + open sessions) between batches, as after a crash.
fn run(
    events: &[SourcedEvent],
    cuts: &[usize],
    restore: bool,
) -> (BTreeMap<Uuid, Session>, BatchTotals) {
    let cfg = EngineConfig::default();
    let mut st = PartitionState::default();
    let mut sessions = BTreeMap::new();
    let mut totals = BatchTotals::default();
    let mut i = 0;
    let mut cut_iter = cuts.iter().copied().cycle();
    while i < events.len() {
        let n = cut_iter.next().unwrap_or(1).max(1);
        let mut out = BatchOutput::default();
        for e in &events[i..(i + n).min(events.len())] {
            st.apply(e, &cfg, EventTime::from_micros(i64::MAX), &mut out);
        }
        st.finish_batch(&cfg, &mut out);
        totals.add(&out);
        for (k, s) in out.sessions {
            sessions.insert(k, s);
        }
        if restore {
            let open: Vec<Session> = sessions.values().filter(|s| s.is_open).cloned().collect();
            st = PartitionState::restore(0, st.watermark, st.max_event_time, open, &cfg);
        }
        i += n;
    }
    (sessions, totals)
}

#[derive(Debug, Default, PartialEq, Eq)]
struct BatchTotals {
    minutes: BTreeMap<(i64, EventType), MinuteDelta>,
    windows: BTreeMap<(i64, String), WindowDelta>,
    late: Vec<(Uuid, bool)>,
}

impl BatchTotals {
    fn add(&mut self, out: &BatchOutput) {
        for (k, d) in &out.minutes {
            let m = self.minutes.entry(*k).or_default();
            m.events += d.events;
            m.units += d.units;
            m.revenue_cents += d.revenue_cents;
            m.late += d.late;
            m.bot += d.bot;
        }
        for ((s, p), d) in &out.windows {
            let w = self.windows.entry((*s, p.to_string())).or_default();
            w.views += d.views;
            w.purchases += d.purchases;
            w.late_views += d.late_views;
            w.late_purchases += d.late_purchases;
        }
        self.late
            .extend(out.late.iter().map(|l| (l.event_id, l.absorbed)));
    }
}

#[test]
fn sessions_split_on_the_gap_and_close_behind_the_watermark() {
    let events = vec![
        ev(1, 1, EventType::PageView, 0, Some("P1")),
        ev(2, 1, EventType::AddToCart, 60, Some("P1")),
        ev(3, 1, EventType::Purchase, 120, Some("P1")),
        // 31 minutes later: a new session for the same user.
        ev(4, 1, EventType::PageView, 120 + 31 * 60, None),
        // Another user pushes the watermark far ahead.
        ev(5, 2, EventType::PageView, 120 + 31 * 60 + 40 * 60, None),
    ];
    let (sessions, totals) = run(&events, &[100], false);
    assert_eq!(sessions.len(), 3);
    let first = &sessions[&Uuid::from_u128(1)];
    assert!(!first.is_open);
    assert_eq!(
        (
            first.page_views,
            first.cart_adds,
            first.purchases,
            first.revenue_cents
        ),
        (1, 1, 1, 500)
    );
    assert_eq!(first.end.as_micros() - first.start.as_micros(), 120_000_000);
    assert!(
        !sessions[&Uuid::from_u128(4)].is_open,
        "closed by the watermark"
    );
    assert!(sessions[&Uuid::from_u128(5)].is_open);
    let buys: i64 = totals
        .minutes
        .iter()
        .filter(|(k, _)| k.1 == EventType::Purchase)
        .map(|(_, d)| d.revenue_cents)
        .sum();
    assert_eq!(buys, 500);
}

#[test]
fn late_events_count_in_metrics_and_are_recorded() {
    let events = vec![
        ev(1, 1, EventType::PageView, 0, Some("P1")),
        ev(2, 2, EventType::PageView, 600, Some("P1")),
        // 5 minutes behind the max (watermark = 600 - 120 = 480 s): late, no open session for user 3.
        ev(3, 3, EventType::PageView, 300, Some("P1")),
        // Late but user 1's session is open (ends at 0 + 30 min): absorbed.
        ev(4, 1, EventType::PageView, 200, Some("P1")),
    ];
    let (sessions, totals) = run(&events, &[100], false);
    assert_eq!(
        totals.late,
        vec![(Uuid::from_u128(3), false), (Uuid::from_u128(4), true)]
    );
    let late: i64 = totals.minutes.values().map(|d| d.late).sum();
    let all: i64 = totals.minutes.values().map(|d| d.events).sum();
    assert_eq!((late, all), (2, 4));
    assert_eq!(sessions[&Uuid::from_u128(1)].events, 2);
    assert!(!sessions.contains_key(&Uuid::from_u128(3)));
    // Window [0, 600) ends after the watermark (480 s), so the late views at 300 s and
    // 200 s still count for it; window [-300, 300) had closed, so the view at 200 s is
    // counted as late there.
    let w0 = totals.windows[&(T0, "P1".to_string())];
    assert_eq!((w0.views, w0.late_views), (3, 0));
    let wm = totals.windows[&(T0 - 300_000_000, "P1".to_string())];
    assert_eq!((wm.views, wm.late_views), (1, 1));
}

#[test]
fn bots_are_recognised_by_user_agent() {
    assert!(is_bot_agent(Some(
        "Mozilla/5.0 (compatible; Googlebot/2.1)"
    )));
    assert!(is_bot_agent(Some("python-requests/2.31.0")));
    assert!(!is_bot_agent(Some(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120"
    )));
    assert!(!is_bot_agent(None));
}

#[test]
fn in_batch_duplicates_keep_the_first() {
    let a = ev(1, 1, EventType::PageView, 0, None);
    let mut resent = ev(1, 1, EventType::PageView, 0, None);
    resent.offset = 9;
    // Same id, another time: a different event (the key is id and event time).
    let mut reused = ev(1, 1, EventType::PageView, 5, None);
    reused.offset = 10;
    let (kept, dropped) = dedup_batch(vec![
        a,
        resent,
        ev(2, 1, EventType::PageView, 1, None),
        reused,
    ]);
    assert_eq!(dropped, 1);
    assert_eq!(
        kept.iter().map(|e| e.offset).collect::<Vec<_>>(),
        vec![1, 2, 10]
    );
}

fn arb_events() -> impl Strategy<Value = Vec<SourcedEvent>> {
    proptest::collection::vec((0u128..6, 0u8..3, 0i64..7200, 0u8..4), 1..120).prop_map(|v| {
        let mut t = 0i64;
        v.into_iter()
            .enumerate()
            .map(|(i, (user, ty, jump, product))| {
                // Mostly increasing time with occasional large jumps back (late data).
                t += jump % 400;
                let at = if jump > 6500 {
                    t - (jump - 6500) * 3
                } else {
                    t
                };
                let ty = [
                    EventType::PageView,
                    EventType::AddToCart,
                    EventType::Purchase,
                ][ty as usize];
                let product = ["P1", "P2", "P3", "P4"][product as usize];
                ev(i as u128 + 1, user, ty, at, Some(product))
            })
            .collect()
    })
}

proptest! {
    /// Results depend only on the record order, not on where batches end, nor on whether
    /// the state was rebuilt from its stored form between batches (a crash and restart).
    #[test]
    fn batch_boundaries_and_restarts_do_not_change_results(
        events in arb_events(),
        cuts in proptest::collection::vec(1usize..20, 1..8),
    ) {
        let whole = run(&events, &[usize::MAX / 2], false);
        let split = run(&events, &cuts, false);
        let restarted = run(&events, &cuts, true);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(&whole, &restarted);
    }
}

fn event_at(minute: i64, user: u128, kind: EventType) -> SourcedEvent {
    let base = EventTime::parse_rfc3339("2026-11-30T12:00:00Z").unwrap();
    let mut ev = clickstream_model::Event::new(
        Uuid::from_u128(minute as u128 * 1_000 + user),
        kind,
        base.add_micros(minute * MINUTE),
        Uuid::from_u128(user),
        Uuid::from_u128(user),
    );
    ev.product_id = Some("P1".into());
    SourcedEvent {
        event: ev,
        partition: 0,
        offset: minute,
    }
}

/// One event stamped 59 minutes ahead of the processing clock drives the watermark only
/// up to the clock: the events after it are not late, and sessions stay open.
#[test]
fn an_event_from_a_wrong_clock_does_not_drag_the_watermark() {
    let cfg = EngineConfig::default();
    let mut st = PartitionState::default();
    let mut out = BatchOutput::default();
    // A live feed: each event is processed a second after its time.
    let live = |e: &SourcedEvent| e.event.timestamp.add_micros(1_000_000);
    for m in 0..20 {
        let e = event_at(m, 1, EventType::PageView);
        st.apply(&e, &cfg, live(&e), &mut out);
        if m == 5 {
            let skewed = event_at(64, 2, EventType::PageView);
            st.apply(&skewed, &cfg, live(&e), &mut out);
        }
    }
    st.finish_batch(&cfg, &mut out);
    assert!(out.late.is_empty(), "{:?}", out.late);
    assert_eq!(out.future_events(), 1);
    let last = event_at(19, 1, EventType::PageView).event.timestamp;
    assert_eq!(
        st.watermark.unwrap().as_micros(),
        last.as_micros() - 2 * MINUTE
    );
    assert_eq!(st.open_sessions(), 2);
    // Every window of the hour after stays open on this partition.
    assert!(out.windows.values().all(|w| w.late_views == 0));
}

/// A stopped feed: once idle, the watermark follows the clock and closes every session.
#[test]
fn an_idle_partition_follows_the_clock_and_closes_its_sessions() {
    let cfg = EngineConfig::default();
    let clock = EventTime::parse_rfc3339("2026-11-30T12:10:00Z").unwrap();
    let mut st = PartitionState::default();
    let mut out = BatchOutput::default();
    for (m, u) in [(0, 1), (1, 2), (9, 3)] {
        st.apply(&event_at(m, u, EventType::PageView), &cfg, clock, &mut out);
    }
    st.finish_batch(&cfg, &mut out);
    assert_eq!(st.open_sessions(), 3);
    let later = clock.add_micros(25 * MINUTE);
    assert!(st.advance_idle(later, &cfg));
    assert!(
        !st.advance_idle(later, &cfg),
        "no move without time passing"
    );
    let mut out = BatchOutput::default();
    st.finish_batch(&cfg, &mut out);
    // Closed: the sessions whose last event + 30 min gap the watermark (later - 2 min) passed.
    assert_eq!(st.open_sessions(), 1);
    assert_eq!(out.sessions.values().filter(|s| !s.is_open).count(), 2);
    assert!(st.advance_idle(clock.add_micros(60 * MINUTE), &cfg));
    st.finish_batch(&cfg, &mut BatchOutput::default());
    assert_eq!(st.open_sessions(), 0);
}
