"""Blue-green's validation of green (``serve_ab/rollout/validation.py``), over fake calls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serve_ab.config import parse_experiment
from serve_ab.rollout.validation import load_samples, validate_green


def blue_green(**settings):
    return parse_experiment({
        "model": "m",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"},
                     {"name": "v2", "path": "b.onnx", "backend": "onnx"}],
        "weights": {"v1": 100},
        "rollout": {"strategy": "blue_green", "stable": "v1", "candidate": "v2",
                    "gates": [{"metric": "error_rate", "max": 0.05}],
                    **({"blue_green": settings} if settings else {})},
    })


def validate(cfg, predict, inputs=({"name": "text", "datatype": "BYTES", "shape": [-1]},)):
    async def interface():
        return {"inputs": list(inputs)}

    return asyncio.run(validate_green(cfg, predict, interface, timeout_s=5.0))


def test_without_samples_a_text_input_gets_an_empty_string_not_a_zero():
    seen = []

    async def predict(batch):
        seen.append(batch)
        if not all(isinstance(x, bytes) for x in batch.ravel()):  # as to_batch refuses a number
            raise ValueError("input 'text' must hold strings (BYTES)")
        return {"outputs": np.array([[0.2, 0.8]])}

    passed, seen_text = validate(blue_green(), predict)
    assert passed, seen_text
    assert seen[0].dtype == object and seen[0].tolist() == [b""]
    # Numbers stay zeros, in the input's own dtype and shape.
    passed, _ = validate(blue_green(), _answers([[0.5, 0.5]]), inputs=[{"name": "x", "datatype": "INT64", "shape": [-1, 3]}])
    assert passed


def test_outputs_that_cannot_be_judged_fail_validation_with_the_reason(tmp_path):
    samples = tmp_path / "samples.json"
    samples.write_text('{"inputs": [[1.0], [2.0]], "labels": [0, 1]}')
    cfg = blue_green(validation_samples=str(samples), validation_min_accuracy=0.5)
    # A regression's answers (one number a row) against class labels: no argmax over classes.
    passed, reason = validate(cfg, _answers([1.5, 2.5]))
    assert passed is False and "its outputs cannot be judged: AxisError" in reason
    # Text outputs have no NaN to look for: without labels to judge, answering is passing.
    text = _answers(np.array([[b"a"], [b"b"]], dtype=object))
    passed, reason = validate(blue_green(validation_samples=str(samples)), text)
    assert passed and "2 sample outputs finite and well-formed" in reason
    passed, reason = validate(cfg, _answers({"scores": [[np.nan, 1.0]] * 2, "text": [[b"a"]] * 2}))
    assert passed is False and "outputs contain NaN or infinity" in reason
    passed, reason = validate(cfg, _answers([[0.9, 0.1], [0.2, 0.8]]))
    assert passed and "accuracy 1.000 on 2 samples" in reason


@pytest.mark.parametrize("text, message", [
    (None, "cannot be read as JSON (FileNotFoundError"),
    ("{not json", "cannot be read as JSON (JSONDecodeError"),
    ('{"rows": []}', 'has no "inputs"'),
    ("[1, 2]", 'has no "inputs"'),
])
def test_a_samples_file_that_cannot_be_used_is_a_value_error_naming_it(tmp_path, text, message):
    path = tmp_path / "samples.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match="samples.json") as err:
        load_samples(str(path))
    assert message in str(err.value)
    assert load_samples(None) == (None, None)


def _answers(outputs):
    async def predict(batch):
        return {"outputs": outputs if isinstance(outputs, dict) else np.asarray(outputs)}
    return predict
