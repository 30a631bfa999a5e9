#!/usr/bin/env bash
# The whole test suite: unit (no Ray), integration (real Ray Serve), end to end (serve run,
# HTTP). Installs what it needs first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Prometheus for tests/e2e/test_prometheus.py, which scrapes a running app with a real
# server: Debian's package, installed only here (setup.sh also serves the demo, which needs
# no system packages) and only when it is missing and we may install (root, as in CI, or
# passwordless sudo). Otherwise that test skips, or fails when CI=true.
if ! command -v prometheus >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then as_root=(); elif sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(false); fi
  apt_log=$(mktemp)
  install_prometheus() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
  }
  # Try without a package-list refresh first: it is slow, and usually the lists are there.
  if install_prometheus >"$apt_log" 2>&1 || { "${as_root[@]}" apt-get update -q && install_prometheus; } >>"$apt_log" 2>&1; then
    echo "installed $(prometheus --version 2>&1 | head -n 1) for the Prometheus end-to-end test"
  else
    tail -n 5 "$apt_log" >&2
    echo "note: could not install prometheus (needs root or passwordless sudo: apt-get install -y prometheus);" \
         "tests/e2e/test_prometheus.py will skip, or fail under CI=true" >&2
  fi
  rm -f "$apt_log"
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# Ray on a shared CI machine: no dashboard or usage stats, and fail fast rather than hang.
export RAY_USAGE_STATS_ENABLED=0
# --durations: the slowest tests in the log, to keep the suite within its time budget.
exec python -m pytest tests -q -p no:cacheprovider --durations=20 "$@"
