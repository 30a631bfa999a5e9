"""The README's request examples run as written: a user pastes them."""

from __future__ import annotations

import json
import re

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"


def _curl_bodies() -> list[str]:
    """The ``-d '...'`` body of each curl command in the README's shell blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [body for block in blocks if "curl " in block for body in re.findall(r" -d '([^']*)'", block)]


def test_the_readmes_curl_bodies_are_json_with_whole_digit_rows():
    bodies = _curl_bodies()
    assert len(bodies) >= 2, bodies  # /predict and the V2 infer route
    for body in bodies:
        parsed = json.loads(body)  # "...64 numbers" in a body is a 400 for whoever pastes it
        inputs = parsed["inputs"]
        rows = [tensor["data"] for tensor in inputs] if isinstance(inputs[0], dict) else inputs
        assert all(len(row) == 64 and all(isinstance(x, int | float) for x in row) for row in rows), body
