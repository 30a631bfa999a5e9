"""The Ray instance and Serve proxy the benchmarks run on.

A script run by itself starts one of its own (``with cluster() as c: run(c, args)``);
``benchmarks.run_all`` starts one and hands it to every part in turn, so Ray and Serve start once
and not once per part. Either way each part deploys its own apps and deletes them when it
ends (:func:`deployed`), also on errors, and measures only once every other app is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import MODELS, REPO

#: Apps deployed() has asked Serve to delete (their status may read RUNNING for a moment).
DELETED_APPS: set[str] = set()
TOKEN_ENV = "SERVE_AB_CONTROL_TOKEN"


@dataclass(frozen=True)
class Cluster:
    port: int           # Serve's HTTP proxy, on 127.0.0.1
    session_dir: Path   # Ray's session folder (replica logs are under logs/serve)
    token: str          # the control token the replicas read from TOKEN_ENV
    grpc_port: int | None = None  # Serve's gRPC proxy, where the cluster was started with one

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def missing_models(*files: str) -> str | None:
    """A message naming the example model files (under models/digits) that are not built."""
    missing = [f for f in files if not (MODELS / f).is_file()]
    if missing:
        return f"the example models {missing} are missing: run python models/build.py"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: The Open Inference Protocol's gRPC service, as serve-ab registers it with Serve's gRPC proxy.
GRPC_SERVICER = "serve_ab.api.grpc.servicer.add_GRPCInferenceServiceServicer_to_server"


def grpc_options() -> dict[str, Any]:
    """Serve's gRPC proxy on a free port, serving the Open Inference Protocol's service
    (``benchmarks.bench_grpc``). Ray binds it on every interface (``[::]``; Serve has no host
    for gRPC), where the HTTP proxy here listens on 127.0.0.1 only."""
    return {"port": free_port(), "grpc_servicer_functions": [GRPC_SERVICER]}


@contextlib.contextmanager
def cluster(num_cpus: int = 8, grpc_options: dict[str, Any] | None = None) -> Iterator[Cluster]:
    """A Ray instance of our own (no dashboard) and Serve's proxy on a free port (never 8000).

    ``num_cpus`` is logical: every replica reserves a share, while the real cores are
    shared by all replicas, the proxy and the load generator alike. ``grpc_options``
    (:func:`grpc_options`): Serve's gRPC proxy too, in the same proxy process as HTTP
    (``benchmarks.bench_grpc``); without them it does not run. The proxy is ready only once
    both servers are, so a gRPC proxy that cannot start fails HTTP's too.
    """
    import ray
    from ray import serve

    # The control token reaches the replicas through the environment Ray starts from:
    # runtime_env would write it into Serve's logged config.
    token = secrets.token_urlsafe(24)
    previous_token = os.environ.get(TOKEN_ENV)
    os.environ[TOKEN_ENV] = token
    # Replicas import benchmarks.baselines from the repository, whatever directory we started in.
    python_path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    try:
        context = ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                           runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0",
                                                     "PYTHONPATH": python_path}})
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port}, grpc_options=grpc_options)
        yield Cluster(port=port, session_dir=Path(context.address_info["session_dir"]), token=token,
                      grpc_port=(grpc_options or {}).get("port"))
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if previous_token is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = previous_token


@contextlib.contextmanager
def deployed(targets: list, others_gone_within_s: float = 120.0) -> Iterator[None]:
    """Deploy these ``serve.RunTarget`` apps side by side; delete them when the block ends.

    Deleting takes seconds (replicas drain, the controller waits out the routers' long
    polls), so it is not waited for here: the next part's apps deploy meanwhile, and before
    the block's body runs, any other app still in Serve must be gone. Measurements thus
    always run on a Serve holding only the apps they measure.
    """
    from ray import serve

    names = [target.name for target in targets]
    try:
        # All at once: their replicas start side by side, which on a small machine is faster.
        serve.run_many(targets)
        waited_from = time.monotonic()
        while others := [app for app in serve.status().applications if app not in names]:
            if time.monotonic() - waited_from > others_gone_within_s:
                raise RuntimeError(f"apps {others} were still in Serve {others_gone_within_s:g} s "
                                   f"after deploying {names}; they would share the machine")
            time.sleep(0.2)
        if time.monotonic() - waited_from > 0.5:
            print(f"waited {time.monotonic() - waited_from:.1f} s for the apps deleted before to go",
                  file=sys.stderr, flush=True)
        yield
    finally:
        for name in names:
            try:
                serve.delete(name, _blocking=False)
                DELETED_APPS.add(name)
            except Exception as err:  # noqa: BLE001 - Serve itself may be down; say so, go on
                print(f"could not delete app {name}: {type(err).__name__}: {err}",
                      file=sys.stderr, flush=True)


def run_standalone(run: Callable[[Cluster, Any], dict[str, Any]], args: Any, *model_files: str,
                   num_cpus: int = 4, grpc_options: dict[str, Any] | None = None) -> int:
    """A part run by itself: check its models, start a cluster of its own, print its JSON."""
    missing = missing_models(*model_files)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    with cluster(num_cpus=num_cpus, grpc_options=grpc_options) as c:
        report = run(c, args)
    print(json.dumps(report))
    return 0
