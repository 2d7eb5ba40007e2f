//! A metrics recorder that counts the counters of the code under test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Counts counters of the code under test: a recorder for the current thread, which is where
/// `#[tokio::test]`'s single-threaded runtime runs every task.
#[derive(Default)]
pub struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    fn key(name: &str, mut labels: Vec<(String, String)>) -> String {
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("{name}{{{}}}", labels.join(","))
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let key = Self::key(name, labels);
        self.0
            .lock()
            .unwrap()
            .get(&key)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    pub fn total(&self, name: &str) -> u64 {
        let prefix = format!("{name}{{");
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let key = Self::key(key.name(), labels);
        Counter::from_arc(Arc::clone(self.0.lock().unwrap().entry(key).or_default()))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
