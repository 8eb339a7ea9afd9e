//! How the batch loop meets failure without stopping and without spinning.
//!
//! - [`Stall`]: consecutive failures since the last commit, when they began and the last
//!   error; it sets the exponential backoff (capped) between attempts, and is what
//!   `/metrics`, the heartbeat row, `clickstream status` and the dashboard report.
//! - [`Splitter`]: isolates records PostgreSQL refuses to store. A batch that fails twice
//!   with a data error (SQLSTATE class 22 or 23) is retried at half its size, again and
//!   again, so every attempt either commits a prefix of the input or narrows the search;
//!   a single record that still fails twice is declared unstorable and dead-lettered, and
//!   the batch size grows back after each commit.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Failures since the last successful commit.
#[derive(Debug, Clone, Default)]
pub struct Stall {
    /// Failed attempts in a row.
    pub consecutive: u32,
    /// When the first of them happened.
    pub since: Option<DateTime<Utc>>,
    /// The latest error, as logged.
    pub last_error: Option<String>,
}

impl Stall {
    /// Records a failed attempt.
    pub fn failed(&mut self, error: &str) {
        self.consecutive += 1;
        self.since.get_or_insert_with(Utc::now);
        self.last_error = Some(error.to_string());
    }

    /// Records a commit; returns how many failures and how long the stall lasted, if
    /// there was one.
    pub fn recovered(&mut self) -> Option<(u32, chrono::Duration)> {
        let since = self.since.take()?;
        let n = std::mem::take(&mut self.consecutive);
        self.last_error = None;
        Some((n, Utc::now() - since))
    }

    /// The wait before the next attempt: `base` doubled per failure after the first,
    /// at most `cap`.
    pub fn backoff(&self, base: Duration, cap: Duration) -> Duration {
        let doublings = self.consecutive.saturating_sub(1).min(20);
        base.saturating_mul(1 << doublings).min(cap)
    }
}

/// A batch that failed with a data error, as the splitter needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct FailedBatch {
    /// Records polled (valid, rejected or duplicate).
    pub records: usize,
    /// Distinct valid events it tried to store.
    pub fresh: usize,
    /// The record, when the batch had exactly one.
    pub single: Option<(i32, i64)>,
}

/// What to do after a data error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Retry the batch unchanged once (another instance's concurrent write can cause
    /// a unique violation that the retry's ledger probe then resolves).
    RetryOnce,
    /// Retry with at most this many records.
    Split(usize),
    /// This record cannot be stored: dead-letter it as `unstorable` and go on.
    Unstorable((i32, i64)),
    /// The batch stored no events, so its records are not the cause: treat the error
    /// like any other failure (back off and report).
    NotTheRecords,
}

/// Batch size control for isolating unstorable records; see the module docs.
#[derive(Debug)]
pub struct Splitter {
    max: usize,
    cap: usize,
    /// Data errors since the last commit.
    strikes: u32,
    /// Single-record batches that failed, by position, and how often.
    suspects: HashMap<(i32, i64), u32>,
    /// Records declared unstorable, with the error, until they are committed as such.
    unstorable: HashMap<(i32, i64), String>,
}

impl Splitter {
    /// A splitter for batches of at most `max` records.
    pub fn new(max: usize) -> Self {
        Splitter {
            max: max.max(1),
            cap: max.max(1),
            strikes: 0,
            suspects: HashMap::new(),
            unstorable: HashMap::new(),
        }
    }

    /// The largest batch to poll now.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Whether the splitter is narrowing down a failure (batches below full size).
    pub fn is_splitting(&self) -> bool {
        self.cap < self.max
    }

    /// Why the record at `position` must be dead-lettered, if it was declared unstorable.
    pub fn unstorable(&self, position: (i32, i64)) -> Option<&str> {
        self.unstorable.get(&position).map(String::as_str)
    }

