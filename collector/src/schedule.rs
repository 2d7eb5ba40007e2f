//! The daemon's collection loop: sleeps until the next tick (a cron expression, or every
//! window end plus the settle delay), runs one step, backs off after failures, and stops
//! promptly on shutdown.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;

use crate::collect::Collector;
use crate::source::RetryPolicy;
use crate::window::WindowLength;
use crate::Error;

#[derive(Debug, Clone)]
pub enum Schedule {
    /// Right after each window becomes due.
    EveryWindow {
        len: WindowLength,
        settle: Duration,
    },
    Cron(Box<cron::Schedule>),
}

impl Schedule {
    pub fn cron(field: &str, expression: &str) -> Result<Self, Error> {
        cron::Schedule::from_str(expression)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| Error::Config {
                field: field.to_owned(),
                message: format!("not a cron expression (sec min hour dom month dow): {e}"),
            })
    }

    /// The next tick strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Schedule::EveryWindow { len, settle } => {
                let due = len.due_until(now, *settle);
                due + Duration::seconds(len.seconds()) + *settle
            }
            Schedule::Cron(s) => s.after(&now).next().unwrap_or(now + Duration::hours(1)),
        }
    }
}

/// Runs the collector until `stop` is cancelled.
pub async fn run(
    collector: Arc<Collector>,
    schedule: Schedule,
    retry: RetryPolicy,
    stop: CancellationToken,
) {
    let mut failures = 0;
    loop {
        // A step may be a long catch-up; stopping mid-way is safe, each commit is atomic.
        let step = tokio::select! {
            _ = stop.cancelled() => break,
            step = collector.run_once(Utc::now()) => step,
        };
        let wait = match step {
            Ok(outcome) => {
                failures = 0;
                if outcome.report.windows > 0 {
                    tracing::info!(
                        windows = outcome.report.windows,
                        entries = outcome.report.inserted,
                        watermark = ?outcome.watermark,
                        "collected"
                    );
                }
                (schedule.next_after(Utc::now()) - Utc::now())
                    .to_std()
                    .unwrap_or_default()
            }
            Err(e) => {
                failures += 1;
                metrics::counter!("budgetd_collector_failures_total", "kind" => e.metric_label())
                    .increment(1);
                let delay = retry.backoff(failures);
                tracing::error!(error = %e, ?delay, "collection failed; the windows stay pending");
                delay
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!("collector stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_window_ticks_after_the_next_window_settles() {
        let s = Schedule::EveryWindow {
            len: WindowLength::new(300).unwrap(),
            settle: Duration::seconds(60),
        };
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 10, 7, 0).unwrap();
        assert_eq!(
            s.next_after(now),
            Utc.with_ymd_and_hms(2026, 3, 1, 10, 11, 0).unwrap()
        );
        let at_tick = Utc.with_ymd_and_hms(2026, 3, 1, 10, 11, 0).unwrap();
        assert_eq!(
            s.next_after(at_tick),
            Utc.with_ymd_and_hms(2026, 3, 1, 10, 16, 0).unwrap()
        );
    }

    #[test]
    fn cron_schedules_parse_and_tick() {
        let s = Schedule::cron("collector.schedule", "0 */10 * * * *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 10, 7, 0).unwrap();
        assert_eq!(
            s.next_after(now),
            Utc.with_ymd_and_hms(2026, 3, 1, 10, 10, 0).unwrap()
        );
        assert!(Schedule::cron("collector.schedule", "every five minutes").is_err());
    }
}
