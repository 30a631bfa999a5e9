"""The demo's copies of the shipped configs (scripts/demo_config.py): ports it found free, and a
state file of the demo's own for every app, so that a second demo starts a run of its own."""

from __future__ import annotations

import importlib.util
import re
import socket
from pathlib import Path

import pytest
import yaml

from serve_ab.config.experiment import parse_experiment

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_config():
    spec = importlib.util.spec_from_file_location("demo_config", REPO_ROOT / "scripts" / "demo_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def served_by_demo() -> list[str]:
    """The configs scripts/demo.sh starts."""
    return re.findall(r"start_serve (configs/\S+\.yaml)", (REPO_ROOT / "scripts" / "demo.sh").read_text())


def test_the_demo_serves_the_shipped_configs():
    assert served_by_demo() == ["configs/ab.yaml", "configs/canary.yaml", "configs/canary_v3.yaml",
                                "configs/ab_v3.yaml"]


@pytest.mark.parametrize("path", served_by_demo())
def test_every_app_gets_the_demos_ports_and_state_file(demo_config, tmp_path, path):
    shipped = yaml.safe_load((REPO_ROOT / path).read_text())
    state = str(tmp_path / "run.sqlite")
    config = demo_config.demo_config(shipped, 18123, 19123, state)
    assert config["http_options"] == {**shipped["http_options"], "port": 18123}
    if "grpc_options" in shipped:
        assert config["grpc_options"] == {**shipped["grpc_options"], "port": 19123}
    assert [app["name"] for app in config["applications"]] == [app["name"] for app in shipped["applications"]]
    for app, before in zip(config["applications"], shipped["applications"]):
        # configs/ab.yaml and ab_v3.yaml name no state_path: .serve-ab/state.sqlite, which a second
        # demo shared, carrying on the first one's run (its report counted both loads).
        assert app["args"]["controller"]["state_path"] == state
        assert {k: v for k, v in app["args"]["controller"].items() if k != "state_path"} == \
            {k: v for k, v in (before["args"].get("controller") or {}).items() if k != "state_path"}
        parse_experiment(app["args"])  # still an experiment serve run takes


def test_the_shipped_file_is_left_as_it_was(demo_config, tmp_path):
    shipped = yaml.safe_load((REPO_ROOT / "configs" / "ab.yaml").read_text())
    before = yaml.safe_dump(shipped)
    demo_config.demo_config(shipped, 18123, 19123, str(tmp_path / "s.sqlite"))
    assert yaml.safe_dump(shipped) == before


def test_the_command_line_writes_the_copy(demo_config, tmp_path):
    out = tmp_path / "ab.yaml"
    assert demo_config.main([str(REPO_ROOT / "configs" / "ab.yaml"), str(out), "--port", "18124",
                             "--grpc-port", "19124", "--state", str(tmp_path / "ab.sqlite")]) == 0
    written = yaml.safe_load(out.read_text())
    assert (written["http_options"]["port"], written["grpc_options"]["port"]) == (18124, 19124)
    assert written["applications"][0]["args"]["controller"] == {"state_path": str(tmp_path / "ab.sqlite")}


@pytest.mark.parametrize("host", ["127.0.0.1", "::"])
def test_a_free_port_is_kept_and_a_held_one_moved(demo_config, host):
    family = socket.AF_INET6 if host == "::" else socket.AF_INET
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(family) as held:
        held.bind((host, 0))
        held.listen()
        taken = held.getsockname()[1]
        moved = demo_config.free_port(taken, host)
        assert moved != taken
        with socket.socket(family) as server:  # a port a server can take
            server.bind((host, moved))
    assert demo_config.free_port(taken, host) == taken


def test_a_port_held_on_ipv4_is_moved_for_the_grpc_proxys_ipv6_listener(demo_config):
    # Ray's gRPC proxy listens on [::], which also takes IPv4: a service on 0.0.0.0:9000 makes
    # serve run fail with "Failed to bind to address [::]:9000".
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET) as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        taken = held.getsockname()[1]
        assert demo_config.free_port(taken, "::") != taken


def test_two_experiments_get_a_state_each_and_the_metrics_app_none(demo_config):
    app = {"import_path": "serve_ab.serving.app:build_app", "args": {"model": "digits"}}
    config = {"applications": [{**app, "name": "a"}, {**app, "name": "b"},
                               {"name": "m", "import_path": "serve_ab.serving.app:build_metrics_app",
                                "args": {"app": "a"}}]}
    config["applications"][1]["import_path"] = "serve_ab:build_app"  # the builder's other name
    out = demo_config.demo_config(config, 8000, 9000, "/tmp/demo/ab.sqlite")
    paths = [a["args"].get("controller", {}).get("state_path") for a in out["applications"]]
    assert paths == ["/tmp/demo/ab.a.sqlite", "/tmp/demo/ab.b.sqlite", None]
    assert out["applications"][2] == config["applications"][2]
