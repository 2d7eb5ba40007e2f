//! The budgetd enforcer: budget status and the pure policy that decides what to do about it
//! (`plan`), and the actuators that do it (Alertmanager, Kubernetes).

pub mod alertmanager;
pub mod alerts;
pub mod cluster;
pub mod config;
pub mod executor;
pub mod kubernetes;
pub mod plan;
pub mod policy;
pub mod quantity;
