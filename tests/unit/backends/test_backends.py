"""Both model backends against the example models, and the request checks they share."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import numpy as np
import pytest

import serve_ab.backends as backends
from serve_ab.backends import (
    BACKENDS,
    InputError,
    InputSpec,
    Predictor,
    load_predictor,
    to_batch,
)
from serve_ab.backends.base import SUM_CHECK_MAX_VALUES, all_finite

MODELS = [("onnx", "v1/model.onnx"), ("torch", "v2/model.pt2"), ("onnx", "v3/model.onnx")]
SPEC = InputSpec(name="input", dtype=np.dtype(np.float32), shape=(-1, 64))


def _has_cuda(backend: str) -> bool:
    if backend == "onnx":
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module", params=MODELS, ids=lambda model: model[1])
def predictor(request, model_repo) -> Predictor:
    backend, relative = request.param
    predictor = load_predictor(model_repo / "digits" / relative, backend, device="auto")
    predictor.load()
    predictor.warm_up()
    return predictor


@pytest.fixture(scope="module")
def samples(model_repo) -> dict:
    return json.loads((model_repo / "digits" / "samples.json").read_text())


def test_predictor_meets_the_protocol(predictor):
    assert isinstance(predictor, Predictor)
    assert predictor.backend in BACKENDS
    assert predictor.device == ("cuda" if _has_cuda(predictor.backend) else "cpu")


def test_specs_come_from_the_model(predictor):
    assert predictor.input_spec == SPEC
    assert predictor.input_spec.to_v2() == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    assert predictor.output_spec.to_v2() == {
        "name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}


@pytest.mark.parametrize("batch_size", [1, 17])
def test_predict_returns_probabilities(predictor, samples, batch_size):
    rows = (samples["inputs"] * 2)[:batch_size]
    probabilities = predictor.predict(to_batch(rows, predictor.input_spec, allow_non_finite=False))
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (batch_size, 10)
    assert np.all(probabilities >= 0.0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_onnx_and_torch_agree_on_clear_cases(model_repo, samples):
    # v1 (onnx) and v2 (torch) are different networks, but both are ~98% accurate.
    batch = np.asarray(samples["inputs"], dtype=np.float32)
    labels = {}
    for backend, relative in MODELS[:2]:
        predictor = load_predictor(model_repo / "digits" / relative, backend, device="cpu")
        predictor.load()
        labels[backend] = predictor.predict(batch).argmax(axis=1)
    assert np.mean(labels["onnx"] == labels["torch"]) >= 0.9


@pytest.mark.parametrize("backend, relative", MODELS[:2])
def test_intra_op_threads_is_accepted(model_repo, backend, relative):
    import torch

    threads_before = torch.get_num_threads()
    try:
        predictor = load_predictor(model_repo / "digits" / relative, backend,
                                   intra_op_threads=1)
        predictor.load()
        assert predictor.predict(np.zeros((2, 64), np.float32)).shape == (2, 10)
    finally:
        torch.set_num_threads(threads_before)  # torch's setting is process-wide


# --- request checks (to_batch / check_batch) -------------------------------------------

ROW = [1.0] * 64


@pytest.mark.parametrize("values, message", [
    (ROW, "Wrap a single instance in a list"),
    ([[ROW]], "must have shape [n, 64]; got [1, 1, 64]"),
    ([[1.0] * 63], "dimension 1 is 63, expected 64"),
    ([["a"] * 64], "must hold numbers"),
    ([[1.0] * 63 + ["a"]], "must hold numbers"),
    ([[True] * 64], "holds booleans"),
    ([[1.0] * 63 + [True]], "holds booleans among its numbers"),
    ([ROW, [1] * 63 + [False]], "holds booleans among its numbers"),
    ([ROW, [1.0] * 63], "ragged"),
    ([[1.0] * 63 + [float("nan")]], "NaN or infinity"),
    ([[1.0] * 63 + [float("inf")]], "NaN or infinity"),
    (np.empty((0, 64), np.float32), "empty batch"),
    ({"pixels": [ROW]}, "this model's one input is 'input'; got input(s) ['pixels']"),
    ({"input": [ROW], "extra": [ROW]}, "got input(s) ['input', 'extra']"),
    ({"input": "1.0"}, "must be a list of instances"),
    ("1.0", "must be a list of instances"),
], ids=["one-instance", "extra-axis", "63-features", "strings", "one-string", "booleans",
        "a-boolean-among-floats", "a-boolean-among-ints", "ragged", "nan", "inf", "empty", "other-name", "extra-name", "named-string", "string"])
def test_to_batch_rejects_bad_input(values, message):
    with pytest.raises(InputError) as caught:
        to_batch(values, SPEC, allow_non_finite=False)
    assert message in str(caught.value)
    assert "'input'" in str(caught.value)


def test_to_batch_looks_for_booleans_only_where_the_caller_may_not_know_better():
    """HTTP passes may_hold_booleans=False for a body without true or false in it: then
    the values are not looked through (a boolean could not be there)."""
    assert to_batch([[1.0] * 63 + [True]], SPEC, allow_non_finite=False, may_hold_booleans=False)[0, -1] == 1.0


def test_to_batch_names_an_empty_json_batch():
    with pytest.raises(InputError, match="empty batch"):
        to_batch([], SPEC, allow_non_finite=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_to_batch_passes_non_finite_when_allowed(value):
    batch = to_batch([[1.0] * 63 + [value]], SPEC, allow_non_finite=True)
    assert batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, -1], np.float32(value))  # NaN equals NaN here


def test_a_one_input_model_takes_its_input_by_name_as_a_multi_input_model_does():
    named = to_batch({"input": [ROW, ROW]}, SPEC, allow_non_finite=False)
    np.testing.assert_array_equal(named, to_batch([ROW, ROW], SPEC, allow_non_finite=False))


def test_to_batch_accepts_integers_and_casts_to_the_model_dtype():
    batch = to_batch([[0] * 64, [16] * 64], SPEC, allow_non_finite=False)
    assert batch.dtype == np.float32 and batch.shape == (2, 64)


# --- errors people can act on ----------------------------------------------------------

@pytest.mark.parametrize("values", [[[2, 0]], [[0.5, 1]], [[-1, 0]]])
def test_a_bool_input_takes_0_and_1_but_no_other_number(values):
    # The binary extension refuses bytes other than 0 and 1; JSON numbers are held to the same.
    spec = InputSpec(name="flags", dtype=np.dtype(np.bool_), shape=(-1, 2))
    assert to_batch([[1, 0]], spec, allow_non_finite=False).tolist() == [[True, False]]
    assert to_batch([[True, False]], spec, allow_non_finite=False).tolist() == [[True, False]]
    with pytest.raises(InputError, match="input 'flags' is BOOL: send true and false, or 0 and 1; got other"):
        to_batch(values, spec, allow_non_finite=False)


def test_unknown_backend_names_the_valid_ones(model_repo):
    with pytest.raises(ValueError, match=r"unknown backend 'tensorflow'.*\['onnx', 'torch', 'python'\]"):
        load_predictor(model_repo / "digits" / "v1" / "model.onnx", "tensorflow")


def test_unknown_device_is_rejected_at_construction():
    expected = r"device must be one of \['auto', 'cpu', 'cuda'\]; got 'gpu'"
    with pytest.raises(ValueError, match=expected):
        load_predictor("model.onnx", "onnx", device="gpu")


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_bad_thread_count_is_rejected(threads):
    with pytest.raises(ValueError, match="intra_op_threads must be a positive integer"):
        load_predictor("model.onnx", "onnx", intra_op_threads=threads)


@pytest.mark.parametrize("backend, filename", [("onnx", "model.onnx"), ("torch", "model.pt2")])
def test_missing_example_model_says_how_to_build(tmp_path, backend, filename):
    path = tmp_path / "digits" / "v9" / filename
    predictor = load_predictor(path, backend)
    with pytest.raises(FileNotFoundError) as caught:
        predictor.load()
    message = str(caught.value)
    assert str(path) in message and f"{backend} backend" in message
    assert "python models/build.py" in message


@pytest.mark.parametrize("backend, filename", [("onnx", "model.onnx"), ("torch", "model.pt2")])
def test_unreadable_model_names_path_and_backend(tmp_path, backend, filename):
    path = tmp_path / filename
    path.write_bytes(b"this is not a model")
    with pytest.raises(ValueError) as caught:
        load_predictor(path, backend).load()
    assert str(path) in str(caught.value) and f"{backend} backend" in str(caught.value)


@pytest.mark.parametrize("backend, relative", MODELS[:2])
def test_predict_before_load_is_an_error(model_repo, backend, relative):
    predictor = load_predictor(model_repo / "digits" / relative, backend)
    with pytest.raises(RuntimeError, match=r"not loaded; call load\(\) first"):
        predictor.predict(np.zeros((1, 64), np.float32))


def test_cuda_without_a_gpu_is_an_error_for_onnx(model_repo):
    if _has_cuda("onnx"):
        pytest.skip("onnxruntime has CUDA here")
    path = model_repo / "digits" / "v1" / "model.onnx"
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider") as caught:
        load_predictor(path, "onnx", device="cuda").load()
    assert str(path) in str(caught.value) and "CPUExecutionProvider" in str(caught.value)


@pytest.mark.parametrize("gpu_build_installed", [False, True])
def test_onnx_without_its_cuda_provider_says_how_to_install_the_gpu_build_alone(
        model_repo, monkeypatch, gpu_build_installed):
    # `pip install 'serve-ab[gpu]'` leaves onnxruntime (a dependency) beside onnxruntime-gpu:
    # they install one module, and the CPU build's files, installed last, have no CUDA provider.
    if _has_cuda("onnx"):
        pytest.skip("onnxruntime has CUDA here")
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: (
        "1.31.1" if name == "onnxruntime-gpu" and gpu_build_installed else real_version(name)))
    if not gpu_build_installed:
        with pytest.raises(importlib.metadata.PackageNotFoundError):
            importlib.metadata.version("onnxruntime-gpu")
    path = model_repo / "digits" / "v1" / "model.onnx"
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider") as caught:
        load_predictor(path, "onnx", device="cuda").load()
    message = str(caught.value)
    assert ("both onnxruntime and onnxruntime-gpu are installed" in message) == gpu_build_installed
    assert ("pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps "
            "'onnxruntime-gpu>=1.20'") in message
    assert "or use device 'cpu' or 'auto'" in message


def test_cuda_without_a_gpu_is_an_error_for_torch(model_repo):
    if _has_cuda("torch"):
        pytest.skip("torch has CUDA here")
    path = model_repo / "digits" / "v2" / "model.pt2"
    with pytest.raises(RuntimeError, match=r"torch.cuda.is_available\(\) is False") as caught:
        load_predictor(path, "torch", device="cuda").load()
    assert str(path) in str(caught.value)


# --- package surface -------------------------------------------------------------------

def test_all_names_exist():
    for name in backends.__all__:
        assert hasattr(backends, name), name


def test_importing_backends_does_not_import_the_runtimes():
    code = ("import sys, serve_ab.backends; "
            "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 64, SUM_CHECK_MAX_VALUES, SUM_CHECK_MAX_VALUES + 1, 1000])
def test_all_finite_agrees_with_numpy_on_nan_and_infinity_anywhere(dtype, size):
    rng = np.random.default_rng(size)
    array = rng.normal(size=size).astype(dtype)
    assert all_finite(array) is True
    for bad in (np.nan, np.inf, -np.inf):
        for at in (0, size - 1):
            spoilt = array.copy()
            spoilt[at] = bad
            assert all_finite(spoilt) is False
    both = array.copy()
    both[0], both[-1] = np.inf, -np.inf  # their sum is NaN, not a finite number (one value: -inf)
    assert all_finite(both) is False


def test_all_finite_takes_finite_values_whose_sum_overflows():
    # The sum of two float64 maxima is infinite; every value is finite all the same.
    array = np.array([[np.finfo(np.float64).max, np.finfo(np.float64).max]])
    assert all_finite(array) is True
    assert all_finite(np.full(SUM_CHECK_MAX_VALUES * 2, np.finfo(np.float64).max)) is True


def test_all_finite_reads_any_layout():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2, 1:]  # not contiguous
    assert all_finite(array) is True
    spoilt = array.copy()
    spoilt[1, 1, 2] = np.nan
    assert all_finite(spoilt) is False
