"""``serve-ab validate`` fuzzed with mutations of every shipped config and README example
(tests/fuzz/config_mutations.py: about 9,500 of them, from 17 bases).

Each answer must be one a user can act on: no exception (validate would print "this is a
bug"), every error line starting with the field path it is about, no Python or pydantic
internals in it, the mutated field (or one it refers to) named, and a mutation that cannot
be valid refused. Mutations that keep the config valid must be accepted.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from serve_ab.cli.command import check_file
from serve_ab.config.experiment import parse_experiment
from tests.fuzz.config_mutations import REPO_ROOT, Mutation, all_mutations, bases

# What a reader should never have to decode: a traceback, pydantic's own dump or its URL,
# a Python repr of an object or class.
INTERNALS = re.compile(r"Traceback|input_value=|input_type=|\[type=|For further information|errors\.pydantic"
                       r"|object at 0x|<class '|ValidationError|KeyError|AttributeError|NoneType|datetime\.")
# An error line starts with the field path it is about (applications.0.args.versions.1.path:)
# or, for the file itself (YAML syntax, a key twice), the file's path.
FIELD_PATH = re.compile(r"^[A-Za-z_][\w-]*(\.[\w\[\]()'-]+)*: ")


@pytest.fixture(scope="module")
def mutations() -> list[Mutation]:
    return all_mutations()


def _check(mutation: Mutation, tmp_path: Path) -> list[str]:
    path = tmp_path / "mutated.yaml"
    path.write_text(mutation.text, encoding="utf-8")
    return check_file(path)[0]  # raises on a bug: the test names the mutation


def _names_field(error: str, mutation: Mutation) -> bool:
    """The error is about the mutated field, one above it (a mapping's check), or one that
    refers to it across the config (a renamed version breaks weights:, stable:, ...)."""
    parts = mutation.path.split(".")
    return error.startswith("applications.") and any(error.startswith(".".join(parts[:k]))
                                                     for k in range(3, len(parts) + 1))


def _unstorable(mutation: Mutation) -> list[str]:
    """An accepted experiment must be one the controller can save with its run record: plain
    JSON, no infinity or NaN (store/runs.py). Accepted and then failing there is the worst
    answer: an autoscaling delay of .inf served, and every save of the record failed."""
    out = []
    for index, app in enumerate(yaml.safe_load(mutation.text).get("applications") or []):
        if not str(app.get("import_path", "")).endswith(":build_app"):
            continue
        stored = parse_experiment(app.get("args")).model_dump(mode="json")
        try:
            json.dumps(stored, allow_nan=False)
        except ValueError as err:
            out.append(f"{mutation.id}: applications.{index}: {err}")
    return out


def test_every_mutation_gets_an_answer_a_user_can_act_on(mutations, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the configs' model paths are relative to the checkout
    assert len(mutations) > 5000, len(mutations)
    crashes, unreadable, unnamed, accepted, unstorable = [], [], [], [], []
    for mutation in mutations:
        try:
            errors = _check(mutation, tmp_path)
        except Exception as err:  # noqa: BLE001 - collect every one, then fail naming them
            crashes.append(f"{mutation.id}: {type(err).__name__}: {str(err)[:200]}")
            continue
        for error in errors:
            if INTERNALS.search(error) or not (FIELD_PATH.match(error) or error.startswith(str(tmp_path))):
                unreadable.append(f"{mutation.id}: {error[:300]}")
        tree_mutation = mutation.kind not in ("tab", "dup_key", "alias_bomb", "anchor") \
            and not mutation.kind.startswith("yaml_")
        if errors and tree_mutation and not any(_names_field(e, mutation) for e in errors):
            unnamed.append(f"{mutation.id}: {errors[:2]}")
        if mutation.must_refuse and not errors:
            accepted.append(mutation.id)
        if not errors:
            unstorable += _unstorable(mutation)
        if mutation.kind.startswith("yaml_text_") and errors and not any("quote it" in e for e in errors):
            unreadable.append(f"{mutation.id}: no hint that YAML read the unquoted text as another type: {errors[0]}")
    print(f"\n{len(mutations)} mutations; crashes {len(crashes)}, unreadable errors {len(unreadable)}, "
          f"errors not naming the field {len(unnamed)}, invalid ones accepted {len(accepted)}, "
          f"accepted ones the run record cannot store {len(unstorable)}")
    assert crashes == [], "\n".join(crashes[:20])
    assert unreadable == [], "\n".join(unreadable[:20])
    assert unnamed == [], "\n".join(unnamed[:20])
    assert accepted == [], "\n".join(accepted[:20])
    assert unstorable == [], "\n".join(unstorable[:20])


def _valid_variants(name: str, tree: dict) -> list[tuple[str, str]]:
    """Changes that keep a config valid: another style of YAML, keys in another order, a
    weight moved between two versions that both have one, a salt in unicode."""
    out = [(f"{name}:flow", yaml.safe_dump(tree, default_flow_style=True, width=10 ** 6)),
           (f"{name}:block", yaml.safe_dump(tree, default_flow_style=False, allow_unicode=True))]

    def reversed_keys(node):
        if isinstance(node, dict):
            return {k: reversed_keys(node[k]) for k in reversed(list(node))}
        if isinstance(node, list):
            return [reversed_keys(v) for v in node]
        return node
    out.append((f"{name}:reversed_keys", yaml.safe_dump(reversed_keys(tree), sort_keys=False)))
    for index, app in enumerate(tree.get("applications", [])):
        args = app.get("args") or {}
        weights = args.get("weights") or {}
        nonzero = [v for v, w in weights.items() if 10 < w < 100]
        if len(nonzero) >= 2 and "rollout" not in args:
            moved = copy.deepcopy(tree)
            w = moved["applications"][index]["args"]["weights"]
            w[nonzero[0]] -= 7.5
            w[nonzero[1]] += 7.5
            out.append((f"{name}:weights_moved", yaml.safe_dump(moved, sort_keys=False)))
        if isinstance(args.get("assignment"), dict) and "salt" in args["assignment"]:
            salted = copy.deepcopy(tree)
            salted["applications"][index]["args"]["assignment"]["salt"] = "sél-名前-🚀-" + "s" * 500
            out.append((f"{name}:unicode_salt", yaml.safe_dump(salted, sort_keys=False, allow_unicode=True)))
        if isinstance(args.get("pin"), dict) and args["pin"].get("enabled") is True:
            out.append((f"{name}:pin_yes", yaml.safe_dump(tree, sort_keys=False).replace("enabled: true", "enabled: yes")))
    return out


def test_mutations_that_keep_a_config_valid_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    refused = []
    variants = [v for name, tree in bases().items() for v in _valid_variants(name, tree)]
    assert len(variants) >= 50, len(variants)
    for variant_id, text in variants:
        path = tmp_path / "variant.yaml"
        path.write_text(text, encoding="utf-8")
        errors = check_file(path)[0]
        if errors:
            refused.append(f"{variant_id}: {errors[:2]}")
    assert refused == [], "\n".join(refused)
