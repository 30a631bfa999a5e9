"""The Open Inference Protocol codec for models with several inputs or outputs, and BYTES."""

from __future__ import annotations

import numpy as np
import pytest

from serve_ab.api.schemas import V2InferRequest, decode_v2_inputs, encode_v2_response
from serve_ab.backends import InputError, InputSpec, InputSpecs, OutputSpec, OutputSpecs

INPUTS = InputSpecs([InputSpec("ids", np.dtype(np.int64), (-1, 3)), InputSpec("text", np.dtype(object), (-1,))])
OUTPUTS = OutputSpecs([OutputSpec("score", np.dtype(np.float32), (-1, 1)),
                       OutputSpec("label", np.dtype(object), (-1,))])


def request(*tensors, outputs=None):
    return V2InferRequest.model_validate({"inputs": list(tensors), **({"outputs": outputs} if outputs else {})})


IDS = {"name": "ids", "datatype": "INT64", "shape": [1, 3], "data": [1, 2, 3]}
TEXT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hi"]}


def test_named_inputs_decode_by_name_with_bytes():
    batch = decode_v2_inputs(request(TEXT, IDS), INPUTS, OUTPUTS, allow_non_finite=False)
    assert list(batch) == ["ids", "text"]
    assert batch["ids"].dtype == np.int64 and batch["text"].tolist() == [b"hi"]


@pytest.mark.parametrize(("tensors", "message"), [
    ((IDS,), r"missing input\(s\) \['text'\]"),
    ((IDS, TEXT, {**TEXT, "name": "other"}), r"unknown input\(s\) \['other'\]"),
    ((IDS, IDS, TEXT), r"\['ids'\] appear more than once"),
    ((IDS, {**TEXT, "datatype": "FP32", "data": [1.0]}), "has datatype FP32; this model takes BYTES"),
    (({**IDS, "shape": [2, 3], "data": [1] * 6}, TEXT), "as many instances"),
])
def test_bad_named_inputs_are_refused(tensors, message):
    with pytest.raises(InputError, match=message):
        decode_v2_inputs(request(*tensors), INPUTS, OUTPUTS, allow_non_finite=False)


def test_unknown_requested_output_names_the_outputs():
    with pytest.raises(InputError, match=r"this model's outputs are \['score', 'label'\]"):
        decode_v2_inputs(request(IDS, TEXT, outputs=[{"name": "x"}]), INPUTS, OUTPUTS, allow_non_finite=False)


def test_several_outputs_are_answered_in_the_model_order():
    outputs = {"label": np.array([b"yes"], dtype=object), "score": np.array([[0.5]], dtype=np.float32)}
    answer = encode_v2_response("m", "v1", "id", outputs, OUTPUTS, binary_data_sizes={"label": 7})
    assert answer["outputs"] == [
        {"name": "score", "datatype": "FP32", "shape": [1, 1], "data": [0.5]},
        {"name": "label", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}]
    plain = encode_v2_response("m", "v1", "id", outputs, OUTPUTS)
    assert plain["outputs"][1]["data"] == ["yes"]


def test_one_output_answers_as_before():
    answer = encode_v2_response("m", "v1", "id", np.array([[1.0, 2.0]]), OutputSpec("p", np.dtype(np.float32), (-1, 2)))
    assert answer["outputs"] == [{"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]
