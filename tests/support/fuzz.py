"""Fuzzing an HTTP API from its OpenAPI schema with schemathesis: every operation, valid and
invalid data. Shared by the unit tier (the routes over fakes, thousands of cases) and the
integration tier (a real replica, a few hundred, which must also stay up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def fuzz_openapi(schema_dict: dict[str, Any], send: Callable[[Any], Any],
                 examples_per_mode: int) -> tuple[int, list[str]]:
    """Send generated cases with ``send(case) -> response``; returns (calls, server errors)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_dict(schema_dict)
    server_errors: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=examples_per_mode, deadline=None, database=None, derandomize=True,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                nonlocal calls
                response = send(case)
                calls += 1
                if response.status_code >= 500:
                    server_errors.append(f"{operation.label} [{mode.value}] -> {response.status_code} "
                                         f"{response.text[:200]} for {case.as_curl_command()}")

            try:
                fuzz()
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return calls, server_errors
