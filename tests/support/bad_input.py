"""Bad requests and what the router must answer to each: shared by the route-level unit
tests (every case's status and message) and the integration test that checks the replica
survives them all."""

from __future__ import annotations

import json

DIGIT_ROW = [float(i % 16) for i in range(64)]


def v2_body(rows, **extra):
    return {"inputs": [{"name": "input", "shape": [len(rows), 64], "datatype": "FP32",
                        "data": [x for row in rows for x in row]}], **extra}


BAD_PREDICT = [
    ("not json", b"{inputs: [", 400, "not valid JSON"),
    ("empty", b"", 400, "empty"),
    ("array body", b"[1, 2]", 400, "JSON object"),
    ("missing inputs", json.dumps({"user_id": "x"}).encode(), 400, "inputs: field required"),
    ("wrong rank", json.dumps({"inputs": DIGIT_ROW}).encode(), 400, "Wrap a single instance"),
    ("wrong width", json.dumps({"inputs": [[1.0, 2.0]]}).encode(), 400, "expected 64"),
    ("strings", json.dumps({"inputs": [["a"] * 64]}).encode(), 400, "must hold numbers"),
    ("booleans", json.dumps({"inputs": [[True] * 64]}).encode(), 400, "booleans"),
    # Beside numbers, numpy took true as 1 without a word (a 200 until the audit of 2026-12-04).
    ("a boolean among numbers", json.dumps({"inputs": [[True] + DIGIT_ROW[1:]]}).encode(), 400,
     "holds booleans among its numbers"),
    ("ragged", json.dumps({"inputs": [DIGIT_ROW, [1.0]]}).encode(), 400, "ragged"),
    ("nan", ('{"inputs": [[NaN' + ", 0" * 63 + "]]}").encode(), 400, "NaN or infinity"),
    ("infinity", ('{"inputs": [[Infinity' + ", 0" * 63 + "]]}").encode(), 400, "NaN or infinity"),
    ("bad key", json.dumps({"inputs": [DIGIT_ROW], "user_id": [1]}).encode(), 400, "user_id"),
    # orjson keeps the last of two: served as bob's while the client's record and a proxy's
    # log read alice's (the control and feedback routes refused this already).
    ("key twice", ('{"inputs": [' + json.dumps(DIGIT_ROW) + '], "user_id": "alice", "user_id": "bob"}').encode(),
     400, 'duplicate key "user_id" in the JSON body'),
    ("inputs twice", ('{"inputs": [' + json.dumps(DIGIT_ROW) + '], "inputs": [' + json.dumps(DIGIT_ROW)
                      + '], "user_id": "alice"}').encode(), 400, 'duplicate key "inputs"'),
    ("key twice, once escaped", ('{"inputs": [' + json.dumps(DIGIT_ROW) + '], "user_id": "alice", '
                                 '"user\\u005fid": "bob"}').encode(), 400, 'duplicate key "user_id"'),
    ("too large", json.dumps({"inputs": [DIGIT_ROW] * 100}).encode(), 413, "at most 8192"),
]


BAD_V2 = [
    ("wrong datatype", v2_body([DIGIT_ROW]) | {"inputs": [{"name": "input", "shape": [1, 64],
                                                            "datatype": "INT32", "data": [1] * 64}]},
     "takes FP32"),
    ("unknown datatype", {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FLOAT",
                                       "data": DIGIT_ROW}]}, "does not define"),
    ("shape mismatch", {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                                     "data": DIGIT_ROW}]}, "needs 128"),
    ("wrong shape", {"inputs": [{"name": "input", "shape": [2, 32], "datatype": "FP32",
                                  "data": DIGIT_ROW}]}, "expected 64"),
    ("missing inputs", {"id": "x"}, "inputs: field required"),
    ("a boolean among numbers", {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                                             "data": [False] + DIGIT_ROW[1:]}]}, "holds booleans among its numbers"),
    ("no tensors", {"inputs": []}, "at least 1 item"),
    ("wrong name", {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                 "data": DIGIT_ROW}]}, "this model's input is 'input'"),
    ("missing data", {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]},
     "inputs.0.data: field required"),
    ("unknown output", v2_body([DIGIT_ROW], outputs=[{"name": "logits"}]), "unknown output"),
    # Shapes numpy cannot build (no values needed beside the zero; 70 > numpy's 64 dimensions).
    ("huge dimension beside a zero", {"inputs": [{"name": "input", "shape": [0, 2**62], "datatype": "FP32",
                                                  "data": []}]}, "dimension 1 is 4611686018427387904"),
    ("70 dimensions", {"inputs": [{"name": "input", "shape": [1] * 70, "datatype": "FP32", "data": [5]}]},
     "inputs.0.shape: List should have at most 64 items after validation, not 70"),
    ("a dimension past int64", {"inputs": [{"name": "input", "shape": [10**4299, 64], "datatype": "FP32",
                                            "data": DIGIT_ROW}]}, "inputs.0.shape.0: Input should be less than or equal to 9223372036854775807"),
    ("boolean dimension", {"inputs": [{"name": "input", "shape": [True, 64], "datatype": "FP32",
                                       "data": DIGIT_ROW}]}, "inputs.0.shape.0"),
    ("string dimension", {"inputs": [{"name": "input", "shape": ["1", "64"], "datatype": "FP32",
                                      "data": DIGIT_ROW}]}, "inputs.0.shape.0"),
]
