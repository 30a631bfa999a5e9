"""The example model repository: layout, quality ordering, reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from serve_ab.backends import load_predictor

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def build(model_repo):
    """``models.build``; importable once ``model_repo`` has put the repo on sys.path."""
    from models import build

    return build


@pytest.fixture(scope="module")
def test_accuracies(model_repo, build) -> dict[str, float]:
    """Accuracy of each built file on the digits test split, measured here, not read back."""
    _, _, x_test, y_test = build.load_split()
    accuracies = {}
    for recipe in build.RECIPES:
        predictor = load_predictor(model_repo / "digits" / recipe.version / recipe.filename,
                                   recipe.backend, device="cpu")
        predictor.load()
        accuracies[recipe.version] = float(np.mean(predictor.predict(x_test).argmax(1) == y_test))
    return accuracies


def test_repository_layout(model_repo, build):
    assert build.is_built(model_repo)
    digits = model_repo / "digits"
    assert sorted(p.name for p in digits.iterdir() if p.is_dir()) == ["v1", "v2", "v3"]
    assert (digits / "v1" / "model.onnx").is_file()
    assert (digits / "v2" / "model.pt2").is_file()
    assert (digits / "v3" / "model.onnx").is_file()
    for recipe in build.RECIPES:
        metrics = json.loads((digits / recipe.version / "metrics.json").read_text())
        assert metrics["version"] == recipe.version
        assert metrics["backend"] == recipe.backend
        assert metrics["file"] == recipe.filename
        assert metrics["n_test"] == 450
        assert 0.0 < metrics["accuracy"] <= 1.0


@pytest.mark.parametrize("version", ["v1", "v3"])
def test_onnx_graph_declares_dynamic_batch(model_repo, version):
    model = onnx.load(str(model_repo / "digits" / version / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    (graph_output,) = model.graph.output
    assert graph_input.name == "input"
    assert graph_output.name == "probabilities"
    for value, width in ((graph_input, 64), (graph_output, 10)):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        batch, features = value.type.tensor_type.shape.dim
        assert batch.dim_param == "batch" and not batch.HasField("dim_value")
        assert features.dim_value == width


def test_samples_are_held_out_and_cover_every_digit(model_repo, build):
    samples = json.loads((model_repo / "digits" / "samples.json").read_text())
    inputs = np.asarray(samples["inputs"], dtype=np.float32)
    labels = np.asarray(samples["labels"])
    assert inputs.shape == (64, 64)
    assert labels.shape == (64,)
    assert sorted(set(labels.tolist())) == list(range(10))
    assert inputs.min() >= 0.0 and inputs.max() <= 16.0
    _, _, x_test, y_test = build.load_split()
    test_rows = {row.tobytes(): label for row, label in zip(x_test, y_test)}
    for row, label in zip(inputs, labels):
        assert test_rows[row.tobytes()] == label


def test_v3_is_measurably_worse(test_accuracies):
    assert test_accuracies["v1"] >= 0.95
    assert test_accuracies["v2"] >= 0.95
    # Rollback demos rely on v3 losing a canary comparison by a wide margin.
    assert test_accuracies["v3"] <= min(test_accuracies["v1"], test_accuracies["v2"]) - 0.10


def test_v3_is_worse_on_the_validation_samples(model_repo):
    samples = json.loads((model_repo / "digits" / "samples.json").read_text())
    inputs = np.asarray(samples["inputs"], dtype=np.float32)
    correct = {}
    for version in ("v1", "v3"):
        predictor = load_predictor(model_repo / "digits" / version / "model.onnx", "onnx")
        predictor.load()
        correct[version] = int(np.sum(predictor.predict(inputs).argmax(1) == samples["labels"]))
    assert correct["v3"] < correct["v1"] - 3


def test_metrics_match_measured_accuracy(model_repo, test_accuracies):
    for version, accuracy in test_accuracies.items():
        metrics = json.loads((model_repo / "digits" / version / "metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-4)


def test_build_is_reproducible(build, tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert build.main(["--out", str(first)]) == 0
    assert "digits/v3" in capsys.readouterr().out
    assert set(build.build_all(second)) == {"v1", "v2", "v3"}
    for path in build.expected_files(first):
        twin = second / path.relative_to(first)
        assert path.read_bytes() == twin.read_bytes(), f"{path.relative_to(first)} differs"


def test_is_built_needs_every_file(build, tmp_path):
    assert not build.is_built(tmp_path)
    *all_but_one, last = build.expected_files(tmp_path)
    for path in all_but_one:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert not build.is_built(tmp_path)
    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_bytes(b"")
    assert build.is_built(tmp_path)


def test_build_runs_as_a_plain_script():
    # `python models/build.py` puts models/ (not the repo) on sys.path.
    result = subprocess.run([sys.executable, "models/build.py", "--help"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--out" in result.stdout
