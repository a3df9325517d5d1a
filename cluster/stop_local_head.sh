#!/usr/bin/env bash
# Stop the head started by start_local_head.sh, and only it (`ray stop` would kill every Ray
# on the machine). Finds the processes by the head's temp dir.
set -euo pipefail
HEAD_DIR=${RAYFT_HEAD_DIR:-$PWD/.cache/ray_head}
pids=$(pgrep -f -- "$HEAD_DIR/tmp" || true)
[ -z "$pids" ] && { echo "no head running under $HEAD_DIR"; exit 0; }
kill $pids 2>/dev/null || true
sleep 3
kill -9 $(pgrep -f -- "$HEAD_DIR/tmp" || true) 2>/dev/null || true
echo "stopped head under $HEAD_DIR"
