"""One real Ray Serve instance for the whole integration session, on a port of its own."""

from __future__ import annotations

import errno
import os
import random
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

DIGIT_ROW = [float(i % 16) for i in range(64)]
# The control API's bearer token, given to every replica through the job's environment.
CONTROL_TOKEN = "integration-test-token"
AUTH = {"authorization": f"Bearer {CONTROL_TOKEN}"}


# Ports are picked below the kernel's ephemeral range, above Ray's worker ports (10002-19999
# by default). A port the kernel handed out (bind to port 0) and that is free now can become
# any later process's own: `serve run` starts a dozen Ray processes, each binding port 0,
# before its proxy binds the ports of the config, and a full-suite run saw the proxy fail with
# "Failed to bind to address [::]:44669" and the test wait out its 240 s.
PORTS_FROM = 20000
_picked: set[int] = set()
_random = random.Random()  # seeded from the OS: parallel sessions do not pick alike


def free_port() -> int:
    """A port nothing listens on, on IPv4 and IPv6 alike (gRPC binds [::]), never given twice
    in this session."""
    top = _ephemeral_from() - 1
    if top <= PORTS_FROM:  # an unusual kernel setting: fall back to what the kernel hands out
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    for _ in range(1000):
        port = _random.randint(PORTS_FROM, top)
        if port not in _picked and _bindable(port):
            _picked.add(port)
            return port
    raise RuntimeError(f"no free port in {PORTS_FROM}-{top} after 1000 tries")


def _ephemeral_from() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    """Whether a server could listen on ``port`` now (with SO_REUSEADDR, as servers set it)."""
    families = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if socket.has_ipv6 else [])
    for family, host in families:
        try:
            with socket.socket(family) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as err:
            if family == socket.AF_INET6 and err.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue  # no IPv6 on this machine: IPv4 decides
            return False
    return True


@dataclass
class ServeInstance:
    port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="session")
def serve_instance(model_repo):
    import ray
    from ray import serve

    # Logical CPUs: the replicas reserve fractions of them; the machine has 2 real cores.
    # The token reaches the replicas as a user's does: in the environment Ray starts from.
    # Not through runtime_env env_vars, which Ray writes in clear to runtime_env_agent.log.
    os.environ["SERVE_AB_CONTROL_TOKEN"] = CONTROL_TOKEN
    # num_gpus=0: the same cluster on a machine with a GPU, for the GPU-fallback test.
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeInstance(port=port)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture
def deployed(serve_instance):
    """Deploys an experiment as the app ``name`` (route ``/name``) and returns the name; the
    apps are deleted after the test."""
    from ray import serve

    from serve_ab import build_app

    names = []

    def deploy(cfg, name):
        serve.run(build_app(cfg), name=name, route_prefix=f"/{name}")
        names.append(name)
        return name

    yield deploy
    for name in names:
        serve.delete(name)


@pytest.fixture(scope="session")
def http():
    with httpx.Client(timeout=30.0) as client:
        yield client


def experiment(model_repo, **changes) -> dict:
    """The example A/B experiment over v1 (onnx) and v2 (torch), with changes."""
    cfg = {
        "model": "digits",
        "versions": [
            {"name": "v1", "path": str(model_repo / "digits/v1/model.onnx"), "backend": "onnx"},
            {"name": "v2", "path": str(model_repo / "digits/v2/model.pt2"), "backend": "torch"},
        ],
        "weights": {"v1": 50, "v2": 50},
        "assignment": {"key": "json", "field": "user_id", "salt": "it"},
        "router": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}},
        "http": {"max_body_bytes": 8192},
        # Pinning is off by default; the tests pin with the operator token (QA's would do too).
        "pin": {"enabled": True},
        # Run records of test apps stay out of the repository's .serve-ab/.
        "analysis": {"records": {"path": os.path.join(tempfile.gettempdir(), "serve-ab-tests", "runs.sqlite")}},
    }
    if "controller" not in changes:
        # A state store per experiment: the session's apps run side by side, and two running
        # apps serving one model from one store are refused (serve_ab/store/claim.py).
        cfg["controller"] = {"state_path": str(Path(tempfile.mkdtemp(prefix="serve-ab-it-")) / "state.sqlite")}
    cfg.update(changes)
    return cfg


def router_log_lines(app: str) -> list[str]:
    """Every line the Router replicas of ``app`` wrote to their log files in this Ray session."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return [line for path in logs.glob(f"replica_{app}_Router_*.log")
            for line in path.read_text(errors="replace").splitlines()]
