//! Instants for tests, so that no test depends on the day it runs.
//!
//! Tests that decide something about a budget period take a fixed instant in the middle of
//! a month ([`mid_month`]) and run the code under test on a clock that starts there
//! ([`starting_at`]). Tests that meet the wall clock (the `budgetd` processes they start,
//! Postgres' `now()`) place their data with [`recent_window`], which is right at every
//! instant of a month. `scripts/test.sh` runs the suite a second and a third time with the
//! wall clock shifted to the first seconds of a month and to the last day of one.

use std::time::Instant;

use chrono::{DateTime, Datelike, TimeZone, Utc};

/// The 15th, 12:00 UTC, of this month: a fixed instant in the middle of a monthly budget
/// period, two weeks from either end.
pub fn mid_month() -> DateTime<Utc> {
    let now = Utc::now();
    Utc.with_ymd_and_hms(now.year(), now.month(), 15, 12, 0, 0)
        .single()
        .expect("the 15th exists")
}

/// A clock that reads `start` when it is made and runs on with the wall clock.
pub fn starting_at(start: DateTime<Utc>) -> impl Fn() -> DateTime<Utc> + Send + Sync {
    let made = Instant::now();
    move || start + chrono::Duration::from_std(made.elapsed()).expect("elapsed fits")
}

/// The latest window of `seconds` (aligned to the epoch) that ends at or before `now` and
/// starts in `now`'s UTC month. In the first `seconds` of a month that is the month's
/// first window, which ends after `now`. Data in it always counts in `now`'s monthly
/// period, whatever the day and time.
pub fn recent_window(now: DateTime<Utc>, seconds: i64) -> (DateTime<Utc>, DateTime<Utc>) {
    let month_start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .expect("the 1st exists");
    let end = now.timestamp() - now.timestamp().rem_euclid(seconds);
    let start = (end - seconds).max(month_start.timestamp());
    let start = Utc.timestamp_opt(start, 0).single().expect("in range");
    (start, start + chrono::Duration::seconds(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_recent_window_starts_in_the_month_of_now() {
        for (now, start, end) in [
            // The first seconds of a month: the month's first window, ending after now.
            (
                "2026-12-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
                "2026-12-01T00:05:00Z",
            ),
            (
                "2026-12-01T00:04:59Z",
                "2026-12-01T00:00:00Z",
                "2026-12-01T00:05:00Z",
            ),
            (
                "2026-12-01T00:05:00Z",
                "2026-12-01T00:00:00Z",
                "2026-12-01T00:05:00Z",
            ),
            (
                "2026-12-01T00:11:00Z",
                "2026-12-01T00:05:00Z",
                "2026-12-01T00:10:00Z",
            ),
            // The last seconds of a month: the last whole window before now.
            (
                "2026-11-30T23:59:59Z",
                "2026-11-30T23:50:00Z",
                "2026-11-30T23:55:00Z",
            ),
            (
                "2027-02-28T23:59:30Z",
                "2027-02-28T23:50:00Z",
                "2027-02-28T23:55:00Z",
            ),
        ] {
            let (s, e) = recent_window(at(now), 300);
            assert_eq!((s, e), (at(start), at(end)), "at {now}");
            assert_eq!((s.year(), s.month()), (at(now).year(), at(now).month()));
        }
    }

    #[test]
    fn a_clock_started_at_an_instant_runs_on_from_it() {
        let start = at("2026-11-30T23:59:30Z");
        let clock = starting_at(start);
        let (a, b) = (clock(), clock());
        assert!(start <= a && a <= b && b < start + chrono::Duration::seconds(60));
    }
}
