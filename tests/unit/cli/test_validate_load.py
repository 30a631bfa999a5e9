"""``serve-ab validate --load``: the versions loaded and compared, and a blue-green validation
run, as the replicas and the controller would, before anything is deployed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from serve_ab.cli import command as cli

REPO_ROOT = Path(__file__).resolve().parents[3]
DIGITS = REPO_ROOT / "models" / "digits"
DIABETES = REPO_ROOT / "models" / "diabetes"

pytestmark = pytest.mark.skipif(not (DIGITS / "v3" / "model.onnx").is_file() or
                                not (DIABETES / "v1" / "model.onnx").is_file(),
                                reason="example models not built (python models/build.py)")


def experiment(tmp_path: Path, versions: list[dict], **more) -> Path:
    cfg = {"model": "digits", "versions": versions, "weights": {versions[0]["name"]: 100},
           "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
           "controller": {"state_path": str(tmp_path / "state.sqlite")}, **more}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def onnx(name: str, path: Path) -> dict:
    return {"name": name, "path": str(path), "backend": "onnx"}


def blue_green(**settings) -> dict:
    return {"rollout": {"strategy": "blue_green", "stable": "v1", "candidate": "v2",
                        "gates": [{"metric": "error_rate", "max": 0.05}], "blue_green": settings}}


def validate(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["validate", "--load", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_shipped_configs_load(capsys):
    # gpu_shared.yaml asks for GPUs: its versions load on this machine's CPU all the same.
    shipped = [str(REPO_ROOT / "configs" / name) for name in ("ab.yaml", "blue_green.yaml", "gpu_shared.yaml")]
    code, out = validate(capsys, *shipped)
    assert code == 0, out
    assert out.count(": ok") == 3


def test_a_file_the_backend_cannot_load_is_named_by_its_field(tmp_path, capsys):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    path = experiment(tmp_path, [onnx("v1", DIGITS / "v1" / "model.onnx"), onnx("v2", broken)])
    assert cli.main(["validate", str(path)]) == 0  # the file exists: without --load, nothing to say
    capsys.readouterr()
    code, out = validate(capsys, str(path))
    assert code == 1
    assert "versions.1 ('v2'): failed to load:" in out and "broken.onnx" in out


def test_a_torch_archive_that_will_not_load_is_one_line_without_torchs_traceback(tmp_path, capfd):
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(b"not a zip archive")
    path = experiment(tmp_path, [onnx("v1", DIGITS / "v1" / "model.onnx"),
                                 {"name": "v2", "path": str(broken), "backend": "torch"}])
    assert cli.main(["validate", "--load", str(path)]) == 1
    captured = capfd.readouterr()  # torch logs to the process's stderr through handlers of its own
    assert "versions.1 ('v2'): failed to load: ValueError: cannot load broken.pt2" in captured.out
    assert "Traceback" not in captured.err and "Traceback" not in captured.out, captured.err[-2000:]


def test_versions_that_do_not_share_their_interface_are_refused_and_the_stable_wins(tmp_path, capsys):
    # The stable (analysis.control defaults to the first version) is digits; v2 takes diabetes rows.
    path = experiment(tmp_path, [onnx("v1", DIGITS / "v1" / "model.onnx"), onnx("v2", DIABETES / "v1" / "model.onnx")])
    code, out = validate(capsys, str(path))
    assert code == 1
    assert "versions.1 ('v2'): takes" in out and "must share their input and output" in out
    assert "versions.0" not in out


def test_a_blue_green_validation_that_would_fail_is_an_error(tmp_path, capsys):
    versions = [onnx("v1", DIGITS / "v1" / "model.onnx"), onnx("v2", DIGITS / "v3" / "model.onnx")]
    samples = str(DIGITS / "samples.json")
    # v3 is the worse model: it cannot label every sample right.
    path = experiment(tmp_path, versions, **blue_green(validation_samples=samples, validation_min_accuracy=1.0))
    code, out = validate(capsys, str(path))
    assert code == 1
    assert "rollout.blue_green: validation of v2: accuracy" in out and "< 1.0" in out
    assert "the rollout would abort before any traffic moves" in out

    path = experiment(tmp_path, versions, **blue_green(validation_samples=samples, validation_min_accuracy=0.5))
    assert validate(capsys, str(path))[0] == 0

    # Samples of another model: green cannot serve them, which validation would find at run time.
    path = experiment(tmp_path, versions, **blue_green(validation_samples=str(DIABETES / "samples.json")))
    code, out = validate(capsys, str(path))
    assert code == 1
    assert "rollout.blue_green: validation of v2 failed: InputError: this model's one input is 'input'" in out
    assert "Traceback" not in out  # the controller's log line, not shown here

    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"rows": []}')
    path = experiment(tmp_path, versions, **blue_green(validation_samples=str(wrong)))
    code, out = validate(capsys, str(path))
    assert code == 1
    assert f"rollout.blue_green.validation_samples: {str(wrong)!r} has no \"inputs\"" in out

    # No blue_green: block: its defaults, one all-zero instance through green.
    path = experiment(tmp_path, versions, rollout={"strategy": "blue_green", "stable": "v1", "candidate": "v2",
                                                   "gates": [{"metric": "error_rate", "max": 0.05}]})
    assert validate(capsys, str(path))[0] == 0


def test_load_and_no_check_files_together_are_refused(capsys):
    code, out = validate(capsys, "--no-check-files", str(REPO_ROOT / "configs" / "ab.yaml"))
    assert code == 2
    assert "--load loads the model files that --no-check-files skips" in out


def test_a_load_that_never_returns_is_one_line_after_the_timeout(tmp_path, capsys, monkeypatch):
    """A python version whose load() waits on something that never comes (here an event the
    test sets afterwards, so no thread is left waiting) is named by its field and step."""
    (tmp_path / "stuck_model.py").write_text(
        "import threading\n"
        "RELEASE = threading.Event()\n"
        "class Stuck:\n"
        "    def load(self, path):\n        RELEASE.wait(60)\n"
        "    def predict(self, batch):\n        return batch\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = experiment(tmp_path, [onnx("v1", DIGITS / "v1" / "model.onnx"),
                                 {"name": "v2", "backend": "python", "class": "stuck_model:Stuck",
                                  "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]}])
    try:
        code, out = validate(capsys, "--load-timeout", "1s", "--app-dir", str(tmp_path), str(path))
    finally:
        sys.modules["stuck_model"].RELEASE.set()
    assert code == 1, out
    assert "versions.1 ('v2'): loading did not finish within 1s (validate --load-timeout)" in out, out


def test_load_timeout_without_load_is_refused(capsys):
    code = cli.main(["validate", "--load-timeout", "5m", str(REPO_ROOT / "configs" / "ab.yaml")])
    assert code == 2
    assert "--load-timeout limits --load, which was not given" in capsys.readouterr().err
