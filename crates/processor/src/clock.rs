//! The processing clock the processor judges event times by: the wall clock, or, for
//! replaying recorded traffic and compressed-time benchmarks, the largest valid event
//! time consumed so far. The contract's age and future bounds, idle partitions, the dedup
//! horizon and day-partition retention all read it, so a week of traffic replayed in
//! minutes is treated as the week it was.

use std::sync::atomic::{AtomicI64, Ordering};

use clickstream_model::EventTime;

/// Which clock the processor runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClockMode {
    /// The host's clock (production).
    #[default]
    Wall,
    /// The largest valid event time seen so far (the wall clock until the first event).
    EventTime,
}

/// The processing clock.
#[derive(Debug)]
pub struct Clock {
    mode: ClockMode,
    /// Largest event time observed, µs (`i64::MIN`: none yet).
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

    /// Notes a valid event's time (moves an event-time clock forward; never back).
    pub fn observe(&self, t: EventTime) {
        if self.mode == ClockMode::EventTime {
            self.latest.fetch_max(t.as_micros(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_time_clock_follows_the_largest_event_and_wall_ignores_events() {
        let wall = Clock::new(ClockMode::Wall);
        let old = EventTime::from_micros(1_000_000);
        wall.observe(old);
        assert!(wall.now() > old);
        let replay = Clock::new(ClockMode::EventTime);
        assert!(replay.now() > old, "the wall clock before the first event");
        replay.observe(EventTime::from_micros(5_000_000));
        replay.observe(EventTime::from_micros(3_000_000));
        assert_eq!(replay.now(), EventTime::from_micros(5_000_000));
    }
}
