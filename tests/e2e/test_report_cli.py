"""The A/B report as a user gets it: serve run configs/ab_v3.yaml, clients reporting whether
each answer was right, then serve-ab report (table, --json, --html) and serve-ab runs."""

from __future__ import annotations

import json
import random
import time

import httpx
import numpy as np
import yaml

from tests.conftest import REPO_ROOT
from tests.e2e.test_rollout_cli import SERVE_AB
from tests.e2e.test_serve_run import STARTUP_TIMEOUT_S, start_serve_run, stop_serve_run
from tests.integration.conftest import free_port

import subprocess

REQUESTS = 200  # enough for every table, plot and the shadow's pairs; the verdict is tested in test_ab_report


def serve_ab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SERVE_AB), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_report_of_a_running_ab_test_with_shadow(model_repo, tmp_path):
    config = yaml.safe_load((REPO_ROOT / "configs" / "ab_v3.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    args["analysis"]["records"] = {"path": str(tmp_path / "runs.sqlite"), "interval_s": 2}
    (tmp_path / "ab_v3.yaml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    data = json.loads((model_repo / "digits/samples.json").read_text())
    process = start_serve_run(tmp_path / "ab_v3.yaml", tmp_path / "serve.log")
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(timeout=30.0) as client:
            while True:
                try:
                    if client.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, (tmp_path / "serve.log").read_text()[-4000:]
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-4000:]
                time.sleep(1)
            rng = random.Random(11)
            for _ in range(REQUESTS):
                index = rng.randrange(len(data["inputs"]))
                body = client.post(url + "/predict", json={"user_id": f"user-{rng.randrange(200)}",
                                                           "inputs": [data["inputs"][index]]}).json()
                correct = int(np.argmax(body["outputs"][0])) == data["labels"][index]
                client.post(url + "/feedback", json={"request_id": body["request_id"], "name": "correct",
                                                     "feedback_token": body["feedback_token"],
                                                     "converted": correct})
            deadline = time.monotonic() + 30
            while client.get(url + "/experiment/stats").json()["versions"]["v1"]["requests"] \
                    + client.get(url + "/experiment/stats").json()["versions"]["v3"]["requests"] < REQUESTS:
                assert time.monotonic() < deadline, "the controller never saw every request"
                time.sleep(0.5)

        table = serve_ab("report", "--url", url)
        assert table.returncode == 0, table.stderr
        print("\n" + table.stdout)
        for text in ("correct", "v3", "v1", "error_rate", "latency"):
            assert text in table.stdout, text

        shown = serve_ab("report", "--url", url, "--json")
        assert shown.returncode == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert report["experiment"]["control"] == "v1" and report["experiment"]["variants"] == ["v3"]
        assert report["shadow"]["version"] == "v2" and report["shadow"]["pairs"] > 0
        assert report["variants"]["v2"]["requests"] == 0  # the shadow served no client

        page = tmp_path / "report.html"
        written = serve_ab("report", "--url", url, "--html", str(page))
        assert written.returncode == 0, written.stderr
        html = page.read_text()
        assert html.count("<svg") >= 3 and "v3" in html

        runs = serve_ab("runs", "--records", str(tmp_path / "runs.sqlite"))
        assert runs.returncode == 0, runs.stderr
        assert "digits" in runs.stdout

        bad = serve_ab("report", "--url", f"http://127.0.0.1:{free_port()}")
        assert bad.returncode != 0 and bad.stderr.strip()
    finally:
        assert stop_serve_run(process) == 0
