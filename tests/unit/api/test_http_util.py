"""JSON at the HTTP boundary: figures that can be infinite still make valid JSON."""

from __future__ import annotations

import json
import math

from serve_ab.api.http_util import json_safe


def test_non_finite_floats_become_valid_json_that_float_reads_back():
    status = {"gates": [{"value": math.inf, "threshold": 1.5, "stable_value": 0.0},
                        {"value": -math.inf, "candidate_value": math.nan}],
              "weights": (50.0, 50.0), "phase": "progressing"}
    text = json.dumps(json_safe(status), allow_nan=False)  # raises on any NaN/inf left
    back = json.loads(text)
    assert float(back["gates"][0]["value"]) == math.inf and float(back["gates"][1]["value"]) == -math.inf
    assert back["gates"][1]["candidate_value"] is None
    assert back["gates"][0]["threshold"] == 1.5 and back["weights"] == [50.0, 50.0]
