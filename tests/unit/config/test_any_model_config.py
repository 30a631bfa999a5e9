"""Version fields for any model: backend python and its class, declared tensors, task."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve_ab.config.experiment import ConfigError, VersionConfig, parse_experiment

REPO_ROOT = Path(__file__).resolve().parents[3]
MODELS = "tests.unit.backends.python_models"


def errors_of(args) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_experiment(args)
    return caught.value.errors


def experiment(*versions, **changes):
    return {"model": "m", "versions": list(versions), "weights": {versions[0]["name"]: 100}, **changes}


def onnx(name="v1", **fields):
    return {"name": name, "path": f"{name}.onnx", "backend": "onnx", **fields}


def test_python_version_needs_an_importable_class_named_in_the_error():
    errors = errors_of(experiment({"name": "v1", "backend": "python", "class": "nowhere_pkg.mod:Model"}))
    assert errors == ["versions.0.class: cannot import module 'nowhere_pkg.mod' for 'nowhere_pkg.mod:Model': "
                      "ModuleNotFoundError: No module named 'nowhere_pkg' (got 'nowhere_pkg.mod:Model')"]
    errors = errors_of(experiment({"name": "v1", "backend": "python", "class": f"{MODELS}:NoPredict"}))
    assert errors[0].startswith("versions.0.class: class ") and "has no predict method" in errors[0]
    errors = errors_of(experiment({"name": "v1", "backend": "python"}))
    assert "backend python needs class" in errors[0]


def test_python_version_path_is_optional_and_class_round_trips():
    version = VersionConfig.model_validate({"name": "v1", "backend": "python", "class": f"{MODELS}:Linear"})
    assert version.path is None and version.class_ == f"{MODELS}:Linear"
    dumped = version.model_dump()
    assert dumped["class"] == f"{MODELS}:Linear"
    assert VersionConfig.model_validate(dumped) == version  # as ModelPool receives it


def test_onnx_needs_a_path_and_takes_no_class():
    assert "backend onnx needs path" in errors_of(experiment({"name": "v1", "backend": "onnx"}))[0]
    errors = errors_of(experiment(onnx(**{"class": f"{MODELS}:Linear"})))
    assert "class is for backend python" in errors[0]


def test_declared_tensors_are_checked():
    bad_batch = onnx(inputs=[{"name": "x", "datatype": "FP32", "shape": [4]}])
    assert any("inputs.0.shape" in e and "must be -1" in e for e in errors_of(experiment(bad_batch)))
    bad_type = onnx(inputs=[{"name": "x", "datatype": "FLOAT", "shape": [-1, 4]}])
    assert any("inputs.0.datatype" in e for e in errors_of(experiment(bad_type)))
    twice = onnx(inputs=[{"name": "x", "datatype": "FP32", "shape": [-1]}] * 2)
    assert any("inputs names ['x'] more than once" in e for e in errors_of(experiment(twice)))
    version = VersionConfig.model_validate(onnx(inputs=[{"name": "a", "datatype": "INT64", "shape": [-1, 2]},
                                                        {"name": "b", "datatype": "BYTES", "shape": [-1]}]))
    inputs, outputs = version.declared_specs()
    assert inputs.names == ("a", "b") and [s.datatype for s in inputs] == ["INT64", "BYTES"]
    assert outputs is None


def test_task_defaults_to_classification_and_regression_needs_a_tolerance():
    assert VersionConfig.model_validate(onnx()).task.value == "classification"
    errors = errors_of(experiment(onnx(task="regression")))
    assert "task regression needs task_options.tolerance" in errors[0]
    errors = errors_of(experiment(onnx(task="classification", task_options={"tolerance": 1.0})))
    assert "task_options.tolerance is for task regression" in errors[0]
    errors = errors_of(experiment(onnx(task="regression", task_options={"tolerance": 1.0, "threshold": 0.9})))
    assert "task_options.threshold is for task embedding" in errors[0]
    assert errors_of(experiment(onnx(task="ranking")))[0].startswith("versions.0.task:")


def test_the_versions_of_one_experiment_share_their_task():
    args = experiment(onnx("v1", task="regression", task_options={"tolerance": 5}),
                      onnx("v2", task="regression", task_options={"tolerance": 6}))
    errors = errors_of(args)
    assert "versions.1 ('v2') has task regression" in errors[0] and "share task and task_options" in errors[0]
    parse_experiment(experiment(onnx("v1", task="embedding"), onnx("v2", task="embedding")))


def test_task_output_must_be_a_declared_output():
    version = onnx(task="regression", task_options={"tolerance": 1, "output": "nope"},
                   outputs=[{"name": "value", "datatype": "FP32", "shape": [-1, 1]}])
    assert "task_options.output is 'nope'" in errors_of(experiment(version))[0]


def test_the_regression_example_config_parses():
    raw = yaml.safe_load((REPO_ROOT / "configs" / "regression.yaml").read_text())
    cfg = parse_experiment(raw["applications"][0]["args"])
    assert [v.task.value for v in cfg.versions] == ["regression", "regression"]
    assert cfg.versions[0].task_options.tolerance == 20.0
    assert cfg.shadow.version == "v2" and cfg.rollout.candidate == "v2"
    assert cfg.versions[0].declared_specs()[0].names == ("demographics", "blood")
