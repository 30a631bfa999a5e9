"""Several named inputs and outputs, the python backend, and the diabetes example models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serve_ab.backends import (
    InputError,
    InputSpec,
    InputSpecs,
    OutputSpec,
    OutputSpecs,
    load_predictor,
    outputs_to_json,
    to_batch,
)
from serve_ab.backends.base import batch_size, concat_batches, split_outputs
from serve_ab.backends.python import import_model_class
from serve_ab.config.experiment import VersionConfig

MODELS = "tests.unit.backends.python_models"
DIABETES_INPUTS = InputSpecs([InputSpec("demographics", np.dtype(np.float32), (-1, 4)),
                              InputSpec("blood", np.dtype(np.float32), (-1, 6))])
VALUE = OutputSpec("value", np.dtype(np.float32), (-1, 1))


@pytest.fixture(scope="module")
def diabetes(model_repo):
    samples = json.loads((model_repo / "diabetes" / "samples.json").read_text())
    loaded = {}
    for version, filename, backend in (("v1", "model.onnx", "onnx"), ("v2", "model.pt2", "torch")):
        predictor = load_predictor(model_repo / "diabetes" / version / filename, backend, device="cpu")
        predictor.load()
        predictor.warm_up()
        loaded[version] = predictor
    return loaded, samples


# -- the diabetes models: two inputs read from the file ---------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2"])
def test_two_inputs_are_read_from_the_model(diabetes, version):
    predictor = diabetes[0][version]
    assert predictor.input_spec == DIABETES_INPUTS
    assert predictor.output_spec == VALUE
    assert predictor.input_spec.to_v2() == [
        {"name": "demographics", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "blood", "datatype": "FP32", "shape": [-1, 6]}]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_diabetes_predicts_the_disease_score(diabetes, version):
    predictor, samples = diabetes[0][version], diabetes[1]
    batch = to_batch(samples["inputs"], predictor.input_spec, allow_non_finite=False)
    values = predictor.predict(batch)[:, 0]
    targets = np.array(samples["targets"])
    assert values.shape == (32,)
    # Better than predicting the mean: the models learned something (target sd ~77).
    assert np.sqrt(np.mean((values - targets) ** 2)) < 70
    assert 25 < values.mean() < 346


def test_the_two_versions_differ_but_stay_close(diabetes):
    (loaded, samples) = diabetes
    outputs = {v: p.predict(to_batch(samples["inputs"], p.input_spec, allow_non_finite=False))
               for v, p in loaded.items()}
    diff = np.abs(outputs["v2"] - outputs["v1"])
    assert 0 < diff.mean() < 30


def test_multi_input_batch_errors_name_the_inputs():
    row = {"demographics": [[0.0] * 4], "blood": [[0.0] * 6]}
    assert set(to_batch(row, DIABETES_INPUTS, allow_non_finite=False)) == {"demographics", "blood"}
    with pytest.raises(InputError, match="send them by name"):
        to_batch([[0.0] * 10], DIABETES_INPUTS, allow_non_finite=False)
    with pytest.raises(InputError, match=r"missing \['blood'\]"):
        to_batch({"demographics": [[0.0] * 4]}, DIABETES_INPUTS, allow_non_finite=False)
    with pytest.raises(InputError, match=r"unknown \['extra'\]"):
        to_batch({**row, "extra": [[1]]}, DIABETES_INPUTS, allow_non_finite=False)
    with pytest.raises(InputError, match="as many instances"):
        to_batch({"demographics": [[0.0] * 4] * 2, "blood": [[0.0] * 6]}, DIABETES_INPUTS, allow_non_finite=False)
    with pytest.raises(InputError, match=r"input 'blood' must have shape \[n, 6\]"):
        to_batch({"demographics": [[0.0] * 4], "blood": [[0.0] * 5]}, DIABETES_INPUTS, allow_non_finite=False)


def test_dynamic_batching_cuts_named_batches_back():
    a = {"x": np.zeros((2, 3)), "y": np.ones((2, 1))}
    b = {"x": np.ones((1, 3)), "y": np.zeros((1, 1))}
    joined = concat_batches([a, b])
    assert batch_size(joined) == 3 and joined["x"].shape == (3, 3)
    first, second = split_outputs(joined, [2, 1])
    assert np.array_equal(first["x"], a["x"]) and np.array_equal(second["y"], b["y"])
    assert split_outputs(np.arange(3), [3])[0].tolist() == [0, 1, 2]
    assert [p.tolist() for p in split_outputs(np.arange(3), [1, 2])] == [[0], [1, 2]]


def test_a_declaration_that_contradicts_the_file_is_a_load_error(model_repo):
    declared = InputSpecs([InputSpec("demographics", np.dtype(np.float32), (-1, 4)),
                           InputSpec("blood", np.dtype(np.float64), (-1, 6))])
    predictor = load_predictor(model_repo / "diabetes" / "v1" / "model.onnx", "onnx", device="cpu",
                               inputs=declared)
    with pytest.raises(ValueError, match="'blood' declared FP64, the file says FP32"):
        predictor.load()


def test_a_matching_declaration_loads(model_repo):
    predictor = load_predictor(model_repo / "diabetes" / "v2" / "model.pt2", "torch", device="cpu",
                               inputs=DIABETES_INPUTS, outputs=VALUE)
    predictor.load()
    assert predictor.output_spec == VALUE


# -- the python backend ---------------------------------------------------------------------------

def test_python_model_with_declared_specs_serves_named_inputs(tmp_path):
    weights = tmp_path / "w.npy"
    np.save(weights, np.arange(10, dtype=np.float32))
    predictor = load_predictor(weights, "python", class_path=f"{MODELS}:Linear", device="cpu")
    predictor.load()
    predictor.warm_up()
    assert predictor.backend == "python" and predictor.device == "cpu"
    assert predictor.input_spec == DIABETES_INPUTS and predictor.output_spec == VALUE
    batch = to_batch({"demographics": [[1, 0, 0, 0]], "blood": [[0, 0, 0, 0, 0, 1]]},
                     predictor.input_spec, allow_non_finite=False)
    assert predictor.predict(batch).tolist() == [[9.0]]


def test_python_model_outputs_are_read_from_a_first_call():
    inputs = VersionConfig.model_validate({
        "name": "v1", "backend": "python", "class": f"{MODELS}:TwoOutputs",
        "inputs": [{"name": "x", "datatype": "FP64", "shape": [-1, 2]}]}).declared_specs()[0]
    predictor = load_predictor(None, "python", class_path=f"{MODELS}:TwoOutputs", inputs=inputs)
    predictor.load()
    predictor.warm_up()
    assert predictor.output_spec == OutputSpecs([OutputSpec("total", np.dtype(np.float64), (-1, 1)),
                                                 OutputSpec("label", np.dtype(np.int64), (-1, 1))])
    out = predictor.predict(np.array([[1.0, 2.0], [-1.0, 0.0]]))
    assert outputs_to_json(out) == {"total": [[3.0], [-1.0]], "label": [[1], [0]]}


def test_python_model_takes_bytes():
    predictor = load_predictor(None, "python", class_path=f"{MODELS}:Text")
    predictor.load()
    predictor.warm_up()
    assert predictor.input_spec.datatype == "BYTES"
    batch = to_batch(["héllo", "ab"], predictor.input_spec, allow_non_finite=False)
    assert batch.dtype == object and batch[0] == "héllo".encode()
    assert predictor.predict(batch).tolist() == [6, 2]
    with pytest.raises(InputError, match="must hold strings"):
        to_batch([1, 2], predictor.input_spec, allow_non_finite=False)


def test_python_model_without_inputs_is_a_load_error():
    predictor = load_predictor(None, "python", class_path=f"{MODELS}:TwoOutputs")
    with pytest.raises(ValueError, match="declares no input_spec and the version no inputs"):
        predictor.load()


def test_python_model_that_answers_the_wrong_shape_fails_warm_up():
    predictor = load_predictor(None, "python", class_path=f"{MODELS}:WrongShape")
    predictor.load()
    with pytest.raises(RuntimeError, match=r"output 'y'.*\[-1, 3\]"):
        predictor.warm_up()


@pytest.mark.parametrize(("spec", "message"), [
    ("no_colon", "must be 'module.path:ClassName'"),
    ("not_a_module_anywhere:Model", "cannot import module 'not_a_module_anywhere'"),
    (f"{MODELS}:Missing", "has no attribute 'Missing'"),
    (f"{MODELS}:NOT_A_CLASS", "is a int, not a class"),
    (f"{MODELS}:NoPredict", "has no predict method"),
])
def test_import_errors_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        import_model_class(spec)


def test_python_backend_needs_a_class():
    with pytest.raises(ValueError, match="needs the model's class"):
        load_predictor(None, "python")
