//! Day partitions and retention of the tables that grow with traffic.
//!
//! Every such table is range-partitioned by a time column into one partition per UTC day
//! (migration 0008). The processor keeps partitions ready for every day an accepted event
//! can land in (the contract's age and future bounds, plus a day of margin on each side)
//! and drops the days each table family no longer keeps: a `DROP TABLE` of a partition
//! costs the same for ten rows or a hundred million, where a `DELETE` would write WAL for
//! every row and leave bloat for vacuum. Both go through `SECURITY DEFINER` functions
//! owned by the schema owner, because the writer role may not run DDL.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use clickstream_model::ContractLimits;
use tokio_postgres::Client;

use crate::ProcessorError;

/// How long each family of partitioned tables keeps its days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// The dedup ledger (`seen_events`): the dedup horizon.
    Ledger,
    /// `hourly_users`: until its hours can no longer change (the maximum event age), then
    /// rolled up into `hourly_user_counts`.
    HourlyUsers,
    /// Per-minute and per-window aggregates.
    Aggregates,
    /// One row per session, purchase line or (with `--audit`) event.
    Details,
    /// Rejected and late records.
    Errors,
}

/// The day-partitioned tables of the `analytics` schema and their families.
pub const PARTITIONED: &[(&str, Family)] = &[
    ("seen_events", Family::Ledger),
    ("hourly_users", Family::HourlyUsers),
    ("metrics_minute", Family::Aggregates),
    ("product_minute", Family::Aggregates),
    ("category_minute", Family::Aggregates),
    ("product_window", Family::Aggregates),
    ("sessions", Family::Details),
    ("purchases", Family::Details),
    ("events", Family::Details),
    ("rejected_events", Family::Errors),
    ("late_events", Family::Errors),
];

/// Retention settings (`None`: keep forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// How long event keys are remembered for dedup; at most the maximum event age. An
    /// event older than this that is sent again is counted again.
    pub dedup_horizon: Duration,
    /// Per-minute and per-window aggregates.
    pub aggregates: Option<Duration>,
    /// Sessions, purchases, audit events.
    pub details: Option<Duration>,
    /// Rejected and late records.
    pub errors: Option<Duration>,
}

impl Retention {
    /// Checks the settings against the contract: a family may not drop days that accepted
    /// events can still be written to, and the ledger cannot outlive the events it guards.
    pub fn check(&self, limits: &ContractLimits) -> Result<(), String> {
        let max_age = Duration::from_micros(limits.max_age_micros.max(0) as u64);
        if self.dedup_horizon > max_age {
            return Err(format!(
                "the dedup horizon ({}) is longer than the maximum event age ({}): older events are rejected anyway",
                humantime::format_duration(self.dedup_horizon),
                humantime::format_duration(max_age)
            ));
        }
        if self.dedup_horizon < Duration::from_secs(3600).min(max_age) {
            return Err("the dedup horizon must be at least 1h (or the maximum event age)".into());
        }
        let future = Duration::from_micros(limits.max_future_micros.max(0) as u64);
        if max_age.max(future) > Duration::from_secs(3650 * 86_400) {
            return Err("the maximum event age and future may be at most 3650 days".into());
        }
        let floor = max_age + Duration::from_secs(2 * 86_400);
        for (name, keep) in [
            ("aggregates", self.aggregates),
            ("details", self.details),
            ("errors", self.errors),
        ] {
            if let Some(keep) = keep.filter(|k| *k < floor) {
                return Err(format!(
                    "--retain-{name} {} is shorter than the maximum event age plus two days ({}): \
                     days that still receive events would be dropped",
                    humantime::format_duration(keep),
                    humantime::format_duration(floor)
                ));
            }
        }
        Ok(())
    }

    /// How long `family` keeps its days (`None`: forever), given the maximum event age.
    fn keep(&self, family: Family, max_age: Duration) -> Option<Duration> {
        // An hour of margin over the validation clock, as for any cut-off tied to it.
        let margin = Duration::from_secs(3600);
        match family {
            Family::Ledger => Some(self.dedup_horizon + margin),
            Family::HourlyUsers => Some(max_age + margin),
            Family::Aggregates => self.aggregates,
            Family::Details => self.details,
            Family::Errors => self.errors,
        }
    }
}

