"""The inference routes ahead of FastAPI (serve_ab.api.fast_routes) and the JSON they read and write."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.datastructures import Headers
from starlette.requests import Request

from serve_ab.api.fast_routes import FastRequest, FastRoute, FastRoutes, ScopeHeaders, route_path
from serve_ab.api.http_util import (
    decode_json,
    decode_json_unique_keys,
    has_long_number,
    json_response,
    read_body,
)
from serve_ab.errors import InvalidInput, UnknownModel


def make_client() -> tuple[TestClient, list[str]]:
    seen: list[str] = []
    api = FastAPI()

    @api.get("/other")
    async def other() -> dict:
        seen.append("fastapi")
        return {"by": "fastapi"}

    @api.post("/predict")  # declared for the docs, as serve_ab.serving.http does; never reached
    async def documented_predict() -> dict:
        seen.append("fastapi predict")
        return {}

    async def predict(request: Request):
        seen.append("fast")
        body = decode_json(await request.body())
        return json_response({"echo": body, "outputs": np.array([[0.5, 0.25]], dtype=np.float32)},
                             headers={"X-Model-Version": "v1"})

    async def infer(request: Request, model: str, version: str | None = None):
        seen.append(f"fast {model} {version}")
        if model != "digits":
            raise UnknownModel(f"unknown model {model!r}; this app serves 'digits'")
        return json_response({"model": model, "version": version})

    async def broken(request: Request):
        raise RuntimeError("a bug")

    app = FastRoutes(api, [
        FastRoute("POST", "/predict", predict),
        FastRoute("POST", "/v2/models/{model}/infer", infer),
        FastRoute("POST", "/v2/models/{model}/versions/{version}/infer", infer),
        FastRoute("POST", "/broken", broken),
    ])
    return TestClient(app, raise_server_exceptions=False), seen


def test_inference_paths_are_served_ahead_of_fastapi_and_the_rest_by_fastapi():
    client, seen = make_client()
    answer = client.post("/predict", json={"inputs": [[1.0]]})
    assert answer.status_code == 200 and answer.headers["x-model-version"] == "v1"
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["outputs"] == [[0.5, 0.25]]
    assert client.post("/v2/models/digits/versions/v2/infer", json={}).json() == {"model": "digits", "version": "v2"}
    assert client.get("/other").json() == {"by": "fastapi"}
    assert seen == ["fast", "fast digits v2", "fastapi"]


def test_a_method_or_path_the_fast_routes_do_not_take_goes_to_fastapi():
    client, seen = make_client()
    assert client.get("/predict").status_code == 405  # FastAPI: no GET /predict
    assert client.post("/v2/models/a/b/infer", json={}).status_code == 404  # a segment holds no "/"
    assert seen == []


def test_errors_are_the_same_answers_fastapi_gives():
    client, _ = make_client()
    missing = client.post("/v2/models/other/infer", json={})
    assert missing.status_code == 404 and "unknown model 'other'" in missing.json()["error"]
    bad = client.post("/predict", content=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    broken = client.post("/broken", json={})
    assert broken.status_code == 500 and broken.text == "Internal Server Error"


def test_scope_headers_get_answers_what_starlettes_get_answers():
    rng = random.Random(7)
    names = [b"x-pin", b"authorization", b"content-length", b"x-user", b"x-caf\xe9"]
    values = [b"1", b"v2", b"Bearer t", b"\xe9\xff", b""]
    for _ in range(300):
        lines = [(rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(6))]
        scope = {"type": "http", "headers": list(lines)}
        ours, theirs = ScopeHeaders(scope), Headers(raw=list(lines))
        for name in ["X-Pin", "authorization", "Content-Length", "x-user", "X-CAF\xc9", "absent"]:
            assert ours.get(name) == theirs.get(name)  # the first line of that name, or None
            assert ours.get(name, "default") == theirs.get(name, "default")
        assert ours.getlist("x-pin") == theirs.getlist("x-pin")


def test_the_fast_routes_hand_over_a_request_with_scope_headers():
    handed: list[Request] = []

    async def route(request: Request):
        handed.append(request)
        return json_response({"pin": request.headers.get("x-pin"), "user": request.headers.get("X-User")})

    client = TestClient(FastRoutes(FastAPI(), [FastRoute("POST", "/predict", route)]))
    answer = client.post("/predict", json={}, headers={"x-user": "u1"})
    assert answer.json() == {"pin": None, "user": "u1"}
    assert type(handed[0]) is FastRequest and isinstance(handed[0].headers, ScopeHeaders)


def test_route_path_is_below_the_apps_route_prefix():
    assert route_path({"path": "/digits/predict", "root_path": "/digits"}) == "/predict"
    assert route_path({"path": "/predict", "root_path": "/digits"}) == "/predict"  # already below it
    assert route_path({"path": "/digits", "root_path": "/digits"}) == "/"
    assert route_path({"path": "/predict"}) == "/predict"


@pytest.mark.parametrize("raw, expected", [
    (b'{"inputs": [[1.5, 2]], "user_id": "u"}', {"inputs": [[1.5, 2]], "user_id": "u"}),
    (b'[NaN, Infinity, -Infinity]', [math.nan, math.inf, -math.inf]),  # orjson refuses: json reads
    (b'{"user_id": 123456789012345678901234567890}', {"user_id": 123456789012345678901234567890}),
    (b'[1e400]', [math.inf]),
])
def test_decode_json_reads_what_the_standard_library_reads(raw, expected):
    got = decode_json(raw)
    assert json.dumps(got) == json.dumps(expected)


def test_has_long_number_finds_exactly_the_runs_of_twenty_digits_a_regex_finds():
    rng = random.Random(0)
    alphabet = b"0123456789.,-e []\"\x00\xff\xd9"  # digits, separators, bytes beside the digits' codes
    for _ in range(3000):
        raw = bytes(rng.choice(alphabet[:10]) if rng.random() < 0.8 else rng.choice(alphabet)
                    for _ in range(rng.randrange(0, 60)))
        assert has_long_number(raw) == bool(re.search(rb"[0-9]{20}", raw)), raw
    assert has_long_number(b'{"user_id": 12345678901234567890}')
    assert not has_long_number(b'{"user_id": 1234567890123456789, "x": 0.1234567890123456789}')


@pytest.mark.parametrize("decode", [decode_json, decode_json_unique_keys], ids=["decode_json", "unique_keys"])
@pytest.mark.parametrize("raw, message", [
    (b'{"user_id": "\\ud800"}', "lone UTF-16 surrogate"),
    (b"\xff\xfe", "not valid JSON"),
    (b'{"a": 1,}', "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
    (b"", "empty"),
])
def test_both_decoders_refuse_what_decode_json_refused_before(decode, raw, message):
    """The control routes' duplicate-key parse refuses everything the inference parse does."""
    with pytest.raises(InvalidInput, match=message):
        decode(raw)
    assert decode(b"", allow_empty=True) is None


