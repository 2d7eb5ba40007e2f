//! Alertmanager API v2 client (implements `alerts::AlertSink`).
