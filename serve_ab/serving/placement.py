"""Fit an experiment's resource requests to the cluster it is deployed on.

Ray places a replica that asks for resources no node has by waiting for them, without an
error: a GPU version deployed on a CPU-only cluster, a replica asking for more CPUs than any
node has, or for a custom resource (``accel_a``) no node was started with, leaves ``serve
run`` waiting forever.
:func:`apply_resource_policy` looks first and refuses with a line naming the field, or,
with ``resources_missing: cpu``, runs the GPU versions that do not fit on the CPU. It is
pure: the cluster's resources are its arguments; :func:`fit_to_cluster` reads them from Ray.

Only what can never be placed is refused: one replica asking for more than any node has,
or the replicas started at deploy time asking for more than the whole cluster. Replicas
an autoscaler may add later (up to ``max_replicas``) can wait for resources; that is
logged, not refused. The check sees the nodes that are up: on a cluster whose autoscaler
starts GPU nodes on demand, keep one such node up (or use ``resources_missing: cpu``). CPUs
are also checked against the node types the autoscaler publishes (KubeRay), and not at all
while no node has a CPU (a head with num_cpus 0 and workers scaled from zero).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serve_ab.config.experiment import (
    ConfigError,
    DeploymentOptions,
    VersionDeploymentOptions,
    ExperimentConfig,
    Placement,
)

__all__ = ["apply_resource_policy", "autoscaler_node_types", "cluster_resources", "fit_to_cluster", "node_resources"]

logger = logging.getLogger("ray.serve")

# Ray keeps resource amounts to 1/10000 of a unit; anything finer is rounding noise.
_EPS = 1e-6
_WAYS_OUT = ("set resources_missing: cpu to run it on the CPU instead, "
             "or add a node with a GPU to the cluster")


@dataclass(frozen=True)
class _Request:
    """What one deployment's replicas reserve, and where the config says so."""

    owner: str                   # "version 'v2'" or "the router"
    path: str                    # field path of its ray_actor_options
    options: DeploymentOptions
    versions: tuple[int, ...]    # indexes of the versions whose models run in these replicas
    is_router: bool

    @property
    def num_gpus(self) -> float:
        return self.options.ray_actor_options.num_gpus

    @property
    def resources(self) -> Mapping[str, float]:
        return self.options.ray_actor_options.resources

    @property
    def replicas_at_deploy(self) -> int:
        scaling = self.options.autoscaling_config
        if scaling is None:
            return self.options.num_replicas or 1
        return scaling.initial_replicas if scaling.initial_replicas is not None else scaling.min_replicas

    @property
    def replicas_at_most(self) -> int:
        scaling = self.options.autoscaling_config
        return self.replicas_at_deploy if scaling is None else max(scaling.max_replicas, self.replicas_at_deploy)


def _requests(cfg: ExperimentConfig) -> list[_Request]:
    """The router's request, and in isolated placement each version's, in listing order."""
    if cfg.placement is Placement.COLOCATED:
        return [_Request("the router (it holds every version)", "router.ray_actor_options", cfg.router,
                         tuple(range(len(cfg.versions))), is_router=True)]
    versions = [
        _Request(f"version {v.name!r}", f"versions.{i}.deployment.ray_actor_options",
                 v.deployment or VersionDeploymentOptions(), (i,), is_router=False)
        for i, v in enumerate(cfg.versions)
    ]
    return [*versions, _Request("the router", "router.ray_actor_options", cfg.router, (), is_router=True)]


def _fmt(amount: float) -> str:
    return f"{amount:g}"


def _gpus(amount: float) -> str:
    return f"{amount:g} GPU{'s' * (amount > 1)}"


