# shellcheck shell=bash
# scripts/lib.sh: helpers for running an ephemeral budgetd stack
# (PostgreSQL, PgBouncer, Prometheus, Alertmanager) on free loopback ports.
#
# Source this file; don't execute it. It's safe to use with `set -euo pipefail`.
#
#   ensure_packages        install missing Debian packages, export *_BIN paths
#   free_port              print a free TCP port on 127.0.0.1
#   start_postgres DIR     ephemeral cluster        -> PGPORT_STACK, BUDGETD_TEST_DATABASE_URL
#   start_pgbouncer DIR    transaction-mode pooler  -> BUDGETD_TEST_PGBOUNCER_URL
#   start_prometheus DIR                            -> BUDGETD_TEST_PROMETHEUS_URL
#   start_alertmanager DIR                          -> BUDGETD_TEST_ALERTMANAGER_URL
#   stop_stack             stop everything the start_* functions started (use from an EXIT trap)
#   stop_stack_dir DIR     stop whatever a (possibly earlier) run recorded in DIR
#   run_schemathesis DIR   schemathesis against a budgetd daemon on the Postgres started above
#
# We never use or rely on the system services these packages ship. Each start_*
# writes its own config, data and log files under DIR, and records the pids in
# DIR/stack.pids so stop_stack (or a later stop_stack_dir) can find them.

if [[ -n "${_BUDGETD_STACK_LIB:-}" ]]; then
  return 0
fi
_BUDGETD_STACK_LIB=1

# Directories that hold a stack.pids registry, in start order.
_STACK_DIRS=()
# How long (seconds) each service may take to become ready.
: "${STACK_START_TIMEOUT:=30}"

# make, pkg-config and the zlib and OpenSSL headers build librdkafka from source (crate `relay`,
# rdkafka's features `libz` and `ssl`); python3-venv is for schemathesis; chromium renders the
# HTML cost report headless in its test. kubernetes-client (kubectl, for deploy/) is added by
# _stack_apt_install when no kubectl is installed.
_STACK_APT_PACKAGES=(postgresql pgbouncer prometheus prometheus-alertmanager faketime gcc libc6-dev ca-certificates curl make pkg-config zlib1g-dev libssl-dev python3-venv chromium)

export PGBOUNCER_BIN=/usr/sbin/pgbouncer
export PROMETHEUS_BIN=/usr/bin/prometheus
export PROMTOOL_BIN=/usr/bin/promtool
export ALERTMANAGER_BIN=/usr/bin/prometheus-alertmanager
export AMTOOL_BIN=/usr/bin/amtool
export CHROMIUM_BIN=/usr/bin/chromium

_stack_log() { printf '[stack] %s\n' "$*" >&2; }
_stack_err() { printf '[stack] ERROR: %s\n' "$*" >&2; }

# Print the last lines of a log file to stderr.
_stack_tail() {
  local file=$1 n=${2:-40}
  if [[ -s "$file" ]]; then
    printf '[stack] ---- last %s lines of %s ----\n' "$n" "$file" >&2
    tail -n "$n" "$file" >&2 || true
    printf '[stack] ----\n' >&2
  else
    printf '[stack] (%s is empty or missing)\n' "$file" >&2
  fi
}

# Pick a working python3 once (a pyenv shim can exist without a usable interpreter).
_STACK_PY=""
if command -v python3 >/dev/null 2>&1 && python3 -c 'pass' >/dev/null 2>&1; then
  _STACK_PY=$(command -v python3)
fi

_pg_bin_dir() {
  local d
  # shellcheck disable=SC2012 # version-sorted glob of Debian's fixed layout
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
  printf '%s' "$d"
}

_stack_missing_binaries() {
  local pgb b
  pgb=$(_pg_bin_dir)
  if [[ -z "$pgb" ]]; then
    echo "postgresql"
  else
    for b in initdb pg_ctl postgres pg_isready psql; do
      [[ -x "$pgb/$b" ]] || echo "$pgb/$b"
    done
  fi
  for b in "$PGBOUNCER_BIN" "$PROMETHEUS_BIN" "$PROMTOOL_BIN" "$ALERTMANAGER_BIN" "$AMTOOL_BIN" "$CHROMIUM_BIN" /usr/bin/faketime /usr/bin/cc /usr/bin/curl /usr/bin/make /usr/bin/pkg-config; do
    [[ -x "$b" ]] || echo "$b"
  done
  # Debian's python3 with venv and ensurepip (python3-venv), for schemathesis.
  /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || echo python3-venv
  # kubectl renders deploy/ (`kubectl kustomize`); any kubectl will do.
  command -v kubectl >/dev/null 2>&1 || echo kubectl
  for h in /usr/include/zlib.h /usr/include/openssl/ssl.h; do
    [[ -e "$h" ]] || echo "$h"
  done
}

