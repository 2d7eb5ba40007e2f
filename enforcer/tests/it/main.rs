//! The enforcer's integration tests: one binary.

mod alertmanager;
mod counters;
mod kubernetes;
