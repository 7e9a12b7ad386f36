"""Tests for hatwist.workers._endpoints: the workers' listening sockets and the status socket."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import pytest_twisted
from twisted.internet import protocol, tcp

from hatwist.workers._endpoints import (
    AdoptedPortEndpoint,
    SharedPort,
    listening_socket,
    listening_sockets,
    owns_its_socket,
    status_endpoint,
)

HAS_IPV6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6")


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


def accept_all(sock: socket.socket) -> int:
    got = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return got
        conn.close()
        got += 1


@pytest.mark.parametrize("host, family", [
    ("127.0.0.1", socket.AF_INET),
    pytest.param("::1", socket.AF_INET6,
                 marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")),
])
def test_one_socket_per_worker_on_one_port_chosen_once_and_the_kernel_spreads_connections(
        host, family):
    sockets = listening_sockets(host, 0, family, 3)
    clients = []
    try:
        ports = {s.getsockname()[1] for s in sockets}
        assert len(ports) == 1 and ports != {0}
        [port] = ports
        assert all(owns_its_socket(s.fileno()) for s in sockets)
        for _ in range(60):
            clients.append(socket.create_connection((host, port), timeout=5))
        got = [accept_all(s) for s in sockets]
        # Spread by a hash of the client's port: each socket has some (all three empty
        # but one would mean one shared queue; the chance of a zero here is 3 * (2/3)^60).
        assert sum(got) == 60 and min(got) > 0, got
    finally:
        for s in sockets + clients:
            s.close()


def test_the_first_bind_is_exclusive_so_a_second_relay_on_the_address_is_refused():
    sockets = listening_sockets("127.0.0.1", 0, socket.AF_INET, 2)
    port = sockets[0].getsockname()[1]
    try:
        with pytest.raises(OSError) as caught:
            listening_sockets("127.0.0.1", port, socket.AF_INET, 2)
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        for s in sockets:
            s.close()
    # ... and a single relay's listener (no SO_REUSEPORT) blocks a group as well.
    plain = listening_socket("127.0.0.1", 0, socket.AF_INET)
    try:
        with pytest.raises(OSError) as caught:
            listening_sockets("127.0.0.1", plain.getsockname()[1], socket.AF_INET, 2)
        assert caught.value.errno == errno.EADDRINUSE
        assert not owns_its_socket(plain.fileno())
    finally:
        plain.close()


@pytest_twisted.ensureDeferred
async def test_a_worker_accepts_in_batches_on_its_own_socket(reactor):
    [own] = listening_sockets("127.0.0.1", 0, socket.AF_INET, 1)
    factory = Counting()
    port = await AdoptedPortEndpoint(reactor, os.dup(own.fileno()), socket.AF_INET
                                     ).listen(factory)
    clients = []
    try:
        assert type(port) is tcp.Port  # no herd to share a queue with: Twisted's batches
        for _ in range(5):
            clients.append(socket.create_connection(own.getsockname(), timeout=5))
        port.doRead()
        assert factory.built == 5
    finally:
        for client in clients:
            client.close()
        await port.stopListening()
        own.close()


@pytest_twisted.ensureDeferred
async def test_connections_queued_on_a_dead_workers_socket_wait_for_its_successor(reactor):
    """The supervisor's copy keeps the socket listening after its worker is gone."""
    [own] = listening_sockets("127.0.0.1", 0, socket.AF_INET, 1)
    first = await AdoptedPortEndpoint(reactor, os.dup(own.fileno()), socket.AF_INET
                                      ).listen(Counting())
    await first.stopListening()  # the worker is gone (its descriptors closed)
    waiting = socket.create_connection(own.getsockname(), timeout=5)  # not refused
    factory = Counting()
    successor = await AdoptedPortEndpoint(reactor, os.dup(own.fileno()), socket.AF_INET
                                          ).listen(factory)
    try:
        successor.doRead()
        assert factory.built == 1
    finally:
        waiting.close()
        await successor.stopListening()
        own.close()
