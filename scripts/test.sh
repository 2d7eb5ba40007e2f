#!/usr/bin/env bash
# scripts/test.sh: run the whole budgetd test suite against an ephemeral stack.
#
#   bash scripts/test.sh [extra args for the test runner]
#
# Starts PostgreSQL, PgBouncer, Prometheus and Alertmanager on free loopback
# ports under a temp dir, exports the BUDGETD_TEST_* URLs, then runs
# `cargo nextest run --workspace --no-fail-fast` (or `cargo test ...` when
# nextest is unavailable). The exit code is the test runner's.
# Set BUDGETD_KEEP_STACK=1 to keep the temp dir (configs, logs, data) afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [[ "${CI:-}" == true ]]; then
  export CARGO_TERM_COLOR=never
fi

ensure_packages

STACK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/budgetd-test.XXXXXX")
# shellcheck disable=SC2317 # invoked from the EXIT trap
cleanup() {
  stop_stack
  if [[ "${BUDGETD_KEEP_STACK:-}" == 1 ]]; then
    echo "[stack] kept $STACK_DIR" >&2
  else
    remove_stack_dir "$STACK_DIR"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_postgres "$STACK_DIR"
start_pgbouncer "$STACK_DIR"
start_prometheus "$STACK_DIR"
start_alertmanager "$STACK_DIR"

echo "[stack] BUDGETD_TEST_DATABASE_URL=$BUDGETD_TEST_DATABASE_URL"
echo "[stack] BUDGETD_TEST_PGBOUNCER_URL=$BUDGETD_TEST_PGBOUNCER_URL"
echo "[stack] BUDGETD_TEST_PROMETHEUS_URL=$BUDGETD_TEST_PROMETHEUS_URL"
echo "[stack] BUDGETD_TEST_ALERTMANAGER_URL=$BUDGETD_TEST_ALERTMANAGER_URL"

if cargo nextest --version >/dev/null 2>&1; then
  runner=(cargo nextest run --workspace --no-fail-fast)
else
  runner=(cargo test --workspace --no-fail-fast)
fi
echo "[stack] running: ${runner[*]} $*"
rc=0
"${runner[@]}" "$@" || rc=$?
exit "$rc"
