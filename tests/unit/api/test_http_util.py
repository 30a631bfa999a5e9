"""JSON at the HTTP boundary: figures that can be infinite still make valid JSON, and a key
the inference route reads is read once."""

from __future__ import annotations

import json
import math

import pytest

from serve_ab.api.http_util import decode_json, json_safe, once_each, refuse_repeated
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
    keys = once_each(["user_id", "é", "in/x"])
    assert keys == {b'"user_id"': 1, '"é"'.encode(): 1, b'"in/x"': 1}
    refuse_repeated('{"é": 1, "user_id": "a"}'.encode(), keys)  # each once: nothing to say
    refuse_repeated(b'{"a": {"user_id": 1}, "user_id": 2}', keys)  # in two objects: no repeat
    refuse_repeated(b'{"note": "\\u00e9", "user_id": 2}', keys)  # an escape, and no repeat
    for raw, key in [('{"é": 1, "é": 2}'.encode(), "é"), (b'{"\\u00e9": 1, "\\u00e9": 2}', "é"),
                     (b'{"user_id": 1, "user_\\u0069d": 2}', "user_id"),
                     (b'{"in/x": [1], "in\\/x": [2]}', "in/x"),  # the one escape without \\u
                     # UTF-16 and -32, which decode_json reads: no key is contiguous bytes there
                     ('{"user_id": "alice", "user_id": "bob"}'.encode("utf-16"), "user_id"),
                     ('{"user_id": "alice", "user_id": "bob"}'.encode("utf-32-le"), "user_id")]:
        decode_json(raw)  # accepted by the inference parse, which keeps the last
        with pytest.raises(InvalidInput, match="duplicate key"):
            refuse_repeated(raw, keys)


def test_refuse_repeated_refuses_nothing_but_a_repeated_key():
    """The second parse looks for repeats only: nesting orjson takes and json.loads does not
    (past 995 levels) is still accepted, as decode_json accepted it."""
    deep = b'{"user_id": "\\u00e9", "x": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    decode_json(deep)
    refuse_repeated(deep, once_each(["user_id"]))
    refuse_repeated(b'{"user_id": "a", "user_id": "\\u0062"}', {})  # nothing read: nothing looked at
