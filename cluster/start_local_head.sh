#!/usr/bin/env bash
# Start a single-node Ray head bound to loopback, with token auth, for `ray job submit`.
#   cluster/start_local_head.sh [extra `ray start` flags]   # prints RAY_ADDRESS
#   cluster/stop_local_head.sh             # stops only this head (never `ray stop`)
# Env: RAYFT_NUM_CPUS (default: all), RAYFT_DASHBOARD_PORT (default 8265), RAYFT_GCS_PORT (6380),
#      RAYFT_HEAD_DIR (default .cache/ray_head: Ray's temp dir and head.pids live there).
set -euo pipefail
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # Ray 2.60 binds the external address otherwise
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
HEAD_DIR=${RAYFT_HEAD_DIR:-$PWD/.cache/ray_head}
PORT=${RAYFT_GCS_PORT:-6380}
DASH=${RAYFT_DASHBOARD_PORT:-8265}
PIDS="$HEAD_DIR/head.pids"
mkdir -p "$HEAD_DIR"
starttime() { awk '{sub(/^.*\) /, ""); print $20}' "/proc/$1/stat" 2>/dev/null || true; }
if [ -s "$PIDS" ]; then  # a head from this dir is still up: refuse; a stale file (reboot, crash): drop it
  while read -r pid st; do
    if [ "$pid" != sid ] && [ "$(starttime "$pid")" = "$st" ]; then
      echo "a head started from $HEAD_DIR is running (pid $pid): run cluster/stop_local_head.sh first" >&2
      exit 1
    fi
  done <"$PIDS"
  rm -f "$PIDS"
fi
# Token: RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH if set, else Ray's default file (~/.ray/auth_token),
# generated once here, readable by its owner only (Ray writes it with the process umask).
# Clients (ray job submit, the dashboard) read the same file.
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  (umask 077 && ray get-auth-token --generate >/dev/null)
  chmod 700 "$HOME/.ray" && chmod 600 "$HOME/.ray/auth_token"
fi
args=(--head --node-ip-address=127.0.0.1 --port="$PORT" --dashboard-host=127.0.0.1
      --dashboard-port="$DASH" --temp-dir="$HEAD_DIR/tmp" --disable-usage-stats)
[ -n "${RAYFT_NUM_CPUS:-}" ] && args+=(--num-cpus="$RAYFT_NUM_CPUS")
# `ray start` runs as the leader of a new session, so every daemon it spawns (gcs_server, raylet,
# dashboard, monitors; the raylet's workers) carries its session id: that id and the pids in it
# (with their start times, against pid reuse) go to head.pids for stop_local_head.sh.
setsid ray start "${args[@]}" "$@" &
sid=$!
wait "$sid"
tmp="$PIDS.tmp"
{
  echo "sid $sid"
  for pid in $(ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'); do
    st=$(starttime "$pid")
    if [ -n "$st" ]; then echo "$pid $st"; fi
  done
} >"$tmp"
mv "$tmp" "$PIDS"
[ "$(wc -l <"$PIDS")" -gt 1 ] || { echo "ray start left no process in session $sid" >&2; exit 1; }
echo "RAY_ADDRESS=http://127.0.0.1:$DASH  (dashboard + job server, token auth on; pids in $PIDS)"
echo "submit: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$DASH ray job submit --working-dir . -- python jobs/train.py --config configs/tiny.yaml"
