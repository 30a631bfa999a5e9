"""Which tokens an app accepts, and what it refuses or warns of at start (no Ray: binding a
deployment only records its options)."""

from __future__ import annotations

import logging

import pytest

from serve_ab import build_app
from serve_ab.config import ConfigError, parse_experiment
from serve_ab.serving.core.auth import ControlAuth, Role, load_tokens, token_warnings

LINEAR = "tests.unit.backends.python_models:Linear"
TOKEN_ENVS = ("SERVE_AB_CONTROL_TOKEN", "SERVE_AB_QA_TOKEN", "SERVE_AB_VIEWER_TOKEN")
SHARED = "shared-token-0123456789"


def experiment(**more):
    return {"model": "m", "weights": {"v1": 100},
            "versions": [{"name": "v1", "backend": "python", "class": LINEAR}], **more}


def control(tmp_path=None, file_text: str | None = None, **more):
    if file_text is not None:
        path = tmp_path / "tokens.yaml"
        path.write_text(file_text)
        more["tokens_file"] = str(path)
    return parse_experiment(experiment(control=more)).control


@pytest.fixture
def no_token_envs(monkeypatch):
    for name in TOKEN_ENVS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize("environ, says", [
    # An operator token equal to the viewer's was taken as the viewer's: the operator could not act.
    ({"SERVE_AB_CONTROL_TOKEN": SHARED, "SERVE_AB_VIEWER_TOKEN": SHARED},
     "$SERVE_AB_VIEWER_TOKEN ('viewer', role viewer) holds the same token as $SERVE_AB_CONTROL_TOKEN "
     "('operator', role operator)"),
    ({"SERVE_AB_CONTROL_TOKEN": SHARED, "SERVE_AB_QA_TOKEN": SHARED}, "$SERVE_AB_QA_TOKEN ('qa', role qa)"),
])
def test_one_token_for_two_roles_is_refused_naming_both_never_the_token(environ, says):
    with pytest.raises(ValueError) as refused:
        load_tokens(control(), environ)
    assert says in str(refused.value) and SHARED not in str(refused.value)


def test_a_files_token_equal_to_an_environment_token_is_refused(tmp_path):
    """A viewer's token from the environment that an operator's entry in the file repeats
    would let whoever holds the viewer's token act on the rollout, recorded as the operator."""
    cfg = control(tmp_path, f"- {{name: alice, role: operator, token: {SHARED}}}\n")
    with pytest.raises(ValueError, match=r"entry 0 \('alice', role operator\) holds the same token as "
                                         r"\$SERVE_AB_VIEWER_TOKEN \('viewer', role viewer\)") as refused:
        load_tokens(cfg, {"SERVE_AB_VIEWER_TOKEN": SHARED})
    assert SHARED not in str(refused.value)


@pytest.mark.parametrize("entries, says", [
    # A list or a mapping as the role raised TypeError (unhashable), naming no field.
    ("- {name: bob, role: [operator], token: bob-token-0123456789}\n",
     "entry 0 ('bob') has role ['operator']; valid: ['viewer', 'qa', 'operator']"),
    ("- {name: bob, role: {operator: 1}, token: bob-token-0123456789}\n", "entry 0 ('bob') has role {'operator': 1}"),
    # The history records names: an empty one, or one used twice, cannot say who acted.
    ("- {name: '', role: operator, token: bob-token-0123456789}\n", "entry 0 needs a name that is non-empty text"),
    ("- {name: bob, role: operator, token: bob-token-0123456789}\n- {name: bob, role: viewer, token: bob-token-9876543210}\n",
     "entry 1 is named 'bob', as control.tokens_file"),
])
def test_a_malformed_tokens_file_is_a_value_error_naming_the_field(tmp_path, entries, says):
    with pytest.raises(ValueError, match="control.tokens_file") as refused:
        load_tokens(control(tmp_path, entries), {})
    assert says in str(refused.value)
    assert "bob-token" not in str(refused.value)


