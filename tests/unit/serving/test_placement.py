"""Fitting resource requests to a cluster: refuse with a line naming the field, or fall back
to the CPU, never leave a replica waiting for what no node has. Pure: no Ray."""

from __future__ import annotations

import logging

import pytest

from serve_ab.config.experiment import ConfigError, parse_experiment
from serve_ab.serving.placement import apply_resource_policy, fit_to_cluster

CPU_ONLY = {"CPU": 2.0, "memory": 4e9, "object_store_memory": 1e9, "node:10.0.0.1": 1.0}
ONE_GPU = {**CPU_ONLY, "GPU": 1.0}


def isolated(*gpus_per_version, resources_missing="fail", replicas=1, **actor):
    versions = []
    for index, gpus in enumerate(gpus_per_version, start=1):
        versions.append({
            "name": f"v{index}", "path": f"models/digits/v{index}/model.onnx", "backend": "onnx",
            "device": "cuda" if gpus else "auto",
            "deployment": {"num_replicas": replicas,
                           "ray_actor_options": {"num_cpus": 0.25, "num_gpus": gpus, **actor}},
        })
    names = [v["name"] for v in versions]
    return parse_experiment({
        "model": "digits", "placement": "isolated", "versions": versions,
        "weights": {names[0]: 100, **{n: 0 for n in names[1:]}},
        "resources_missing": resources_missing,
    })


def refusal(cfg, cluster, nodes=None, node_types=()) -> str:
    with pytest.raises(ConfigError) as info:
        apply_resource_policy(cfg, cluster, nodes, **({"node_types": node_types} if node_types else {}))
    return str(info.value)


def test_half_gpus_on_a_cpu_only_cluster_are_refused_with_the_field_value_and_ways_out():
    message = refusal(isolated(0.5, 0.5), CPU_ONLY)
    assert message.startswith("invalid experiment for this cluster (2 errors):")
    for index, name in ((0, "v1"), (1, "v2")):
        line = next(l for l in message.splitlines() if f"versions.{index}.deployment" in l)
        assert line.strip().startswith(f"- versions.{index}.deployment.ray_actor_options.num_gpus: ")
        assert f"version '{name}' asks for 0.5 GPU per replica" in line
        assert "the cluster has no GPU" in line
        assert "resources_missing: cpu" in line and "add a node with a GPU" in line
        assert line.endswith("(got 0.5)")


def test_resources_missing_cpu_runs_those_versions_on_the_cpu_and_warns(caplog):
    cfg = isolated(0.5, 0.5, resources_missing="cpu")
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        fitted = apply_resource_policy(cfg, CPU_ONLY)
    for version in fitted.versions:
        assert version.device == "cpu"
        assert version.deployment.ray_actor_options.num_gpus == 0
        assert version.deployment.ray_actor_options.num_cpus == 0.25  # nothing else changes
    assert fitted.weights == cfg.weights and fitted.placement is cfg.placement
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("running on the CPU" in w for w in warnings), warnings
    assert "versions.1.deployment.ray_actor_options.num_gpus" in warnings[1]


def test_two_half_gpus_share_one_gpu_unchanged():
    cfg = isolated(0.5, 0.5)
    assert apply_resource_policy(cfg, ONE_GPU) == cfg


def test_a_third_half_gpu_does_not_fit_and_only_it_moves_to_the_cpu():
    message = refusal(isolated(0.5, 0.5, 0.5), ONE_GPU)
    assert "(1 error)" in message
    assert "versions.2.deployment.ray_actor_options.num_gpus" in message
    assert "needs 2 GPUs, but the cluster has 1 GPU" in message
    fitted = apply_resource_policy(isolated(0.5, 0.5, 0.5, resources_missing="cpu"), ONE_GPU)
    # Listing order decides: the versions listed first (the stable one) keep their GPU.
    assert [v.device for v in fitted.versions] == ["cuda", "cuda", "cpu"]
    assert [v.deployment.ray_actor_options.num_gpus for v in fitted.versions] == [0.5, 0.5, 0.0]


def test_replicas_are_summed_and_a_fraction_over_half_cannot_share_a_gpu():
    two_gpus = {**CPU_ONLY, "GPU": 2.0}
    # 2 x 0.5 fit one GPU; 2 x 0.5 + 1 x 0.5 do not.
    apply_resource_policy(isolated(0.5, replicas=2), ONE_GPU)
    message = refusal(isolated(0.5, 0.5, replicas=2), ONE_GPU)
    assert "version 'v2' asks for 0.5 GPU x 2 replica(s)" in message and "needs 2 GPUs" in message
    # 1.8 GPUs in all, but each 0.6 needs a GPU of its own: three of them need three.
    message = refusal(isolated(0.6, replicas=3), two_gpus)
    assert "needs 3 GPUs, but the cluster has 2 GPUs" in message
    apply_resource_policy(isolated(0.6, replicas=2), two_gpus)


