"""scripts/test.sh with arguments: one pytest run over what the caller selected. A path given
runs that path alone, not the whole suite beside it (`pytest tests tests/e2e/x.py` collects
all 2,500 tests). The script runs here in a copy of the repository's scripts with a stand-in
`.venv` whose `python` records its arguments, so nothing is installed and no test runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def run_test_sh(tmp_path):
    """Runs a copy of scripts/test.sh with the given arguments; returns the arguments its
    `python -m pytest` got."""
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    calls = tmp_path / "pytest_args"
    # setup.sh's `python -c "import torch"`, pip and the models' build succeed doing nothing;
    # `python -m pytest ...` writes its arguments, one a line.
    _executable(venv_bin / "python", f"""#!/usr/bin/env bash
if [ "${{1:-}}" = -m ] && [ "${{2:-}}" = pytest ]; then shift 2; printf '%s\\n' "$@" > {calls}; fi
exit 0
""")
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
    # prometheus and redis-server "installed", so test.sh asks apt for nothing.
    system_bin = tmp_path / "bin"
    system_bin.mkdir()
    for command in ("prometheus", "redis-server"):
        _executable(system_bin / command, "#!/bin/sh\nexit 0\n")
    env = {**os.environ, "PATH": f"{system_bin}:{os.environ['PATH']}"}

    def run(*args: str) -> list[str]:
        done = subprocess.run(["bash", str(root / "scripts" / "test.sh"), *args], cwd=root, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return calls.read_text().splitlines()

    return run


def test_a_path_runs_that_path_alone(run_test_sh):
    args = run_test_sh("tests/e2e/test_serve_run.py")
    assert "tests" not in args, args
    assert args[-1] == "tests/e2e/test_serve_run.py"


def test_a_test_id_and_options_run_that_test_alone(run_test_sh):
    args = run_test_sh("-x", "tests/unit/test_routing.py::test_shares_within_one_point_of_weights")
    assert "tests" not in args, args
    assert args[-2:] == ["-x", "tests/unit/test_routing.py::test_shares_within_one_point_of_weights"]


def test_options_alone_select_from_the_whole_suite(run_test_sh):
    # No path: pytest takes pyproject's testpaths, which is the suite.
    args = run_test_sh("-k", "routing")
    assert args[-2:] == ["-k", "routing"]
    assert "tests" not in args, args
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert pyproject["tool"]["pytest"]["ini_options"]["testpaths"] == ["tests"]
