"""Arrays narrowed for routers' reports: the smallest type that holds every value exactly.

A router sends the controller a report every interval. Its counts and bucket indices are
small whole numbers, kept as float64 or int64 for the arithmetic, and Ray would copy them
over at 8 bytes each. Past 100 KB, Ray also passes a call's argument through its object store,
which costs the controller about 0.4 ms more CPU per report (measured, `benchmarks/README.md`,
"Controller cost vs traffic"). So a report carries them as uint8, uint16 or uint32 where they
fit. Every reader assigns them into arrays of its own type (or reads them with ``np.asarray(...,
dtype=...)``), which widens them back: only the size changes, never a value.

Example::

    narrow(np.array([1.0, 3.0, 250.0]))   # array([  1,   3, 250], dtype=uint8)
    narrow(np.array([0.5, 2.0]))          # unchanged: not whole numbers
"""

from __future__ import annotations

import numpy as np

__all__ = ["narrow"]

_UNSIGNED = (np.uint8, np.uint16, np.uint32)
# Above 2**53 a float64 no longer holds every whole number, so its integrality proves nothing.
_EXACT_MAX = 2.0**53


def narrow(values: np.ndarray) -> np.ndarray:
    """``values`` as the narrowest unsigned integer type holding each of them exactly; the
    array itself when some value is negative, fractional, not finite or past uint32."""
    if values.size == 0:
        return values.astype(np.uint8)
    low, high = values.min(), values.max()
    if not (0 <= low and high <= np.iinfo(np.uint32).max):  # NaN fails this too
        return values
    if values.dtype.kind == "f" and (high >= _EXACT_MAX or not np.array_equal(values, np.floor(values))):
        return values
    for kind in _UNSIGNED:
        if high <= np.iinfo(kind).max:
            return values.astype(kind)
    return values  # unreachable: uint32 holds high
