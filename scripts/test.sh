#!/usr/bin/env bash
# The whole test suite: unit (no Ray), integration (real Ray Serve), end to end (serve run,
# HTTP). Installs what it needs first. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# Ray on a shared CI machine: no dashboard or usage stats, and fail fast rather than hang.
export RAY_USAGE_STATS_ENABLED=0
exec python -m pytest tests -q -p no:cacheprovider "$@"
