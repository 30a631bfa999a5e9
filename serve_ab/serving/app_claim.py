"""What :mod:`serve_ab.store.claim` asks of Ray: who this replica's app is, and whether
another app is running on this cluster."""

from __future__ import annotations

import ray
from ray import serve

from serve_ab.store.claim import Claimant


def cluster_id() -> str:
    """This Ray cluster's id: the same in every process of the cluster, whatever address a
    node joined by (a head's service name and its IP are two GCS address strings)."""
    try:
        return ray._private.worker.global_worker.current_cluster_and_job[0].hex()
    except Exception:  # Ray's private attribute moved: the address tells clusters apart too
        return str(ray.get_runtime_context().gcs_address)


def this_app() -> Claimant:
    """This replica's app, on this cluster."""
    context = serve.get_replica_context()
    return Claimant(app=context.app_name, cluster=cluster_id(), replica=str(context.replica_tag))


def app_running(name: str) -> bool:
    """Whether Serve on this cluster runs an app ``name`` as deployed: RUNNING or UNHEALTHY.
    One being deployed, deleted or failed may be handing its model over (a rename, a config
    that moves the model to another app) and is waited for instead. One call to Serve's
    controller: made only when another app's claim is found."""
    from ray.serve.schema import ApplicationStatus

    app = serve.status().applications.get(name)
    return app is not None and app.status in (ApplicationStatus.RUNNING, ApplicationStatus.UNHEALTHY)
