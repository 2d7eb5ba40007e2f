#!/usr/bin/env bash
# scripts/dev.sh: run budgetd locally against an ephemeral stack.
#
#   bash scripts/dev.sh
#
# Starts PostgreSQL, Prometheus and Alertmanager on free loopback ports with
# state in .stack/ (recreated on every run), builds budgetd and budgetd-dev (the demo
# servers) in release mode, migrates the ledger database and runs the daemon in the
# foreground.
# Ctrl-C stops budgetd and the whole stack. Logs stay in .stack/ afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_packages

STACK_DIR="$PWD/.stack"
if [[ -e "$STACK_DIR" ]]; then
  # Stop anything a previous run left behind before wiping its state.
  stop_stack_dir "$STACK_DIR"
  remove_stack_dir "$STACK_DIR"
fi
mkdir -p "$STACK_DIR"

trap stop_stack EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_postgres "$STACK_DIR"
start_prometheus "$STACK_DIR"
start_alertmanager "$STACK_DIR"

DB_NAME=budgetd
"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$BUDGETD_TEST_DATABASE_URL" \
  -c "CREATE DATABASE $DB_NAME" >/dev/null
DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT_STACK/$DB_NAME"

cargo build --release -p budgetd -p budgetd-dev
BUDGETD="${CARGO_TARGET_DIR:-target}/release/budgetd"
BUDGETD_DEV="${CARGO_TARGET_DIR:-target}/release/budgetd-dev"

API_PORT=$(free_port)
API="http://127.0.0.1:$API_PORT"

# The demo workload: a synthetic cluster with three tenants, scraped by the local Prometheus
# under the job names a kube-prometheus-stack uses.
EXPORTER_PORT=$(free_port)
"$BUDGETD_DEV" demo-exporter --listen "127.0.0.1:$EXPORTER_PORT" --tenants 3 >"$STACK_DIR/demo-exporter.log" 2>&1 &
_stack_record "$STACK_DIR" demo-exporter "$!" budgetd-dev
cat >"$PROMETHEUS_CONFIG_STACK" <<PROM
global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs:
  - job_name: kubelet
    metrics_path: /metrics/cadvisor
    static_configs: [{targets: ["127.0.0.1:$EXPORTER_PORT"]}]
  - job_name: kube-state-metrics
    metrics_path: /metrics/kube-state-metrics
    static_configs: [{targets: ["127.0.0.1:$EXPORTER_PORT"]}]
  # budgetd's own metrics, for the budgetd health dashboard (README "Dashboards").
  - job_name: budgetd
    static_configs: [{targets: ["127.0.0.1:$API_PORT"]}]
PROM
curl -fsS -X POST "$BUDGETD_TEST_PROMETHEUS_URL/-/reload"

# No Kubernetes API server can run here: the enforcer talks to the same stateful fake the
# tests use (real kube::Client over HTTP), seeded with each demo tenant's namespace, quota,
# Deployments, StatefulSet and CronJob.
KUBE_PORT=$(free_port)
"$BUDGETD_DEV" demo-kube --listen "127.0.0.1:$KUBE_PORT" --tenants 3 >"$STACK_DIR/demo-kube.log" 2>&1 &
_stack_record "$STACK_DIR" demo-kube "$!" budgetd-dev

TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
# A second person, an operator, so that a request (by one) can be approved (by the other): the
# API refuses a requester approving their own request.
OPERATOR_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
OPERATOR_SHA256=$(printf '%s' "$OPERATOR_TOKEN" | sha256sum | cut -d' ' -f1)

# The dev stack's configuration: budgetd's defaults (`budgetd config show` prints them all)
# with the local services, one-minute windows so that costs show up within a couple of minutes,
# and an enforcement cycle every 10 s. The first windows are incomplete (Prometheus starts
# mid-window); a two-minute completeness lookback lets enforcement start about three minutes in.
CONFIG="$STACK_DIR/budgetd.toml"
cat >"$CONFIG" <<TOML
[database]
url = "$DATABASE_URL"

[api]
listen = "127.0.0.1:$API_PORT"

[[api.tokens]]
name = "dev-operator"
role = "operator"
sha256 = "$OPERATOR_SHA256"

[prometheus]
url = "$BUDGETD_TEST_PROMETHEUS_URL"

[alertmanager]
urls = ["$BUDGETD_TEST_ALERTMANAGER_URL"]

[kubernetes]
api_url = "http://127.0.0.1:$KUBE_PORT"

