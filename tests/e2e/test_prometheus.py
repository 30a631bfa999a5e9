"""A real Prometheus scrapes a running app's /metrics, and PromQL answers match the traffic.

``serve run`` an 80/20 A/B test, start Debian's ``prometheus`` binary with a scrape job on
the app's ``/metrics`` every second, send requests keyed by user id, then ask Prometheus'
HTTP API. Which version each user lands on is computed from the ids with the app's own
assignment, so the expected counts are exact, and the allowed distance between the
measured shares and the weights is the hash's own deviation, not a guess.

Prometheus comes from ``scripts/test.sh`` (``apt-get install prometheus`` when running as
root or with sudo). Without it the test fails under CI and skips elsewhere.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import time
from collections import Counter

import httpx
import pytest
import yaml

from serve_ab.routing import Assigner
from tests.conftest import REPO_ROOT
from tests.e2e.test_serve_run import on_free_ports, start_serve_run, stop_serve_run
from tests.integration.conftest import DIGIT_ROW, free_port

WEIGHTS_PCT = {"v1": 80, "v2": 20}
USERS = 300
STARTUP_TIMEOUT_S = 240
SCRAPE_TIMEOUT_S = 30
INSTALL = "sudo apt-get install -y prometheus (scripts/test.sh does this when run as root)"


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"prometheus is not installed, and CI must run this test: {INSTALL}")
        pytest.skip(f"prometheus is not installed: {INSTALL}")
    return path


def wait_until(what: str, deadline_s: float, check, logs=()) -> object:
    """Poll ``check`` until it returns a truthy value, or fail with ``what`` and the logs' tails."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {path.name}:\n{path.read_text()[-3000:]}" for path in logs if path.exists())
            pytest.fail(f"{what} within {deadline_s}s\n{tails}")
        time.sleep(0.5)


