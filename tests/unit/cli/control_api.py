"""A fake serve-ab control API (``/rollout/...``) on a local port, and the statuses it answers;
the ``api`` fixture (``conftest.py``) serves it to the CLI tests."""

from __future__ import annotations

import argparse

from serve_ab.cli import rollout as cli_rollout
from tests.integration.conftest import free_port
from tests.support.fake_http import FakeApp

CANARY = {
    "model": "digits", "strategy": "canary", "stable": "v1", "candidate": "v2",
    "phase": "progressing", "step_index": 2, "steps_total": 7, "step": "pause 30s",
    "weights_pct": {"v1": 80.0, "v2": 20.0},
    "reason": "step 3/7: pause 30s, 12 s left",
    "next_step_in_s": 12.3,
    "failures_total": 0, "failure_limit": 1,
    "gates": [
        {"gate": "latency_p95_ms <= 50", "metric": "latency_p95_ms", "verdict": "pass",
         "value": 3.2, "threshold": 50.0, "bound": "max", "reason": "3.2 <= 50"},
        {"gate": "error_rate <= 0.01", "metric": "error_rate", "verdict": "inconclusive",
         "value": None, "threshold": 0.01, "bound": "max", "reason": "no data for v2"},
    ],
    "retired": [],
    "history": [
        {"t_s": 1764312000.5, "from_phase": None, "to_phase": "progressing", "step_index": 0,
         "reason": "rollout started"},
        {"t_s": 1764312060.0, "from_phase": "progressing", "to_phase": "paused", "step_index": 3,
         "reason": "paused by operator"},
    ],
}

# An app without a rollout answers only these keys.
STATIC = {"model": "digits", "strategy": None, "phase": "static", "weights_pct": {"v1": 50.0, "v2": 50.0},
          "gates": [], "retired": []}


def closed_port() -> int:
    """A port nobody listens on: below the ephemeral range, so that no process binding port 0
    (Ray's, when the suite runs the tests with Ray beside these) can take it meanwhile."""
    return free_port()


class FakeControlAPI(FakeApp):
    """The control API's routes, canned."""

    def reset(self):
        self.requests.clear()
        self.bearer = None  # unprotected: reads are open
        self.responses = {("GET", "/rollout/status"): (200, CANARY)}
        for action in ("promote", "pause", "resume", "abort", "rollback", "weights"):
            self.responses[("POST", f"/rollout/{action}")] = (200, {**CANARY, "phase": "paused"})


def main(argv: list[str]) -> int:
    """The rollout commands alone, as `serve-ab` parses them."""
    parser = argparse.ArgumentParser(prog="serve-ab")
    cli_rollout.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def run(argv, capsys) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of :func:`main`."""
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
