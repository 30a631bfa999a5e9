"""Who may do what: named tokens with a role each.

Roles, from least to most: ``viewer`` reads status, report, stats and metrics (needed only
with ``control.protect_reads``); ``qa`` pins requests to a version; ``operator`` acts on the
rollout and may do everything the others may. Tokens come from environment variables
(``control.token_env`` is the operator's, ``qa_token_env``, ``viewer_token_env``) and from
``control.tokens_file``. A token is never logged or recorded: its name is.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from serve_ab.config.experiment import ControlConfig
from serve_ab.errors import Forbidden, Unauthorized
from serve_ab.serving.core.messages import Actor


class Role(str, Enum):
    VIEWER = "viewer"
    QA = "qa"
    OPERATOR = "operator"


# What each role may do besides its own (an operator may pin and read; QA may read).
_GRANTS = {
    Role.VIEWER: {Role.VIEWER},
    Role.QA: {Role.QA, Role.VIEWER},
    Role.OPERATOR: {Role.OPERATOR, Role.QA, Role.VIEWER},
}


# Tokens from control.tokens_file need this many characters; one from the environment is
# not refused below it (the README's example is short), only warned of.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class NamedToken:
    name: str
    role: Role
    token: str


def load_tokens(control: ControlConfig, environ: Mapping[str, str] = os.environ) -> list[NamedToken]:
    """Every token the app accepts: the three environment variables, then the file.

    One token held by two of them is refused (ValueError naming both, never the token): a
    check finds one entry for it, so one of the two roles would be silently lost (an operator
    token equal to the viewer's could no longer act) or granted (a viewer's equal to an
    operator's in the file could act), and the history would name the wrong holder. A name
    used twice is refused for the second reason."""
    sources = [(NamedToken(role.value, role, environ[env]), f"${env}") for role, env in (
        (Role.OPERATOR, control.token_env), (Role.QA, control.qa_token_env), (Role.VIEWER, control.viewer_token_env))
        if environ.get(env)]
    if control.tokens_file:
        where = f"control.tokens_file ({str(Path(control.tokens_file))!r})"
        sources += [(token, f"{where} entry {index}")
                    for index, token in enumerate(_tokens_from_file(Path(control.tokens_file)))]
    for later, (token, source) in enumerate(sources):
        for earlier, earlier_source in sources[:later]:
            if hmac.compare_digest(token.token.encode(), earlier.token.encode()):
                raise ValueError(f"{source} ({token.name!r}, role {token.role.value}) holds the same token as "
                                 f"{earlier_source} ({earlier.name!r}, role {earlier.role.value}); give each its own "
                                 "token (a request with it could act only as one of them)")
            if token.name == earlier.name:
                raise ValueError(f"{source} is named {token.name!r}, as {earlier_source} is; names are what "
                                 "the history records of who acted, so each must be its own")
    return [token for token, _ in sources]


def token_warnings(control: ControlConfig, environ: Mapping[str, str] = os.environ) -> list[str]:
    """What an operator should hear at start about who may do what, one line each; never a token.

    A variable set but empty is ignored as an unset one is, and a role with no token refuses
    every request that needs it: closed, but silent until the first refusal, which then asks
    to set a variable the operator believes is set. ``allow_unauthenticated`` opens everything,
    ``protect_reads`` included."""
    if control.allow_unauthenticated:
        reads = ", and read its figures despite control.protect_reads," if control.protect_reads else ""
        return [f"control.allow_unauthenticated is true: anyone who reaches the app may act on the rollout "
                f"and pin versions{reads} without a token (only for local experiments)"]
    warnings = []
    for env, what in ((control.token_env, "the operator's token"), (control.qa_token_env, "QA's token"),
                      (control.viewer_token_env, "the viewer's token")):
        value = environ.get(env)
        if value is not None and not value:
            warnings.append(f"${env} ({what}) is set but empty, so it is ignored as if unset")
        elif value is not None and len(value) < MIN_TOKEN_CHARS:
            warnings.append(f"${env} ({what}) has {len(value)} characters; use at least {MIN_TOKEN_CHARS} "
                            "random ones (control.tokens_file refuses shorter)")
    try:
        tokens = load_tokens(control, environ)
    except ValueError:  # build_app refuses the config with this error; no warning to add
        return warnings
    # QA's right needs no warning of its own: the operator's token pins too.
    for role in (Role.OPERATOR, *((Role.VIEWER,) if control.protect_reads else ())):
        if not any(t.role in _holders(role) for t in tokens):
            warnings.append(f"no token may {_what(role, verb=True)}, so every request for {_what(role)} is "
                            f"refused (set {_env_for(control, role)}, or list one in control.tokens_file)")
    return warnings


def _tokens_from_file(path: Path) -> list[NamedToken]:
    import yaml  # JSON is YAML too

    where = f"control.tokens_file ({str(path)!r})"
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: cannot read it: {err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: cannot read it: {_yaml_error_without_text(err)}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{where}: expected a list like [{{name: alice, role: operator, token: ...}}], "
                         f"got {type(entries).__name__}")
    tokens = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"name", "role", "token"}:
            # Never the entry itself: it may be a token.
            got = sorted(map(str, entry)) if isinstance(entry, dict) else f"a {type(entry).__name__}"
            raise ValueError(f"{where}: entry {index} must have exactly name, role and token; got {got}")
        if not isinstance(entry["name"], str) or not entry["name"].strip():
            raise ValueError(f"{where}: entry {index} needs a name that is non-empty text (the history records "
                             f"it); got {entry['name']!r}")
        # isinstance first: a list or mapping is unhashable, and the set lookup would raise TypeError.
        if not isinstance(entry["role"], str) or entry["role"] not in {r.value for r in Role}:
            raise ValueError(f"{where}: entry {index} ({entry['name']!r}) has role {entry['role']!r}; "
                             f"valid: {[r.value for r in Role]}")
        if not isinstance(entry["token"], str) or len(entry["token"]) < MIN_TOKEN_CHARS:
            raise ValueError(f"{where}: entry {index} ({entry['name']!r}): a token needs at least "
                             f"{MIN_TOKEN_CHARS} characters")
        tokens.append(NamedToken(str(entry["name"]), Role(entry["role"]), entry["token"]))
    return tokens


# A quoted stretch of the file in a YAML problem ("found undefined alias 'k3y...'", a tag's
# name): a token written there unquoted would be quoted back. One character ('{', 'q') is
# the syntax at fault and stays.
_QUOTED_TEXT = re.compile(r"'[^'\s]{2,}'|\"[^\"\s]{2,}\"")


def _yaml_error_without_text(err: Exception) -> str:
    """A YAML error as line, column and problem, never the file's text: PyYAML's own message
    quotes the lines around the fault, and in a tokens file those hold the tokens (a broken
    entry's error then printed its token into serve run's output and the replicas' logs)."""
    problem = getattr(err, "problem", None) or "not valid YAML"
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{at}{_QUOTED_TEXT.sub('<text not shown>', str(problem))} (the file's text is not quoted: it holds tokens)"


class ControlAuth:
    """Checks ``Authorization: Bearer <token>`` for a role."""

    def __init__(self, control: ControlConfig, tokens: list[NamedToken]):
        self.control = control
        self.tokens = tokens

    def check(self, authorization: str | None, address: str | None = None,
              role: Role = Role.OPERATOR) -> Actor:
        """Who is asking, if they may act as ``role``; else :class:`Unauthorized` (no or an
        unknown token) or :class:`Forbidden` (a token whose role does not allow it)."""
        if self.control.allow_unauthenticated:
            return Actor("anonymous", Role.OPERATOR.value, address)
        if not any(t.role in _holders(role) for t in self.tokens):
            raise Unauthorized(f"{_what(role)} is disabled: no token with that right is configured; set "
                               f"{_env_for(self.control, role)} in the app's environment (or list one in "
                               "control.tokens_file) and send it as 'Authorization: Bearer <token>'")
        scheme, _, given = (authorization or "").partition(" ")
        found = None
        if scheme.lower() == "bearer" and given:
            for token in self.tokens:
                # compare_digest: the time taken does not reveal how much of a token matched.
                if hmac.compare_digest(given.encode(), token.token.encode()):
                    found = token
        if found is None:
            raise Unauthorized(f"{_what(role)}: a bearer token is needed, and it was missing or wrong "
                               "(Authorization: Bearer <token>)")
        if role not in _GRANTS[found.role]:
            raise Forbidden(f"token {found.name!r} has role {found.role.value}, which may not "
                            f"{_what(role, verb=True)}; that needs {' or '.join(r.value for r in _holders(role))}")
        return Actor(found.name, found.role.value, address)


def _holders(role: Role) -> list[Role]:
    return [r for r, grants in _GRANTS.items() if role in grants]


def _what(role: Role, verb: bool = False) -> str:
    return {Role.OPERATOR: ("control actions", "act on the rollout"),
            Role.QA: ("pinning a version", "pin a version"),
            Role.VIEWER: ("reading this app's figures", "read this app's figures")}[role][verb]


def _env_for(control: ControlConfig, role: Role) -> str:
    return {Role.OPERATOR: control.token_env, Role.QA: f"{control.qa_token_env} or {control.token_env}",
            Role.VIEWER: f"{control.viewer_token_env} or {control.token_env}"}[role]