[lifecycle]
# Approved tenants get the blueprint in the demo Kubernetes API.
provision = true

[leader]

[enforcement]
interval_seconds = 10
completeness_lookback_seconds = 120

[collector]
window_seconds = 60
# The cpu meter reads samples up to 2.5 scrape intervals (38 s) after a window's end.
settle_seconds = 40
# The local Prometheus scrapes the demo exporter every 15 s.
scrape_interval_seconds = 15

[price_book.seed]
valid_from = "2026-01-01T00:00:00Z"
currency = "EUR"

[price_book.seed.rates]
cpu = "0.031"
memory = "0.004"
storage = "0.00014"
network_egress = "0.05"
gpu = "1.20"

[log]
filter = "info,sqlx=warn"
TOML

"$BUDGETD" --config "$CONFIG" migrate

# Grafana's PostgreSQL data source logs in as this role: a member of budgetd_finance, which can
# read the finance views and nothing else. grafana.env holds what datasources.yaml reads.
FINANCE_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" \
  -c "CREATE ROLE budgetd_finance_login LOGIN PASSWORD '$FINANCE_PASSWORD' IN ROLE budgetd_finance" >/dev/null
(
  umask 077
  cat >"$STACK_DIR/grafana.env" <<ENV
BUDGETD_FINANCE_HOST=127.0.0.1:$PGPORT_STACK
BUDGETD_FINANCE_DATABASE=$DB_NAME
BUDGETD_FINANCE_USER=budgetd_finance_login
BUDGETD_FINANCE_PASSWORD=$FINANCE_PASSWORD
BUDGETD_FINANCE_SSLMODE=disable
BUDGETD_PROMETHEUS_URL=$BUDGETD_TEST_PROMETHEUS_URL
ENV
)

BUDGETD_BOOTSTRAP_ADMIN_TOKEN=$TOKEN "$BUDGETD" --config "$CONFIG" run &
BUDGETD_PID=$!
_stack_record "$STACK_DIR" budgetd "$BUDGETD_PID" budgetd

# The demo tenants, created through the API like an operator would.
for _ in $(seq 1 100); do
  curl -fsS "$API/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
# tenant-002's budget is tiny, so the enforcer has something to do within minutes.
MONTH_START=$(date -u +%Y-%m-01T00:00:00Z)
for i in 0 1 2; do
  curl -fsS -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"id\":\"tenant-00$i\",\"display_name\":\"Demo tenant $i\",\"owner\":\"team-$i@example.com\",\"data_residency\":\"eu\",\"labels\":{\"demo\":\"true\"}}" \
    "$API/api/v1/tenants" >/dev/null
  amount=50.00
  [[ $i == 2 ]] && amount=0.01
  curl -fsS -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d "{\"amount\":\"$amount\",\"currency\":\"EUR\",\"effective_from\":\"$MONTH_START\"}" \
    "$API/api/v1/tenants/tenant-00$i/budget" >/dev/null
done

# What the runbooks (docs/runbooks/) start with: "source .stack/cli.env" gives a shell the
# API's URL and both tokens, a budgetd function (this build, with this configuration) and a
# ledger function (psql on the ledger database).
(
  umask 077
  cat >"$STACK_DIR/cli.env" <<ENV
export BUDGETD_API_URL=$API
export ADMIN_TOKEN=$TOKEN
export OPERATOR_TOKEN=$OPERATOR_TOKEN
export BUDGETD_TOKEN=\$OPERATOR_TOKEN
export BUDGETD_CONFIG=$CONFIG
export KUBE_API=http://127.0.0.1:$KUBE_PORT
budgetd() { "$(realpath "$BUDGETD")" "\$@"; }
ledger() { "$PG_BIN/psql" -X -h 127.0.0.1 -p $PGPORT_STACK -U postgres -d $DB_NAME "\$@"; }
ENV
)

cat <<BANNER

