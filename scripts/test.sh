#!/usr/bin/env bash
# The whole test suite: unit (no Ray), integration (real Ray Serve), end to end (serve run,
# HTTP). Installs what it needs first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Real servers the tests start themselves, from Debian's packages: prometheus for
# tests/e2e/test_prometheus.py (scrapes a running app) and redis-server for the Redis state
# store tests (tests/unit/store). Installed only here (setup.sh also serves the demo, which
# needs no system packages) and only when missing and we may install (root, as in CI, or
# passwordless sudo). Otherwise those tests skip, or fail when CI=true.
apt_install_if_missing() {  # COMMAND PACKAGE TESTS
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || return 0
  if [ "$(id -u)" -eq 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(false); fi
  apt_log=$(mktemp)
  install_package() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2"
  }
  # Try without a package-list refresh first: it is slow, and usually the lists are there.
  if install_package "$@" >"$apt_log" 2>&1 || { "${as_root[@]}" apt-get update -q && install_package "$@"; } >>"$apt_log" 2>&1; then
    echo "installed $("$1" --version 2>&1 | head -n 1) for $3"
  else
    tail -n 5 "$apt_log" >&2
    echo "note: could not install $2 (needs root or passwordless sudo: apt-get install -y $2);" \
         "$3 will skip, or fail under CI=true" >&2
  fi
  rm -f "$apt_log"
}
apt_install_if_missing prometheus prometheus tests/e2e/test_prometheus.py
apt_install_if_missing redis-server redis-server "the Redis store tests"
# shellcheck disable=SC1091
. .venv/bin/activate
# Ray on a shared CI machine: no dashboard or usage stats, and fail fast rather than hang.
export RAY_USAGE_STATS_ENABLED=0
# Ray Serve kills a proxy that is not ready within 3 checks of 5 s and starts another, and
# serve.start gives up after 60 s: on 2 cores running the tests without Ray beside Ray's
# start, a proxy once took 22 s to come up and the integration session never started.
export RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S="${RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S:-30}"
# --durations: the slowest tests in the log, to keep the suite within its time budget.
pytest_args=(-q -p no:cacheprovider --durations=20)
if [ "$#" -gt 0 ]; then  # a selection or options of the caller's (-k, -x, a path): one run
  # No `tests` here: beside a path it would run the whole suite too. Without a path, pytest
  # takes pyproject's testpaths (tests).
  exec python -m pytest "${pytest_args[@]}" "$@"
fi

# The whole suite in two runs side by side. The tests with Ray (e2e, integration) spend most
# of their time waiting (replicas starting, rollout steps, load reports): the suite used
# under half of one core. The tests without Ray (unit, fuzz: about 4 minutes of CPU) run
# beside them, each run in a temp dir of its own; the second run's log is printed after the
# first's, and the suite fails if either does.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python -m pytest tests/unit tests/fuzz "${pytest_args[@]}" --basetemp="$scratch/no-ray" \
  >"$scratch/no-ray.log" 2>&1 &
no_ray_pid=$!
set +e
python -m pytest tests/e2e tests/integration "${pytest_args[@]}" --basetemp="$scratch/ray"
ray_rc=$?
wait "$no_ray_pid"
no_ray_rc=$?
set -e
echo
echo "===== tests without Ray (tests/unit, tests/fuzz), run beside the ones above ====="
cat "$scratch/no-ray.log"
echo "exit codes: with Ray $ray_rc, without Ray $no_ray_rc"
[ "$ray_rc" -eq 0 ] && [ "$no_ray_rc" -eq 0 ]