def test_a_replica_larger_than_every_node_is_refused_even_when_the_sum_would_hold_it():
    nodes = [{"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}]
    total = {"CPU": 4.0, "GPU": 2.0}
    message = refusal(isolated(2.0), total, nodes)
    assert "versions.0.deployment.ray_actor_options.num_gpus" in message
    assert "the cluster has 2 GPUs over 2 nodes, at most 1 GPU on one node" in message
    apply_resource_policy(isolated(1.0, 1.0), total, nodes)  # one whole GPU each fits
    # Without per-node figures, only the total can be checked.
    apply_resource_policy(isolated(2.0), total)


def test_a_custom_resource_no_node_has_fails_even_with_resources_missing_cpu():
    cfg = isolated(0, resources_missing="cpu", resources={"accelerator_a": 1})
    message = refusal(cfg, {**CPU_ONLY, "accel_b": 1.0})
    line = message.splitlines()[1]
    assert line.strip().startswith("- versions.0.deployment.ray_actor_options.resources.accelerator_a: ")
    assert "no node has it" in line and "custom resources in the cluster: accel_b (1)" in line
    assert "resources_missing does not apply" in line and line.endswith("(got 1)")


def test_custom_resources_must_be_on_one_node_and_add_up():
    nodes = [{"CPU": 1.0, "accel_a": 1.0}, {"CPU": 1.0, "accel_b": 1.0}]
    total = {"CPU": 2.0, "accel_a": 1.0, "accel_b": 1.0}
    both = isolated(0, resources={"accel_a": 1, "accel_b": 1})
    assert "no single node has all of them" in refusal(both, total, nodes)
    too_much = isolated(0, resources={"accel_a": 2})
    assert "at most 1 on any one node" in refusal(too_much, total, nodes)
    two_replicas = isolated(0, replicas=2, resources={"accel_a": 1})
    assert "x 2 replica(s)" in refusal(two_replicas, total, nodes)
    shared = isolated(0, replicas=2, resources={"accel_a": 0.5})
    assert apply_resource_policy(shared, total, nodes) == shared


def test_a_gpu_must_sit_on_a_node_that_has_the_custom_resource_too():
    nodes = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 1.0, "accel_a": 1.0}]
    total = {"CPU": 2.0, "GPU": 1.0, "accel_a": 1.0}
    cfg = isolated(0.5, resources={"accel_a": 1})
    assert "0.5 GPU per replica together with {'accel_a': 1.0}" in refusal(cfg, total, nodes)
    fitted = apply_resource_policy(isolated(0.5, resources_missing="cpu", resources={"accel_a": 1}),
                                   total, nodes)
    assert fitted.versions[0].device == "cpu"
    assert fitted.versions[0].deployment.ray_actor_options.resources == {"accel_a": 1.0}


def test_colocated_router_gpu_falls_back_for_every_version():
    args = {
        "model": "digits",
        "versions": [{"name": "v1", "path": "a.onnx", "backend": "onnx", "device": "cuda"},
                     {"name": "v2", "path": "b.pt2", "backend": "torch"}],
        "weights": {"v1": 50, "v2": 50},
        "router": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}},
    }
    message = refusal(parse_experiment(args), CPU_ONLY)
    assert "router.ray_actor_options.num_gpus: the router (it holds every version) asks for 0.5 GPU" in message
    fitted = apply_resource_policy(parse_experiment({**args, "resources_missing": "cpu"}), CPU_ONLY)
    assert fitted.router.ray_actor_options.num_gpus == 0 and fitted.router.num_replicas == 2
    assert [v.device for v in fitted.versions] == ["cpu", "cpu"]


def test_device_cuda_without_a_gpu_reservation_on_a_cpu_only_cluster():
    cfg = isolated(0, 0)
    cuda = cfg.model_copy(update={"versions": [cfg.versions[0],
                                               cfg.versions[1].model_copy(update={"device": "cuda"})]})
    message = refusal(cuda, CPU_ONLY)
    assert "versions.1.device: version 'v2' asks for device cuda, but the cluster has no GPU" in message
    fitted = apply_resource_policy(cuda.model_copy(update={"resources_missing": "cpu"}), CPU_ONLY)
    assert [v.device for v in fitted.versions] == ["auto", "cpu"]
    assert apply_resource_policy(cuda, ONE_GPU) == cuda  # a GPU is there; Ray lets it see it