class PrometheusServer:
    def __init__(self, binary: str, app_port: int, tmp_path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "serve-ab",
                "metrics_path": "/metrics",  # the app's route_prefix is /
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [f"127.0.0.1:{app_port}"]}],
            }],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "prometheus.log"
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def query(self, promql: str) -> list[dict]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (promql, body)
        assert body["data"]["resultType"] == "vector", body
        return body["data"]["result"]

    def by_version(self, promql: str) -> dict[str, float]:
        return {s["metric"]["version"]: float(s["value"][1]) for s in self.query(promql)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def test_prometheus_scrapes_the_app_and_promql_matches_the_split(model_repo, tmp_path):
    binary = prometheus_binary()
    config = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    app_port = on_free_ports(config)
    args = config["applications"][0]["args"]
    args["weights"] = dict(WEIGHTS_PCT)
    # Not the checkout's .serve-ab/state.sqlite, which a `serve run configs/ab.yaml` may hold.
    args["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    assert config["applications"][0]["route_prefix"] == "/"
    (tmp_path / "ab.yaml").write_text(yaml.safe_dump(config))
    serve_log = tmp_path / "serve.log"

    serve = start_serve_run(tmp_path / "ab.yaml", serve_log)
    prometheus = PrometheusServer(binary, app_port, tmp_path)
    logs = (serve_log, prometheus.log_path)
    base = f"http://127.0.0.1:{app_port}"
    try:
        wait_until("Prometheus not ready", 60, lambda: httpx.get(prometheus.url + "/-/ready", timeout=2)
                   .status_code == 200, logs)
        wait_until("the app not ready", STARTUP_TIMEOUT_S,
                   lambda: serve.poll() is None and httpx.get(base + "/v2/health/ready", timeout=2).status_code == 200,
                   logs)
        assert serve.poll() is None, serve_log.read_text()[-4000:]

        # The exposition itself: Prometheus' text format, and Prometheus' own linter is happy.
        scraped = httpx.get(base + "/metrics", timeout=10)
        assert scraped.status_code == 200, scraped.text
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        promtool = shutil.which("promtool")  # shipped beside prometheus, in the same package
        assert promtool, f"promtool is missing beside {binary}"
        lint = subprocess.run([promtool, "check", "metrics"], input=scraped.content, capture_output=True)
        assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()

        # A first scrape before any traffic: both versions' counters start at 0 in the TSDB,
        # so increase() and rate() see the whole traffic.
        wait_until("no scrape of the app before traffic", SCRAPE_TIMEOUT_S,
                   lambda: prometheus.by_version('serve_ab_requests_total{model="digits"}') == {"v1": 0, "v2": 0},
                   logs)
        # Every series names its Serve application, which tells apart two apps of one model.
        assert {s["metric"]["application"] for s in prometheus.query('{__name__=~"serve_ab_.+"}')} == \
            {config["applications"][0]["name"]}
        up = prometheus.query('up{job="serve-ab"}')
        assert [float(s["value"][1]) for s in up] == [1.0], up

        assigner = Assigner(WEIGHTS_PCT, args["assignment"]["salt"])
        users = [f"prom-user-{i}" for i in range(USERS)]
        expected = Counter(assigner.assign(user) for user in users)
        served = Counter()
        started = time.monotonic()
        with httpx.Client(timeout=30) as client:
            for user in users:
                response = client.post(base + "/predict", json={"user_id": user, "inputs": [DIGIT_ROW]})
                assert response.status_code == 200, response.text
                assert response.json()["version"] == assigner.assign(user), user  # sticky, as computed
                served[response.json()["version"]] += 1
        traffic_s = time.monotonic() - started
        assert served == expected

        # Routers report to the controller in batches; wait until a scrape holds all of it.
        total = 'sum(serve_ab_requests_total{model="digits"})'
        wait_until(f"Prometheus never saw {USERS} requests", SCRAPE_TIMEOUT_S,
                   lambda: [float(s["value"][1]) for s in prometheus.query(total)] == [USERS], logs)

        # Exact counts per version, as stored by Prometheus.
        assert prometheus.by_version('sum by (version) (serve_ab_requests_total{model="digits"})') == \
            {v: float(n) for v, n in expected.items()}
        assert prometheus.by_version('sum by (version) (serve_ab_request_duration_seconds_count{model="digits"})') \
            == {v: float(n) for v, n in expected.items()}  # every request succeeded
        assert sum(prometheus.by_version('sum by (version) (serve_ab_errors_total{model="digits"})').values()) == 0

        # The PromQL a dashboard uses: per-version request rate over a window that holds
        # the whole traffic (plus the scrape before it), as shares of the total.
        window_s = math.ceil(time.monotonic() - started) + 5
        rates = prometheus.by_version(
            f'sum by (version) (rate(serve_ab_requests_total{{model="digits"}}[{window_s}s]))')
        increases = prometheus.by_version(
            f'sum by (version) (increase(serve_ab_requests_total{{model="digits"}}[{window_s}s]))')
        assert set(rates) == set(increases) == {"v1", "v2"}
        rate_total = sum(rates.values())
        assert rate_total > 0
        for version, weight_pct in WEIGHTS_PCT.items():
            weight = weight_pct / 100
            hash_share = expected[version] / USERS
            # rate()/increase() extrapolate to the window's edges by the same factor for both
            # series (same scrape timestamps, both starting from 0), so shares are exact up to
            # float noise; the distance to the weight is the hash's, from the ids themselves.
            share = rates[version] / rate_total
            assert share == pytest.approx(hash_share, abs=1e-6), (version, rates, expected)
            assert increases[version] / sum(increases.values()) == pytest.approx(hash_share, abs=1e-6)
            assert abs(share - weight) <= abs(hash_share - weight) + 1e-6
            # And the hash's deviation is ordinary binomial noise for this many users.
            assert abs(hash_share - weight) < 4 * math.sqrt(weight * (1 - weight) / USERS), expected

        assert prometheus.by_version('serve_ab_traffic_weight_ratio{model="digits"}') == {"v1": 0.8, "v2": 0.2}
        phase = prometheus.query('serve_ab_rollout_phase{model="digits"} == 1')
        assert [s["metric"]["phase"] for s in phase] == ["static"]
        p95 = prometheus.by_version(
            f'histogram_quantile(0.95, sum by (version, le) '
            f'(rate(serve_ab_request_duration_seconds_bucket{{model="digits"}}[{window_s}s])))')
        assert set(p95) == {"v1", "v2"} and all(0 < v < 10 for v in p95.values()), p95
        print(f"\n{USERS} requests in {traffic_s:.1f}s; shares {dict(expected)}; p95 {p95}")
    finally:
        prometheus.stop()
        stop_serve_run(serve)
