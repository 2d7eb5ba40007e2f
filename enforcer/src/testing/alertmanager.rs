//! A real Alertmanager process for tests.
