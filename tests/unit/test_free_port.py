"""The tests' free ports: never one a server holds, never one the kernel hands out to others."""

from __future__ import annotations

import itertools
import socket

from tests.integration.conftest import PORTS_FROM, _ephemeral_from, free_port


def test_ports_come_from_below_the_ephemeral_range_and_differ():
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == 100
    assert all(PORTS_FROM <= p < _ephemeral_from() for p in ports)


def test_a_port_a_server_listens_on_is_never_given(monkeypatch):
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        taken = held.getsockname()[1]
        # Offer the held port first, then others (the next may be busy too, or given before):
        # the held one must be passed over.
        offers = itertools.chain([taken], (port for port in range(65535, 1024, -1) if port != taken))
        monkeypatch.setattr("tests.integration.conftest._random.randint", lambda a, b: next(offers))
        monkeypatch.setattr("tests.integration.conftest._ephemeral_from", lambda: 65536)
        assert free_port() != taken
