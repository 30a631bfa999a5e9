"""JSON at the HTTP boundary: figures that can be infinite still make valid JSON, and a key
the inference route reads is read once."""

from __future__ import annotations

import json
import math

import pytest

from serve_ab.api.http_util import json_safe, quoted_keys, refuse_repeated
from serve_ab.errors import InvalidInput


def test_non_finite_floats_become_valid_json_that_float_reads_back():
    status = {"gates": [{"value": math.inf, "threshold": 1.5, "stable_value": 0.0},
                        {"value": -math.inf, "candidate_value": math.nan}],
              "weights": (50.0, 50.0), "phase": "progressing"}
    text = json.dumps(json_safe(status), allow_nan=False)  # raises on any NaN/inf left
    back = json.loads(text)
    assert float(back["gates"][0]["value"]) == math.inf and float(back["gates"][1]["value"]) == -math.inf
    assert back["gates"][1]["candidate_value"] is None
    assert back["gates"][0]["threshold"] == 1.5 and back["weights"] == [50.0, 50.0]


def test_starlettes_own_errors_take_the_apis_shape_and_others_stay_as_fastapi_answers_them():
    from fastapi import FastAPI, HTTPException
    from fastapi.testclient import TestClient

    from serve_ab.api.http_util import install_error_handlers

    api = FastAPI()
    install_error_handlers(api)

    @api.get("/teapot")
    async def teapot():
        raise HTTPException(418, detail={"why": "teapot"})  # not text: FastAPI's own answer

    @api.get("/unchanged")
    async def unchanged():
        raise HTTPException(304)  # no body allowed

    client = TestClient(api)
    assert client.get("/nope").json() == {"error": "Not Found: GET /nope"}
    response = client.post("/teapot")
    assert response.status_code == 405 and response.json() == {"error": "Method Not Allowed: POST /teapot"}
    assert response.headers["allow"] == "GET"
    assert client.get("/teapot").json() == {"detail": {"why": "teapot"}}
    response = client.get("/unchanged")
    assert response.status_code == 304 and response.content == b""


def test_an_integer_past_pythons_digit_limit_is_a_400_in_the_clients_terms():
    """Python refuses to read an integer of more than 4,300 digits with advice for the server's
    programmer (sys.set_int_max_str_digits); the client is told what it sent."""
    import pytest

    from serve_ab.api.http_util import decode_json
    from serve_ab.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        decode_json(b'{"inputs": [[' + b"7" * 5000 + b"]]}")
    assert "holds an integer of more than 4300 digits" in refused.value.message
    assert "set_int_max_str_digits" not in refused.value.message


def test_refuse_repeated_counts_keys_as_the_body_spells_them():
    keys = quoted_keys(["user_id", "é"])
    assert keys == (b'"user_id"', '"é"'.encode())
    refuse_repeated('{"é": 1, "user_id": "a"}'.encode(), keys)  # each once: nothing to say
    refuse_repeated(b'{"a": {"user_id": 1}, "user_id": 2}', keys)  # in two objects: no repeat
    for raw, key in [('{"é": 1, "é": 2}'.encode(), "é"), (b'{"\\u00e9": 1, "\\u00e9": 2}', "é"),
                     (b'{"user_id": 1, "user_\\u0069d": 2}', "user_id")]:
        with pytest.raises(InvalidInput, match="duplicate key"):
            refuse_repeated(raw, keys)
