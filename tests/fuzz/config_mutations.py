"""Mutations of the shipped configs (configs/*.yaml and the README's YAML examples) for the
config fuzz tier: each one a config text, where it was changed, and whether it must be refused.

Every mutation is deterministic (a seeded ``random.Random``), so a failing case can be named
by its id and rerun. Three kinds:

- tree mutations: one value under ``args:`` replaced (wrong type, negative, zero, NaN/inf,
  huge, unicode, a very long string, an empty list), a key dropped or an unknown one added;
- semantic ones: duplicated version names, weights that do not sum to 100;
- text mutations of the YAML itself: tabs, a key given twice, anchors, ``yes``/``no``,
  octal-looking numbers.

``must_refuse`` is True only where the change cannot be valid whatever the field (an unknown
key, a mapping given for a number, a key twice); elsewhere the oracle is the checker's
message, which the test reads for a path and no Python internals.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
CONFIGS = sorted((REPO_ROOT / "configs").glob("*.yaml"))


@dataclass(frozen=True)
class Mutation:
    id: str  # base:kind:path, unique
    base: str
    kind: str
    path: str  # dotted, as serve-ab validate names fields (applications.0.args...)
    text: str
    must_refuse: bool


def _dump(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, width=4096)


def readme_bases() -> dict[str, dict]:
    """The README's experiment examples, each merged into the shipped config it extends, as
    a user pastes a snippet into a working file."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    ab = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    canary = yaml.safe_load((REPO_ROOT / "configs" / "canary.yaml").read_text())
    isolated = yaml.safe_load((REPO_ROOT / "configs" / "ab_isolated.yaml").read_text())
    out: dict[str, dict] = {}
    for index, block in enumerate(blocks):
        try:
            snippet = yaml.safe_load(block)
        except yaml.YAMLError:
            continue  # args: {...}: an elision, not a config
        if not isinstance(snippet, dict) or "scrape_configs" in snippet or "applications" in snippet:
            continue
        if "args" in snippet:
            tree = copy.deepcopy(ab)
            tree["applications"][0]["args"] = snippet["args"]
        elif "rollout" in snippet or "controller" in snippet:
            tree = copy.deepcopy(canary if "gates" in snippet.get("rollout", {}) and "strategy" not in
                                 snippet.get("rollout", {}) else ab)
            args = tree["applications"][0]["args"]
            for key, value in snippet.items():
                if key == "rollout" and "rollout" in args:
                    args["rollout"].update(value)
                    if "prometheus" in value.get("analysis", {}):
                        args["rollout"]["analysis"] = {**canary["applications"][0]["args"]["rollout"]["analysis"],
                                                       **value["analysis"]}
                else:
                    args[key] = value
            if "rollout" in args:
                args["weights"] = {args["rollout"]["stable"]: 100}
        elif "versions" in snippet:
            tree = copy.deepcopy(isolated)
            args = tree["applications"][0]["args"]
            for version, extra in zip(args["versions"], snippet["versions"]):
                version["deployment"] = extra["deployment"]
        elif "shadow" in snippet:
            tree = copy.deepcopy(ab)
            tree["applications"][0]["args"].update(snippet)
        else:
            continue
        out[f"README#{index}"] = tree
    return out


def bases() -> dict[str, dict]:
    found = {path.name: yaml.safe_load(path.read_text()) for path in CONFIGS}
    found.update(readme_bases())
    return found


def _walk(node: Any, path: tuple) -> Iterator[tuple[tuple, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, index))


