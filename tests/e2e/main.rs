//! End-to-end tests of the budgetd binary and API against a real Postgres and PgBouncer
//! (started by scripts/test.sh). One test binary; each test gets its own database.

mod api_input;
mod api_rbac;
mod archive;
mod cli;
mod cli_tenants;
mod collector;
mod dashboards;
mod deploy;
mod enforcement;
mod fuzz;
mod governance;
mod grafana;
mod http;
mod kafka;
mod lifecycle;
mod offboarding;
mod oidc;
mod openapi;
mod pgbouncer;
mod price_book;
mod report_html;
mod support;
mod tenant_operations;
mod tenant_requests;
mod tokens;
