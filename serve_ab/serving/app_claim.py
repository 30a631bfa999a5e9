"""What :mod:`serve_ab.store.claim` asks of Ray: who this replica's app is, and whether
another app is running on this cluster."""

from __future__ import annotations

import ray
from ray import serve

from serve_ab.store.claim import Claimant


def this_app() -> Claimant:
    """This replica's app, on this cluster (named by its GCS address)."""
    context = serve.get_replica_context()
    return Claimant(app=context.app_name, cluster=str(ray.get_runtime_context().gcs_address),
                    replica=str(context.replica_tag))


def app_running(name: str) -> bool:
    """Whether Serve on this cluster has an app ``name`` that is not being deleted. One call
    to Serve's controller: made only when another app's claim is found."""
    from ray.serve.schema import ApplicationStatus

    app = serve.status().applications.get(name)
    return app is not None and app.status != ApplicationStatus.DELETING
