#!/usr/bin/env bash
# The demo: installs what it needs, then
#   1. A/B test: serve run configs/ab.yaml (v1 and v2, 50/50), traffic over HTTP, V2 and a
#      DeploymentHandle, and where it landed;
#   2. canary: serve run configs/canary.yaml under load, v2 promoted step by step;
#   3. canary of the worse v3 (configs/canary_v3.yaml), rolled back automatically;
#   4. A/B test of v1 against v3 with v2 in shadow (configs/ab_v3.yaml): clients report
#      whether each answer was right, then serve-ab report (table and HTML) and /metrics.
# Pass ab, rollout or report to run only that part.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
PART=${1:-all}

WORK=$(mktemp -d /tmp/sab-demo-XXXX)  # short: Ray's socket paths under it are capped
export SERVE_AB_CONTROL_TOKEN=demo-token-$RANDOM$RANDOM
SERVE_PID=
cleanup() {
  if [ -n "$SERVE_PID" ]; then kill -INT "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Ports 8000 and 9000 (gRPC) are often held by another Ray or service; take them only when free.
PORT=$(python scripts/demo_config.py --free-port 8000 127.0.0.1)
GRPC_PORT=$(python scripts/demo_config.py --free-port 9000 ::)  # Ray's gRPC proxy listens on [::]
if [ "$PORT" != 8000 ]; then echo "port 8000 is taken: the demo serves HTTP on $PORT"; fi
if [ "$GRPC_PORT" != 9000 ]; then echo "port 9000 is taken: the demo serves gRPC on $GRPC_PORT"; fi
export SERVE_AB_URL="http://127.0.0.1:$PORT"

start_serve() {  # config file; a Ray of its own (fresh temp dir) and a fresh rollout state
  local name; name=$(basename "$1" .yaml)
  export RAY_TMPDIR="$WORK/ray-$name"
  mkdir -p "$RAY_TMPDIR"
  # A state file of its own: a second demo would otherwise carry on this one's run and figures.
  python scripts/demo_config.py "$1" "$WORK/$name.yaml" --port "$PORT" --grpc-port "$GRPC_PORT" \
    --state "$WORK/$name.sqlite"
  echo "== serve run $1 (port $PORT, log $WORK/$name.log)"
  set -m  # job control: the background serve run keeps its Ctrl-C (SIGINT) handler
  serve run "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
  SERVE_PID=$!
  set +m
  for _ in $(seq 1 180); do
    if curl -sf "$SERVE_AB_URL/v2/health/ready" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$SERVE_PID" 2>/dev/null; then echo "serve run failed:"; tail -40 "$WORK/$name.log"; exit 1; fi
    sleep 1
  done
  echo "serve run did not get ready in 180 s:"; tail -40 "$WORK/$name.log"; exit 1
}

stop_serve() {
  kill -INT "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true
  SERVE_PID=
}

watch_rollout() {  # until promoted or aborted, under a load whose clients report correctness
  local name=$1
  # 5,000 users: the 5% step sees the users of its buckets only, and with 500 (some 25 there)
  # the gates' bound on how alike one user's requests are (max_user_icc) capped the evidence at
  # ~10 requests a user, too little for the p95 gate; the step was held to its deadline.
  python -m tests.support.loadgen --url "$SERVE_AB_URL" --out "$WORK/$name.jsonl" \
    --concurrency 3 --rate-per-worker-hz 30 --users 5000 --stop-file "$WORK/$name.stop" \
    --samples models/digits/samples.json --feedback correct >"$WORK/$name.load.log" 2>&1 &
  local load_pid=$!
  for _ in $(seq 1 130); do  # ~12 minutes at most: the canary's 600 s deadline, then some
    serve-ab status --json > "$WORK/status.json"
    python - "$WORK/status.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
bars = "  ".join(f"{v} {w:5.1f}%" for v, w in s["weights_pct"].items())
step = min(s["step_index"] + 1, s["steps_total"])  # counted from 1, as serve-ab status does; past the last when done
print(f"   {s['phase']:<11} step {step}/{s['steps_total']}  {bars}  {s['reason'][:90]}")
PY
    if grep -qE '"phase": "(promoted|aborted)"' "$WORK/status.json"; then break; fi
    sleep 5
  done
  touch "$WORK/$name.stop"; wait "$load_pid" || true
  echo "   load: $(tail -1 "$WORK/$name.load.log")"
  serve-ab status --history
}

if [ "$PART" = all ] || [ "$PART" = ab ]; then
  start_serve configs/ab.yaml
  python scripts/demo_client.py --url "$SERVE_AB_URL"
  stop_serve
fi
if [ "$PART" = all ] || [ "$PART" = rollout ]; then
  start_serve configs/canary.yaml
  echo "-- canary of v2: 5% -> 20% -> 50% -> 100% while gates watch it"
  watch_rollout canary
  stop_serve
  start_serve configs/canary_v3.yaml
  echo "-- canary of v3, the worse model: its clients' 'correct' feedback should fail the gate"
  watch_rollout canary_v3
  stop_serve
fi
if [ "$PART" = all ] || [ "$PART" = report ]; then
  start_serve configs/ab_v3.yaml
  echo "-- A/B of v1 against v3 for 40 s, 500 users reporting whether each answer was right"
  python -m tests.support.loadgen --url "$SERVE_AB_URL" --out "$WORK/ab_v3.jsonl" \
    --concurrency 3 --rate-per-worker-hz 30 --users 500 --duration-s 40 \
    --samples models/digits/samples.json --feedback correct >"$WORK/ab_v3.load.log" 2>&1
  echo "   load: $(tail -1 "$WORK/ab_v3.load.log")"
  mkdir -p benchmarks/out
  serve-ab report --html benchmarks/out/report.html  # the table, and the same report as a page
  echo "-- Prometheus metrics of the app ($SERVE_AB_URL/metrics), requests per version:"
  curl -s "$SERVE_AB_URL/metrics" | grep '^serve_ab_requests_total' || true
  stop_serve
  echo "-- run records (.serve-ab/runs.sqlite); the HTML report is benchmarks/out/report.html"
  serve-ab runs
fi