@pytest.mark.parametrize("text, says", [
    # PyYAML's message quotes the lines around the fault: a broken entry printed its own token
    # and the next one's into serve run's output and the replicas' logs.
    ("- {name: a, role: operator, token: bob-token-0123456789\n- {name: b, role: qa, token: bob-token-qa-987654}\n",
     "line 2, column 3: expected ',' or '}', but got '{'"),
    ('- {name: a, role: operator, token: "bob-token-0123456789\\q"}\n', "found unknown escape character 'q'"),
    # A token that YAML reads as an alias or a tag is quoted back in the problem itself.
    ("- {name: a, role: operator, token: *bob-token-0123456789}\n", "line 1, column 36: found undefined alias"),
    ("- {name: a, role: operator, token: !bob-token-0123456789 x}\n", "could not determine a constructor"),
])
def test_a_tokens_file_that_is_not_yaml_is_refused_without_quoting_its_text(tmp_path, text, says):
    with pytest.raises(ValueError, match="control.tokens_file") as refused:
        load_tokens(control(tmp_path, text), {})
    assert says in str(refused.value)
    assert "bob-token" not in str(refused.value)


def test_build_app_refuses_tokens_that_clash_in_its_environment(no_token_envs):
    no_token_envs.setenv("SERVE_AB_CONTROL_TOKEN", SHARED)
    no_token_envs.setenv("SERVE_AB_VIEWER_TOKEN", SHARED)
    with pytest.raises(ConfigError, match=r"\$SERVE_AB_VIEWER_TOKEN .* holds the same token") as refused:
        build_app(experiment())
    assert SHARED not in str(refused.value)


def test_build_app_says_when_a_token_variable_is_set_but_empty(no_token_envs, caplog):
    no_token_envs.setenv("SERVE_AB_CONTROL_TOKEN", "")
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        build_app(experiment())
    said = [r.getMessage() for r in caplog.records]
    assert any("$SERVE_AB_CONTROL_TOKEN (the operator's token) is set but empty" in line for line in said), said
    assert any("no token may act on the rollout, so every request for control actions is refused" in line
               for line in said), said


@pytest.mark.parametrize("more, environ, expected", [
    ({}, {"SERVE_AB_CONTROL_TOKEN": "op-token-0123456789"}, []),
    ({}, {"SERVE_AB_CONTROL_TOKEN": "change-me"}, ["$SERVE_AB_CONTROL_TOKEN (the operator's token) has 9 characters"]),
    ({"protect_reads": True}, {"SERVE_AB_CONTROL_TOKEN": "op-token-0123456789", "SERVE_AB_VIEWER_TOKEN": ""},
     ["$SERVE_AB_VIEWER_TOKEN (the viewer's token) is set but empty"]),
    ({"protect_reads": True}, {}, ["no token may act on the rollout", "no token may read this app's figures"]),
    ({"protect_reads": True, "allow_unauthenticated": True}, {},
     ["control.allow_unauthenticated is true: anyone who reaches the app may act on the rollout and pin "
      "versions, and read its figures despite control.protect_reads, without a token"]),
])
def test_token_warnings(more, environ, expected):
    warnings = token_warnings(control(**more), environ)
    assert len(warnings) == len(expected) and all(w.startswith(e) for w, e in zip(warnings, expected)), warnings
    assert not any(value and value in " ".join(warnings) for value in environ.values())


def test_distinct_tokens_keep_their_roles(tmp_path):
    cfg = control(tmp_path, "- {name: alice, role: operator, token: alice-token-0123456}\n")
    tokens = load_tokens(cfg, {"SERVE_AB_CONTROL_TOKEN": "env-operator-token", "SERVE_AB_VIEWER_TOKEN": "env-viewer-token"})
    auth = ControlAuth(cfg, tokens)
    assert auth.check("Bearer env-operator-token").name == "operator"
    assert auth.check("Bearer env-viewer-token", role=Role.VIEWER).name == "viewer"
    assert auth.check("Bearer alice-token-0123456").name == "alice"
