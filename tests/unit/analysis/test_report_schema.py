"""The published JSON schema of the report (docs/report.schema.json) against the model, both ways."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pytest

from serve_ab.analysis import ab
from serve_ab.analysis.accumulate import ExperimentStats, split_key
from serve_ab.analysis.report import build_report
from serve_ab.analysis.report_model import ABVerdict, Report, report_json_schema
from tests.unit.analysis.test_report import Sim, make_cfg
from tests.unit.cli.test_report import _run, _server, app, report  # noqa: F401 - the fake app and its report

PUBLISHED = Path(__file__).resolve().parents[3] / "docs" / "report.schema.json"


@pytest.fixture(scope="module")
def published() -> dict:
    return json.loads(PUBLISHED.read_text())


def test_the_published_schema_is_the_models(published):
    assert published == report_json_schema(), (
        "docs/report.schema.json is stale; regenerate it: python -m serve_ab.analysis.report_model > "
        "docs/report.schema.json")
    jsonschema.Draft202012Validator.check_schema(published)


def test_report_json_from_the_cli_validates_against_the_published_schema_and_parses_back(
        app, report, published, capsys):  # noqa: F811
    code, out, _ = _run(["report", "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    jsonschema.Draft202012Validator(published).validate(data)
    assert Report.model_validate(data) == report
    # The schema is not vacuous: a report missing a section, or with an unknown verdict, fails it.
    first = data["metrics"][0]
    unknown_verdict = {**first, "comparisons": [{**first["comparisons"][0], "verdict": "probably"}]}
    for broken in ({k: v for k, v in data.items() if k != "srm"},
                   {**data, "metrics": [unknown_verdict, *data["metrics"][1:]]}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(published).validate(broken)


def _reports():
    """Reports of every shape the layout allows: empty, two splits with a pre-period (CUPED),
    a sampled SRM check, fixed-horizon verdicts, keyless units."""
    cfg = make_cfg(shadow=None)
    yield build_report(cfg, ExperimentStats(["v1", "v2", "v3"], 0.0).snapshot(0.0), cfg.weights_pct())[0]
    sim = Sim(make_cfg(weights={"v1": 100, "v2": 0}), seed=1, users=3000)
    sim.run(800, correct={"v1": 0.5, "v2": 0.5}, revenue={"v1": 1, "v2": 1}, shadow_share=0.3)
    sim.set_split({"v1": 50, "v2": 50}).run(1)
    sim.stats.splits[split_key(sim.weights)].units.max_units = 300
    sim.run(800, error_rate={"v2": 0.05}, correct={"v1": 0.5, "v2": 0.6}, revenue={"v1": 1, "v2": 1.2})
    yield sim.report()[0]
    cfg = make_cfg(shadow=None, analysis={"sequential": False, "correction": "bh"})
    yield Sim(cfg, seed=2, users=None).run(600, error_rate={"v1": 0.1, "v2": 0.1}).report()[0]


def test_reports_of_every_shape_validate_against_the_published_schema(published):
    validator = jsonschema.Draft202012Validator(published)
    shapes = set()
    for report_ in _reports():
        data = report_.model_dump(mode="json")
        validator.validate(data)
        assert Report.model_validate(data) == report_
        comparisons = [c for m in report_.metrics for c in m.comparisons]
        shapes |= {("cuped", c.cuped is not None) for c in comparisons}
        shapes |= {("basis", c.verdict_basis) for c in comparisons}
        shapes.add(("sampled", (report_.srm.sampled_fraction or 1) < 1))
    assert shapes >= {("cuped", True), ("cuped", False), ("basis", "sequential"), ("basis", "fixed_horizon"),
                      ("sampled", True)}
    # A guardrail status outside the three is refused by the schema too.
    for report_ in _reports():
        data = report_.model_dump(mode="json")
        guarded = [c for m in data["metrics"] for c in m["comparisons"] if c["guardrail"]]
        if guarded:
            guarded[0]["guardrail"]["status"] = "fine"
            with pytest.raises(jsonschema.ValidationError):
                validator.validate(data)
            break
    else:
        pytest.fail("no report with a guardrail")


def test_the_models_verdicts_are_the_analysis_verdicts():
    assert set(typing.get_args(ABVerdict)) == {v.value for v in ab.ABVerdict}