_stack_apt_install() {
  local sudo=() log rc=0 made_policy=0 packages=("${_STACK_APT_PACKAGES[@]}")
  # Debian's kubectl only where there is none: another package's /usr/bin/kubectl (the Cloud
  # SDK's, upstream's) would conflict with it.
  if ! command -v kubectl >/dev/null 2>&1; then
    packages+=(kubernetes-client)
  fi
  if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      _stack_err "packages are missing and we are not root (and sudo is unavailable)"
      return 1
    fi
    sudo=(sudo)
  fi
  log=$(mktemp "${TMPDIR:-/tmp}/budgetd-apt.XXXXXX")
  # Don't let package postinst scripts start system services (port clashes and
  # stray daemons). We start our own instances. Only add a policy if none exists.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    if printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null \
      && "${sudo[@]}" chmod 0755 /usr/sbin/policy-rc.d; then
      made_policy=1
    fi
  fi
  {
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
      apt-get -q -o DPkg::Lock::Timeout=600 update \
      && "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get -q -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
        "${packages[@]}"
  } >"$log" 2>&1 || rc=$?
  if ((made_policy)); then
    "${sudo[@]}" rm -f /usr/sbin/policy-rc.d || true
  fi
  if ((rc != 0)); then
    _stack_err "apt-get failed (exit $rc); full log: $log"
    _stack_tail "$log" 60
    return 1
  fi
  rm -f "$log"
}

_stack_ensure_postgres_user() {
  if ! id -u postgres >/dev/null 2>&1; then
    _stack_log "creating system user 'postgres'"
    useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
}

# Install whatever is missing, then export PG_BIN and the other *_BIN paths.
ensure_packages() {
  local missing
  missing=$(_stack_missing_binaries)
  if [[ -n "$missing" ]]; then
    _stack_log "missing: $(echo "$missing" | tr '\n' ' ')"
    _stack_log "installing ${_STACK_APT_PACKAGES[*]} (and kubernetes-client without a kubectl; apt-get, this can take a minute) ..."
    _stack_apt_install || return 1
    missing=$(_stack_missing_binaries)
    if [[ -n "$missing" ]]; then
      _stack_err "still missing after apt-get install: $(echo "$missing" | tr '\n' ' ')"
      return 1
    fi
  fi
  PG_BIN=$(_pg_bin_dir)
  export PG_BIN
  _stack_ensure_postgres_user
}

