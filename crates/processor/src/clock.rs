//! The processing clock the processor judges event times by: the wall clock, or, for
//! replaying recorded traffic and compressed-time benchmarks, event time itself (the
//! median event time of the batches consumed so far). The contract's age and future bounds, idle partitions, the dedup
//! horizon and day-partition retention all read it, so a week of traffic replayed in
//! minutes is treated as the week it was.

use std::sync::atomic::{AtomicI64, Ordering};

use clickstream_model::{ContractLimits, EventTime, ValidationPolicy};

/// An age bound that never binds: a century, in µs.
const UNBOUNDED: i64 = 100 * 366 * 86_400 * 1_000_000;

/// Which clock the processor runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// The host's clock (production).
    #[default]
    Wall,
    /// The median event time of the latest batch (never going back).
    EventTime,
}

/// The processing clock.
#[derive(Debug)]
pub struct Clock {
    mode: ClockMode,
    /// The event-time clock, µs (`i64::MIN`: not started).
    latest: AtomicI64,
}

impl Clock {
    /// A clock of `mode`.
    pub fn new(mode: ClockMode) -> Self {
        Clock {
            mode,
            latest: AtomicI64::new(i64::MIN),
        }
    }

    /// Now, by this clock.
    pub fn now(&self) -> EventTime {
        match (self.mode, self.latest.load(Ordering::Relaxed)) {
            (ClockMode::EventTime, t) if t != i64::MIN => EventTime::from_micros(t),
            _ => EventTime::now(),
        }
    }

    /// Moves an event-time clock forward to `t` (never back; the wall clock ignores it).
    /// The processor advances it to each batch's median event time.
    pub fn advance(&self, t: EventTime) {
        if self.mode == ClockMode::EventTime {
            self.latest.fetch_max(t.as_micros(), Ordering::Relaxed);
        }
    }

    /// Whether this is the event-time clock.
    pub fn follows_events(&self) -> bool {
        self.mode == ClockMode::EventTime
    }

    /// Sets an event-time clock to `t` (state reloaded from PostgreSQL: the largest event
    /// time committed for the assigned partitions), so a batch retried after a failure is
    /// judged by the clock it was first judged by.
    pub fn reset(&self, t: Option<EventTime>) {
        if self.mode == ClockMode::EventTime {
            self.latest
                .store(t.map_or(i64::MIN, EventTime::as_micros), Ordering::Relaxed);
        }
    }

    /// Whether this is an event-time clock that has not seen an event yet.
    pub fn unset(&self) -> bool {
        self.mode == ClockMode::EventTime && self.latest.load(Ordering::Relaxed) == i64::MIN
    }

    /// The policy that finds a replay's starting point: any age, nothing ahead of the
    /// wall clock's future bound (a replay is of the past). The caller seeds the clock with
    /// a low percentile of the first batch's times, so one odd timestamp cannot start it.
    pub fn seed_policy(&self, limits: &ContractLimits) -> ValidationPolicy {
        let mut p = limits.policy(EventTime::now());
        p.max_age_micros = UNBOUNDED;
        p
    }

    /// The validation policy of `limits` now. On the event-time clock an event may be at
    /// most the maximum age ahead of the clock (it moves the clock; further would be a
    /// jump no replay makes) and never beyond the wall clock's future bound.
    pub fn policy(&self, limits: &ContractLimits) -> ValidationPolicy {
        let now = self.now();
        let mut p = limits.policy(now);
        if self.mode == ClockMode::EventTime && !self.unset() {
            let wall_bound = EventTime::now().as_micros() + limits.max_future_micros;
            p.max_future_micros = limits
                .max_age_micros
                .min(wall_bound - now.as_micros())
                .max(0);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_clock_follows_the_largest_event_and_wall_ignores_events() {
        let wall = Clock::new(ClockMode::Wall);
        let old = EventTime::from_micros(1_000_000);
        wall.advance(old);
        assert!(wall.now() > old);
        let replay = Clock::new(ClockMode::EventTime);
        assert!(replay.now() > old, "the wall clock before the first event");
        let limits = ContractLimits::default();
        assert!(replay.unset());
        assert!(replay.seed_policy(&limits).max_age_micros > 10 * limits.max_age_micros);
        replay.advance(EventTime::from_micros(5_000_000));
        replay.advance(EventTime::from_micros(3_000_000));
        assert_eq!(replay.now(), EventTime::from_micros(5_000_000));
        let p = replay.policy(&limits);
        assert_eq!(p.max_age_micros, limits.max_age_micros);
        assert_eq!(
            p.max_future_micros, limits.max_age_micros,
            "a jump of at most the age"
        );
        assert_eq!(
            wall.policy(&limits).max_future_micros,
            limits.max_future_micros
        );
    }
}