def _gpus_needed(requests: Sequence[tuple[float, int]]) -> float:
    """GPUs that hold ``replicas`` replicas of each ``num_gpus``, packed first-fit, largest first.

    The sum is not enough: Ray places a fraction within one GPU, so three replicas of 0.6 need
    three GPUs, and five of 0.4 need three (two fit on one). A whole number of GPUs takes that
    many GPUs of its own. First-fit decreasing may use a GPU more than the best packing in rare
    mixes of sizes; Ray itself places replicas one by one as they come, never better than that.
    """
    whole = sum(math.ceil(gpus - _EPS) * replicas for gpus, replicas in requests if gpus >= 1 - _EPS)
    counts: collections.Counter[float] = collections.Counter()
    for gpus, replicas in requests:
        if 0 < gpus < 1 - _EPS:
            counts[gpus] += replicas
    free: list[float] = []  # what is left on each GPU the fractions have opened
    # Replicas of one size at a time, as many on each GPU as fit: the same as placing them one
    # by one first-fit, in time that does not grow with the square of max_replicas.
    for gpus in sorted(counts, reverse=True):
        left_to_place = counts[gpus]
        for i, left in enumerate(free):
            fit = min(left_to_place, int((left + _EPS) // gpus))
            free[i] -= fit * gpus
            left_to_place -= fit
            if not left_to_place:
                break
        per_gpu = int((1.0 + _EPS) // gpus)
        full, rest = divmod(left_to_place, per_gpu)
        free += [1.0 - per_gpu * gpus] * full + ([1.0 - rest * gpus] if rest else [])
    return float(whole + len(free))


class _Cluster:
    """The cluster's resources, per node where known, else as one node holding the total."""

    def __init__(self, total: Mapping[str, float], nodes: Sequence[Mapping[str, float]] | None):
        self.total = dict(total)
        self.per_node = bool(nodes)
        self.nodes = [dict(n) for n in nodes] if nodes else [self.total]

    def gpus(self) -> float:
        return float(self.total.get("GPU", 0.0))

    def describe_gpus(self) -> str:
        if not self.gpus():
            return "the cluster has no GPU"
        if self.per_node and len(self.nodes) > 1:
            largest = max(n.get("GPU", 0.0) for n in self.nodes)
            return (f"the cluster has {_gpus(self.gpus())} over {len(self.nodes)} nodes, "
                    f"at most {_gpus(largest)} on one node")
        return f"the cluster has {_gpus(self.gpus())}"

    def holding(self, resources: Mapping[str, float]) -> list[dict[str, float]]:
        """The nodes that hold every one of ``resources`` at once."""
        return [n for n in self.nodes
                if all(n.get(name, 0.0) + _EPS >= amount for name, amount in resources.items())]

    def custom_names(self) -> str:
        builtin = ("CPU", "GPU", "memory", "object_store_memory")
        names = sorted(k for k in self.total
                       if k not in builtin and not k.startswith(("node:", "accelerator_type:")))
        return ", ".join(f"{k} ({_fmt(self.total[k])})" for k in names) or "none"


def _custom_resource_errors(request: _Request, cluster: _Cluster) -> list[str]:
    """Custom resources are never replaced by something else: missing means refused."""
    errors = []
    for name, amount in request.resources.items():
        if amount <= 0:
            continue
        path = f"{request.path}.resources.{name}"
        on_nodes = [n.get(name, 0.0) for n in cluster.nodes]
        if max(on_nodes, default=0.0) <= 0:
            errors.append(
                f"{path}: {request.owner} asks for {_fmt(amount)} of the custom resource {name!r} per "
                f"replica, but no node has it (custom resources in the cluster: {cluster.custom_names()}); "
                f"start a node that has it (ray start --resources='{{\"{name}\": 1}}') or remove it "
                f"from the config; resources_missing does not apply to custom resources (got {_fmt(amount)})"
            )
        elif max(on_nodes) + _EPS < amount:
            where = "on any one node" if cluster.per_node else "in the cluster"
            errors.append(
                f"{path}: {request.owner} asks for {_fmt(amount)} of {name!r} per replica, but there "
                f"is at most {_fmt(max(on_nodes))} {where}, and a replica runs on one node "
                f"(got {_fmt(amount)})"
            )
    wanted = {k: v for k, v in request.resources.items() if v > 0}
    if not errors and len(wanted) > 1 and not cluster.holding(wanted):
        errors.append(
            f"{request.path}.resources: {request.owner} asks for {wanted} per replica, but no single "
            f"node has all of them, and a replica runs on one node (got {wanted})"
        )
    return errors


def _cpu_errors(request: _Request, cluster: _Cluster, node_types: Sequence[Mapping[str, float]]) -> list[str]:
    """A replica asking for more CPUs than any node has, or than any node the autoscaler may
    add (``node_types``): nothing to fall back to, refused. Ray would only log, every 30 s,
    that it has "taken more than 30s to be scheduled".

    A cluster none of whose nodes has a CPU runs no replica until its autoscaler adds one (a
    head started with num_cpus 0, as Ray's docs advise, workers scaled from zero): there the
    nodes up say nothing of the nodes to come, so, unless the autoscaler publishes its node
    types, only a warning is logged."""
    cpus = request.options.ray_actor_options.num_cpus
    most_up = max((n.get("CPU", 0.0) for n in cluster.nodes), default=0.0)
    most = max([most_up, *(n.get("CPU", 0.0) for n in node_types)])
    if cpus <= most + _EPS:
        return []
    if most_up <= 0 and not node_types:  # published node types still say what can come
        logger.warning("serve-ab: no node of the cluster has a CPU yet; %s asks for %s CPUs per replica (%s.num_cpus), "
                       "which waits for a node with that many", request.owner, _fmt(cpus), request.path)
        return []
    where = (f"at most {_fmt(most_up)} on any one of its {len(cluster.nodes)} nodes" if cluster.per_node
             and len(cluster.nodes) > 1 else f"{_fmt(most_up)}")
    if node_types:
        where += f", and the autoscaler adds nodes of at most {_fmt(most)}"
    return [f"{request.path}.num_cpus: {request.owner} asks for {_fmt(cpus)} CPUs per replica, but the cluster "
            f"has {where}, and a replica runs on one node: Ray would wait for it for ever; ask for at most "
            f"{_fmt(most)} or add a larger node (got {_fmt(cpus)})"]


def _custom_total_errors(requests: Sequence[_Request], cluster: _Cluster) -> list[str]:
    errors = []
    asked: dict[str, float] = {}
    for request in requests:
        for name, amount in request.resources.items():
            before = asked.get(name, 0.0)
            asked[name] = before + amount * request.replicas_at_deploy
            have = cluster.total.get(name, 0.0)
            if have > 0 and before <= have + _EPS < asked[name]:
                errors.append(
                    f"{request.path}.resources.{name}: {request.owner} asks for {_fmt(amount)} of "
                    f"{name!r} x {request.replicas_at_deploy} replica(s); with the deployments "
                    f"listed before it that is {_fmt(asked[name])}, and the cluster has "
                    f"{_fmt(have)} (got {_fmt(amount)})"
                )
    return errors


def _gpu_shortfalls(cfg: ExperimentConfig, requests: Sequence[_Request],
                    cluster: _Cluster) -> list[tuple[_Request, str]]:
    """The requests whose GPUs the cluster cannot give, each with the line that says why.

    Taken in listing order, so with too few GPUs for all, the versions listed first (the
    stable one, in a rollout) keep theirs.
    """
    shortfalls = []
    placed: list[tuple[float, int]] = []
    for request in requests:
        gpus = request.num_gpus
        path = f"{request.path}.num_gpus"
        if gpus <= 0:
            for index in request.versions:
                version = cfg.versions[index]
                if version.device != "cuda":
                    continue
                if cluster.gpus() <= 0:
                    shortfalls.append((request, (
                        f"versions.{index}.device: version {version.name!r} asks for device cuda, "
                        f"but the cluster has no GPU; {_WAYS_OUT} (got 'cuda')")))
                else:
                    # Ray hides no GPU from a replica that reserved none: the model runs on a GPU
                    # the scheduler thinks is free, and may give to another replica whole.
                    logger.warning(
                        "serve-ab: version %s has device: cuda but %s reserves no GPU (num_gpus 0): "
                        "it will use a GPU Ray does not count as taken; set %s to the share it needs "
                        "(e.g. 0.5)", version.name, request.owner, path)
            continue
        per_replica_nodes = cluster.holding({**request.resources, "GPU": gpus})
        if not per_replica_nodes:
            with_custom = f" together with {dict(request.resources)}" if request.resources else ""
            shortfalls.append((request, (
                f"{path}: {request.owner} asks for {_gpus(gpus)} per replica{with_custom}, but "
                f"{cluster.describe_gpus()}; {_WAYS_OUT} (got {_fmt(gpus)})")))
            continue
        needed = _gpus_needed([*placed, (gpus, request.replicas_at_deploy)])
        if needed > cluster.gpus() + _EPS:
            shortfalls.append((request, (
                f"{path}: {request.owner} asks for {_gpus(gpus)} x {request.replicas_at_deploy} "
                f"replica(s); with the deployments listed before it that needs {_gpus(needed)}, but "
                f"{cluster.describe_gpus()}; {_WAYS_OUT} (got {_fmt(gpus)})")))
            continue
        placed.append((gpus, request.replicas_at_deploy))
    return shortfalls


def _on_cpu(cfg: ExperimentConfig, requests: Sequence[_Request]) -> ExperimentConfig:
    """``cfg`` with these requests' replicas reserving no GPU and their models on the CPU."""
    def without_gpu(options: DeploymentOptions) -> DeploymentOptions:
        actor = options.ray_actor_options.model_copy(update={"num_gpus": 0.0})
        return options.model_copy(update={"ray_actor_options": actor})

    on_cpu = {i for r in requests for i in r.versions}
    own_deployment = {i for r in requests if not r.is_router for i in r.versions}
    versions = []
    for index, version in enumerate(cfg.versions):
        update: dict[str, Any] = {"device": "cpu"} if index in on_cpu else {}
        if index in own_deployment and version.deployment is not None:
            update["deployment"] = without_gpu(version.deployment)
        versions.append(version.model_copy(update=update) if update else version)
    update = {"versions": versions}
    if any(r.is_router for r in requests):
        update["router"] = without_gpu(cfg.router)
    return cfg.model_copy(update=update)


def _warn_autoscaling_ceiling(requests: Sequence[_Request], cluster: _Cluster) -> None:
    at_most = _gpus_needed([(r.num_gpus, r.replicas_at_most) for r in requests if r.num_gpus > 0])
    if at_most > cluster.gpus() + _EPS:
        logger.warning(
            "serve-ab: at max_replicas the deployments would need %s, but %s; replicas past "
            "that wait for a GPU until one frees up", _gpus(at_most), cluster.describe_gpus())


def apply_resource_policy(
    cfg: ExperimentConfig,
    cluster_resources: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] | None = None,
    node_types: Sequence[Mapping[str, float]] = (),
) -> ExperimentConfig:
    """Check ``cfg``'s resource requests against a cluster; return the config to deploy.

    ``cluster_resources`` is what ``ray.cluster_resources()`` returns; ``nodes``, when
    known, the resources of each live node (``ray.nodes()``), so that a replica larger
    than every node is caught even when the sum over nodes would hold it; ``node_types``,
    the resources of each kind of node the cluster's autoscaler may add (none known: ``()``),
    which a replica's CPUs may wait for. Custom
    resources no node can give are always a :class:`~serve_ab.config.ConfigError`;
    missing GPUs are one too with ``resources_missing: fail``, while with ``cpu`` the
    versions concerned get ``num_gpus: 0`` and ``device: cpu`` and a warning is logged.
    """
    cluster = _Cluster(cluster_resources, nodes)
    requests = _requests(cfg)
    # (A num_gpus over 1 that is not whole is the config's own error: RayActorOptions.)
    errors: list[str] = []
    for request in requests:
        errors += _cpu_errors(request, cluster, node_types)
        errors += _custom_resource_errors(request, cluster)
    errors += _custom_total_errors(requests, cluster)
    shortfalls = _gpu_shortfalls(cfg, requests, cluster) if not errors else []
    if cfg.resources_missing == "fail":
        errors += [line for _, line in shortfalls]
    if errors:
        raise ConfigError(errors, where="experiment for this cluster")
    if shortfalls:
        for _, line in shortfalls:
            logger.warning("serve-ab: running on the CPU (resources_missing: cpu): %s",
                           line.split(f"; {_WAYS_OUT}")[0])
        cfg = _on_cpu(cfg, [request for request, _ in shortfalls])
        requests = _requests(cfg)
    _warn_autoscaling_ceiling(requests, cluster)
    return cfg


def cluster_resources() -> dict[str, float] | None:
    """The connected cluster's total resources; None when this process is not connected
    to Ray (``build_app`` called before ``serve.run`` starts Ray, say)."""
    import ray

    if not ray.is_initialized():
        return None
    return dict(ray.cluster_resources())


def node_resources() -> list[dict[str, float]] | None:
    """The resources of each live node of the connected cluster; None when not connected."""
    import ray

    if not ray.is_initialized():
        return None
    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def autoscaler_node_types() -> list[dict[str, float]]:
    """The resources of each kind of node the cluster's autoscaler may start (its node groups
    whose max_count is not 0), as it publishes them to the GCS (KubeRay, autoscaler v2); none
    where it publishes none, or where this Ray has no such call."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - a private API: without it, only the nodes up are known
        logger.debug("serve-ab: the autoscaler's node types could not be read", exc_info=True)
        return []
    if config is None:
        return []
    return [{name: float(amount) for name, amount in group.resources.items()}
            for group in config.node_group_configs if group.max_count != 0]


def fit_to_cluster(cfg: ExperimentConfig) -> ExperimentConfig:
    """:func:`apply_resource_policy` against the cluster this process is connected to.

    ``serve run`` builds the app in a task inside the cluster, so the check runs there; a
    builder called before Ray is started has nothing to check against and returns ``cfg``.
    """
    total = cluster_resources()
    if total is None:
        logger.debug("serve-ab: not connected to Ray; resource requests are not checked")
        return cfg
    return apply_resource_policy(cfg, total, node_resources(), autoscaler_node_types())