def test_device_cuda_without_a_gpu_reservation_on_a_gpu_cluster_is_warned_about(caplog):
    # Ray leaves every GPU visible to a replica that reserved none: the model would use a GPU
    # the scheduler counts as free (an audit; `validate` and the deploy said nothing).
    cfg = isolated(0, 0)
    cuda = cfg.model_copy(update={"versions": [cfg.versions[0],
                                               cfg.versions[1].model_copy(update={"device": "cuda"})]})
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert apply_resource_policy(cuda, ONE_GPU) == cuda
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("serve-ab: version v2 has device: cuda but version 'v2' reserves no GPU (num_gpus 0)")
    assert "versions.1.deployment.ray_actor_options.num_gpus" in line


def test_fractions_are_packed_into_whole_gpus_not_summed():
    # Ray places a fraction within one GPU: five replicas of 0.4 need three GPUs (two per GPU),
    # 0.7 + 3 x 0.4 need three too; the sum (2.0, 1.9) said two fit, and a replica waited forever.
    two_gpus = {**CPU_ONLY, "GPU": 2.0}
    assert "needs 3 GPUs, but the cluster has 2 GPUs" in refusal(isolated(0.4, replicas=5), two_gpus)
    cfg = isolated(0.7, 0.4)
    three_of_04 = cfg.versions[1].model_copy(update={"deployment": cfg.versions[1].deployment.model_copy(
        update={"num_replicas": 3})})
    mixed = cfg.model_copy(update={"versions": [cfg.versions[0], three_of_04]})
    assert "version 'v2' asks for 0.4 GPU x 3 replica(s); with the deployments listed before it that needs 3 GPUs" \
        in refusal(mixed, two_gpus)
    apply_resource_policy(isolated(0.4, replicas=4), two_gpus)  # two per GPU
    apply_resource_policy(isolated(0.3, 0.7, replicas=2), two_gpus)  # 0.7 + 0.3 on each


def test_autoscaling_counts_deploy_time_replicas_and_warns_about_the_ceiling(caplog):
    args = isolated(0.5).model_dump(mode="json")
    deployment = args["versions"][0]["deployment"]
    deployment["num_replicas"] = None
    deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2}
    cfg = parse_experiment(args)
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert apply_resource_policy(cfg, ONE_GPU) == cfg  # 1 replica at deploy time fits
    assert any("at max_replicas the deployments would need 2 GPUs" in r.getMessage() for r in caplog.records)
    deployment["autoscaling_config"]["min_replicas"] = 3
    assert "x 3 replica(s)" in refusal(parse_experiment(args), ONE_GPU)


def test_without_ray_connected_nothing_is_checked(monkeypatch):
    import ray

    # In one pytest run with the integration tests, their session's Ray is still up here.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    cfg = isolated(0.5, 0.5)
    assert fit_to_cluster(cfg) is cfg


def test_a_replica_asking_for_more_cpus_than_any_node_has_is_refused():
    """num_cpus 1e300 (or 4 on 2-CPU nodes) passed; serve run then waited for ever, Ray logging
    every 30 s that the replica 'has taken more than 30s to be scheduled'."""
    cfg = isolated(0, 0, replicas=1)
    versions = [v.model_copy(update={"deployment": v.deployment.model_copy(update={
        "ray_actor_options": v.deployment.ray_actor_options.model_copy(update={"num_cpus": cpus})})})
        for v, cpus in zip(cfg.versions, (1e300, 2.0))]
    cfg = cfg.model_copy(update={"versions": versions})
    message = refusal(cfg, {"CPU": 4.0}, [{"CPU": 2.0}, {"CPU": 2.0}])
    assert message.startswith("invalid experiment for this cluster (1 error):"), message
    assert ("versions.0.deployment.ray_actor_options.num_cpus: version 'v1' asks for 1e+300 CPUs per replica, "
            "but the cluster has at most 2 on any one of its 2 nodes, and a replica runs on one node") in message
    assert message.endswith("(got 1e+300)")
    apply_resource_policy(cfg.model_copy(update={"versions": [versions[1], versions[1]]}), {"CPU": 2.0})  # fits
    colocated = parse_experiment({"model": "digits", "versions": [{"name": "v1", "path": "m.onnx", "backend": "onnx"}],
                                  "weights": {"v1": 100}, "router": {"ray_actor_options": {"num_cpus": 3}}})
    assert "router.ray_actor_options.num_cpus: the router (it holds every version) asks for 3 CPUs" in \
        refusal(colocated, CPU_ONLY)


