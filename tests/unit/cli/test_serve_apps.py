"""``--app NAME``: the app's URL from Ray's dashboard, against a fake dashboard answering a
recorded ``GET /api/serve/applications/``; and shell completion.

``data/serve_applications.json`` was made by Ray 2.60's own serializer
(``ServeInstanceDetails._get_user_facing_json_serializable_dict(exclude_unset=True)``, what the
dashboard answers) for a cluster with three applications: ``digits-canary`` at ``/``,
``digits-ab`` at ``/ab`` and ``batch-scorer`` without an HTTP route; proxies on every node,
``http_options: {host: 0.0.0.0, port: 8000}``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
from pathlib import Path

import pytest

import serve_ab.cli
from serve_ab.cli import command as cli
from serve_ab.cli.serve_apps import SERVE_APPS_PATH, app_url, default_address
from tests.support.fake_http import BrokenAnswer, FakeApp
from tests.unit.cli.control_api import CANARY, closed_port
from tests.unit.cli.control_api import run as _run

RECORDED = json.loads((Path(__file__).parent / "data" / "serve_applications.json").read_text())
DASHBOARD = "http://127.0.0.1:8265"


@pytest.fixture(scope="module")
def _dashboard_server():
    fake = FakeApp()
    yield fake
    fake.close()


@pytest.fixture
def dashboard(_dashboard_server, api, monkeypatch):
    """The fake dashboard, its proxy port pointing at the fake control API."""
    for name in ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    details = copy.deepcopy(RECORDED)
    details["http_options"]["port"] = int(api.url.rsplit(":", 1)[1])
    _dashboard_server.requests.clear()
    _dashboard_server.responses = {("GET", SERVE_APPS_PATH): (200, details)}
    api.responses[("GET", "/ab/rollout/status")] = (200, CANARY)
    return _dashboard_server


def test_the_recorded_answer_is_rays_own_schema():
    from ray.serve.schema import ServeInstanceDetails

    ServeInstanceDetails.model_validate(RECORDED)


# --- resolution (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize("name, address, url", [
    ("digits-canary", DASHBOARD, "http://127.0.0.1:8000"),
    ("digits-ab", DASHBOARD, "http://127.0.0.1:8000/ab"),
    # A port-forwarded dashboard: the proxy is forwarded the same way, not at the node IP Ray reports.
    ("digits-ab", "http://localhost:18265", "http://localhost:8000/ab"),
    ("digits-ab", "https://ray-head.internal", "http://ray-head.internal:8000/ab"),
    ("digits-ab", "http://[::1]:8265", "http://[::1]:8000/ab"),
])
def test_app_url_is_the_dashboards_host_the_proxy_port_and_the_route_prefix(name, address, url):
    assert app_url(RECORDED, name, address) == url


def test_app_url_follows_an_explicit_bind_address_root_path_and_tls():
    details = copy.deepcopy(RECORDED)
    details["http_options"] = {"host": "10.0.0.5", "port": 9000, "root_path": "/serve/",
                               "ssl_certfile": "/etc/tls/cert.pem", "ssl_keyfile": "/etc/tls/key.pem"}
    assert app_url(details, "digits-ab", "http://localhost:8265") == "https://10.0.0.5:9000/serve/ab"
    details["http_options"] = {"host": "127.0.0.1"}  # loopback-bound: reachable on the head node only
    assert app_url(details, "digits-ab", "http://ray-head:8265") == "http://ray-head:8000/ab"


def test_app_url_names_what_is_deployed_when_the_app_is_missing_or_has_no_route():
    with pytest.raises(LookupError, match=r"no Serve application named 'digits' at http://h:8265 \(deployed: "
                       r"batch-scorer, digits-ab, digits-canary\)"):
        app_url(RECORDED, "digits", "http://h:8265")
    with pytest.raises(LookupError, match="'batch-scorer' has no HTTP route"):
        app_url(RECORDED, "batch-scorer", "http://h:8265")
    with pytest.raises(LookupError, match=r"\(deployed: none\)"):
        app_url({"applications": {}}, "digits", "http://h:8265")


@pytest.mark.parametrize("env, address", [
    ({}, "http://127.0.0.1:8265"),
    ({"RAY_ADDRESS": "10.0.0.5:6379"}, "http://127.0.0.1:8265"),  # a GCS address, not the dashboard
    ({"RAY_ADDRESS": "http://head:8265/"}, "http://head:8265"),
    ({"RAY_ADDRESS": "http://head:8265", "RAY_DASHBOARD_ADDRESS": "http://dash:8265"}, "http://dash:8265"),
    ({"RAY_DASHBOARD_ADDRESS": "10.0.0.5:8265"}, "http://10.0.0.5:8265"),  # as Ray's job CLI takes it
])
def test_default_address_from_rays_environment(monkeypatch, env, address):
    for name in ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert default_address() == address


# --- the commands --------------------------------------------------------------------------


def test_status_app_asks_the_dashboard_then_the_app(dashboard, api, capsys):
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert code == 0, err
    assert dashboard.paths() == [SERVE_APPS_PATH]
    assert api.paths() == ["/ab/rollout/status"] and "canary: v1 -> v2" in out


def test_app_takes_the_dashboard_from_the_environment_and_beats_serve_ab_url(dashboard, api, capsys, monkeypatch):
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", dashboard.url)
    code, _, err = _run(["status", "--app", "digits-ab", "-o", "json"], capsys)
    assert code == 0, err
    assert api.paths() == ["/ab/rollout/status"]  # not $SERVE_AB_URL's /rollout/status


def test_report_takes_app_too(dashboard, api, capsys):
    code, _, err = _run(["status", "--app", "digits-canary", "--address", dashboard.url], capsys)
    assert code == 0 and api.paths() == ["/rollout/status"]
    from serve_ab.cli import report as report_cli

    parser = argparse.ArgumentParser(prog="serve-ab")
    report_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report", "--app", "digits-ab", "--address", dashboard.url])
    code = args.func(args, out=io.StringIO(), err=io.StringIO())
    assert code == 1 and api.paths()[-1] == "/ab/experiment/report"  # the fake app has no report


def test_unknown_app_and_unreachable_dashboard_exit_4(dashboard, api, capsys):
    code, out, err = _run(["status", "--app", "digits", "--address", dashboard.url, "--wait"], capsys)
    assert (code, out) == (4, "") and "no Serve application named 'digits'" in err and "digits-ab" in err
    address = f"http://127.0.0.1:{closed_port()}"
    code, out, err = _run(["status", "--app", "digits-ab", "--address", address], capsys)
    assert (code, out) == (4, "") and f"error: cannot reach Ray's dashboard at {address}" in err
    assert "--address" in err and api.requests == []


@pytest.mark.parametrize("argv, message", [
    (["status", "--app", "digits-ab", "--url", "http://x:1"], "argument --url: not allowed with argument --app"),
    (["status", "--address", "http://x:8265"], "argument --address: only applies with --app NAME"),
    (["status", "--app", "a", "--address", "head:8265"], "argument --address: 'head:8265' is not an http(s) URL"),
])
def test_app_usage_errors_exit_2(api, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        _run(argv, capsys)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- Ray's token authentication ------------------------------------------------------------


def _token_file(text: str, path: Path | None = None) -> Path:
    path = path or Path.home() / ".ray" / "auth_token"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_app_sends_rays_token_from_the_default_file_to_the_dashboard_only(dashboard, api, capsys):
    _token_file("tok-from-file\n")  # as `ray start` writes it, a newline or not
    code, _, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert code == 0, err
    assert dashboard.requests[0]["authorization"] == "Bearer tok-from-file"
    assert api.requests[0]["authorization"] is None  # the app never sees the cluster's token


@pytest.mark.parametrize("env, sent", [
    ({"RAY_AUTH_TOKEN": "tok-env", "RAY_AUTH_TOKEN_PATH": "PATHFILE"}, "Bearer tok-env"),
    ({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": "PATHFILE"}, "Bearer tok-path"),  # empty: not set, as in Ray
    ({"RAY_AUTH_TOKEN_PATH": "PATHFILE", "RAY_AUTH_MODE": "token"}, "Bearer tok-path"),
    ({}, "Bearer tok-home"),
    ({"RAY_AUTH_TOKEN": "tok-env", "RAY_AUTH_MODE": "disabled"}, None),
])
def test_the_token_is_found_where_ray_finds_it(dashboard, api, capsys, monkeypatch, tmp_path, env, sent):
    _token_file("tok-home")
    path_file = _token_file("  tok-path\n", tmp_path / "elsewhere" / "token")
    for name, value in env.items():
        monkeypatch.setenv(name, str(path_file) if value == "PATHFILE" else value)
    code, _, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert code == 0, err
    assert dashboard.requests[0]["authorization"] == sent


@pytest.mark.parametrize("content", [None, "\n"])
def test_an_unreadable_token_path_is_a_usage_error_and_nothing_is_sent(dashboard, api, capsys, monkeypatch,
                                                                       tmp_path, content):
    _token_file("tok-home")  # Ray does not fall back to it either
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert (code, out) == (2, "") and "Traceback" not in err
    assert f"error: $RAY_AUTH_TOKEN_PATH names '{path}', which" in err
    assert ("cannot be read (No such file or directory)" if content is None else "is empty") in err
    assert dashboard.requests == [] and api.requests == []


@pytest.mark.parametrize("where, named", [
    ("RAY_AUTH_TOKEN", "$RAY_AUTH_TOKEN"), ("RAY_AUTH_TOKEN_PATH", "the token in {path} ($RAY_AUTH_TOKEN_PATH)"),
    ("default file", "the token in {path}"),
])
@pytest.mark.parametrize("token, kind", [("tök-secret", "a non-ASCII character"),
                                         ("tok\rsecret", "a control character")])
def test_a_ray_token_that_cannot_go_in_a_header_is_a_usage_error_that_never_prints_it(
        dashboard, api, capsys, monkeypatch, tmp_path, where, named, token, kind):
    if where == "RAY_AUTH_TOKEN":
        monkeypatch.setenv(where, token)
    else:
        path = _token_file(token, tmp_path / "token" if where == "RAY_AUTH_TOKEN_PATH" else None)
        named = named.format(path=path)
        if where == "RAY_AUTH_TOKEN_PATH":
            monkeypatch.setenv(where, str(path))
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert (code, out) == (2, "") and "Traceback" not in err
    assert f"error: {named} holds a character that cannot go in an HTTP header ({kind}" in err
    assert "secret" not in err and dashboard.requests == [] and api.requests == []


def test_a_short_ray_token_is_hidden_without_garbling_the_dashboards_answer(dashboard, api, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "e")
    dashboard.responses = {("GET", SERVE_APPS_PATH): (403, b"Forbidden: token e is not valid")}
    code, _, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert code == 4 and "answered 403 to GET /api/serve/applications/: Forbidden: token *** is not valid" in err


def test_a_dashboard_asking_for_a_token_says_how_to_give_it(dashboard, api, capsys):
    dashboard.responses = {("GET", SERVE_APPS_PATH): (401, b"Unauthorized: Missing authentication token")}
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert (code, out) == (4, "")
    assert "answered 401 to GET /api/serve/applications/: Unauthorized: Missing authentication token" in err
    assert "token authentication on and none was found in $RAY_AUTH_TOKEN" in err
    assert "`ray get-auth-token`" in err and "export RAY_AUTH_TOKEN=<token>" in err
    assert dashboard.requests[0]["authorization"] is None and api.requests == []


def test_a_refused_token_is_named_by_its_source_never_printed(dashboard, api, capsys, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong-token")
    dashboard.responses = {("GET", SERVE_APPS_PATH): (403, b"Forbidden: Invalid authentication token wrong-token")}
    code, _, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert code == 4 and "refused the token from $RAY_AUTH_TOKEN" in err
    assert "wrong-token" not in err and "Invalid authentication token ***" in err


# --- URLs that are not URLs ------------------------------------------------------------------


@pytest.mark.parametrize("argv, env, message", [
    (["status", "--url", "http://256.0.0.1:8000"], {},
     ("argument --url: 'http://256.0.0.1:8000' is not a valid URL (Invalid IPv4 address: '256.0.0.1'); give the "
      "app's base URL, e.g. http://127.0.0.1:8000")),
    (["promote", "--url", "http://[::1:8000"], {},
     "argument --url: 'http://[::1:8000' is not a valid URL (its IPv6 address lacks the closing ']'"),
    (["status", "--url", "http://app:99999"], {}, "(port 99999 is outside 1-65535)"),
    (["status", "--url", "http://:8000"], {}, "(it has no host)"),
    (["status"], {"SERVE_AB_URL": "http://256.0.0.1:8000"}, "error: $SERVE_AB_URL: 'http://256.0.0.1:8000' is not"),
    (["status", "--app", "a", "--address", "http://256.0.0.1:8265"], {},
     ("argument --address: 'http://256.0.0.1:8265' is not a valid URL (Invalid IPv4 address: '256.0.0.1'); give "
      "Ray's dashboard, e.g. http://127.0.0.1:8265")),
    (["status", "--app", "a"], {"RAY_DASHBOARD_ADDRESS": "http://[::1:8265"},
     "error: $RAY_DASHBOARD_ADDRESS: 'http://[::1:8265' is not a valid URL"),
    (["status", "--app", "a"], {"RAY_ADDRESS": "http://256.0.0.1:8265"}, "error: $RAY_ADDRESS: 'http://256.0.0.1"),
    (["status", "--url", "http://ops:hunter2@256.0.0.1:8000"], {},
     "argument --url: 'http://ops:***@256.0.0.1:8000' is not a valid URL"),  # never the password
    (["status", "--url", "http://app:8000/#x"], {}, "'http://app:8000/#x' has a query or fragment"),
    (["status", "--url", "http://app:8000/ab?x=1"], {}, "'http://app:8000/ab?x=1' has a query or fragment"),
])
def test_an_invalid_url_is_a_usage_error_naming_it(api, capsys, monkeypatch, argv, env, message):
    for name in ("RAY_DASHBOARD_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        _run(argv, capsys)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
    assert api.requests == [] and "hunter2" not in err


def test_report_refuses_an_invalid_url_the_same_way(api, capsys, monkeypatch):
    from serve_ab.cli import report as report_cli

    monkeypatch.setenv("SERVE_AB_URL", "http://256.0.0.1:8000")
    parser = argparse.ArgumentParser(prog="serve-ab")
    report_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["report"])
    with pytest.raises(SystemExit) as exit_info:
        args.func(args)
    assert exit_info.value.code == 2 and "$SERVE_AB_URL: 'http://256.0.0.1:8000' is not a valid URL" in (
        capsys.readouterr().err)


def test_an_invalid_url_from_the_dashboards_answer_is_an_error_not_a_traceback(dashboard, api, capsys):
    details = copy.deepcopy(RECORDED)
    details["http_options"] = {"host": "256.0.0.1", "port": 8000}
    dashboard.responses = {("GET", SERVE_APPS_PATH): (200, details)}
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert (code, out) == (2, "") and "error: 'http://256.0.0.1:8000/ab' is not a valid URL" in err


def test_a_dashboard_answer_that_cannot_be_decoded_is_an_error_not_a_traceback(api, capsys):
    # A body that says it is gzip and is not (a broken proxy): httpx's DecodingError was uncaught.
    dashboard = BrokenAnswer("bad-gzip")
    try:
        code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    finally:
        dashboard.close()
    assert (code, out) == (4, "") and "Traceback" not in err, err
    assert err.startswith(f"error: Ray's dashboard at {dashboard.url} answered GET {SERVE_APPS_PATH} with a body "
                          "that cannot be decoded") and api.requests == []

@pytest.mark.parametrize("text, shown", [
    ("http://ops:p@ss@host:8000/x", "http://ops:***@host:8000/x"),   # an @ in the password
    ("'http://ops:pa\"ss@host' is not", "'http://ops:***@host' is not"),
    ("http://ops@host", "http://ops@host"),                           # a user, no password
    ("https://sso.example.com:8443?next=alice@corp.com", "https://sso.example.com:8443?next=alice@corp.com"),
    ("see http://a:b@x/y and http://c:d@z/", "see http://a:***@x/y and http://c:***@z/"),
])
def test_hide_url_passwords(text, shown):
    from serve_ab.cli.options import hide_url_passwords

    assert hide_url_passwords(text) == shown


def test_a_password_in_the_url_is_never_printed(capsys):
    url = f"http://ops:hunter2@127.0.0.1:{closed_port()}"
    code, out, err = _run(["status", "--url", url], capsys)
    assert (code, out) == (4, "") and "cannot reach http://ops:***@127.0.0.1:" in err and "hunter2" not in err


@pytest.mark.parametrize("details", [
    {"applications": [{"name": "digits-ab"}], "http_options": {}},   # a list of apps
    {"applications": {"digits-ab": None}, "http_options": {}},       # an app that is no object
    {"applications": {"digits-ab": {"route_prefix": "/ab"}}, "http_options": "8000"},
])
def test_a_dashboard_answer_of_another_shape_is_an_error_not_a_traceback(dashboard, api, capsys, details):
    dashboard.responses = {("GET", SERVE_APPS_PATH): (200, details)}
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert (code, out) == (4, "") and "of an unexpected shape" in err and "Traceback" not in err


def test_json_nested_past_the_recursion_limit_is_an_error_not_a_traceback(dashboard, api, capsys):
    deep = b"[" * 100_000 + b"]" * 100_000
    dashboard.responses = {("GET", SERVE_APPS_PATH): (200, deep)}
    code, out, err = _run(["status", "--app", "digits-ab", "--address", dashboard.url], capsys)
    assert (code, out) == (4, "") and "with a JSON object" in err
    api.responses[("GET", "/rollout/status")] = (200, deep)
    code, out, err = _run(["status"], capsys)
    assert (code, out) == (1, "") and "answered 200 but not with JSON" in err


@pytest.mark.parametrize("text", ["http://127.0.0.1:8000/", "https://ray-head.internal", "http://[::1]:8265",
                                  "http://localhost:1"])
def test_check_http_url_takes_urls_and_strips_the_trailing_slash(text):
    from serve_ab.cli.options import check_http_url

    assert check_http_url(text) == text.rstrip("/")


# --- help and completion -------------------------------------------------------------------


@pytest.fixture
def no_sample_size(monkeypatch):
    # The real sample-size parser imports statsmodels (seconds); its wiring has its own tests.
    monkeypatch.setattr(serve_ab.cli, "sample_size", argparse.Namespace(add_parser=lambda sub: None), raising=False)


def test_help_lists_the_exit_codes(no_sample_size, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "exit codes:" in out and "3  status --wait/--watch: timed out" in out and "4  the app" in out
    assert 'eval "$(serve-ab completion bash)"' in out


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shell_code(no_sample_size, capsys, shell):
    assert cli.main(["completion", shell]) == 0
    assert "serve-ab" in capsys.readouterr().out


def test_completion_completes_commands_and_flags(no_sample_size, monkeypatch):
    import argcomplete
    import argcomplete.io

    class Finder(argcomplete.CompletionFinder):
        def _init_debug_stream(self):  # argcomplete's own advice: its fd 9 is pytest's (faulthandler)
            argcomplete.io.debug_stream = io.StringIO()

    answers = []
    for line in ["serve-ab sta", "serve-ab status --wa", "serve-ab status -o "]:
        monkeypatch.setenv("_ARGCOMPLETE", "1")
        monkeypatch.setenv("COMP_LINE", line)
        monkeypatch.setenv("COMP_POINT", str(len(line)))
        stream = io.StringIO()
        Finder()(cli.make_parser(), output_stream=stream, exit_method=lambda code: None)
        answers.append({word.strip() for word in stream.getvalue().split("\013")})
    assert "status" in answers[0] and {"--wait", "--watch"} <= answers[1] and {"table", "json", "yaml"} <= answers[2]