    /// A batch committed: grow back toward full size; forget what it committed.
    pub fn committed(&mut self, ends: impl Iterator<Item = (i32, i64)>) {
        self.strikes = 0;
        self.cap = self.cap.saturating_mul(2).min(self.max);
        for (p, next) in ends {
            self.unstorable.retain(|&(q, o), _| q != p || o >= next);
        }
        if self.cap == self.max {
            self.suspects.clear();
        }
    }

    /// A batch failed with a data error `detail`: what next.
    pub fn data_error(&mut self, batch: FailedBatch, detail: &str) -> Verdict {
        if batch.fresh == 0 {
            return Verdict::NotTheRecords;
        }
        self.strikes += 1;
        if let Some(position) = batch.single {
            let n = self.suspects.entry(position).or_insert(0);
            *n += 1;
            if *n >= 2 {
                self.suspects.remove(&position);
                self.unstorable.insert(position, detail.to_string());
                return Verdict::Unstorable(position);
            }
            self.cap = 1;
            return Verdict::RetryOnce;
        }
        if self.strikes < 2 {
            return Verdict::RetryOnce;
        }
        self.cap = (batch.records / 2).max(1);
        Verdict::Split(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut s = Stall::default();
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(30);
        let mut waits = Vec::new();
        for _ in 0..12 {
            s.failed("x");
            waits.push(s.backoff(base, cap));
        }
        assert_eq!(waits[0], base);
        assert_eq!(waits[1], base * 2);
        assert_eq!(waits[4], base * 16);
        assert_eq!(*waits.last().unwrap(), cap);
        assert!(s.since.is_some());
        let (n, _) = s.recovered().unwrap();
        assert_eq!(n, 12);
        assert_eq!(s.consecutive, 0);
        assert!(s.recovered().is_none());
    }

    /// Simulates the loop: a batch of up to `cap` records from one ordered input fails
    /// if it holds the bad record; returns the commits and attempts it took.
    fn isolate(len: usize, bad: i64, max: usize) -> (Vec<(i64, i64)>, usize) {
        let mut s = Splitter::new(max);
        let mut next = 0i64;
        let mut commits = Vec::new();
        let mut attempts = 0;
        while (next as usize) < len {
            attempts += 1;
            assert!(attempts < 200, "no progress");
            let end = (next + s.cap() as i64).min(len as i64);
            let holds_bad = (next..end).contains(&bad) && s.unstorable((0, bad)).is_none();
            if holds_bad {
                let single = (end - next == 1).then_some((0, next));
                let v = s.data_error(
                    FailedBatch {
                        records: (end - next) as usize,
                        fresh: 1,
                        single,
                    },
                    "22021",
                );
                assert_ne!(v, Verdict::NotTheRecords);
            } else {
                commits.push((next, end));
                next = end;
                s.committed([(0, next)].into_iter());
            }
        }
        (commits, attempts)
    }

    #[test]
    fn a_bad_record_is_isolated_and_everything_else_commits() {
        for bad in [0, 1, 7, 24_999, 12_345] {
            let (commits, attempts) = isolate(25_000, bad, 25_000);
            // Contiguous commits covering the whole input, the bad record on its own.
            assert_eq!(commits.first().unwrap().0, 0);
            assert_eq!(commits.last().unwrap().1, 25_000);
            assert!(commits.windows(2).all(|w| w[0].1 == w[1].0));
            assert!(commits.contains(&(bad, bad + 1)), "{bad}: {commits:?}");
            // About two attempts per halving, not one per record.
            assert!(attempts < 60, "{bad}: {attempts} attempts");
        }
    }

    #[test]
    fn a_batch_without_events_is_not_blamed() {
        let mut s = Splitter::new(100);
        let v = s.data_error(
            FailedBatch {
                records: 1,
                fresh: 0,
                single: Some((0, 5)),
            },
            "x",
        );
        assert_eq!(v, Verdict::NotTheRecords);
        assert_eq!(s.cap(), 100);
    }
}