def _get(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _set(tree: Any, path: tuple, value: Any) -> None:
    _get(tree, path[:-1])[path[-1]] = value


def _dotted(path: tuple) -> str:
    return ".".join(str(part) for part in path)


# Mappings whose keys are the user's: custom Ray resources, HTTP headers.
FREE_MAPPINGS = ("resources", "headers_from_env", "headers")
LONG = "x" * 20000
UNICODE = "véřšíón-名前-🚀"
#: Values any field may be given: (kind, value, must_refuse for a number field).
REPLACEMENTS: list[tuple[str, Any]] = [
    ("none", None), ("true", True), ("str", "abc"), ("unicode", UNICODE), ("long_str", LONG),
    ("empty_str", ""), ("list", [1, 2]), ("empty_list", []), ("dict", {"a": 1}), ("empty_dict", {}),
    ("zero", 0), ("negative", -1), ("neg_float", -0.5), ("huge", 10 ** 30), ("huge_float", 1e300),
    ("nan", float("nan")), ("inf", float("inf")), ("neg_inf", float("-inf")),
    ("nan_str", "nan"), ("inf_str", "inf"), ("Infinity_str", "Infinity"), ("num_str", "5"),
    ("fraction", 0.3),
]


def tree_mutations(name: str, tree: dict, rng: random.Random, per_leaf: int) -> Iterator[Mutation]:
    for index, app in enumerate(tree.get("applications", [])):
        if not str(app.get("import_path", "")).endswith("build_app"):
            continue
        root = ("applications", index, "args")
        for path, node in list(_walk(_get(tree, root), root)):
            if len(path) == len(root):
                continue
            where = _dotted(path)
            parent = _get(tree, path[:-1])
            if isinstance(parent, dict):
                mutated = copy.deepcopy(tree)
                del _get(mutated, path[:-1])[path[-1]]
                yield Mutation(f"{name}:drop:{where}", name, "drop", where, _dump(mutated), False)
            if isinstance(node, dict):
                mutated = copy.deepcopy(tree)
                _get(mutated, path)["no_such_field_zz"] = 1
                free = path[-1] in FREE_MAPPINGS  # any key is valid there
                yield Mutation(f"{name}:unknown:{where}", name, "unknown", f"{where}.no_such_field_zz",
                               _dump(mutated), not free)
            chosen = rng.sample(REPLACEMENTS, min(per_leaf, len(REPLACEMENTS)))
            if isinstance(node, (int, float)) and not isinstance(node, bool):
                # numbers get every numeric trouble, not a sample
                chosen = [r for r in REPLACEMENTS if r[0] in ("zero", "negative", "neg_float", "huge", "huge_float",
                                                               "nan", "inf", "neg_inf", "nan_str", "inf_str",
                                                               "dict", "list", "str", "fraction")]
            for kind, value in chosen:
                if isinstance(node, (dict, list)) and kind in ("empty_dict",) and isinstance(node, dict):
                    continue
                mutated = copy.deepcopy(tree)
                _set(mutated, path, copy.deepcopy(value))
                numeric = isinstance(node, (int, float)) and not isinstance(node, bool)
                refuse = (numeric and kind in ("dict", "list", "str")) or \
                    (isinstance(node, str) and kind in ("dict", "list", "empty_list"))
                yield Mutation(f"{name}:{kind}:{where}", name, kind, where, _dump(mutated), refuse)


def semantic_mutations(name: str, tree: dict) -> Iterator[Mutation]:
    for index, app in enumerate(tree.get("applications", [])):
        args = app.get("args") or {}
        if "versions" not in args:
            continue
        root = f"applications.{index}.args"
        # aliases that expand to 10**7 values (a "billion laughs", small): the error must
        # still be one short line, and come at once
        level: Any = ["x"] * 10
        for _ in range(6):
            level = [level] * 10  # one object 10 times: safe_dump writes anchors and aliases
        m = copy.deepcopy(tree)
        m["applications"][index]["args"]["zz_bomb"] = level
        yield Mutation(f"{name}:alias_bomb:{root}", name, "alias_bomb", f"{root}.zz_bomb", _dump(m), True)
        m = copy.deepcopy(tree)
        versions = m["applications"][index]["args"]["versions"]
        versions.append(copy.deepcopy(versions[0]))
        yield Mutation(f"{name}:dup_version:{root}.versions", name, "dup_version", f"{root}.versions", _dump(m), True)
        m = copy.deepcopy(tree)
        m["applications"][index]["args"]["versions"] = []
        yield Mutation(f"{name}:no_versions:{root}.versions", name, "no_versions", f"{root}.versions", _dump(m), True)
        weights = args.get("weights")
        if isinstance(weights, dict) and weights:
            for kind, change in (("weights_sum_99", -1), ("weights_sum_101", 1), ("weights_sum_100_001", 0.001)):
                m = copy.deepcopy(tree)
                w = m["applications"][index]["args"]["weights"]
                first = next(iter(w))
                w[first] = w[first] + change
                yield Mutation(f"{name}:{kind}:{root}.weights", name, kind, f"{root}.weights", _dump(m), True)
            m = copy.deepcopy(tree)
            m["applications"][index]["args"]["weights"]["v99"] = 0
            yield Mutation(f"{name}:weight_unknown_version:{root}.weights", name, "weight_unknown_version",
                           f"{root}.weights", _dump(m), True)
            m = copy.deepcopy(tree)
            m["applications"][index]["args"]["weights"] = {}
            yield Mutation(f"{name}:weights_empty:{root}.weights", name, "weights_empty", f"{root}.weights",
                           _dump(m), True)


def text_mutations(name: str, text: str) -> Iterator[Mutation]:
    lines = text.splitlines()
    indented = [i for i, line in enumerate(lines) if line.startswith("      ") and ":" in line
                and not line.strip().startswith("#")]
    for i in indented[:6]:
        m = list(lines)
        m[i] = "\t" + m[i].lstrip()
        yield Mutation(f"{name}:tab:line{i + 1}", name, "tab", f"line {i + 1}", "\n".join(m) + "\n", True)
        m = list(lines)
        m.insert(i + 1, lines[i])
        if not lines[i].lstrip().startswith("- "):
            yield Mutation(f"{name}:dup_key:line{i + 1}", name, "dup_key", f"line {i + 1}", "\n".join(m) + "\n", True)
    for word in ("yes", "no", "on", "off", "010", "0o10", "0x10", "1_000", "1e3", "1.0e+3", ".inf", ".nan",
                 "~", "2026-12-07", "'50'", "!!str 5", "&a 5", "*undefined"):
        for pattern in (r"(num_cpus: )[0-9.]+", r"(interval_s: )[0-9.]+", r"(enabled: )\w+", r"(percent: )[0-9.]+",
                        r"(max_ongoing_requests: )[0-9]+", r"(num_replicas: )[0-9]+", r"(set_weight: )[0-9.]+"):
            if re.search(pattern, text):
                m = re.sub(pattern, lambda match: match.group(1) + word, text, count=1)
                field = pattern.split("(")[1].split(":")[0]
                yield Mutation(f"{name}:yaml_{word}:{field}", name, f"yaml_{word}", field, m, False)
    # text fields given what YAML 1.1 reads as something else (the Norway problem): refused,
    # with a hint to quote them; what it reads as text is accepted
    for word, is_text in (("no", False), ("off", False), ("yes", False), ("010", False), ("0x1F", False),
                          ("12:30", False), ("2026-12-07", False), ("~", False), ("1_000", False),
                          ("1.0e+3", False), (".inf", False), ("1e3", True), ("'010'", True), ("!!str 5", True),
                          ("\"no\"", True)):
        for pattern in (r"(salt: )[\w-]+", r"(field: )[\w-]+"):
            if re.search(pattern, text):
                m = re.sub(pattern, lambda match: match.group(1) + word, text, count=1)
                field = pattern.split("(")[1].split(":")[0]
                yield Mutation(f"{name}:yaml_text_{word}:{field}", name, f"yaml_text_{word}", field, m, not is_text)
    # an anchor and an alias: valid YAML, the same config
    if "versions:" in text and "- {name: v1" in text:
        m = text.replace("- {name: v1", "- &first {name: v1", 1)
        m = m.replace("weights:", "extra_alias: *first\n      weights:", 1) if False else m
        yield Mutation(f"{name}:anchor", name, "anchor", "versions", m, False)


def all_mutations(seed: int = 46, per_leaf: int = 6) -> list[Mutation]:
    rng = random.Random(seed)
    out: list[Mutation] = []
    for name, tree in bases().items():
        out += tree_mutations(name, tree, rng, per_leaf)
        out += semantic_mutations(name, tree)
        path = REPO_ROOT / "configs" / name
        out += text_mutations(name, path.read_text() if path.exists() else _dump(tree))
    ids = [m.id for m in out]
    seen: dict[str, int] = {}
    unique = []
    for m in out:  # a path can be reached twice (a README base shares a shipped one's): number them
        seen[m.id] = seen.get(m.id, 0) + 1
        unique.append(m if seen[m.id] == 1 else Mutation(f"{m.id}#{seen[m.id]}", m.base, m.kind, m.path, m.text,
                                                            m.must_refuse))
    assert len(ids) == len(unique)
    return unique


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
