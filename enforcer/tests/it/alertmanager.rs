//! The Alertmanager client against a real Alertmanager.
