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

# torch first, pinned, and the CPU build: PyPI's Linux torch, 2.13.0 too, is the CUDA build,
# which pulls some 20 nvidia-* packages (GBs). PyTorch's CPU index holds it as 2.13.0+cpu,
# which pip prefers to PyPI's 2.13.0 (a local version sorts above its release); a pip that
# finds +cpu wheels elsewhere (find-links) takes those. --no-deps: torch's own requirements
# come from PyPI with the next install, so the extra index is asked about torch alone (an
# index that cannot be reached costs its retries once, not once per package). --timeout and
# --retries bound what an index that never answers costs: a machine whose firewall drops the
# connection (rather than failing its name at once, as here: ~11 s of retries) would otherwise
# wait PIP_DEFAULT_TIMEOUT on each of pip's 6 tries (18 min at 180 s).
if ! python -c "import torch" >/dev/null 2>&1; then
  python -m pip install -q --no-deps --timeout 30 --retries 2 "torch==2.13.0" \
    --extra-index-url https://download.pytorch.org/whl/cpu
fi
python -m pip install -q -e ".[dev]"

# The example models are trained from data shipped inside scikit-learn, never downloaded.
python - <<'PY'
from pathlib import Path
from models.build import build_all, is_built
if not is_built(Path("models")):
    print(build_all(Path("models")))
PY
