"""scripts/setup.sh, the install behind the README's two commands: torch is installed first
as the CPU build. PyPI's Linux torch 2.13.0 is the CUDA build (some 20 nvidia-* packages, GBs),
so pinning the version alone gets it on a fresh machine; the CPU build comes from PyTorch's CPU
index. The script runs here in a copy of the repository's scripts with a stand-in `.venv` whose
`python` records each pip call, so nothing is installed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def run_setup_sh(tmp_path):
    """Runs a copy of scripts/setup.sh with torch importable or not; returns its pip calls,
    each as the list of its arguments after `-m pip`."""
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "scripts", root / "scripts")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    calls = tmp_path / "pip_calls"

    def run(torch_installed: bool) -> list[list[str]]:
        # `python -c "import torch"` answers as asked; `python -m pip ...` appends its arguments
        # (one call a line, tab-separated); the models' build (`python -`) does nothing.
        _executable(venv_bin / "python", f"""#!/usr/bin/env bash
if [ "${{1:-}}" = -c ]; then exit {0 if torch_installed else 1}; fi
if [ "${{1:-}}" = -m ] && [ "${{2:-}}" = pip ]; then shift 2; (IFS=$'\\t'; echo "$*") >> {calls}; fi
exit 0
""")
        (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
        calls.write_text("")
        done = subprocess.run(["bash", str(root / "scripts" / "setup.sh")], cwd=root, env=dict(os.environ),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return [line.split("\t") for line in calls.read_text().splitlines()]

    return run


def test_torch_comes_from_the_cpu_index_before_the_package(run_setup_sh):
    calls = run_setup_sh(torch_installed=False)
    assert len(calls) == 2, calls
    torch_call, package_call = calls
    assert "torch==2.13.0" in torch_call, torch_call
    # An extra index, not a replacement: PyPI stays, and pip takes 2.13.0+cpu, the higher
    # version, from PyTorch's CPU index over PyPI's CUDA 2.13.0.
    assert torch_call[torch_call.index("--extra-index-url") + 1] == CPU_INDEX, torch_call
    assert "--index-url" not in torch_call, torch_call
    # torch's own requirements come from PyPI with the package's install, not from that index.
    assert "--no-deps" in torch_call, torch_call
    # An index that never answers costs at most (1 + retries) x timeout, not pip's default
    # 6 tries of PIP_DEFAULT_TIMEOUT (180 s here: 18 min).
    timeout_s, retries = (int(torch_call[torch_call.index(flag) + 1]) for flag in ("--timeout", "--retries"))
    assert (1 + retries) * timeout_s <= 120, torch_call
    assert package_call[-2:] == ["-e", ".[dev]"], package_call


def test_an_installed_torch_is_kept(run_setup_sh):
    calls = run_setup_sh(torch_installed=True)
    assert calls == [["install", "-q", "-e", ".[dev]"]], calls
