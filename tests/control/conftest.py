"""The paced control server of tests.control.test_server and test_cli_queue: the real
ControlService with a handler that streams a long answer as a bulk action does."""

from __future__ import annotations

import pytest
from twisted.internet import defer, task

from hatwist.control import ControlService


class Pacer:
    """Writes ``batches`` of 100 lines of 100 bytes, asking ``answer.ready()`` between
    them, as QueueHandler does between an action's slices; records the most the
    transport held unsent and where it stopped."""

    def __init__(self, batches):
        self.batches, self.done, self.most, self.stopped = batches, 0, 0, False
        self.requests = []
        self.slow = False  # a batch every 10 ms, not as fast as the client reads

    async def run(self, answer):
        transport = answer._transport
        for _ in range(self.batches):
            for _ in range(100):
                answer(b'{"result":["' + b"x" * 80 + b'","held"]}\n')
            self.most = max(self.most, len(b"".join(transport._tempDataBuffer))
                            + len(transport.dataBuffer) - transport.offset)
            self.done += 1
            if self.slow:
                from twisted.internet import reactor

                await task.deferLater(reactor, 0.01, lambda: None)
            if not await answer.ready():
                self.stopped = True
                break
        return {"ok": True, "batches": self.done}

    def handle(self, request, uid, answer):
        self.requests.append((request, uid))
        return defer.ensureDeferred(self.run(answer))


@pytest.fixture
def paced(reactor, tmp_path):
    handler = Pacer(batches=300)  # about 3 MB: far more than the socket buffers hold
    service = ControlService(str(tmp_path / "control.sock"), handler, reactor=reactor)
    service.startService()
    service.handler = handler
    yield service
    if service.running:
        service.stopService()
