#!/usr/bin/env bash
# Start a single-node Ray head bound to loopback, with token auth, for `ray job submit`.
#   cluster/start_local_head.sh [extra `ray start` flags]   # prints RAY_ADDRESS
#   cluster/stop_local_head.sh             # stops only this head (never `ray stop`)
# Env: RAYFT_NUM_CPUS (default: all), RAYFT_DASHBOARD_PORT (default 8265), RAYFT_HEAD_DIR.
set -euo pipefail
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # Ray 2.60 binds the external address otherwise
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
HEAD_DIR=${RAYFT_HEAD_DIR:-$PWD/.cache/ray_head}
PORT=${RAYFT_GCS_PORT:-6380}
DASH=${RAYFT_DASHBOARD_PORT:-8265}
mkdir -p "$HEAD_DIR"
# Token: RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH if set, else Ray's default file (~/.ray/auth_token),
# generated once here. Clients (ray job submit, the dashboard) read the same file.
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ -z "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  ray get-auth-token --generate >/dev/null
fi
args=(--head --node-ip-address=127.0.0.1 --port="$PORT" --dashboard-host=127.0.0.1
      --dashboard-port="$DASH" --temp-dir="$HEAD_DIR/tmp" --disable-usage-stats)
[ -n "${RAYFT_NUM_CPUS:-}" ] && args+=(--num-cpus="$RAYFT_NUM_CPUS")
ray start "${args[@]}" "$@"
echo "RAY_ADDRESS=http://127.0.0.1:$DASH  (dashboard + job server, token auth on)"
echo "submit: RAY_AUTH_MODE=token RAY_ADDRESS=http://127.0.0.1:$DASH ray job submit --working-dir . -- python jobs/train.py --config configs/tiny.yaml"
