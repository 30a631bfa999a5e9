"""The published JSON schema of the report (docs/report.schema.json) against the model, both ways."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import jsonschema
import pytest

from serve_ab.analysis import ab
from serve_ab.analysis.report_model import ABVerdict, Report, report_json_schema
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


def test_the_models_verdicts_are_the_analysis_verdicts():
    assert set(typing.get_args(ABVerdict)) == {v.value for v in ab.ABVerdict}
