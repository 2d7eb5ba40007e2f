//! The benchmarks, each against baselines measured in the same run, and what they share:
//! medians, spreads and verdicts.

pub mod collector;
pub mod enforcer;
pub mod ledger;

use std::time::Duration;

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn median_secs(samples: &[Duration]) -> f64 {
    median(&samples.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>())
}

pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// "min-max" of per-round ratios.
pub fn spread(ratios: &[f64]) -> String {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}-{max:.2}")
}

pub fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median_secs(&ms(&[30, 10, 20])), 0.02);
        assert_eq!(median_secs(&ms(&[10, 20, 30, 40])), 0.025);
        assert_eq!(median(&[]), 0.0);
    }
}
