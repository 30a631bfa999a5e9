"""What the isolated router makes of calls to versions over Ray Serve's gRPC transport (no Ray
is started)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from ray.exceptions import ActorUnavailableError
from ray.serve.context import _RequestContext, _serve_request_context

from serve_ab.backends.base import InputError
from serve_ab.serving.core.versions import detached_task
from serve_ab.serving.router import replica_unavailable
from tests.support.fakes import FakeVersion
from tests.unit.serving.test_failed_versions import ROW, core_over, keys_for, run


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED])
def test_a_failed_grpc_call_is_an_outage_not_the_models_error(code):
    # Served around (the stable answers, a pinned request gets a 503), never a 502 counted
    # against the version in the canary's gates.
    err = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="stream removed")
    assert replica_unavailable(err)
    assert replica_unavailable(ActorUnavailableError("gone", None))
    assert not replica_unavailable(ValueError("the model's own error"))
    assert not replica_unavailable(InputError("expected 64 features, got 3"))


def test_a_detached_task_runs_outside_the_request_that_started_it():
    # Ray Serve cancels a request's calls to other deployments with the request; a task that
    # carried the request's context would have its calls cancelled with it.
    async def request_id() -> str | None:
        context = _serve_request_context.get()
        return context.request_id if context is not None else None

    async def serving() -> tuple[str | None, str | None]:
        _serve_request_context.set(_RequestContext(request_id="client-1"))
        inherited = asyncio.get_running_loop().create_task(request_id())
        return await inherited, await detached_task(request_id())

    inherited, detached = asyncio.run(serving())
    assert inherited == "client-1" and detached != "client-1"


class ContextSeeingVersion(FakeVersion):
    """Notes the Serve request id each describe() runs under."""

    def __init__(self, answer: int):
        super().__init__(answer)
        self.describe_request_ids: list[str | None] = []

    async def describe(self):
        context = _serve_request_context.get()
        self.describe_request_ids.append(context.request_id if context is not None else None)
        return await super().describe()


def test_a_versions_describe_check_runs_outside_the_request_that_needed_it():
    # The check is shared by every request waiting on the version's interface: started
    # under one client's request, it would be cancelled with that client's.
    versions = {"v1": ContextSeeingVersion(1), "v2": ContextSeeingVersion(2)}
    core = core_over(versions)

    async def serving():
        _serve_request_context.set(_RequestContext(request_id="client-1"))
        return await core.serve(ROW, keys_for(core, "v2", 1)[0], None)

    assert run(serving())[0] == "v2"
    seen = versions["v1"].describe_request_ids + versions["v2"].describe_request_ids
    assert seen and "client-1" not in seen
