"""The fuzz tier: thousands of generated requests through the router's routes over fakes.
No Ray, like the unit tier, but minutes rather than seconds, so it is a tier of its own
(``pytest tests/fuzz``; ``scripts/test.sh`` runs it with the rest)."""

from tests.unit.conftest import _forbid_ray_init  # noqa: F401 (an autouse fixture)
