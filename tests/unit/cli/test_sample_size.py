"""``serve-ab sample-size``: wiring, output, and errors that name the option."""

from __future__ import annotations

import argparse
import json

import pytest

from serve_ab.cli import sample_size as cli_sample_size
from serve_ab.analysis.power import sample_size_conversions, sample_size_means


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="serve-ab")
    cli_sample_size.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sample-size", *argv])
    return args.func(args)


def test_conversions_table(capsys):
    assert _main(["--baseline-rate", "0.10", "--mde", "0.02"]) == 0
    out = capsys.readouterr().out
    assert "conversions" in out and "3,835" in out and "7,670" in out and "+20.0%" in out


def test_relative_mde_and_variants_as_json(capsys):
    assert _main(["--baseline-rate", "0.10", "--mde", "0.15", "--relative", "--variants", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    plan = sample_size_conversions(0.10, 0.15, relative=True, variants=3)
    assert got["n_per_variant"] == plan.n_per_variant and got["n_total"] == 3 * plan.n_per_variant
    assert got["alpha_per_comparison"] == pytest.approx(0.025)


def test_means_with_power_and_one_sided(capsys):
    assert _main(["--std", "12.5", "--mde", "1.0", "--power", "0.9", "--one-sided", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["n_per_variant"] == sample_size_means(12.5, 1.0, power=0.9, two_sided=False).n_per_variant
    assert got["kind"] == "mean" and got["two_sided"] is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mde", "0.02"], "one of the arguments --baseline-rate --std is required"),
        (["--baseline-rate", "0.1", "--std", "2", "--mde", "0.02"],
         "argument --std: not allowed with argument --baseline-rate"),
        (["--baseline-rate", "1.5", "--mde", "0.02"], "argument --baseline-rate: 1.5 is not in (0, 1)"),
        (["--baseline-rate", "0.9", "--mde", "0.2"],
         "argument --mde: mde (0.2) moves the rate 0.9 to 1.1; it must stay in (0, 1), so mde must be in (-0.9, 0.1)"),
        (["--baseline-rate", "0.1", "--mde", "0"], "argument --mde: 0 must be a non-zero number"),
        (["--baseline-rate", "0.1", "--mde", "0.02", "--alpha", "1"], "argument --alpha: 1 is not in (0, 1)"),
        (["--baseline-rate", "0.1", "--mde", "0.02", "--power", "0.01"], "argument --power: power (0.01) must exceed"),
        (["--baseline-rate", "0.1", "--mde", "0.02", "--variants", "1"], "argument --variants: 1 must be >= 2"),
        (["--std", "0", "--mde", "1"], "argument --std: 0 must be a number > 0"),
        (["--std", "3", "--mde", "1", "--relative"], "argument --relative: only applies with --baseline-rate"),
    ],
)
def test_invalid_combinations_name_the_option_and_the_range(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        _main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
