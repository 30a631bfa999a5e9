"""UnitSample: distinct units per version, exact below its bound and a uniform sample above it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from serve_ab.analysis.unit_sample import UnitSample, _mix
from serve_ab.routing import NUM_BUCKETS

FULL = 1 << 64


def _version(unit: int) -> str:
    """A 50/50 split as the routers make it: the unit's bucket decides."""
    return "v1" if unit % NUM_BUCKETS < NUM_BUCKETS // 2 else "v2"


def _fill(sample: UnitSample, units) -> UnitSample:
    for unit in units:
        sample.add(_version(unit), unit)
    return sample


def _random_units(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 2**63, n, dtype=np.int64).tolist()


def test_below_the_bound_counts_are_exact_and_keyless_requests_are_units_of_their_own():
    units = _random_units(0, 800)
    sample = _fill(UnitSample(max_units=1000), units + units[:300])  # every user twice or once
    sample.add("v2", None)
    sample.add("v2", None)
    exact = {v: sum(_version(u) == v for u in units) for v in ("v1", "v2")}
    assert sample.fraction == 1.0 and sample.theta == FULL
    assert sample.kept(["v1", "v2", "v3"]) == {**exact, "v3": 0}
    assert sample.estimates(["v1", "v2"]) == {"v1": exact["v1"], "v2": exact["v2"] + 2}


def test_above_the_bound_it_keeps_every_unit_below_a_hash_threshold():
    units = _random_units(1, 20_000)
    sample = _fill(UnitSample(max_units=1000), units)
    assert 500 < sample.size() <= 1000 and sample.theta < FULL
    # The sample is the set of units whose second hash falls below theta: whichever the version.
    below = {u for u in units if _mix(u) < sample.theta}
    assert set().union(*sample.units.values()) == below
    # theta halved as few times as the bound allows: twice theta would have kept too many.
    assert sum(_mix(u) < 2 * sample.theta for u in set(units)) > 1000
    # ...so the sample does not depend on the order the units came in.
    again = _fill(UnitSample(max_units=1000), list(reversed(units)))
    assert again.theta == sample.theta and again.units == sample.units
    estimates = sample.estimates(["v1", "v2"])
    for version in ("v1", "v2"):
        exact = sum(_version(u) == version for u in units)
        assert estimates[version] == round(len(sample.units[version]) / sample.fraction)
        assert abs(estimates[version] - exact) < 4 * np.sqrt(exact / sample.fraction)


def test_the_srm_chi_square_on_the_sample_of_a_fair_split_rejects_at_about_alpha():
    """Whether a unit is kept does not depend on its version, so the kept counts of a true
    50/50 split are a binomial sample of it: the chi-square rejects at about alpha."""
    alpha, reps = 0.05, 200
    p_values = []
    for seed in range(reps):
        sample = _fill(UnitSample(max_units=1000), _random_units(100 + seed, 4000))
        assert sample.fraction < 0.5
        kept = sample.kept(["v1", "v2"])
        p_values.append(stats.chisquare([kept["v1"], kept["v2"]]).pvalue)
    rate = np.mean(np.asarray(p_values) < alpha)
    # Monte Carlo SE sqrt(0.05 * 0.95 / 200) = 0.015
    assert 0.01 <= rate <= 0.10, rate
    assert stats.kstest(p_values, "uniform").pvalue > 1e-3


def _mix_array(units: np.ndarray) -> np.ndarray:
    """unit_sample._mix on a numpy array (uint64 arithmetic wraps as the mask does)."""
    z = units.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def test_the_second_hash_is_independent_of_the_bucket_even_for_consecutive_units():
    """Units that are not hashes (consecutive integers, each version exactly half of them):
    the units below a threshold still split evenly, at about alpha over many ranges."""
    probe = np.arange(5000, dtype=np.uint64) * np.uint64(7919)
    assert _mix_array(probe).tolist() == [_mix(int(u)) for u in probe.tolist()]
    theta = np.uint64(FULL // 32)
    p_values = []
    with np.errstate(over="ignore"):
        for seed in range(300):
            units = np.arange(seed * 1_000_003, seed * 1_000_003 + 2 * NUM_BUCKETS, dtype=np.uint64)
            kept = units[_mix_array(units) < theta]
            in_v1 = int((kept % np.uint64(NUM_BUCKETS) < np.uint64(NUM_BUCKETS // 2)).sum())
            p_values.append(stats.chisquare([in_v1, kept.size - in_v1]).pvalue)
    rate = np.mean(np.asarray(p_values) < 0.05)
    assert 0.01 <= rate <= 0.10, rate  # a 1/32 sample: the finite population barely shows


def test_a_skewed_split_is_still_seen_in_the_sample():
    units = _random_units(7, 20_000)
    sample = UnitSample(max_units=1000)
    for unit in units:
        # 55/45 instead of 50/50: v2 loses a tenth of its users
        if _version(unit) == "v2" and unit % 10 == 0:
            continue
        sample.add(_version(unit), unit)
    kept = sample.kept(["v1", "v2"])
    assert kept["v1"] > kept["v2"] and sample.size() <= 1000


def test_merging_two_replicas_samples_is_the_sample_of_all_their_units():
    units = _random_units(3, 6000)
    whole = _fill(UnitSample(max_units=1000), units)
    whole.add("v1", None)
    left = _fill(UnitSample(max_units=1000), units[:3500])
    right = _fill(UnitSample(max_units=1000), units[2500:])  # overlapping users are counted once
    right.add("v1", None)
    left.merge(right)
    assert left.theta == whole.theta and left.units == whole.units and left.keyless == whole.keyless
    # Merging a small exact sample into a sampled one keeps only its units below the threshold.
    small = _fill(UnitSample(max_units=1000), _random_units(4, 50))
    small.merge(whole)
    assert small.theta == whole.theta
    assert all(_mix(u) < small.theta for kept in small.units.values() for u in kept)


@pytest.mark.parametrize("n", [10, 5000])
def test_to_dict_and_from_dict_round_trip_through_json(n):
    sample = _fill(UnitSample(max_units=1000), _random_units(5, n))
    sample.add("v2", None)
    data = json.loads(json.dumps(sample.to_dict()))
    again = UnitSample.from_dict(data, max_units=1000)
    assert (again.theta, again.units, again.keyless) == (sample.theta, sample.units, sample.keyless)
    assert again.estimates(["v1", "v2"]) == sample.estimates(["v1", "v2"])
    # It carries on as the original does.
    more = _random_units(6, 500)
    assert _fill(again, more).units == _fill(sample, more).units


def test_to_dict_writes_the_bytes_earlier_releases_wrote_and_read():
    """Sorted in numpy now (a save's ~25 ms of the controller's loop for 75,000 units, ~4 ms):
    the same big-endian sorted units, so rows stay readable both ways in a rolling upgrade."""
    import base64

    sample = _fill(UnitSample(max_units=1000), _random_units(7, 5000) + [0, FULL - 1])
    sample.units.setdefault("v1", set()).update({0, FULL - 1})  # the ends of the range
    earlier = {v: base64.b64encode(np.array(sorted(s), dtype=">u8").tobytes()).decode()
               for v, s in sample.units.items()}
    assert sample.to_dict()["units"] == earlier
