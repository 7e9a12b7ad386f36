"""
Tests for hatwist.control._server and _handler: the real UNIX socket in this process
(mode 0600, the peer's uid, the bounds on connections, request size and idle time, a
stale socket from a dead relay), with a recording handler instead of a scheduler.
"""

from __future__ import annotations

import json
import os
import socket
import stat

import pytest
import pytest_twisted
from twisted.internet import defer, task, threads

from hatwist.control import ControlError, ControlService
from hatwist.control._server import MAX_CONNECTIONS, clear_stale_socket

DEADLINE = 10.0


class Recorder:
    def __init__(self):
        self.requests = []
        self.rows = 1

    def handle(self, request, uid, write):
        self.requests.append((request, uid))
        if request.command == "list":
            for _ in range(self.rows):
                write(b'{"message":{"id":"x"}}\n')
        return {"ok": True, "command": request.command}


def exchange(path, data, *, read=True):
    """Connect, send ``data``, return every answer line (blocking: run in a thread)."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    try:
        client.connect(path)
        client.sendall(data)
        chunks = []
        while read:
            chunk = client.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return [json.loads(x) for x in b"".join(chunks).splitlines()]
    finally:
        client.close()


@pytest.fixture
def control(reactor, tmp_path):
    handler = Recorder()
    service = ControlService(str(tmp_path / "control.sock"), handler, reactor=reactor)
    service.startService()
    service.handler = handler
    yield service
    if service.running:
        service.stopService()


def ask(control, data):
    from twisted.internet import reactor

    return threads.deferToThread(exchange, control.path, data).addTimeout(DEADLINE, reactor)


@pytest_twisted.ensureDeferred
async def test_socket_is_mode_0600_and_names_the_peers_uid(control):
    assert stat.S_IMODE(os.stat(control.path).st_mode) == 0o600
    lines = await ask(control, b'{"command":"list","limit":3}\n')
    assert lines == [{"message": {"id": "x"}}, {"ok": True, "command": "list"}]
    [(request, uid)] = control.handler.requests
    assert request.limit == 3 and uid == os.getuid()


@pytest_twisted.ensureDeferred
async def test_a_bad_request_gets_an_error_line_and_reaches_no_handler(control):
    [answer] = await ask(control, b'{"command":"rm","ids":[]}\n')
    assert answer == {"ok": False, "error": "unknown command 'rm'; one of: list, show, flush, "
                                            "hold, release, delete, bounce"}
    [answer] = await ask(control, b"x" * 70000)
    assert answer["ok"] is False and "longer than 65536 bytes" in answer["error"]
    assert control.handler.requests == []


@pytest_twisted.ensureDeferred
async def test_past_max_connections_a_client_is_refused(control, reactor):
    idle = []
    for _ in range(MAX_CONNECTIONS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(control.path)
        idle.append(s)
    try:
        deadline = reactor.seconds() + DEADLINE
        while len(control.factory.clients) < MAX_CONNECTIONS and reactor.seconds() < deadline:
            await defer.succeed(None)
            await threads.deferToThread(lambda: None)
        [answer] = await ask(control, b'{"command":"list"}\n')
        assert answer["ok"] is False and "too many control connections" in answer["error"]
    finally:
        for s in idle:
            s.close()


@pytest_twisted.ensureDeferred
async def test_a_client_that_sends_nothing_is_closed_after_the_idle_timeout(control):
    control.factory.idle_timeout = 0.2
    lines = await threads.deferToThread(exchange, control.path, b"")
    assert lines == [{"ok": False, "error": "no request within 0.2s"}]


@pytest_twisted.ensureDeferred
async def test_stop_removes_the_socket(control):
    await control.stopService()
    assert not os.path.exists(control.path)


def test_a_stale_socket_is_replaced_but_a_live_one_or_a_file_is_refused(tmp_path, reactor):
    path = str(tmp_path / "c.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nothing listens: a relay killed with -9
    clear_stale_socket(path)
    assert not os.path.exists(path)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(ControlError, match="another relay is listening there"):
            clear_stale_socket(path)
    finally:
        live.close()
    os.unlink(path)
    with open(path, "w"):
        pass
    with pytest.raises(ControlError, match="exists and is not a socket"):
        clear_stale_socket(path)


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_its_answer_is_cut_after_the_drain_timeout(
        control, reactor):
    control.factory.drain_timeout = 0.3
    control.handler.rows = 200_000  # about 5 MB: more than the socket buffers hold
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(control.path)
    try:
        client.sendall(b'{"command":"list"}\n')
        deadline = reactor.seconds() + DEADLINE
        while not control.handler.requests and reactor.seconds() < deadline:
            await threads.deferToThread(lambda: None)
        assert control.factory.clients, "answering"
        await task.deferLater(reactor, 1.0, lambda: None)
        assert not control.factory.clients, "cut while its answer was still unread"
    finally:
        client.close()


# -- pacing: the lines of a bulk action wait for the client to read them ----------------


def slow_reader(path, pause):
    """Send a request, read nothing for ``pause`` seconds, then every line (blocking)."""
    import time

    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(DEADLINE)
    try:
        client.connect(path)
        client.sendall(b'{"command":"hold","binding":"b1"}\n')
        time.sleep(pause)
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks).splitlines()
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_paces_the_answer_instead_of_filling_memory(paced, reactor):
    lines = await threads.deferToThread(slow_reader, paced.path, 0.5)
    assert len(lines) == 300 * 100 + 1 and json.loads(lines[-1]) == {"ok": True, "batches": 300}
    # without the pacing all 3 MB the socket buffers cannot take would wait in memory
    assert paced.handler.most < 512 * 1024, paced.handler.most


@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_stops_the_answer_between_batches(paced, reactor):
    def read_a_little():
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(DEADLINE)
        client.connect(paced.path)
        client.sendall(b'{"command":"delete","binding":"b1"}\n')
        client.recv(1000)
        client.close()

    await threads.deferToThread(read_a_little)
    deadline = reactor.seconds() + DEADLINE
    while not paced.handler.stopped and reactor.seconds() < deadline:
        await task.deferLater(reactor, 0.01, lambda: None)
    assert paced.handler.stopped and paced.handler.done < 300


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_mid_answer_is_cut_after_the_drain_timeout(
        paced, reactor):
    paced.factory.drain_timeout = 0.3
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(paced.path)
    try:
        client.sendall(b'{"command":"hold","binding":"b1"}\n')
        deadline = reactor.seconds() + DEADLINE
        while not paced.handler.stopped and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        assert paced.handler.stopped and paced.handler.done < 300
        while paced.factory.clients and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.05, lambda: None)
        assert not paced.factory.clients, "still connected"
    finally:
        client.close()