HEAD_WITHOUT_CPUS = {"memory": 4e9, "object_store_memory": 1e9, "node:10.0.0.1": 1.0, "node:__internal_head__": 1.0}


def test_cpus_are_not_refused_where_an_autoscaler_adds_the_nodes_that_have_them(caplog):
    """A head started with num_cpus 0 (as Ray's docs advise for autoscaling clusters) and workers
    scaled from zero: on the parent every experiment was refused ('the cluster has 0 ... ask for at
    most 0'), though the autoscaler starts a worker for the router's 0.25 CPU. Likewise a replica
    larger than the nodes up, but not than a node type the autoscaler (KubeRay) publishes."""
    colocated = parse_experiment({"model": "digits", "versions": [{"name": "v1", "path": "m.onnx", "backend": "onnx"}],
                                  "weights": {"v1": 100}, "router": {"ray_actor_options": {"num_cpus": 8}}})
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert apply_resource_policy(colocated, HEAD_WITHOUT_CPUS, [HEAD_WITHOUT_CPUS]) == colocated
    assert "no node of the cluster has a CPU yet" in caplog.text
    nodes = [HEAD_WITHOUT_CPUS, {"CPU": 4.0}]
    assert apply_resource_policy(colocated, {"CPU": 4.0}, nodes, node_types=[{"CPU": 4.0}, {"CPU": 16.0}]) == colocated
    # Larger than every node up and every node type: still refused, naming both.
    message = refusal(colocated.model_copy(update={"router": colocated.router.model_copy(update={
        "ray_actor_options": colocated.router.ray_actor_options.model_copy(update={"num_cpus": 32.0})})}),
        {"CPU": 4.0}, nodes, node_types=[{"CPU": 16.0}])
    assert ("asks for 32 CPUs per replica, but the cluster has at most 4 on any one of its 2 nodes, and the "
            "autoscaler adds nodes of at most 16") in message and "ask for at most 16" in message


def test_cpus_no_node_type_has_are_refused_also_while_no_node_has_a_cpu():
    """A head with num_cpus 0 and workers scaled from zero, whose autoscaler publishes node
    types of 4 CPUs: a replica of 8 never runs. On the parent no node up having a CPU let it
    through with a warning that it waits for a node with that many, which cannot come."""
    colocated = parse_experiment({"model": "digits", "versions": [{"name": "v1", "path": "m.onnx", "backend": "onnx"}],
                                  "weights": {"v1": 100}, "router": {"ray_actor_options": {"num_cpus": 8}}})
    message = refusal(colocated, HEAD_WITHOUT_CPUS, [HEAD_WITHOUT_CPUS], node_types=[{"CPU": 4.0}])
    assert "asks for 8 CPUs per replica" in message and "the autoscaler adds nodes of at most 4" in message
    assert "ask for at most 4" in message
    assert apply_resource_policy(colocated, HEAD_WITHOUT_CPUS, [HEAD_WITHOUT_CPUS],
                                 node_types=[{"CPU": 4.0}, {"CPU": 8.0}]) == colocated


def test_fit_to_cluster_reads_the_autoscalers_node_types(monkeypatch):
    import ray
    from ray._private import state as ray_state
    from ray.core.generated import autoscaler_pb2

    from serve_ab.serving import placement

    config = autoscaler_pb2.ClusterConfig(node_group_configs=[
        autoscaler_pb2.NodeGroupConfig(name="big", resources={"CPU": 16}, max_count=-1),
        autoscaler_pb2.NodeGroupConfig(name="off", resources={"CPU": 64}, max_count=0),
    ])
    monkeypatch.setattr(ray_state.state, "get_cluster_config", lambda: config)
    assert placement.autoscaler_node_types() == [{"CPU": 16.0}]
    monkeypatch.setattr(ray_state.state, "get_cluster_config", lambda: None)
    assert placement.autoscaler_node_types() == []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(placement, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(placement, "node_resources", lambda: [{"CPU": 4.0}])
    monkeypatch.setattr(placement, "autoscaler_node_types", lambda: [{"CPU": 16.0}])
    cfg = parse_experiment({"model": "digits", "versions": [{"name": "v1", "path": "m.onnx", "backend": "onnx"}],
                            "weights": {"v1": 100}, "router": {"ray_actor_options": {"num_cpus": 8}}})
    assert placement.fit_to_cluster(cfg) == cfg
