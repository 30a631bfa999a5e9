"""The router's core, with no Ray import: what every request goes through.

- ``router``: :class:`RouterCore`, the request path and the two loops beside it;
- ``decision``: key -> version, pins, fallback;
- ``observe``: the buffer of what was served, flushed to the controller;
- ``mirror``: copies to shadow / validating versions;
- ``watchdog``: isolated versions that fail fast when their replicas stall;
- ``messages``: the typed router <-> controller contract;
- ``auth``: the operator's token.

The Ray deployment (``serve_ab.serving.router``) only builds these from handles.
"""
