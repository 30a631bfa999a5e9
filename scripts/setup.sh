#!/usr/bin/env bash
# Installs everything serve-ab needs into .venv and builds the example models.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

# torch first, pinned: an unpinned torch with none installed pulls a multi-GB CUDA build;
# 2.13.0 is a CPU build that satisfies pyproject's range.
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q "torch==2.13.0"
fi
python -m pip install -q -e ".[dev]"

# The example models are trained from data shipped inside scikit-learn, never downloaded.
python - <<'PY'
from pathlib import Path
from models.build import build_all, is_built
if not is_built(Path("models")):
    print(build_all(Path("models")))
PY
