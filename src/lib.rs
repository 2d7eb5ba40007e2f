//! budgetd: a per-tenant cost ledger and budget enforcement daemon. This crate is the daemon:
//! configuration, the CLI, the HTTP API and the wiring around the `ledger` crate.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod governance;
pub mod leader;
pub mod oidc;
pub mod plan_table;
pub mod report;
pub mod report_html;
pub mod serve;
pub mod telemetry;
