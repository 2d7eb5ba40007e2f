#!/usr/bin/env bash
# scripts/test.sh: run the whole budgetd test suite against an ephemeral stack.
#
#   bash scripts/test.sh [extra args for the test runner]
#
# First checks that the product's dependency tree holds no test kit or dev tools, and deploy/
# (kubectl kustomize renders it; promtool check rules and test rules on budgetd's alert rules).
# Then starts PostgreSQL, PgBouncer, Prometheus and Alertmanager on free loopback
# ports under a temp dir, exports the BUDGETD_TEST_* URLs, then runs
# `cargo nextest run --workspace --no-fail-fast` (or `cargo test ...` when
# nextest is unavailable) with the fake Kubernetes API's calls recorded, then (the whole suite
# only) `budgetd-dev check-cluster-role` on them, then schemathesis against a running daemon
# (the whole suite only, or BUDGETD_SCHEMATHESIS=1). The exit code is non-zero if any step failed.
# Set BUDGETD_KEEP_STACK=1 to keep the temp dir (configs, logs, data) afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [[ "${CI:-}" == true ]]; then
  export CARGO_TERM_COLOR=never
fi

# The product binary holds only the product: neither the test kit nor the dev tools may be in
# budgetd's normal dependency tree (they are dev-dependencies, or packages of their own).
product_tree=$(cargo tree --locked -e normal -p budgetd --prefix none --format '{p}')
if dev_only=$(grep -E '^(testkit|budgetd-dev) ' <<<"$product_tree"); then
  echo "[ci] budgetd must not depend on the test kit or the dev tools, but" \
    "\`cargo tree -e normal -p budgetd\` lists: $(sort -u <<<"$dev_only" | tr '\n' ' ')" >&2
  exit 1
fi
echo "[ci] budgetd's normal dependencies hold no testkit and no budgetd-dev"

ensure_packages

# deploy/: the kustomization renders, and budgetd's alert rules are valid and pass their unit
# tests (deploy/prometheus/budgetd-rules.test.yml). A failure fails the run; the suite still runs.
rc=0
echo "[ci] kubectl kustomize deploy/"
kubectl kustomize deploy/ >/dev/null || rc=1
echo "[ci] promtool check rules / test rules (deploy/prometheus)"
"$PROMTOOL_BIN" check rules deploy/prometheus/budgetd-rules.yml || rc=1
(cd deploy/prometheus && "$PROMTOOL_BIN" test rules budgetd-rules.test.yml) || rc=1

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
# The fake Kubernetes API servers record the calls budgetd makes (testkit::kube_calls). After
# the whole suite, deploy/'s ClusterRole must grant exactly those.
kube_calls="$STACK_DIR/kube-calls"
mkdir -p "$kube_calls"
BUDGETD_TEST_KUBE_CALLS_DIR=$kube_calls "${runner[@]}" "$@" || rc=$?
if [[ $# -eq 0 ]]; then
  echo "[ci] deploy/'s ClusterRole against the Kubernetes calls of the suite"
  cargo run --quiet --locked -p budgetd-dev -- check-cluster-role --calls "$kube_calls" --deploy deploy || rc=$?
fi

# The API against its OpenAPI document (schemathesis, see run_schemathesis in scripts/lib.sh):
# with the whole suite, or with BUDGETD_SCHEMATHESIS=1; BUDGETD_SCHEMATHESIS=0 skips it.
if [[ "${BUDGETD_SCHEMATHESIS:-}" == 1 || ($# -eq 0 && "${BUDGETD_SCHEMATHESIS:-}" != 0) ]]; then
  echo "[stack] running schemathesis against the daemon"
  run_schemathesis "$STACK_DIR" || rc=$?
fi

# Nothing may depend on the day the suite runs. Run it twice more with the wall clock of the
# test processes, the budgetd processes they start and a Postgres of their own shifted by
# libfaketime: to the first seconds of this month, and to the last day of the previous one.
# Postgres gets scripts/clockshift.c instead of libfaketime (see there: under libfaketime its
# lock waits time out at once and deadlocks go undetected).
# Alertmanager reads the clock without libc, so libfaketime cannot shift it: the tests that
# talk to it stay out of these passes (they decide at a fixed instant mid-month, so they do not
# depend on the day either). So do the tests that run librdkafka (relay/tests/relay.rs, the
# Kafka e2e test, the kafka bench's smoke run): under libfaketime its threads stall (every
# produce and the daemon's start took minutes; librdkafka times everything on the shifted
# monotonic clock), and the relay decides nothing by date. Nextest runs the test binaries through the runner; cargo and
# nextest themselves keep the real clock.
if [[ $# -eq 0 && "${runner[1]}" == nextest ]]; then
  faketime_lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 2>/dev/null | head -n 1)
  triple=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
  shifted_filter='not ((binary_id(enforcer::it) & test(/^alertmanager::/)) | (binary_id(budgetd::e2e) & test(/^enforcement::/) & not test(/leader_dies|dry_run_prints/)) | binary_id(relay::relay) | (binary_id(budgetd::e2e) & test(/^kafka::/)) | (binary_id(budgetd-dev::bench) & test(/bench_kafka/)))'
  clockshift_lib="$STACK_DIR/clockshift.so"
  cc -shared -fPIC -O2 -o "$clockshift_lib" scripts/clockshift.c -ldl
  month_start=$(date -u +%Y-%m-01)
  for at in "$month_start 00:00:05" "$(date -u -d "$month_start - 1 day" +%F) 23:00:00"; do
    offset=$(($(date -u -d "$at" +%s) - $(date -u +%s)))
    shifted_dir="$STACK_DIR/shifted-$offset"
    LD_PRELOAD=$clockshift_lib CLOCKSHIFT_SECONDS=$offset start_postgres "$shifted_dir"
    start_pgbouncer "$shifted_dir"
    echo "[stack] the suite with the wall clock at $at UTC (offset ${offset}s), Postgres $BUDGETD_TEST_DATABASE_URL"
    env "CARGO_TARGET_${triple}_RUNNER=env LD_PRELOAD=$faketime_lib FAKETIME=$offset" \
      "${runner[@]}" -E "$shifted_filter" || rc=$?
    stop_stack_dir "$shifted_dir"
  done
fi
exit "$rc"
