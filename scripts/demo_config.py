"""The demo's copy of a shipped config: the ports it found free and a state file of its own.

    python scripts/demo_config.py --free-port 8000 127.0.0.1      # 8000, or a free port if it is held
    python scripts/demo_config.py configs/ab.yaml OUT.yaml --port 8000 --grpc-port 9000 --state DIR/ab.sqlite

Each experiment's ``controller.state_path`` is set whether or not the config names one: an app
whose config leaves it unset keeps its run in ``.serve-ab/state.sqlite``, and a second demo (or
the user's own ``serve run`` of the same file) would carry on that run, its figures added to
the first's. ``grpc_options.port`` moves like the HTTP port: Ray's gRPC proxy that cannot bind it
fails ``serve run`` with a traceback.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from serve_ab.config.serve_file import APP_BUILDERS, AppKind


def free_port(preferred: int, host: str) -> int:
    """``preferred`` when a server could listen on it at ``host``, else a port the OS finds free
    there. ``::`` (where Ray's gRPC proxy listens) checks IPv4 too, as a server there takes
    both; without IPv6, ``0.0.0.0`` is checked instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if family == socket.AF_INET6 and not _ipv6_works():
        family, host = socket.AF_INET, "0.0.0.0"
    try:
        with socket.socket(family) as probe:
            probe.bind((host, preferred))
        return preferred
    except OSError:
        with socket.socket(family) as other:
            other.bind((host, 0))
            return other.getsockname()[1]


def _ipv6_works() -> bool:
    """``socket.has_ipv6`` says Python was built with IPv6; a kernel with it turned off still
    refuses the socket (Ray then listens on IPv4)."""
    if not socket.has_ipv6:
        return False
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        return False
    return True


def demo_config(config: dict[str, Any], port: int, grpc_port: int, state_path: str) -> dict[str, Any]:
    """``config`` (a Ray Serve config file's contents) with ``http_options.port`` ``port``,
    ``grpc_options.port`` ``grpc_port`` (where it serves gRPC) and every experiment's
    ``controller.state_path`` ``state_path`` (the app's other controller settings kept). Two
    experiments in one file each get their own (the app's name added): apps sharing one state
    are refused. Other apps (the metrics app) take no controller settings."""
    out = dict(config)
    out["http_options"] = {**(config.get("http_options") or {}), "port": port}
    if config.get("grpc_options") is not None:
        out["grpc_options"] = {**config["grpc_options"], "port": grpc_port}
    experiments = [app for app in config.get("applications") or () if _is_experiment(app)]
    apps = []
    for app in config.get("applications") or ():
        if not _is_experiment(app):
            apps.append(app)
            continue
        path = state_path if len(experiments) == 1 else str(Path(state_path).with_suffix(f".{app['name']}.sqlite"))
        args = dict(app.get("args") or {})
        args["controller"] = {**(args.get("controller") or {}), "state_path": path}
        apps.append({**app, "args": args})
    out["applications"] = apps
    return out


def _is_experiment(app: dict[str, Any]) -> bool:
    return APP_BUILDERS.get(str(app.get("import_path"))) is AppKind.EXPERIMENT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--free-port", nargs=2, metavar=("PORT", "HOST"),
                        help="print PORT if it is free on HOST, else a free port, and exit")
    parser.add_argument("config", nargs="?", type=Path)
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--port", type=int)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--state")
    args = parser.parse_args(argv)
    if args.free_port is not None:
        print(free_port(int(args.free_port[0]), args.free_port[1]))
        return 0
    if None in (args.config, args.out, args.port, args.grpc_port, args.state):
        parser.error("give CONFIG OUT --port --grpc-port --state, or --free-port PORT HOST")
    config = yaml.safe_load(args.config.read_text())
    args.out.write_text(yaml.safe_dump(demo_config(config, args.port, args.grpc_port, args.state), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