@pytest.mark.parametrize("raw, key", [
    (b'{"from_step": 99, "from_step": 1}', "from_step"),  # the audit's promote past its guard
    (b'{"weights": {"v1": 80, "v2": 20, "v1": 0}}', "v1"),  # nested
    (b'{"a": [{"b": {"c": 1, "c": 1}}]}', "c"),  # deeper, in a list, even with the same value
    (b'{"converted": false, "converted": true, "user_id": 123456789012345678901234567890}', "converted"),
])
def test_a_control_body_with_a_key_twice_is_refused_naming_the_key(raw, key):
    with pytest.raises(InvalidInput, match=f'duplicate key "{key}" in the JSON body; send each key once'):
        decode_json_unique_keys(raw)
    decode_json(raw)  # the inference path's parse is unchanged: the last one wins there


@pytest.mark.parametrize("raw", [
    b'{"from_step": 1, "reason": "canary ok", "weights": {"v1": 80, "v2": 20}}',
    b'{"a": {"x": 1}, "b": {"x": 2}, "c": [{"x": 3}, {"x": 4}]}',  # one key in several objects is not a repeat
    b'{"user_id": 123456789012345678901234567890, "value": NaN}',
    b'[]',
])
def test_a_control_body_with_each_key_once_reads_as_decode_json_reads_it(raw):
    assert json.dumps(decode_json_unique_keys(raw)) == json.dumps(decode_json(raw))



def test_json_response_writes_numpy_with_tolist_digits_and_nan_as_null():
    outputs = np.array([[0.1, np.nan]], dtype=np.float64)
    body = json_response({"outputs": outputs}).body
    assert json.loads(body) == {"outputs": [[0.1, None]]}


def _predict_reading_body_with(receive) -> list[dict]:
    """What a /predict route that reads its body sends when the ASGI server's ``receive`` is
    ``receive``."""
    async def predict(request: Request):
        return json_response({"body": len(await read_body(request, 1024))})

    app = FastRoutes(FastAPI(), [FastRoute("POST", "/predict", predict)])
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predict", "root_path": "", "headers": [],
             "query_string": b""}
    asyncio.run(app(scope, receive, send))
    return sent


def test_a_client_gone_mid_body_gets_no_answer_and_logs_no_error(caplog):
    async def receive() -> dict:
        return {"type": "http.disconnect"}

    assert _predict_reading_body_with(receive) == [] and "failed" not in caplog.text


def test_a_body_read_cancelled_by_rays_proxy_is_a_client_gone_not_a_server_error(caplog):
    """A client that leaves mid-request: Ray Serve's replica may raise its proxy's cancelled
    read (RayTaskError(TaskCancelledError)) from receive() instead of a disconnect message.
    Live it was logged as an ERROR with a traceback and answered 500 (1 of 122 clients gone)."""
    from ray.exceptions import RayTaskError, TaskCancelledError

    async def receive() -> dict:
        raise RayTaskError("ProxyActor.receive_asgi_messages", "traceback", TaskCancelledError()).as_instanceof_cause()

    assert _predict_reading_body_with(receive) == [] and "failed" not in caplog.text


def test_another_error_reading_the_body_is_still_a_server_error(caplog):
    async def receive() -> dict:
        raise RuntimeError("the proxy broke")

    sent = _predict_reading_body_with(receive)
    assert sent[0]["status"] == 500 and "failed" in caplog.text
