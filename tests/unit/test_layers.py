"""The import graph of serve_ab runs one way, top to bottom (see README, "Layout").

cli -> serving -> rollout -> analysis | api -> config -> routing | backends | store -> errors.
A module may import its own package and any lower floor, never a higher floor or a
sibling on its own floor; the checks read the source, so lazy imports inside functions
count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "serve_ab"

FLOORS = {
    "cli": 6,
    "serving": 5,
    "rollout": 4,
    "analysis": 3,
    "api": 3,
    "config": 2,
    "routing": 1,
    "backends": 1,
    "store": 1,
    "errors": 0,
}


def _part(module: str) -> str | None:
    """The top-level part of ``serve_ab.X...`` (``None`` for ``serve_ab`` itself)."""
    names = module.split(".")
    return names[1] if len(names) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "serve_ab":
                found += [(node.lineno, f"serve_ab.{alias.name}") for alias in node.names]
            elif node.module.startswith("serve_ab."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("serve_ab")]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py")


def test_every_part_has_a_floor():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert parts == set(FLOORS), f"give each part of serve_ab a floor: {sorted(parts ^ set(FLOORS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_go_down(path: Path):
    own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    wrong = []
    for line, module in _imports(path):
        part = _part(module)
        if part == own:
            continue
        if part is None or part not in FLOORS:
            # The facade (serve_ab/__init__.py: build_app, __version__) is for users and the CLI.
            if own != "cli":
                wrong.append(f"line {line}: {module} (the package facade)")
            continue
        if FLOORS[part] >= FLOORS[own]:
            wrong.append(f"line {line}: {module} (floor {FLOORS[part]}, this is {own} on floor {FLOORS[own]})")
    assert not wrong, f"{path.relative_to(PACKAGE)} imports upwards or sideways: {wrong}"


def test_the_router_core_and_its_routes_import_no_ray():
    import subprocess
    import sys

    code = ("import sys, serve_ab.serving.core.router, serve_ab.serving.http; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"the router core pulled in Ray: {out}"