budgetd dev stack
  API            $API
  admin token    $TOKEN
  operator token $OPERATOR_TOKEN (dev-operator)
  Prometheus     $BUDGETD_TEST_PROMETHEUS_URL
  Alertmanager   $BUDGETD_TEST_ALERTMANAGER_URL
  Kubernetes     http://127.0.0.1:$KUBE_PORT (the tests' stateful fake, see README)
  state and logs $STACK_DIR

  The CLI and the runbooks (docs/runbooks/), in another shell:
    source .stack/cli.env    # BUDGETD_API_URL, BUDGETD_TOKEN (the operator), ADMIN_TOKEN, budgetd, ledger
    budgetd tenants list

  List tenants:
    curl -H "Authorization: Bearer $TOKEN" $API/api/v1/tenants

  Onboard acme, whose namespace acme-prod already runs in the demo cluster (README "A first
  session"); its costs start with the next window collected:
    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{"id":"acme","display_name":"Acme Corp","owner":"ops@acme.example","data_residency":"eu","labels":{"team":"payments"}}' \\
      $API/api/v1/tenants

  Ledger database:
    $PG_BIN/psql -h 127.0.0.1 -p $PGPORT_STACK -U postgres -d $DB_NAME

  The demo tenants tenant-000..002 accrue costs from a synthetic cluster; the first
  one-minute windows are collected about 90 s after start. What finance would run:
    select tenant_id, day, meter, priced_quantity, price_unit, round(amount, 4) as amount, currency
      from finance.tenant_costs_daily order by tenant_id, meter;
    select * from finance.budget_status;
    select * from finance.unallocated_daily;
    curl -H "Authorization: Bearer $TOKEN" "$API/api/v1/tenants/tenant-000/costs?from=$(date -u +%F)&to=$(date -u +%F)"

  Enforcement: tenant-002's budget is 0.01 EUR. A few minutes after start its alerts fire,
  its quota in namespace tenant-002-prod is halved, and its suspension waits for approval:
    curl -H "Authorization: Bearer $TOKEN" "$API/api/v1/enforcement/actions?tenant=tenant-002"
    $BUDGETD --config $CONFIG enforce --once --dry-run
    curl -s $BUDGETD_TEST_ALERTMANAGER_URL/api/v2/alerts
    curl -s http://127.0.0.1:$KUBE_PORT/api/v1/namespaces/tenant-002-prod/resourcequotas/budgetd-quota
  Approve the suspension (ID from the list), then raise the budget to restore everything:
    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{"reason":"demo"}' $API/api/v1/enforcement/actions/ID/approve
    curl -X PUT -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
      -d '{"amount":"1000.00","currency":"EUR"}' $API/api/v1/tenants/tenant-002/budget

  Dashboards (README "Dashboards"), in a Grafana 10.4 or later you run on this machine (none is
  started here): the data sources read $STACK_DIR/grafana.env (the ledger as
  budgetd_finance_login, password $FINANCE_PASSWORD, sslmode disable; this Prometheus, which
  also scrapes budgetd). With Grafana's Debian package:
    sudo mkdir -p /etc/grafana/dashboards/budgetd
    sudo cp $PWD/dashboards/*.json /etc/grafana/dashboards/budgetd/
    sudo cp $PWD/dashboards/provisioning/datasources.yaml /etc/grafana/provisioning/datasources/budgetd.yaml
    sudo cp $PWD/dashboards/provisioning/dashboards.yaml /etc/grafana/provisioning/dashboards/budgetd.yaml
    sudo mkdir -p /etc/systemd/system/grafana-server.service.d
    printf '[Service]\\nEnvironmentFile=%s\\n' $STACK_DIR/grafana.env |
      sudo tee /etc/systemd/system/grafana-server.service.d/budgetd.conf
    sudo systemctl daemon-reload && sudo systemctl restart grafana-server
  (each run of this script writes new ports and a new password there: restart Grafana again)
  or with Docker (host network, so 127.0.0.1 is this machine):
    docker run --rm --network host --env-file $STACK_DIR/grafana.env \\
      -v $PWD/dashboards/provisioning/datasources.yaml:/etc/grafana/provisioning/datasources/budgetd.yaml:ro \\
      -v $PWD/dashboards/provisioning/dashboards.yaml:/etc/grafana/provisioning/dashboards/budgetd.yaml:ro \\
      -v $PWD/dashboards:/etc/grafana/dashboards/budgetd:ro grafana/grafana
  then open http://127.0.0.1:3000, folder "budgetd".

Press Ctrl-C to stop budgetd and the stack.

BANNER

# Run budgetd in the background and wait for it, so that a signal to this
# script (Ctrl-C, or a plain `kill`) is handled right away: the INT/TERM traps
# exit, and the EXIT trap (stop_stack) stops budgetd (TERM, then KILL after
# 10 s) and then the stack. budgetd is recorded in .stack/stack.pids so a later
# run can stop it if this script is killed with SIGKILL.
rc=0
wait "$BUDGETD_PID" || rc=$?
exit "$rc"
