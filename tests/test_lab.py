"""Tests for ``hatwist lab`` (hatwist._cli_lab, hatwist.lab.playground).

The command runs as a newcomer runs it, in a child process; its printed config drives a
real ``twistd hatwist`` (tests/service/_relay.py), mail goes in over SMTP with the
standard library's client, and the lab's own output must report the message with the
source address of the binding it was sent on. Ctrl-C (SIGINT) ends the lab and the
HAProxy it started.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.task import deferLater

from hatwist.config import load_config
from hatwist.lab.demo import DEFAULT_SOURCE, WARMUP_SOURCE
from tests.rig.haproxy import free_port
from tests.rig.needs import require_haproxy
from tests.service._relay import Relay, make_message, submit
from tests.test_demo import _alive

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = 30.0
_PID = re.compile(r"^HAProxy\s+\S+ \(accept-proxy, usesrc clientip; pid (\d+)\)", re.M)


class _Lab(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = ""
        self.ended: defer.Deferred[int] = defer.Deferred()
        self._waiting: list[tuple[str, defer.Deferred[None]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode()
        for needle, d in list(self._waiting):
            if needle in self.output:
                self._waiting.remove((needle, d))
                d.callback(None)

    errReceived = outReceived

    def wait_for(self, needle: str, reactor) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if needle in self.output:
            d.callback(None)
        else:
            self._waiting.append((needle, d))
        return d.addTimeout(DEADLINE, reactor)

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value.exitCode)



@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_lab_keeps_its_parts_running_for_a_relay_run_by_hand(reactor, tmp_path):
    require_haproxy()
    config_path = tmp_path / "lab.conf"
    lab = _Lab()
    process = reactor.spawnProcess(
        lab, sys.executable, [sys.executable, "-m", "hatwist.cli", "lab", "--write-config",
                              str(config_path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, path=str(ROOT))
    relay = None
    try:
        await lab.wait_for("lab ready", reactor)
        assert "pool-a.test.  MX 10 mx.pool-a.test." in lab.output
        assert "swaks --server 127.0.0.1:2525" in lab.output
        # The printed config is valid; run it on free ports and a private spool.
        listen, status = free_port(), free_port()
        text = config_path.read_text().replace("127.0.0.1:2525", f"127.0.0.1:{listen}")
        text = text.replace("127.0.0.1:8025", f"127.0.0.1:{status}")
        text = re.sub(r'spool_dir = ".*"', f'spool_dir = "{tmp_path / "spool"}"', text)
        config_path.write_text(text)
        load_config(str(config_path))
        relay = await Relay(reactor, str(config_path), listen).start()
        # Accepted at once, spooled, delivered once a health check has plumbed the proxy.
        sent = await submit(reactor, listen, "you@sender.test", ["someone@pool-a.test"],
                            make_message("<lab-1@test>", binding="warmup"))
        assert sent.accepted, sent
        await lab.wait_for(f"sink received from {WARMUP_SOURCE}: <you@sender.test> -> "
                           "someone@pool-a.test", reactor)
        assert DEFAULT_SOURCE not in lab.output.split("lab ready", 1)[1]
    finally:
        if relay is not None:
            await relay.stop()
        pid = _PID.search(lab.output)
        process.signalProcess(signal.SIGINT)
        code = await lab.ended.addTimeout(DEADLINE, reactor)
    assert code == 0, lab.output
    assert "everything it started has been stopped" in lab.output
    assert pid is not None, lab.output
    for _ in range(50):
        if not _alive(int(pid.group(1))):
            break
        await deferLater(reactor, 0.1)
    assert not _alive(int(pid.group(1))), "the lab's HAProxy outlived it"
