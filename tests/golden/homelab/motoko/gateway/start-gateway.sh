#!/usr/bin/env bash
# Rendered by fleetgate from fleet.yaml (gateway); settings sha256:e5053effe2a1aeb3.
# Do not edit: change the fleet file and render again.
# Runs the fleetgate gateway as a background process with a pid file and a log file (no systemd needed).
# Usage: start-gateway.sh start|stop|restart|status|logs [LINES]|run
# Secrets come from the environment or from ~/fleetgate/env (KEY=value lines).
set -euo pipefail

NAME=gateway
STATE_DIR="$HOME"/fleetgate
PID_FILE="$STATE_DIR/run/$NAME.pid"
LOG_FILE="$STATE_DIR/logs/$NAME.log"
SELF="${BASH_SOURCE[0]}"

load_env() {
  if [ -f "$STATE_DIR/env" ]; then
    set -a
    # shellcheck source=/dev/null
    . "$STATE_DIR/env"
    set +a
  fi
}

pid_of() {
  [ -f "$PID_FILE" ] && cat "$PID_FILE"
}

is_running() {
  local pid state
  pid=$(pid_of) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/status" ] || return 1
  # an exited process that nobody reaped yet (a zombie) is not running
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$pid/status")
  [ "$state" != Z ]
}

do_run() {
  load_env
  exec "${FLEETGATE_BIN:-fleetgate}" \
    serve \
    "$(cd "$(dirname "$SELF")" && pwd -P)/fleet.yaml" \
    --host \
    0.0.0.0 \
    --port \
    4000
}

do_start() {
  if is_running; then
    echo "$NAME is already running (pid $(pid_of))"
    return 0
  fi
  mkdir -p "$STATE_DIR/run" "$STATE_DIR/logs"
  if [ -f "$LOG_FILE" ]; then mv -f "$LOG_FILE" "$LOG_FILE.1"; fi
  # its own session, so that stop can end the server and every process it started
  setsid bash "$SELF" run </dev/null >"$LOG_FILE" 2>&1 &
  echo "$!" >"$PID_FILE"
  echo "$NAME started (pid $!), log: $LOG_FILE"
}

do_stop() {
  local pid
  pid=$(pid_of) || true
  if [ -z "$pid" ]; then
    echo "$NAME is not running"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 90); do
    is_running || break
    sleep 0.5
  done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  echo "$NAME stopped"
}

do_status() {
  if is_running; then
    echo "$NAME is running (pid $(pid_of))"
  else
    echo "$NAME is not running"
    return 3
  fi
}

do_logs() {
  if [ -f "$LOG_FILE" ]; then tail -n "${1:-100}" "$LOG_FILE"; fi
}

case "${1:-}" in
  start) do_start ;;
  stop) do_stop ;;
  restart) do_stop && do_start ;;
  status) do_status ;;
  logs) do_logs "${2:-100}" ;;
  run) do_run ;;
  *)
    echo "usage: $0 start|stop|restart|status|logs [LINES]|run" >&2
    exit 2
    ;;
esac