/// The UTC day of `t`.
fn day(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
}

fn chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The days `family` must have partitions for at `now`: every day an accepted event (or
/// a window or session it belongs to, up to a day earlier) can be written to, and two
/// days beyond the newest, so a failed round has days of slack.
fn needed_days(
    family: Family,
    now: DateTime<Utc>,
    limits: &ContractLimits,
    retention: &Retention,
) -> (NaiveDate, NaiveDate) {
    let max_age = chrono::Duration::microseconds(limits.max_age_micros);
    let first = match family {
        // Keyed by the event's own time (or its hour): nothing earlier.
        Family::Ledger => day(now - chrono(retention.dedup_horizon)),
        Family::HourlyUsers => day(now - max_age),
        // A window or session an event belongs to can start the day before.
        _ => day(now - max_age) - chrono::Days::new(1),
    };
    let last =
        day(now + chrono::Duration::microseconds(limits.max_future_micros)) + chrono::Days::new(2);
    (first, last)
}

/// Creates the missing day partitions of every partitioned table for the days accepted
/// events can reach at `now`; returns how many were created.
pub async fn create_ahead(
    client: &Client,
    now: DateTime<Utc>,
    limits: &ContractLimits,
    retention: &Retention,
) -> Result<u64, ProcessorError> {
    let mut created = 0u64;
    for (table, family) in PARTITIONED {
        let (first, last) = needed_days(*family, now, limits, retention);
        created += create(client, table, first, last).await?;
    }
    Ok(created)
}

/// Creates the missing partitions of `table` for `first..=last`.
async fn create(
    client: &Client,
    table: &str,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<u64, ProcessorError> {
    let row = client
        .query_one(
            "SELECT analytics.create_day_partitions($1, $2, $3)",
            &[&table, &first, &last],
        )
        .await?;
    Ok(row.get::<_, i32>(0).max(0) as u64)
}

/// The days every partitioned table has partitions for after [`create_ahead`] at `now`
/// (and before retention next runs).
pub fn ready_days(
    now: DateTime<Utc>,
    limits: &ContractLimits,
    retention: &Retention,
) -> (NaiveDate, NaiveDate) {
    PARTITIONED
        .iter()
        .map(|(_, f)| needed_days(*f, now, limits, retention))
        .fold((NaiveDate::MIN, NaiveDate::MAX), |(a, b), (f, l)| {
            (a.max(f), b.min(l))
        })
}

/// Creates the missing partitions of every partitioned table for `first..=last` (a batch
/// that reaches days outside [`ready_days`]: a replay, a clock that jumped); returns how
/// many were created.
pub async fn create_days(
    client: &Client,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<u64, ProcessorError> {
    let mut created = 0u64;
    for (table, _) in PARTITIONED {
        created += create(client, table, first, last).await?;
    }
    Ok(created)
}

/// Drops the day partitions each family no longer keeps at `now`, and rolls up the
/// `hourly_users` days it drops into `hourly_user_counts` in the same transaction.
/// Returns the dropped partitions' names.
pub async fn enforce(
    client: &mut Client,
    now: DateTime<Utc>,
    limits: &ContractLimits,
    retention: &Retention,
) -> Result<Vec<String>, ProcessorError> {
    let max_age = Duration::from_micros(limits.max_age_micros.max(0) as u64);
    let mut dropped = Vec::new();
    for (table, family) in PARTITIONED {
        let Some(keep) = retention.keep(*family, max_age) else {
            continue;
        };
        // Partitions whose day ended on or before this day's midnight hold only rows
        // older than `keep` (a keep beyond the calendar keeps everything).
        let Some(before) = now.checked_sub_signed(chrono(keep)).map(day) else {
            continue;
        };
        let tx = client.transaction().await?;
        if *family == Family::HourlyUsers {
            // Before the rollup reads: instances maintaining at once (midnight) take turns
            // here instead of deadlocking on the drop's lock.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('analytics.hourly_users'))",
                &[],
            )
            .await?;
            tx.execute(
                "INSERT INTO analytics.hourly_user_counts (hour, event_type, users)
                 SELECT hour, event_type, count(*) FROM analytics.hourly_users
                  WHERE hour < $1::date::timestamp AT TIME ZONE 'UTC' GROUP BY 1, 2
                 ON CONFLICT (hour, event_type) DO UPDATE
                    SET users = analytics.hourly_user_counts.users + EXCLUDED.users",
                &[&before],
            )
            .await?;
        }
        let rows = tx
            .query(
                "SELECT analytics.drop_day_partitions($1, $2)",
                &[table, &before],
            )
            .await?;
        if *family == Family::HourlyUsers {
            // Rows of those hours outside a day partition would be counted twice later.
            let left: i64 = tx
                .query_one(
                    "SELECT count(*) FROM analytics.hourly_users
                      WHERE hour < $1::date::timestamp AT TIME ZONE 'UTC'",
                    &[&before],
                )
                .await?
                .get(0);
            if left > 0 {
                return Err(ProcessorError::Internal(format!(
                    "{left} hourly_users rows before {before} are outside the day partitions"
                )));
            }
        }
        tx.commit().await?;
        dropped.extend(rows.iter().map(|r| r.get::<_, String>(0)));
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn limits() -> ContractLimits {
        ContractLimits {
            max_age_micros: 7 * DAY as i64 * 1_000_000,
            max_future_micros: 3_600 * 1_000_000,
            max_bytes: 65_536,
        }
    }

    fn retention() -> Retention {
        Retention {
            dedup_horizon: Duration::from_secs(7 * DAY),
            aggregates: Some(Duration::from_secs(90 * DAY)),
            details: Some(Duration::from_secs(90 * DAY)),
            errors: Some(Duration::from_secs(30 * DAY)),
        }
    }

    #[test]
    fn defaults_pass_and_short_or_long_settings_are_refused() {
        assert_eq!(retention().check(&limits()), Ok(()));
        let short = Retention {
            errors: Some(Duration::from_secs(8 * DAY)),
            ..retention()
        };
        assert!(short
            .check(&limits())
            .unwrap_err()
            .contains("--retain-errors"));
        let long = Retention {
            dedup_horizon: Duration::from_secs(8 * DAY),
            ..retention()
        };
        assert!(long.check(&limits()).is_err());
        let forever = Retention {
            aggregates: None,
            details: None,
            errors: None,
            dedup_horizon: Duration::from_secs(DAY),
        };
        assert_eq!(forever.check(&limits()), Ok(()));
    }

    #[test]
    fn every_written_day_is_kept_and_created() {
        let now = DateTime::parse_from_rfc3339("2026-03-10T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let r = retention();
        let max_age = Duration::from_secs(7 * DAY);
        for (_, family) in PARTITIONED {
            let (first, last) = needed_days(*family, now, &limits(), &r);
            // The oldest accepted event's day, the day before it (windows, sessions) and
            // the day after the newest.
            let oldest = match family {
                Family::Ledger => now - chrono(r.dedup_horizon),
                _ => now - chrono(max_age),
            };
            assert!(first <= day(oldest), "{family:?}");
            if !matches!(family, Family::Ledger | Family::HourlyUsers) {
                assert!(first < day(oldest), "{family:?}");
            }
            assert!(last > day(now + chrono::Duration::hours(1)), "{family:?}");
            // Nothing created is dropped on the same round, nothing needed is dropped.
            if let Some(keep) = r.keep(*family, max_age) {
                let before = day(now - chrono(keep));
                assert!(
                    before <= first,
                    "{family:?}: drops before {before}, needs {first}"
                );
                assert!(day(oldest) >= before, "{family:?}");
            }
        }
    }
}
