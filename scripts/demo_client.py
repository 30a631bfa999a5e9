"""Talks to a running serve-ab app the three ways a user would, and shows where requests land.

    python scripts/demo_client.py --url http://127.0.0.1:8000 [--app digits-ab]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "models" / "digits" / "samples.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--app", default="digits-ab", help="Ray Serve application name")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--requests-per-user", type=int, default=4)
    args = parser.parse_args()
    samples = json.loads(SAMPLES.read_text())
    rows, labels = samples["inputs"], samples["labels"]
    client = httpx.Client(base_url=args.url, timeout=30)

    experiment = client.get("/experiment").json()
    print(f"experiment: model {experiment['model']}, placement {experiment['placement']}, "
          f"weights {experiment['weights_pct']}")

    print(f"\n1. HTTP: {args.users} users x {args.requests_per_user} requests to POST /predict")
    served_by: dict[str, set[str]] = defaultdict(set)
    counts: Counter[str] = Counter()
    correct: Counter[str] = Counter()
    for i in range(args.users * args.requests_per_user):
        user = f"user-{i % args.users}"
        sample = i % len(rows)
        response = client.post("/predict", json={"user_id": user, "inputs": [rows[sample]]})
        response.raise_for_status()
        version = response.headers["x-model-version"]
        served_by[user].add(version)
        counts[version] += 1
        correct[version] += int(np.argmax(response.json()["outputs"][0]) == labels[sample])
    total = sum(counts.values())
    for version in sorted(counts):
        bar = "#" * round(40 * counts[version] / total)
        print(f"   {version}: {counts[version]:4d} requests ({100 * counts[version] / total:5.1f}%) "
              f"{bar:40s} accuracy {correct[version] / counts[version]:.3f}")
    sticky = sum(len(v) == 1 for v in served_by.values())
    print(f"   sticky: {sticky}/{len(served_by)} users always got the same version")

    print("\n2. HTTP, pinned for QA with the x-serve-ab-version header (needs the QA or operator token):")
    token = os.environ.get("SERVE_AB_QA_TOKEN") or os.environ.get("SERVE_AB_CONTROL_TOKEN", "")
    for version in experiment["bucket_ranges"]:
        response = client.post("/predict", json={"inputs": [rows[0]]},
                               headers={"x-serve-ab-version": version, "authorization": f"Bearer {token}"})
        print(f"   asked {version} -> served by {response.json()['version']}")

    print("\n3. Open Inference Protocol (KServe V2): POST /v2/models/digits/infer")
    response = client.post("/v2/models/digits/infer", json={
        "id": "demo-1", "parameters": {"user_id": "user-1"},
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": rows[1]}],
    })
    body = response.json()
    print(f"   model_version {body['model_version']}, id {body['id']}, "
          f"predicted {int(np.argmax(body['outputs'][0]['data']))} (label {labels[1]})")

    print("\n4. Bad input gets a 4xx that names the problem:")
    response = client.post("/predict", json={"inputs": [[1.0, 2.0]]})
    print(f"   {response.status_code} {response.json()['error']}")

    print("\n5. Python, through a DeploymentHandle (as another Ray Serve app would):")
    import ray
    from ray import serve

    # "auto" finds the cluster that serve run started (demo.sh gives it a temp dir of its
    # own); with several clusters on one machine, set RAY_ADDRESS instead.
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    # Serve's handle logs its router's start at INFO in this process, amid the demo's lines.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    handle = serve.get_app_handle(args.app)
    result = handle.predict.remote(np.asarray(rows[:3], dtype=np.float32), key="user-7").result()
    print(f"   handle.predict.remote(batch of 3, key='user-7') -> version {result['version']}, "
          f"predicted {result['outputs'].argmax(axis=1).tolist()} (labels {labels[:3]})")


if __name__ == "__main__":
    main()
