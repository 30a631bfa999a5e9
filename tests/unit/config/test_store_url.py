"""controller.store_url: which URLs are valid, what a bad one's error says, and that a
password never appears in an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_ab.config.experiment import ConfigError, parse_experiment
from serve_ab.serving.app import resolve_model_paths
from serve_ab.store.url import parse_store_url, redact_url


def experiment(**controller):
    return {"model": "digits", "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx"}],
            "weights": {"v1": 100}, "controller": controller}


def errors_of(**controller) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_experiment(experiment(**controller))
    return err.value.errors


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://redis.internal:6380/2", ("redis", "redis.internal", 6380, 2, None)),
    ("redis://redis.internal", ("redis", "redis.internal", 6379, 0, None)),
    ("rediss://user:p%40ss@h:6380/0", ("rediss", "h", 6380, 0, "p@ss")),
])
def test_redis_urls(url, expected):
    parsed = parse_store_url(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.db, parsed.password) == expected
    assert parse_experiment(experiment(store_url=url)).controller.store_url == url


def test_a_sqlite_url_is_state_path_spelled_otherwise():
    cfg = parse_experiment(experiment(store_url="sqlite:///.serve-ab/other.sqlite")).controller
    assert (cfg.store_url, cfg.state_path) == (None, ".serve-ab/other.sqlite")
    assert parse_experiment(experiment(store_url="sqlite:////var/lib/s.sqlite")).controller.state_path == \
        "/var/lib/s.sqlite"


def test_a_relative_sqlite_url_resolves_against_serve_runs_directory(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"")
    cfg = parse_experiment(experiment(store_url="sqlite:///state/s.sqlite"))
    resolved = resolve_model_paths(cfg, base_dir=tmp_path)
    assert resolved.controller.state_path == str((tmp_path / "state/s.sqlite").resolve())
    # What the controller receives (the config as JSON) parses again to the same store.
    again = parse_experiment(resolved.model_dump(mode="json")).controller
    assert (again.store_url, again.state_path) == (None, str((tmp_path / "state/s.sqlite").resolve()))


@pytest.mark.parametrize(("url", "says"), [
    ("postgres://db/x", "has scheme 'postgres'; serve-ab stores are sqlite, redis and rediss"),
    ("sqlite://relative.sqlite", "a SQLite URL is sqlite:/// followed by the file's path"),
    ("redis://:6379/0", "names no host"),
    ("redis://h:6379/zero", "the database after the host must be a number"),
    ("redis://h:port/0", "cannot be read"),
    ("redis://h/0?ssl=true", "has a query or fragment"),
])
def test_a_bad_url_names_the_field_the_value_and_what_is_valid(url, says):
    [error] = errors_of(store_url=url)
    assert error.startswith("controller.store_url: ") and says in error and repr(url) in error


def test_a_password_is_never_in_an_error():
    [error] = errors_of(store_url="redis://admin:hunter2@h:bad/0")
    assert "hunter2" not in error and "redis://admin:***@h:bad/0" in error
    assert redact_url("rediss://:hunter2@h/0") == "rediss://:***@h/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_password_with_a_bare_at_sign_is_masked_whole():
    # The store reads the password up to the authority's last @ (urlsplit's rpartition) and
    # accepts it; the mask stopped at the first @ and showed the rest of it in every log line,
    # error and run record ('redis://app:***@t-pw@redis:6379/0').
    url = "redis://app:s3cr@t-pw@redis:6379/0"
    assert parse_store_url(url).password == "s3cr@t-pw"
    assert redact_url(url) == "redis://app:***@redis:6379/0"
    [error] = errors_of(store_url="redis://app:s3cr@t-pw@h:bad/0")
    assert "t-pw" not in error and "redis://app:***@h:bad/0" in error


def test_an_at_sign_in_a_query_is_no_user_information():
    # A webhook URL with no path before its query: the @ is the query's, the host and port stay.
    url = "https://alerts.example.com:8443?to=ops@example.com"
    assert redact_url(url) == url
    assert redact_url("https://ops:pw@alerts.example.com:8443?to=ops@example.com") == \
        "https://ops:***@alerts.example.com:8443?to=ops@example.com"


def test_store_password_env_needs_redis_and_excludes_a_password_in_the_url():
    assert "only read with a redis store_url" in errors_of(store_password_env="REDIS_PASSWORD")[0]
    [error] = errors_of(store_url="redis://:pw@h/0", store_password_env="REDIS_PASSWORD")
    assert "keep one" in error and ":pw@" not in error
    assert errors_of(store_url="redis://h/0", store_password_env="not a name")[0].startswith(
        "controller.store_password_env:")


def test_two_sqlite_files_are_refused():
    [error] = errors_of(store_url="sqlite:///a.sqlite", state_path="b.sqlite")
    assert "name two SQLite files" in error


def test_configs_without_store_url_keep_the_state_path_default():
    cfg = parse_experiment(experiment()).controller
    assert (cfg.store_url, Path(cfg.state_path)) == (None, Path(".serve-ab/state.sqlite"))


def test_validate_warns_when_a_multi_node_config_keeps_state_in_sqlite(tmp_path, capsys):
    import yaml

    from serve_ab.cli.command import main as cli_main

    isolated = {**experiment(), "placement": "isolated"}
    isolated["versions"][0]["deployment"] = {"ray_actor_options": {"num_gpus": 0.5}}
    (tmp_path / "isolated.yaml").write_text(yaml.safe_dump(isolated))
    replicas = {**experiment(), "router": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}}}
    (tmp_path / "replicas.yaml").write_text(yaml.safe_dump(replicas))
    shared = {**isolated, "controller": {"store_url": "redis://redis.internal:6379/0"}}
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump(shared))
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(experiment()))
    files = [str(tmp_path / f) for f in ("isolated.yaml", "replicas.yaml", "shared.yaml", "one.yaml")]
    assert cli_main(["validate", "--no-check-files", *files]) == 0  # a warning leaves the exit status
    out = capsys.readouterr().out
    assert out.count("warning: controller: rollout state is kept in a SQLite file") == 2
    assert "(placement is isolated, it asks for GPUs)" in out
    assert "(the router has more than one replica)" in out
    assert "set controller.store_url: redis://HOST:6379/0" in out
    assert out.count(": ok") == 4


def test_port_0_is_refused_not_read_as_the_default_port():
    [error] = errors_of(store_url="redis://redis:0/0")
    assert error == ("controller.store_url: store URL 'redis://redis:0/0' has port 0; give the port Redis "
                     "listens on (1-65535) or leave it out for 6379, e.g. redis://redis.internal:6379/0 "
                     "(got 'redis://redis:0/0')")
    [error] = errors_of(store_url="rediss://admin:hunter2@redis:0/0")
    assert "has port 0" in error and "hunter2" not in error
    assert parse_experiment(experiment(store_url="redis://redis/0")).controller.store_url == "redis://redis/0"
    # The CLI's --store reads URLs with the same parser.
    with pytest.raises(ValueError, match="'redis://redis:0/0' has port 0"):
        parse_store_url("redis://redis:0/0")


@pytest.mark.parametrize("url", ["redis://h:99999/0", "rediss://h/0#x"])
def test_a_bad_redis_url_is_told_the_redis_form_not_every_store(url):
    with pytest.raises(ValueError) as err:
        parse_store_url(url)
    assert "valid: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] or rediss:// (TLS)" in str(err.value)
    assert "sqlite" not in str(err.value)


def test_validate_warns_of_a_canary_step_too_small_for_its_gates_to_judge_users(tmp_path, capsys):
    """0.1% of 10,000 buckets is 10: its users fall in fewer than 20 groups, each of which the
    gates count as one unit, so the step would hold; 0.2% (20 buckets) is enough."""
    import yaml

    from serve_ab.cli.command import main as cli_main

    def canary(*weights, gates=({"metric": "error_rate", "max": 0.01},)):
        steps = [step for w in weights for step in ({"set_weight": w}, {"pause": {"duration": "1m"}})]
        versions = [{"name": v, "path": f"{v}.onnx", "backend": "onnx"} for v in ("v1", "v2")]
        return {"model": "digits", "versions": versions, "weights": {"v1": 100},
                "rollout": {"strategy": "canary", "stable": "v1", "candidate": "v2", "gates": list(gates),
                            "steps": steps + [{"set_weight": 100}]}}

    files = {"small.yaml": canary(0.1, 5), "enough.yaml": canary(0.2, 5),
             "webhook_only.yaml": canary(0.1, gates=({"metric": "webhook", "url": "http://gate.internal/check"},)),
             "drift.yaml": canary(0.05, gates=({"metric": "drift_ks", "max": 0.1},))}
    for name, config in files.items():
        (tmp_path / name).write_text(yaml.safe_dump(config))
    assert cli_main(["validate", "--no-check-files", *(str(tmp_path / n) for n in files)]) == 0
    out = capsys.readouterr().out
    assert out.count("warning: rollout.steps[0]: set_weight 0.1 gives the candidate 10 of 10,000 buckets") == 1
    assert "fewer than 20 groups" in out and "set_weight 0.2 or more" in out
    assert "error_rate <= 0.01 can seldom pass there, and the step is likely to hold until analysis.progress_" in out
    # A drift gate is a harm detector: on one unit per group it does not hold, it goes blind.
    assert "set_weight 0.05 gives the candidate 5 of 10,000 buckets" in out
    assert "drift_ks <= 0.1 see too little there to fail, even on a real shift" in out
    assert out.count("warning:") == 2 and out.count(": ok") == 4
