//! Window arithmetic: fixed-length windows aligned to the Unix epoch. Pure.

use chrono::{DateTime, Duration, Utc};
use ledger::entry::Window;

use crate::Error;

/// The window length in seconds; windows are [k·L, (k+1)·L).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLength(i64);

impl WindowLength {
    pub fn new(seconds: i64) -> Result<Self, Error> {
        if !(60..=86_400).contains(&seconds) || 86_400 % seconds != 0 {
            return Err(Error::Config {
                field: "collector.window_seconds".into(),
                message: "must divide a day evenly and be between 60 and 86400".into(),
            });
        }
        Ok(WindowLength(seconds))
    }

    pub fn seconds(self) -> i64 {
        self.0
    }

    /// The start of the window containing `t`.
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let s = t.timestamp().div_euclid(self.0) * self.0;
        DateTime::from_timestamp(s, 0).expect("in range")
    }

    /// The first window boundary at or after `t`.
    pub fn ceil(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let floor = self.floor(t);
        if floor == t {
            t
        } else {
            floor + Duration::seconds(self.0)
        }
    }

    pub fn window_at(self, start: DateTime<Utc>) -> Window {
        Window::new(start, start + Duration::seconds(self.0)).expect("aligned windows are valid")
    }

    /// Windows whose start lies in [from, to), in order; `from` is rounded down and `to` up
    /// to window boundaries.
    pub fn windows(self, from: DateTime<Utc>, to: DateTime<Utc>) -> impl Iterator<Item = Window> {
        let first = self.floor(from).timestamp();
        let last = self.ceil(to).timestamp();
        (first..last)
            .step_by(self.0 as usize)
            .map(move |s| self.window_at(DateTime::from_timestamp(s, 0).expect("in range")))
    }

    /// The end of the newest window that may be collected at `now`: its end lies at least
    /// `settle` in the past, so late scrapes have arrived.
    pub fn due_until(self, now: DateTime<Utc>, settle: Duration) -> DateTime<Utc> {
        self.floor(now - settle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, s).unwrap()
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let l = WindowLength::new(300).unwrap();
        assert_eq!(l.floor(t(10, 7, 30)), t(10, 5, 0));
        assert_eq!(l.ceil(t(10, 7, 30)), t(10, 10, 0));
        assert_eq!(l.ceil(t(10, 5, 0)), t(10, 5, 0));
        let ws: Vec<_> = l
            .windows(t(10, 2, 0), t(10, 11, 0))
            .map(|w| w.start())
            .collect();
        assert_eq!(ws, [t(10, 0, 0), t(10, 5, 0), t(10, 10, 0)]);
        assert_eq!(l.windows(t(10, 0, 0), t(10, 0, 0)).count(), 0);
    }

    #[test]
    fn a_window_is_due_after_its_settle_delay() {
        let l = WindowLength::new(300).unwrap();
        let settle = Duration::seconds(60);
        assert_eq!(l.due_until(t(10, 5, 59), settle), t(10, 0, 0));
        assert_eq!(l.due_until(t(10, 6, 0), settle), t(10, 5, 0));
    }

    #[test]
    fn lengths_must_divide_a_day() {
        assert!(WindowLength::new(300).is_ok());
        assert!(WindowLength::new(3600).is_ok());
        assert!(WindowLength::new(7).is_err());
        assert!(WindowLength::new(420).is_err());
        assert!(WindowLength::new(30).is_err());
    }
}
