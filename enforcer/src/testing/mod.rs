//! Test support (feature `testing`): a stateful fake Kubernetes API server and a real
//! Alertmanager process.

pub mod alertmanager;
pub mod fake_kube;
