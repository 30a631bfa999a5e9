"""A regression with two named inputs through the router's routes and core: the real
diabetes models (no Ray), plain JSON and the Open Inference Protocol."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serve_ab.backends import load_predictor
from serve_ab.config import parse_experiment
from serve_ab.serving import http as routes
from serve_ab.serving.core.auth import ControlAuth
from serve_ab.serving.core.messages import Mirror
from serve_ab.serving.core.router import RouterCore
from tests.support.fakes import FakeClock, FakeController

FILES = {"v1": ("model.onnx", "onnx"), "v2": ("model.pt2", "torch")}


class LoadedPredictor:
    """A version as the router sees one: ``predict`` and ``describe`` over a real predictor."""

    def __init__(self, predictor):
        self.predictor = predictor

    async def predict(self, batch):
        return self.predictor.predict(batch)

    async def describe(self):
        return self.predictor.input_spec, self.predictor.output_spec


def regression_cfg(**changes):
    version = {"task": "regression", "task_options": {"tolerance": 20.0}}
    return parse_experiment({
        "model": "diabetes",
        "versions": [{"name": v, "path": f"models/diabetes/{v}/{f}", "backend": b, **version}
                     for v, (f, b) in FILES.items()],
        "weights": {"v1": 100},
        "assignment": {"key": "json", "field": "user_id", "salt": "unit"},
        "feedback": {"require_token": False},
        **changes,
    })


@pytest.fixture(scope="module")
def versions(model_repo):
    loaded = {}
    for version, (filename, backend) in FILES.items():
        predictor = load_predictor(model_repo / "diabetes" / version / filename, backend, device="cpu")
        predictor.load()
        loaded[version] = LoadedPredictor(predictor)
    return loaded


@pytest.fixture(scope="module")
def samples(model_repo):
    return json.loads((model_repo / "diabetes" / "samples.json").read_text())


@pytest.fixture
def client(versions):
    cfg = regression_cfg()
    core = RouterCore(cfg, versions, FakeController(), request_id=lambda: "req-1", clock=FakeClock())
    routes.use_core(routes.Served(core, ControlAuth(cfg.control, [])))
    try:
        with TestClient(routes.app, raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        routes.use_core(None)


def test_predict_takes_inputs_by_name(client, samples):
    inputs = {name: rows[:3] for name, rows in samples["inputs"].items()}
    response = client.post("/predict", json={"user_id": "u1", "inputs": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == "v1" and np.asarray(body["outputs"]).shape == (3, 1)


@pytest.mark.parametrize(("inputs", "message"), [
    ([[0.0] * 10], "send them by name"),
    ({"demographics": [[0.0] * 4]}, "missing ['blood']"),
    ({"demographics": [[0.0] * 4], "blood": [[0.0] * 6] * 2}, "as many instances"),
])
def test_predict_with_the_wrong_inputs_is_a_400_naming_them(client, inputs, message):
    response = client.post("/predict", json={"inputs": inputs})
    assert response.status_code == 400 and message in response.text


def test_v2_metadata_lists_both_inputs(client):
    meta = client.get("/v2/models/diabetes").json()
    assert meta["inputs"] == [{"name": "demographics", "datatype": "FP32", "shape": [-1, 4]},
                              {"name": "blood", "datatype": "FP32", "shape": [-1, 6]}]
    assert meta["outputs"] == [{"name": "value", "datatype": "FP32", "shape": [-1, 1]}]


def test_v2_infer_with_two_inputs_in_any_order(client, samples):
    blood = np.asarray(samples["inputs"]["blood"][:2], dtype=np.float32)
    demographics = np.asarray(samples["inputs"]["demographics"][:2], dtype=np.float32)
    body = {"inputs": [
        {"name": "blood", "datatype": "FP32", "shape": [2, 6], "data": blood.ravel().tolist()},
        {"name": "demographics", "datatype": "FP32", "shape": [2, 4], "data": demographics.ravel().tolist()}]}
    response = client.post("/v2/models/diabetes/infer", json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "value" and output["shape"] == [2, 1]
    plain = client.post("/predict", json={"inputs": {"demographics": demographics.tolist(),
                                                     "blood": blood.tolist()}}).json()["outputs"]
    assert output["data"] == pytest.approx([row[0] for row in plain])
    missing = client.post("/v2/models/diabetes/infer", json={"inputs": body["inputs"][:1]})
    assert missing.status_code == 400 and "missing input(s) ['demographics']" in missing.text


def test_shadow_pairs_of_a_regression_are_compared_by_value(versions, samples):
    async def scenario():
        cfg = regression_cfg(shadow={"version": "v2", "percent": 100})
        core = RouterCore(cfg, versions, FakeController(), request_id=lambda: "r", clock=FakeClock())
        core.mirrors.mirrors = (Mirror("v2", 100.0),)
        for i in range(10):
            one = {name: rows[i:i + 1] for name, rows in samples["inputs"].items()}
            await core.serve(one, f"u{i}", None)
        await core.mirrors.drain()
        return core.observations.drain()

    aggregate = asyncio.run(scenario())
    shadow = aggregate.shadow["v2"]
    assert shadow.pairs == 10 and shadow.live_values.count == 10 and not shadow.confusion
    assert 0 < shadow.score_diff_abs_sum / shadow.score_diff_n < 40
    assert aggregate.gates["v1"].scores.count == 10  # the values, for drift_ks / drift_wasserstein