# List the TCP ports something is listening on (bash fallback for free_port).
_stack_listening_ports() {
  local f _sl addr _rem st _rest
  for f in /proc/net/tcp /proc/net/tcp6; do
    [[ -r "$f" ]] || continue
    while read -r _sl addr _rem st _rest; do
      [[ "$st" == 0A ]] || continue
      echo $((16#${addr##*:}))
    done < <(tail -n +2 "$f")
  done
}

# _stack_logged_port LOG PREFIX: the port after PREFIX (an ERE) on the first complete line of LOG
# that has it; nothing if there is none yet. LOG is being written by another process: a last
# line without its newline may be half-written (":38" of ":38203"), so it is not read.
_stack_logged_port() {
  local log=$1 prefix=$2 text
  text=$(cat "$log" 2>/dev/null; echo x)
  text=${text%x}
  [[ "$text" == *$'\n'* ]] || return 0
  text=${text%$'\n'*}
  grep -oE -m 1 -- "${prefix}[0-9]+" <<<"$text" | grep -oE '[0-9]+$' || true
}

# Print a free TCP port on 127.0.0.1.
free_port() {
  if [[ -n "$_STACK_PY" ]]; then
    if "$_STACK_PY" -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'; then
      return 0
    fi
  fi
  local used p i
  used=$(_stack_listening_ports || true)
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    if grep -qx "$p" <<<"$used"; then
      continue
    fi
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  _stack_err "could not find a free port"
  return 1
}

# Print the HTTP status code for a GET of URL ("000" if no answer).
_stack_http_status() {
  local url=$1
  if [[ -n "$_STACK_PY" ]]; then
    "$_STACK_PY" - "$url" <<'PY' 2>/dev/null && return 0
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    with opener.open(sys.argv[1], timeout=2) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
PY
  fi
  if command -v curl >/dev/null 2>&1; then
    curl --noproxy '*' -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true
    return 0
  fi
  # Plain bash: http://HOST:PORT/PATH only.
  local rest hostport path host port line="" code=""
  rest=${url#http://}
  hostport=${rest%%/*}
  path=/${rest#*/}
  [[ "$rest" == */* ]] || path=/
  host=${hostport%:*}
  port=${hostport##*:}
  if (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$hostport" >&3
    IFS= read -r -t 2 line <&3 || exit 1
    read -r _ code _ <<<"$line"
    echo "${code:-000}"
  ) 2>/dev/null; then
    return 0
  fi
  echo 000
}

# True if PID exists and isn't a zombie.
_stack_pid_alive() {
  local pid=$1 stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ "${stat%% *}" != Z ]]
}

# True if /proc/PID/cmdline contains WORD (guards against pid reuse).
_stack_pid_matches() {
  local pid=$1 word=$2
  _stack_pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$word"
}

# True if PID's parent is this shell.
_stack_pid_is_our_child() {
  local pid=$1 stat ppid
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  read -r _ ppid _ <<<"$stat"
  [[ "$ppid" == "$$" ]]
}

_stack_register_dir() {
  local dir=$1 d
  for d in "${_STACK_DIRS[@]}"; do
    [[ "$d" == "$dir" ]] && return 0
  done
  _STACK_DIRS+=("$dir")
}

# Record "NAME PID MATCH" in DIR/stack.pids.
_stack_record() {
  local dir=$1 name=$2 pid=$3 match=$4
  _stack_register_dir "$dir"
  printf '%s %s %s\n' "$name" "$pid" "$match" >>"$dir/stack.pids"
}

# Send TERM, wait up to 10 s, then KILL. Never fails.
_stack_kill() {
  local pid=$1 match=$2 i
  if ! _stack_pid_alive "$pid"; then
    wait "$pid" 2>/dev/null || true # reap an exited child of ours, if it is one
    return 0
  fi
  # Only kill what we started: the expected command line, or (between fork and
  # exec) a direct child of this shell.
  if ! _stack_pid_matches "$pid" "$match" && ! _stack_pid_is_our_child "$pid"; then
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    _stack_pid_alive "$pid" || break
    sleep 0.1
  done
  if _stack_pid_alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
  fi
  # Reap it if it's our child. This is a no-op otherwise.
  wait "$pid" 2>/dev/null || true
}

# Make DIR exist and be traversable by the postgres user.
_stack_prepare_dir() {
  local dir=$1
  mkdir -p "$dir"
  chmod a+x "$dir" 2>/dev/null || true
}

# Print a postgres-owned directory for NAME: DIR/NAME if the postgres user can
# use it and unix socket paths fit, else a fresh /tmp dir. The path is recorded
# in DIR/NAME.path.
_stack_postgres_dir() {
  local dir=$1 name=$2 cand
  cand="$dir/$name"
  rm -rf "$cand"
  mkdir -p "$cand"
  chown postgres:postgres "$cand"
  chmod 0700 "$cand"
  # Unix socket paths are limited to 107 bytes ("/.s.PGSQL.65535" is 15 more).
  if ((${#cand} > 90)) || ! runuser -u postgres -- test -w "$cand" -a -x "$cand" 2>/dev/null; then
    rm -rf "$cand"
    cand=$(mktemp -d /tmp/budgetd-pg.XXXXXX)
    chown postgres:postgres "$cand"
    chmod 0700 "$cand"
  fi
  printf '%s\n' "$cand" >"$dir/$name.path"
  printf '%s' "$cand"
}

# Stop a postgres cluster whose data directory is DATA. Never fails.
_stack_stop_postgres_data() {
  local data=$1 pmpid=""
  [[ -f "$data/postmaster.pid" ]] || return 0
  pmpid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
  if [[ -n "${PG_BIN:-}" && -x "$PG_BIN/pg_ctl" ]]; then
    (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -m immediate -w -t 20 stop) >/dev/null 2>&1 || true
  fi
  if _stack_pid_matches "$pmpid" postgres; then
    # pg_ctl starts the postmaster in its own session, so its process group
    # is exactly the cluster.
    kill -KILL -- "-$pmpid" 2>/dev/null || kill -KILL "$pmpid" 2>/dev/null || true
  fi
}

# Stop everything recorded in DIR (newest first). Never fails.
stop_stack_dir() {
  local -
  set +e
  local dir=${1:?usage: stop_stack_dir DIR} lines=() i name pid match root
  if [[ -f "$dir/stack.pids" ]]; then
    mapfile -t lines <"$dir/stack.pids"
    for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
      read -r name pid match <<<"${lines[i]}"
      [[ -n "${pid:-}" ]] || continue
      if [[ "$name" == postgres ]]; then
        _stack_stop_postgres_data "$match"
      else
        _stack_kill "$pid" "$match"
      fi
    done
    : >"$dir/stack.pids"
  fi
  # Belt and braces: a cluster may have been started without being recorded.
  if [[ -f "$dir/pg.path" ]]; then
    root=$(cat "$dir/pg.path")
    [[ -n "$root" ]] && _stack_stop_postgres_data "$root/data"
  fi
  return 0
}

# Stop every process started through this library in this shell. Never fails.
stop_stack() {
  local -
  set +e
  local i
  for ((i = ${#_STACK_DIRS[@]} - 1; i >= 0; i--)); do
    stop_stack_dir "${_STACK_DIRS[i]}"
  done
  return 0
}

# Remove DIR, including the /tmp fallback dirs it points to.
remove_stack_dir() {
  local dir=$1 f p
  for f in "$dir"/*.path; do
    [[ -f "$f" ]] || continue
    p=$(cat "$f")
    [[ "$p" == /tmp/budgetd-pg.* ]] && rm -rf "$p"
  done
  rm -rf "$dir"
}

# ---------------------------------------------------------------- PostgreSQL

start_postgres() {
  local dir=${1:?usage: start_postgres DIR}
  local root data log port attempt deadline pmpid ok
  : "${PG_BIN:=$(_pg_bin_dir)}"
  export PG_BIN
  _stack_ensure_postgres_user
  _stack_prepare_dir "$dir"
  _stack_register_dir "$dir"
  root=$(_stack_postgres_dir "$dir" pg)
  data="$root/data"
  log="$root/postgres.log"

  if ! (cd / && runuser -u postgres -- "$PG_BIN/initdb" -D "$data" --auth=trust -U postgres \
    --encoding=UTF8 --locale=C.UTF-8 -N) >"$root/initdb.log" 2>&1; then
    rm -rf "$data"
    if ! (cd / && runuser -u postgres -- "$PG_BIN/initdb" -D "$data" --auth=trust -U postgres \
      --encoding=UTF8 --locale=C -N) >"$root/initdb.log" 2>&1; then
      _stack_err "initdb failed"
      _stack_tail "$root/initdb.log"
      return 1
    fi
  fi
  cat >>"$data/postgresql.conf" <<EOF

# ---- budgetd ephemeral stack ----
listen_addresses = '127.0.0.1'
unix_socket_directories = '$root'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 256MB
EOF
  # Record the cluster before starting it so stop_stack always finds it.
  _stack_record "$dir" postgres 0 "$data"

  for attempt in 1 2 3; do
    port=$(free_port)
    echo "port = $port" >>"$data/postgresql.conf"
    rm -f "$log"
    if ! (cd / && runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$data" -l "$log" -W -s start) >"$root/pg_ctl.log" 2>&1; then
      _stack_err "pg_ctl start failed"
      _stack_tail "$root/pg_ctl.log"
      _stack_tail "$log"
      return 1
    fi
    ok=0
    deadline=$((SECONDS + STACK_START_TIMEOUT))
    while ((SECONDS < deadline)); do
      if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 >/dev/null 2>&1; then
        ok=1
        break
      fi
      # Give up early if the postmaster has already died.
      if grep -q 'could not create any TCP/IP sockets\|FATAL\|PANIC' "$log" 2>/dev/null; then
        pmpid=$(head -n 1 "$data/postmaster.pid" 2>/dev/null || true)
        if ! _stack_pid_alive "$pmpid"; then
          break
        fi
      fi
      sleep 0.2
    done
    if ((ok)); then
      break
    fi
    _stack_stop_postgres_data "$data"
    if ((attempt < 3)) && grep -q 'Address already in use' "$log" 2>/dev/null; then
      _stack_log "postgres port $port was taken, retrying"
      continue
    fi
    _stack_err "postgres did not become ready on 127.0.0.1:$port (exited early, or not ready within ${STACK_START_TIMEOUT}s)"
    _stack_tail "$log"
    return 1
  done

  export PGPORT_STACK=$port
  export BUDGETD_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# ------------------------------------------------------------------ PgBouncer

start_pgbouncer() {
  local dir=${1:?usage: start_pgbouncer DIR}
  local pb port attempt deadline wrapper pid ok
  if [[ -z "${PGPORT_STACK:-}" ]]; then
    _stack_err "start_pgbouncer: start_postgres first (PGPORT_STACK is unset)"
    return 1
  fi
  : "${PG_BIN:=$(_pg_bin_dir)}"
  export PG_BIN
  _stack_prepare_dir "$dir"
  _stack_register_dir "$dir"
  pb=$(_stack_postgres_dir "$dir" pgbouncer)
  printf '"postgres" ""\n' >"$pb/userlist.txt"
  chown postgres:postgres "$pb/userlist.txt"
  chmod 0600 "$pb/userlist.txt"

  for attempt in 1 2 3; do
    port=$(free_port)
    cat >"$pb/pgbouncer.ini" <<EOF
[databases]
; Wildcard: any database name (including per-test databases created later)
; is forwarded to the ephemeral cluster under the same name.
* = host=127.0.0.1 port=$PGPORT_STACK

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $pb/userlist.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 500
default_pool_size = 20
; Close idle server connections quickly so per-test databases can be dropped.
server_idle_timeout = 10
ignore_startup_parameters = extra_float_digits,options
logfile = $pb/pgbouncer.log
pidfile = $pb/pgbouncer.pid
EOF
    chown postgres:postgres "$pb/pgbouncer.ini"
    rm -f "$pb/pgbouncer.pid" "$pb/pgbouncer.log"
    (cd / && exec runuser -u postgres -- "$PGBOUNCER_BIN" "$pb/pgbouncer.ini") \
      >"$pb/pgbouncer.out" 2>&1 </dev/null &
    wrapper=$!
    _stack_record "$dir" pgbouncer-runuser "$wrapper" runuser
    ok=0
    pid=""
    deadline=$((SECONDS + STACK_START_TIMEOUT))
    while ((SECONDS < deadline)); do
      if [[ -z "$pid" && -s "$pb/pgbouncer.pid" ]]; then
        pid=$(cat "$pb/pgbouncer.pid")
        _stack_record "$dir" pgbouncer "$pid" pgbouncer
      fi
      if PGCONNECT_TIMEOUT=2 "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$port" -U postgres \
        -d postgres -c 'select 1' >/dev/null 2>&1; then
        ok=1
        break
      fi
      _stack_pid_alive "$wrapper" || break
      sleep 0.2
    done
    if ((ok)) && [[ -z "$pid" && -s "$pb/pgbouncer.pid" ]]; then
      pid=$(cat "$pb/pgbouncer.pid")
      _stack_record "$dir" pgbouncer "$pid" pgbouncer
    fi
    if ((ok)); then
      break
    fi
    [[ -n "$pid" ]] && _stack_kill "$pid" pgbouncer
    _stack_kill "$wrapper" runuser
    if ((attempt < 3)) && grep -qi 'address already in use' "$pb/pgbouncer.log" "$pb/pgbouncer.out" 2>/dev/null; then
      _stack_log "pgbouncer port $port was taken, retrying"
      continue
    fi
    _stack_err "pgbouncer did not accept connections on 127.0.0.1:$port (exited early, or not ready within ${STACK_START_TIMEOUT}s)"
    _stack_tail "$pb/pgbouncer.out"
    _stack_tail "$pb/pgbouncer.log"
    return 1
  done

  export PGBOUNCER_PORT_STACK=$port
  export BUDGETD_TEST_PGBOUNCER_URL="postgres://postgres@127.0.0.1:$port"
}

# --------------------------------------------------- Prometheus / Alertmanager

# _stack_start_http NAME DIR LOG READY_URL_PREFIX CMD...
# CMD must contain the literal token @PORT@, which is replaced by the chosen port.
_stack_start_http() {
  local name=$1 dir=$2 log=$3 match=$4
  shift 4
  local port attempt deadline pid ok code args a
  for attempt in 1 2 3; do
    port=$(free_port)
    args=()
    for a in "$@"; do
      args+=("${a//@PORT@/$port}")
    done
    "${args[@]}" >"$log" 2>&1 </dev/null &
    pid=$!
    _stack_record "$dir" "$name" "$pid" "$match"
    ok=0
    deadline=$((SECONDS + STACK_START_TIMEOUT))
    while ((SECONDS < deadline)); do
      code=$(_stack_http_status "http://127.0.0.1:$port/-/ready")
      if [[ "$code" == 200 ]]; then
        ok=1
        break
      fi
      _stack_pid_alive "$pid" || break
      sleep 0.2
    done
    if ((ok)); then
      _STACK_LAST_PORT=$port
      return 0
    fi
    _stack_kill "$pid" "$match"
    if ((attempt < 3)) && grep -qi 'address already in use' "$log" 2>/dev/null; then
      _stack_log "$name port $port was taken, retrying"
      continue
    fi
    _stack_err "$name was not ready on http://127.0.0.1:$port/-/ready (exited early, or not ready within ${STACK_START_TIMEOUT}s)"
    _stack_tail "$log"
    return 1
  done
}

start_prometheus() {
  local dir=${1:?usage: start_prometheus DIR}
  _stack_prepare_dir "$dir"
  _stack_register_dir "$dir"
  rm -rf "$dir/prom-data"
  mkdir -p "$dir/prom-data"
  cat >"$dir/prometheus.yml" <<'EOF'
global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs: []
EOF
  _stack_start_http prometheus "$dir" "$dir/prometheus.log" "$PROMETHEUS_BIN" \
    "$PROMETHEUS_BIN" \
    "--config.file=$dir/prometheus.yml" \
    "--web.listen-address=127.0.0.1:@PORT@" \
    "--storage.tsdb.path=$dir/prom-data" \
    --web.enable-lifecycle || return 1
  export PROMETHEUS_CONFIG_STACK="$dir/prometheus.yml"
  export BUDGETD_TEST_PROMETHEUS_URL="http://127.0.0.1:$_STACK_LAST_PORT"
}

start_alertmanager() {
  local dir=${1:?usage: start_alertmanager DIR}
  _stack_prepare_dir "$dir"
  _stack_register_dir "$dir"
  rm -rf "$dir/am-data"
  mkdir -p "$dir/am-data"
  cat >"$dir/alertmanager.yml" <<'EOF'
route:
  receiver: "null"
receivers:
  - name: "null"
EOF
  _stack_start_http alertmanager "$dir" "$dir/alertmanager.log" "$ALERTMANAGER_BIN" \
    "$ALERTMANAGER_BIN" \
    "--config.file=$dir/alertmanager.yml" \
    "--web.listen-address=127.0.0.1:@PORT@" \
    "--cluster.listen-address=" \
    "--storage.path=$dir/am-data" || return 1
  export ALERTMANAGER_CONFIG_STACK="$dir/alertmanager.yml"
  export BUDGETD_TEST_ALERTMANAGER_URL="http://127.0.0.1:$_STACK_LAST_PORT"
}

# ---------------------------------------------------------------- schemathesis

# The pinned schemathesis, installed from PyPI into a venv under the stack's directory.
SCHEMATHESIS_VERSION=4.32.5
# Test cases per operation and phase, and the seed (a fixed one, so that a run is
# reproducible; set another to explore further).
: "${SCHEMATHESIS_MAX_EXAMPLES:=100}"
: "${SCHEMATHESIS_SEED:=20261202}"

# run_schemathesis DIR: builds and starts budgetd (API only) on a database of its own on the
# Postgres of start_postgres, seeds one tenant (`acme`, the document's example id) with a budget
# and an exemption, and runs schemathesis against /api/v1/openapi.json with the admin token.
# Fails on any 5xx, a status the document does not list for the operation, or a response whose
# content type or body the document does not describe. Its report is in DIR/schemathesis.
run_schemathesis() {
  local dir=${1:?usage: run_schemathesis DIR}
  local venv="$dir/schemathesis-venv" out="$dir/schemathesis" db=budgetd_schemathesis
  local bin port api token config pid rc=0 deadline
  if [[ -z "${PGPORT_STACK:-}" ]]; then
    _stack_err "run_schemathesis: start_postgres first (PGPORT_STACK is unset)"
    return 1
  fi
  mkdir -p "$out"
  _stack_log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  if ! { /usr/bin/python3 -m venv "$venv" \
    && "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "schemathesis==$SCHEMATHESIS_VERSION"; } >"$out/pip.log" 2>&1; then
    _stack_err "could not install schemathesis"
    _stack_tail "$out/pip.log"
    return 1
  fi
  cargo build --locked --quiet -p budgetd || return 1
  bin="${CARGO_TARGET_DIR:-target}/debug/budgetd"

  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$BUDGETD_TEST_DATABASE_URL" \
    -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null || return 1
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  config="$out/budgetd.toml"
  # The daemon binds a port the kernel picks; its address is read back from its log. A port
  # picked here and given up could be bound by another process before the daemon binds it.
  cat >"$config" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:$PGPORT_STACK/$db"

[api]
listen = "127.0.0.1:0"

[log]
filter = "warn,budgetd::cli=info"
TOML
  "$bin" --config "$config" migrate >"$out/migrate.log" 2>&1 || {
    _stack_tail "$out/migrate.log"
    return 1
  }
  BUDGETD_BOOTSTRAP_ADMIN_TOKEN=$token "$bin" --config "$config" run >"$out/budgetd.log" 2>&1 </dev/null &
  pid=$!
  _stack_record "$dir" budgetd "$pid" budgetd
  deadline=$((SECONDS + STACK_START_TIMEOUT))
  api=
  while :; do
    if [[ -z "$api" ]]; then
      port=$(_stack_logged_port "$out/budgetd.log" 'budgetd API listening listen=127\.0\.0\.1:')
      [[ -n "$port" ]] && api="http://127.0.0.1:$port"
    fi
    [[ -n "$api" && "$(_stack_http_status "$api/readyz")" == 200 ]] && break
    if ((SECONDS >= deadline)) || ! _stack_pid_alive "$pid"; then
      if [[ -n "$api" ]]; then
        _stack_err "budgetd was not ready on $api/readyz"
      else
        _stack_err "budgetd logged no 'budgetd API listening' line"
      fi
      _stack_tail "$out/budgetd.log"
      _stack_kill "$pid" budgetd
      return 1
    fi
    sleep 0.2
  done

  local seed
  for seed in \
    "POST /api/v1/tenants {\"id\":\"acme\",\"display_name\":\"Acme\",\"owner\":\"ops@example.com\",\"data_residency\":\"eu\"}" \
    "PUT /api/v1/tenants/acme/budget {\"amount\":\"1000.00\",\"currency\":\"EUR\"}" \
    "PUT /api/v1/tenants/acme/exemption {\"until\":\"$(date -u -d '+7 days' +%FT%TZ)\",\"reason\":\"seed\"}"; do
    read -r method path body <<<"$seed"
    if ! curl --noproxy '*' -fsS -o /dev/null -X "$method" -H "Authorization: Bearer $token" \
      -H 'Content-Type: application/json' -d "$body" "$api$path"; then
      _stack_err "seeding $method $path failed"
      _stack_kill "$pid" budgetd
      return 1
    fi
  done

  _stack_log "schemathesis: $SCHEMATHESIS_MAX_EXAMPLES examples per operation, seed $SCHEMATHESIS_SEED"
  (
    cd "$out" \
      && NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost "$venv/bin/schemathesis" run \
        "$api/api/v1/openapi.json" \
        --header "Authorization: Bearer $token" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "$SCHEMATHESIS_MAX_EXAMPLES" \
        --seed "$SCHEMATHESIS_SEED" \
        --workers 2 \
        --request-timeout 15 \
        --report junit --report-dir "$out"
  ) || rc=$?
  _stack_kill "$pid" budgetd
  if ((rc != 0)); then
    _stack_err "schemathesis failed (exit $rc); the daemon's log: $out/budgetd.log"
  fi
  return "$rc"
}
