#!/usr/bin/env bash
# The demo: installs what it needs, starts `serve run configs/ab.yaml` (two versions of a
# real model, 50/50), sends traffic the three ways users do, shows where it landed, stops.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0

CONFIG=${1:-configs/ab.yaml}
# Port 8000 is often held by another Ray; take it only when it is free.
PORT=$(python - <<'PY'
import socket
with socket.socket() as s:
    try:
        s.bind(("127.0.0.1", 8000)); print(8000)
    except OSError:
        s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
)
RUN_CONFIG=$(mktemp --suffix=.yaml)
sed "s/port: 8000/port: $PORT/" "$CONFIG" > "$RUN_CONFIG"
LOG=$(mktemp --suffix=.log)
# A Ray temp dir of its own: the demo starts its own local cluster, and the client's
# ray.init(address="auto") finds that one, not another Ray running on this machine.
export RAY_TMPDIR
RAY_TMPDIR=$(mktemp -d /tmp/sab-demo-XXXX)
echo "serve run $CONFIG (port $PORT, log $LOG)"
set -m  # job control: the background serve run keeps its Ctrl-C (SIGINT) handler
serve run "$RUN_CONFIG" >"$LOG" 2>&1 &
SERVE_PID=$!
set +m
cleanup() {
  kill -INT "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  rm -rf "$RUN_CONFIG" "$RAY_TMPDIR"
}
trap cleanup EXIT

for _ in $(seq 1 180); do
  if curl -sf "http://127.0.0.1:$PORT/v2/health/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVE_PID" 2>/dev/null; then echo "serve run failed:"; tail -40 "$LOG"; exit 1; fi
  sleep 1
done
python scripts/demo_client.py --url "http://127.0.0.1:$PORT"
echo
echo "Stopping serve run (Ctrl-C)."
