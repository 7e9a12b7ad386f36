"""Tests for hatwist.workers._endpoints: the shared listening socket and the status socket."""

from __future__ import annotations

import os
import socket

import pytest
import pytest_twisted
from twisted.internet import protocol

from hatwist.workers._endpoints import (
    AdoptedPortEndpoint,
    SharedPort,
    listening_socket,
    status_endpoint,
)


class Counting(protocol.Factory):
    noisy = False

    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return protocol.Protocol()


@pytest_twisted.ensureDeferred
async def test_a_worker_takes_one_waiting_connection_per_turn_and_closes_the_inherited_fd(
        reactor):
    shared = listening_socket("127.0.0.1", 0, socket.AF_INET)
    inherited = os.dup(shared.fileno())  # what the worker gets as fd 3
    clients = []
    factory = Counting()
    port = await AdoptedPortEndpoint(reactor, inherited, socket.AF_INET).listen(factory)
    try:
        assert isinstance(port, SharedPort)
        with pytest.raises(OSError):
            os.fstat(inherited)  # adopted: the port holds its own duplicate only
        for _ in range(5):
            clients.append(socket.create_connection(shared.getsockname(), timeout=5))
        port.doRead()  # one readiness event with five connections waiting
        assert factory.built == 1
        port.numberAccepts = 100  # Twisted's own scaling is ignored
        port.doRead()
        assert factory.built == 2
    finally:
        for client in clients:
            client.close()
        await port.stopListening()
        shared.close()


def test_status_socket_replaces_a_stale_one_and_refuses_a_path_too_long(reactor, tmp_path):
    path = tmp_path / "worker-1.status"
    path.write_text("left by a killed worker")
    status_endpoint(reactor, str(path))
    assert not path.exists()
    with pytest.raises(ValueError, match="shorter spool_dir"):
        status_endpoint(reactor, "/" + "x" * 120)
