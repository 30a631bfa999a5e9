"""``python -m benchmarks.loadgen {run,serve,record} ...``: the load generator's process.

    python -m benchmarks.loadgen run --url http://127.0.0.1:PORT/plain --concurrency 8 --duration 5
    python -m benchmarks.loadgen serve      # JSON commands on stdin (see HttpLoad)
    python -m benchmarks.loadgen record --url http://127.0.0.1:PORT/digits --out load.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import percentile
from benchmarks.loadgen._http import http_closed_loop, run_async, serve_commands
from benchmarks.loadgen._records import DIGIT_ROW, record_main

DEFAULT_BODY = json.dumps({"inputs": [DIGIT_ROW], "user_id": "u-1"})


def run_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen run",
                                     description="One closed-loop run, printed as one JSON line.")
    parser.add_argument("--url", required=True, help="POST target, e.g. http://127.0.0.1:8123/plain")
    parser.add_argument("--body", default=DEFAULT_BODY, help="JSON body sent every time")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    args = parser.parse_args(argv)
    result = run_async(http_closed_loop(args.url, [args.body.encode()], args.concurrency,
                                   args.duration, args.warmup))
    latencies = result.pop("latencies_ms")
    if latencies:
        result["p50_ms"] = percentile(latencies, 0.5)
        result["p99_ms"] = percentile(latencies, 0.99)
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    modes = {"run": run_main, "serve": lambda rest: serve_commands() or 0, "record": record_main}
    if not argv or argv[0] not in modes:
        print(f"usage: python -m benchmarks.loadgen {{{','.join(modes)}}} [--help]\n{__doc__}",
              file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return modes[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
