#!/usr/bin/env bash
# Stop the head started by start_local_head.sh, and only it (`ray stop` would kill every Ray
# on the machine). Kills the pids recorded in <head dir>/head.pids whose start time still
# matches (a reused pid is left alone), plus the processes the head spawned since (its
# workers), found by the session id it was started in while one of its own pids is alive.
set -euo pipefail
HEAD_DIR=${RAYFT_HEAD_DIR:-$PWD/.cache/ray_head}
PIDS="$HEAD_DIR/head.pids"
[ -s "$PIDS" ] || { echo "no head started from $HEAD_DIR ($PIDS missing)"; exit 0; }
starttime() { awk '{sub(/^.*\) /, ""); if ($1 != "Z") print $20}' "/proc/$1/stat" 2>/dev/null || true; }
alive() {  # "pid starttime" lines on stdin -> the pids still running (not zombies) with that start time
  local pid st
  while read -r pid st; do
    if [ -n "$pid" ] && [ "$(starttime "$pid")" = "$st" ]; then echo "$pid"; fi
  done
  return 0
}
sid=$(awk '$1 == "sid" {print $2}' "$PIDS")
mine=$(awk '$1 != "sid"' "$PIDS" | alive)
snap=""
if [ -n "$mine" ]; then
  # A session id is not reused while a member lives, so its members are the head's processes.
  for pid in $( { echo "$mine"; ps -e -o pid=,sid= | awk -v s="$sid" '$2 == s {print $1}'; } | sort -u); do
    st=$(starttime "$pid")
    if [ -n "$st" ]; then snap+="$pid $st"$'\n'; fi
  done
fi
if [ -n "$snap" ]; then
  kill -TERM $(echo -n "$snap" | alive) 2>/dev/null || true
  for _ in $(seq 20); do
    [ -z "$(echo -n "$snap" | alive)" ] && break
    sleep 0.5
  done
  left=$(echo -n "$snap" | alive)
  if [ -n "$left" ]; then
    kill -KILL $left 2>/dev/null || true
    for _ in $(seq 20); do  # SIGKILL is asynchronous: return once they are gone
      [ -z "$(echo -n "$snap" | alive)" ] && break
      sleep 0.5
    done
  fi
fi
rm -f "$PIDS"
echo "stopped head under $HEAD_DIR"
