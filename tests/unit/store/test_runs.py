"""Run records in SQLite, and their MLflow mirror (real mlflow-skinny with a local file store)."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
import types

import pytest

from serve_ab.store.runs import CorruptRecord, RunRecorder, mlflow_params

CONFIG = {"model": "digits", "weights": {"v1": 50.0, "v2": 50.0},
          "versions": [{"name": "v1", "path": "m/v1.onnx"}, {"name": "v2", "path": "m/v2.pt2"}],
          "analysis": {"alpha": 0.05, "correction": "holm"}}


def report(requests_v2: int, p: float = 0.01, mismatch: bool = False) -> dict:
    return {
        "experiment": {"model": "digits", "control": "v1", "versions": ["v1", "v2"]},
        "variants": {"v1": {"requests": 100, "error_rate": 0.01, "latency_ms": {"p95": 3.5}},
                     "v2": {"requests": requests_v2, "error_rate": None, "latency_ms": {"p95": 4.0}}},
        "metrics": [{"name": "correct", "comparisons": [
            {"variant": "v2", "value_variant": 0.93, "abs_lift": 0.03, "rel_lift": 0.033, "p_value": p,
             "p_adjusted": 2 * p, "sequential": {"p_value": 0.2}}]}],
        "srm": {"applicable": True, "p_value": 0.5, "mismatch": mismatch},
        "shadow": None,
    }


def summary(requests_v2: int, mismatch: bool = False) -> dict:
    """What Report.run_summary() gives for report(requests_v2, mismatch=...)."""
    return {"versions": ["v1", "v2"], "control": "v1", "requests": 100 + requests_v2, "srm_mismatch": mismatch}


def headline(requests_v2: int, p: float = 0.01) -> dict:
    """Some of what Report.headline_metrics() gives for report(requests_v2, p)."""
    return {"v1.requests": 100.0, "v2.requests": float(requests_v2), "correct.v2.p_value": p,
            "correct.v2.p_adjusted": 2 * p, "srm.p_value": 0.5}


def test_save_load_round_trip_and_upsert(tmp_path):
    path = tmp_path / "nested" / "runs.sqlite"  # the folder is created on first save
    recorder = RunRecorder(path)
    recorder.save("run-a", CONFIG, report(90), started_at_s=100.0, updated_at_s=160.0)
    record = recorder.load("run-a")
    assert (record.config, record.report) == (CONFIG, report(90))
    assert (record.started_at_s, record.updated_at_s, record.saves) == (100.0, 160.0, 1)

    recorder.save("run-a", CONFIG, report(250, mismatch=True), started_at_s=130.0, updated_at_s=220.0)
    record = recorder.load("run-a")
    assert record.report == report(250, mismatch=True)  # the latest results replace the earlier
    assert (record.started_at_s, record.updated_at_s, record.saves) == (100.0, 220.0, 2)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1


def test_list_newest_first_with_summaries(tmp_path):
    recorder = RunRecorder(tmp_path / "runs.sqlite")
    recorder.save("old", CONFIG, report(10), 0.0, 50.0, summary=summary(10))
    recorder.save("new", CONFIG, report(20, mismatch=True), 60.0, 90.0, summary=summary(20, mismatch=True))
    runs = recorder.list()
    assert [r.run_id for r in runs] == ["new", "old"]
    assert (runs[0].model, runs[0].control, runs[0].versions, runs[0].requests) == ("digits", "v1", ["v1", "v2"], 120)
    assert (runs[0].srm_mismatch, runs[1].srm_mismatch) == (True, False)


def test_missing_file_and_unknown_run_say_what_exists(tmp_path):
    recorder = RunRecorder(tmp_path / "none.sqlite")
    with pytest.raises(FileNotFoundError, match="no run records at .*none.sqlite"):
        recorder.list()
    assert not (tmp_path / "none.sqlite").exists()  # reading never creates the file
    recorder.save("run-a", CONFIG, report(1), 0.0, 1.0)
    with pytest.raises(KeyError, match="no run record 'run-b' .*recent ones: run-a"):
        recorder.load("run-b")


def test_a_record_whose_text_is_not_json_is_listed_with_its_problem_and_refused_by_name(tmp_path):
    path = tmp_path / "runs.sqlite"
    recorder = RunRecorder(path)
    for run_id, updated in (("good", 90.0), ("cut", 80.0)):
        recorder.save(run_id, CONFIG, report(10), 0.0, updated, summary=summary(10))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET summary_json = '{\"versions\": [', report_json = 'null x' "
                   "WHERE run_id = 'cut'")
    good, cut = recorder.list()
    assert (good.run_id, good.problem, good.requests) == ("good", None, 110)
    assert (cut.run_id, cut.versions, cut.requests) == ("cut", [], None)
    assert cut.problem == "column summary_json: not JSON: Expecting value at line 1, column 15"
    with pytest.raises(CorruptRecord, match="run record 'cut' cannot be read: column report_json: not JSON: "
                                            "Extra data at line 1, column 6") as caught:
        recorder.load("cut")
    assert (caught.value.run_id, caught.value.column) == ("cut", "report_json")
    assert recorder.load("good").report == report(10)


@pytest.mark.parametrize("text, problem", [
    ("[" * 100_000 + "]" * 100_000, "JSON nested past Python's recursion limit"),
    ('{"requests": 1' + "0" * 5000 + "}", "JSON that cannot be read (Exceeds the limit (4300 digits)"),
])
def test_a_record_python_cannot_read_is_listed_with_its_problem_and_the_others_still_are(tmp_path, text, problem):
    path = tmp_path / "runs.sqlite"
    recorder = RunRecorder(path)
    for run_id, updated in (("good", 90.0), ("odd", 80.0)):
        recorder.save(run_id, CONFIG, report(10), 0.0, updated, summary=summary(10))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET summary_json = ?, report_json = ? WHERE run_id = 'odd'", (text, text))
    good, odd = recorder.list()
    assert (good.run_id, good.problem) == ("good", None)
    assert odd.problem.startswith(f"column summary_json: {problem}")
    with pytest.raises(CorruptRecord, match="run record 'odd' cannot be read: column report_json"):
        recorder.load("odd")


def test_other_sqlite_files_and_bad_inputs_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="not a serve-ab run record file"):
        RunRecorder(other).list()
    recorder = RunRecorder(tmp_path / "runs.sqlite")
    with pytest.raises(ValueError, match="report is not plain JSON"):
        recorder.save("r", CONFIG, {"x": float("nan")}, 0.0, 1.0)
    with pytest.raises(ValueError, match="run_id \\(''\\) must be a non-empty string"):
        recorder.save("", CONFIG, report(1), 0.0, 1.0)
    with pytest.raises(ValueError, match="updated_at_s \\(inf\\) must be a finite time"):
        recorder.save("r", CONFIG, report(1), 0.0, float("inf"))


def test_a_password_in_any_url_of_the_config_is_masked_in_the_record(tmp_path):
    # Live audit: a promql gate's Prometheus behind basic auth kept its password in the run
    # record (which `serve-ab runs` and `report --from-record` read, and MLflow's params), while
    # the logs, status and gate reasons said the URL without it; only store_url was masked.
    config = {**CONFIG, "controller": {"store_url": "redis://:s3cret-store@redis:6379/0"},
              "rollout": {"analysis": {"prometheus": {"url": "http://ops:s3cret-prom@prometheus:9090"}},
                          "gates": [{"metric": "promql", "name": "p95",
                                     "prometheus": {"url": "https://ops:s3cret-gate@prom.internal/p"}}]}}
    recorder = RunRecorder(tmp_path / "runs.sqlite")
    recorder.save("run-a", config, report(1), started_at_s=1.0, updated_at_s=2.0)
    saved = recorder.load("run-a").config
    assert saved["rollout"]["analysis"]["prometheus"]["url"] == "http://ops:***@prometheus:9090"
    assert saved["rollout"]["gates"][0]["prometheus"]["url"] == "https://ops:***@prom.internal/p"
    assert saved["controller"]["store_url"] == "redis://:***@redis:6379/0"
    assert (saved["versions"], saved["weights"]) == (CONFIG["versions"], CONFIG["weights"])  # the rest as given
    assert "s3cret" not in (tmp_path / "runs.sqlite").read_bytes().decode("utf-8", "replace")


def test_a_url_in_the_record_keeps_its_host_and_loses_all_of_its_password(tmp_path):
    # Every string of the config is masked now: a password with a bare @ kept its end, and a
    # hook URL whose query holds an @ was recorded with the query's domain as its host.
    hook = "https://alerts.example.com:8443?to=ops@example.com"
    config = {**CONFIG, "controller": {"store_url": "redis://app:s3cr@t-pw@redis:6379/0"},
              "notifications": {"receivers": [{"type": "webhook", "url": hook}]}}
    recorder = RunRecorder(tmp_path / "runs.sqlite")
    recorder.save("run-a", config, report(1), started_at_s=1.0, updated_at_s=2.0)
    saved = recorder.load("run-a").config
    assert saved["controller"]["store_url"] == "redis://app:***@redis:6379/0"
    assert saved["notifications"]["receivers"][0]["url"] == hook


def test_mlflow_params_are_flat():
    params = mlflow_params(CONFIG)
    assert params["weights.v1"] == "50.0" and params["versions.v2.path"] == "m/v2.pt2"
    assert params["analysis.correction"] == "holm"


def test_mlflow_missing_warns_once_and_keeps_the_sqlite_record(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    recorder = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)
    with caplog.at_level(logging.WARNING, logger="serve_ab.store.runs"):
        recorder.save("run-a", CONFIG, report(1), 0.0, 1.0)
        recorder.save("run-a", CONFIG, report(2), 0.0, 2.0)
        recorder.finish("run-a")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "MLflow cannot be imported" in warnings[0]
    assert recorder.load("run-a").report == report(2)


def test_a_failing_mlflow_never_fails_the_save(tmp_path, monkeypatch, caplog):
    class Broken:
        def __init__(self, *args, **kwargs):
            raise ConnectionError("tracking server down")

    fake = types.ModuleType("mlflow")
    fake.tracking = types.SimpleNamespace(MlflowClient=Broken)
    entities = types.ModuleType("mlflow.entities")
    entities.Metric = entities.Param = object
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.setitem(sys.modules, "mlflow.entities", entities)
    recorder = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)
    with caplog.at_level(logging.WARNING, logger="serve_ab.store.runs"):
        recorder.save("run-a", CONFIG, report(1), 0.0, 1.0)
        recorder.save("run-a", CONFIG, report(3), 0.0, 2.0)
    assert caplog.records[0].getMessage().startswith(
        "MLflow logging of run record 'run-a' failed: ConnectionError: tracking server down")
    assert len(caplog.records) == 1
    assert recorder.load("run-a").report == report(3)


def test_mlflow_logs_one_run_per_record_with_params_and_metric_history(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")  # mlflow-skinny is in the dev extra
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind a flag
    recorder = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)
    recorder.save("digits-run-1", CONFIG, report(90, p=0.04), 100.0, 160.0,
                  metrics={**headline(90, p=0.04), "v2.error_rate": float("nan")})  # NaN is left out
    recorder.save("digits-run-1", CONFIG, report(250, p=0.002), 100.0, 220.0, metrics=headline(250, p=0.002))
    recorder.finish("digits-run-1")

    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.get_experiment_by_name("serve-ab/digits")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # the second save updated the same run
    run = runs[0]
    assert run.info.run_name == "digits-run-1" and run.data.tags["serve_ab.run_id"] == "digits-run-1"
    assert run.info.status == "FINISHED"
    assert run.data.params["weights.v2"] == "50.0"
    assert run.data.metrics["v2.requests"] == 250 and run.data.metrics["correct.v2.p_value"] == 0.002
    history = client.get_metric_history(run.info.run_id, "v2.requests")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 90.0), (2, 250.0)]
    assert "v2.error_rate" not in run.data.metrics
    assert recorder.load("digits-run-1").mlflow_run_id == run.info.run_id
    json.dumps(recorder.load("digits-run-1").report)


def test_a_record_saved_without_a_summary_lists_with_blanks(tmp_path):
    recorder = RunRecorder(tmp_path / "runs.sqlite")
    recorder.save("bare", CONFIG, report(5), 0.0, 1.0)
    (run,) = recorder.list()
    assert (run.run_id, run.model, run.versions, run.control, run.requests, run.srm_mismatch) == (
        "bare", "digits", [], None, None, None)


def test_a_version_1_file_is_read_and_upgraded_on_the_next_save(tmp_path):
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as db:  # the layout before summary_json
        db.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, model TEXT, started_at_s REAL NOT NULL, "
                   "updated_at_s REAL NOT NULL, saves INTEGER NOT NULL DEFAULT 1, config_json TEXT NOT NULL, "
                   "report_json TEXT NOT NULL, mlflow_run_id TEXT)")
        db.execute("INSERT INTO runs VALUES ('old', 'digits', 0, 1, 1, ?, ?, NULL)",
                   (json.dumps(CONFIG), json.dumps(report(1))))
        db.execute("PRAGMA user_version = 1")
    recorder = RunRecorder(path)
    assert [(r.run_id, r.requests) for r in recorder.list()] == [("old", None)]
    assert recorder.load("old").report == report(1)
    recorder.save("new", CONFIG, report(2), 5.0, 6.0, summary=summary(2))
    assert [(r.run_id, r.requests) for r in recorder.list()] == [("new", 102), ("old", None)]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2


def _file_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.tracking.MlflowClient(uri)


def test_feedback_names_mlflow_refuses_or_merges_keep_every_param_and_metric(tmp_path, monkeypatch, caplog):
    # Feedback names may hold any visible character: "a//b" and "x/../y" are names MLflow refuses
    # (they change as file paths), which failed the whole batch; "revenue€" and "revenue$" both
    # became "revenue_", one metric's figures logged over the other's.
    client = _file_store(tmp_path, monkeypatch)
    names = ["a//b", "x/../y", "revenue€", "revenue$", "..x", "/lead", "r" * 300, "r" * 299 + "s", "ok"]
    config = {**CONFIG, "metrics": [{"name": n, "kind": "mean"} for n in names]}
    metrics = {"v1.requests": 100.0, **{f"{n}.v2.p_value": i / 100 for i, n in enumerate(names)}}
    recorder = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)
    with caplog.at_level(logging.WARNING, logger="serve_ab.store.runs"):
        recorder.save("run-a", config, report(1), 0.0, 1.0, metrics=metrics)
    assert [r.getMessage() for r in caplog.records] == []
    run = client.get_run(recorder.load("run-a").mlflow_run_id)
    logged = run.data.metrics
    assert len(logged) == len(metrics) and sorted(logged.values()) == sorted(metrics.values())
    assert logged["v1.requests"] == 100.0 and logged["ok.v2.p_value"] == 0.08  # valid keys stay as they are
    assert len([k for k in run.data.params if k.startswith(("metrics.", "_metrics."))]) == len(names)
    assert all(len(k) <= 250 for k in [*logged, *run.data.params])


def test_a_restarted_recorder_goes_on_with_the_same_mlflow_run(tmp_path, monkeypatch):
    client = _file_store(tmp_path, monkeypatch)
    RunRecorder(tmp_path / "runs.sqlite", mlflow=True).save("run-a", CONFIG, report(1), 0.0, 1.0,
                                                             metrics=headline(1))
    again = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)  # the controller after a restart
    again.save("run-a", CONFIG, report(7), 0.0, 2.0, metrics=headline(7))
    (experiment,) = [e for e in client.search_experiments() if e.name == "serve-ab/digits"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["v2.requests"] == 7.0 and again.load("run-a").saves == 2


def test_a_tracking_server_that_fails_is_asked_once_not_per_retry_and_save(tmp_path, monkeypatch, caplog):
    # MLflow's defaults retry 7 times with backoff (about four minutes a save when the server is
    # down), holding the controller's report loop; serve-ab asks once and rests after a failure.
    import http.server
    import threading

    pytest.importorskip("mlflow")
    asked: list[str] = []

    class Down(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")  # the old way finishes quickly too
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            monkeypatch.setenv(name, "unset")  # restored as it was after the test
            monkeypatch.delenv(name)
        recorder = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)
        with caplog.at_level(logging.WARNING, logger="serve_ab.store.runs"):
            recorder.save("run-a", CONFIG, report(1), 0.0, 1.0, metrics=headline(1))
            recorder.save("run-a", CONFIG, report(2), 0.0, 2.0, metrics=headline(2))
            recorder.finish("run-a")
    finally:
        server.shutdown()
        server.server_close()
    assert len(asked) == 1, asked
    assert len(caplog.records) == 1 and "tried again in 300 s" in caplog.records[0].getMessage()
    assert recorder.load("run-a").report == report(2)


def test_the_final_save_reaches_mlflow_and_ends_its_run_while_mlflow_rests_after_a_blip(tmp_path, monkeypatch):
    # MLflow rests 300 s after a failure; the run's last save and finish() come once, so a blip
    # in the run's last 5 minutes left its MLflow run RUNNING for ever, without its final figures.
    import socket

    client = _file_store(tmp_path, monkeypatch)
    store_uri = client.tracking_uri
    recorder = RunRecorder(tmp_path / "runs.sqlite", mlflow=True)
    recorder.save("run-a", CONFIG, report(1), 0.0, 1.0, metrics=headline(1))
    with socket.socket() as closed:  # a port nothing listens on: the tracking server away
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed.getsockname()[1]}")
        recorder.save("run-a", CONFIG, report(2), 0.0, 2.0, metrics=headline(2))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)  # back at once
    recorder.save("run-a", CONFIG, report(3), 0.0, 3.0, metrics=headline(3), final=True)
    recorder.finish("run-a")
    run = client.get_run(recorder.load("run-a").mlflow_run_id)
    assert run.data.metrics["v2.requests"] == 3.0
    assert run.info.status == "FINISHED"
