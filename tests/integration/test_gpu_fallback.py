"""configs/gpu_shared.yaml with ``resources_missing: cpu`` on a cluster without GPUs: both
versions run on the CPU and serve their share (the failing variant is tests/e2e/test_gpu_config.py,
through serve run). The session's Ray is started with no GPU (conftest), on any machine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import ray
import yaml

from tests.conftest import REPO_ROOT
from tests.integration.conftest import DIGIT_ROW
from tests.support.polling import wait_for


def replica_logs(app: str, deployment: str) -> str:
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(p.read_text(errors="replace") for p in logs.glob(f"replica_{app}_{deployment}_*.log"))


def test_gpu_config_with_resources_missing_cpu_serves_on_the_cpu(http, serve_instance, deployed, model_repo, tmp_path):
    assert ray.cluster_resources().get("GPU", 0) == 0
    args = yaml.safe_load((REPO_ROOT / "configs" / "gpu_shared.yaml").read_text())["applications"][0]["args"]
    args["resources_missing"] = "cpu"
    for version in args["versions"]:
        version["path"] = str(model_repo / version["path"].removeprefix("models/"))
        version["deployment"]["ray_actor_options"]["num_cpus"] = 0.1
    args["router"]["ray_actor_options"]["num_cpus"] = 0.1
    args["controller"] = {"state_path": str(tmp_path / "state.sqlite")}
    app = deployed(args, "gpufallback")
    seen: Counter[str] = Counter()
    for i in range(40):
        response = http.post(serve_instance.url(f"/{app}/predict"),
                             json={"user_id": f"gpu-user-{i}", "inputs": [DIGIT_ROW]})
        assert response.status_code == 200, response.text
        assert len(response.json()["outputs"][0]) == 10
        seen[response.json()["version"]] += 1
    print(f"\ngpu_shared.yaml with resources_missing: cpu: 40 requests by version {dict(seen)}")
    assert set(seen) == {"v1", "v2"}, seen
    wait_for(lambda: "serve-ab loaded version v1 (onnx on cpu)" in replica_logs(app, "version-v1"),
             "v1's replica to log that it runs on the CPU", timeout_s=30)
    wait_for(lambda: "serve-ab loaded version v2 (torch on cpu)" in replica_logs(app, "version-v2"),
             "v2's replica to log that it runs on the CPU", timeout_s=30)
