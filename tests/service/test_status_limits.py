"""The status port of a real ``twistd hatwist`` under a hostile HTTP peer (issue 11,
item 6): a chunked POST that never ends, and a flood of idle connections. The relay is a
real child process (:mod:`tests.service._relay`) with the real HAProxy, sink and DNS of
test_relay.py; the attacks are raw TCP clients on loopback.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from tests.service.test_relay import DEADLINE

pytestmark = pytest.mark.integration

#: What the hostile client sends at most: far more than the relay may read, little
#: enough that a relay which does read it (the code before the bound) fills no disk.
BODY_LIMIT = 8 * 1024 * 1024



class Client(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)

    @property
    def status(self) -> int | None:
        line = self.data.split(b"\r\n", 1)[0]
        return int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None


class _Body:
    """Writes a chunked body as fast as the socket takes it, up to BODY_LIMIT."""

    def __init__(self, client: Client) -> None:
        self.client, self.sent = client, 0

    def resumeProducing(self) -> None:
        if self.sent >= BODY_LIMIT or self.client.data:
            return
        chunk = b"z" * 65536
        self.sent += len(chunk)
        self.client.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    def stopProducing(self) -> None:
        pass


async def _connect(reactor, port: int) -> Client:
    client = Client()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    await connectProtocol(endpoint, client).addTimeout(DEADLINE, reactor)
    return client


async def _until(reactor, condition, what: str, seconds: float = DEADLINE) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await deferLater(reactor, 0.05)
    raise AssertionError(f"not within {seconds}s: {what}")


def _temporary_files(pid: int) -> list[str]:
    """The relay's open descriptors on files in the temporary directory (twisted.web
    writes large request bodies to an unlinked file there)."""
    fd_dir = f"/proc/{pid}/fd"
    found = []
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:
            continue
        if target.startswith(tempfile.gettempdir() + "/") and "pytest" not in target:
            found.append(target)
    return found


async def _get_status(reactor, port: int) -> Client:
    client = await _connect(reactor, port)
    client.transport.write(b"GET /status HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
    await client.closed.addTimeout(DEADLINE, reactor)
    return client


@pytest_twisted.ensureDeferred
async def test_a_chunked_post_is_refused_before_its_body_is_read(rig, reactor):
    relay = await rig.start_relay()
    before = _temporary_files(relay.pid)
    client = await _connect(reactor, rig.status_listen)
    client.transport.write(
        b"POST /status HTTP/1.1\r\nHost: relay\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = _Body(client)
    client.transport.registerProducer(body, False)
    await _until(reactor, lambda: client.status is not None, "an answer while sending")
    during = _temporary_files(relay.pid)
    await client.closed.addTimeout(DEADLINE, reactor)
    assert client.status == 405
    assert during == before, "the body went to a temporary file"
    assert body.sent < BODY_LIMIT
    # The relay is none the worse: status answers and mail flows.
    assert (await _get_status(reactor, rig.status_listen)).status == 200
    await rig.send("after-post@t")
    await rig.sink.wait_for(1, timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_idle_status_connections_are_capped_and_smtp_and_status_still_answer(
    rig, reactor
):
    cap = 8
    await rig.start_relay(extra=f"status_max_connections = {cap}\n")
    idle = [await _connect(reactor, rig.status_listen) for _ in range(5 * cap)]
    # Each newcomer past the cap replaced the longest-idle one: only the last few are open.
    await _until(reactor, lambda: sum(c.closed.called for c in idle) >= 4 * cap, "the cap")
    await deferLater(reactor, 0.3)
    assert sum(not c.closed.called for c in idle) <= cap
    # The operator still gets /status, and submitters still get their mail through.
    status = await _get_status(reactor, rig.status_listen)
    assert status.status == 200 and b'"proxies"' in status.data
    await rig.send("during-flood@t")
    await rig.sink.wait_for(1, timeout=DEADLINE)
    for client in idle:
        client.transport.abortConnection()
