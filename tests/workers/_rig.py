"""The real parts around a relay with workers or behind a balancer (tests.workers).

The egress HAProxy, the recording sink on 127.0.0.20 and the in-process DNS are the
session's usual fixtures; :class:`Balancer` is a second, real HAProxy in front of the
relay (``send-proxy-v2``); the relay is a real ``twistd hatwist`` (tests.service._relay).
"""

from __future__ import annotations

import json
import os

import attrs
from twisted.internet import defer, task
from twisted.web.client import Agent, readBody

from hatwist.lab.haproxy import HAProxy
from tests.rig.haproxy import free_port
from tests.service._relay import Relay, config_text, message_id_of

DEADLINE = 20.0
SINK_HOST = "127.0.0.20"
DEFAULT_SOURCE = "127.0.0.9"

_BALANCER = """\
global
    log stdout format raw local0 info
    stats socket {admin_socket} mode 600 level admin
defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend balancer
    bind 127.0.0.1:{port}
    default_backend hatwist
backend hatwist
    server hatwist 127.0.0.1:{relay_port} send-proxy-v2
"""


class Balancer(HAProxy):
    """A real HAProxy balancing to one hatwist listener with a PROXY v2 header."""

    def __init__(self, reactor, relay_port: int) -> None:
        super().__init__(reactor)
        self.relay_port = relay_port

    def config_text(self) -> str:
        return _BALANCER.format(admin_socket=self.admin_socket, port=self.port,
                                relay_port=self.relay_port)


@attrs.define
class WorkersRig:
    reactor: object
    dns: object
    sink: object
    haproxy: object
    directory: str
    listen: int = attrs.field(factory=free_port)
    status_listen: int = attrs.field(factory=free_port)
    relays: list[Relay] = attrs.Factory(list)
    balancer: object = None

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "hatwist.conf")

    @property
    def spool_dir(self) -> str:
        return os.path.join(self.directory, "spool")

    def write_config(self, extra: str = "", **options) -> None:
        text = config_text(
            listen=self.listen, status_listen=self.status_listen, spool_dir=self.spool_dir,
            resolver=self.dns.address, proxy=self.haproxy.server_text,
            smtp_port=self.sink.port, bindings={"default": DEFAULT_SOURCE},
            extra=extra, **options,
        )
        temporary = self.config_path + ".new"
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temporary, self.config_path)

    def relay(self) -> Relay:
        relay = Relay(self.reactor, self.config_path, self.listen)
        self.relays.append(relay)
        return relay

    async def get(self, path: str) -> bytes:
        agent = Agent(self.reactor)
        url = f"http://127.0.0.1:{self.status_listen}{path}".encode()
        response = await agent.request(b"GET", url).addTimeout(DEADLINE, self.reactor)
        body = await readBody(response).addTimeout(DEADLINE, self.reactor)
        assert response.code == 200, (path, body)
        return body

    async def status(self) -> dict:
        return json.loads(await self.get("/status"))

    async def wait_status(self, check, timeout: float = DEADLINE) -> dict:
        """Poll /status until ``check(document)`` is true; TimeoutError with the last one."""
        deadline = self.reactor.seconds() + timeout
        while True:
            document = await self.status()
            if check(document):
                return document
            if self.reactor.seconds() > deadline:
                raise defer.TimeoutError(f"/status never matched: {document}")
            await task.deferLater(self.reactor, 0.2)

    def delivered(self) -> dict[str, list]:
        found: dict[str, list] = {}
        for m in self.sink.messages:
            found.setdefault(message_id_of(m.data), []).append(m)
        return found


async def wait_for_lines(relay: Relay, needle: str, count: int,
                         timeout: float = DEADLINE, since: int = 0) -> list[str]:
    """Wait until ``count`` lines at or after ``since`` contain ``needle``."""
    deadline = relay._reactor.seconds() + timeout
    while True:
        found = relay.lines_with(needle, since=since)
        if len(found) >= count:
            return found
        if relay._reactor.seconds() > deadline:
            raise defer.TimeoutError(f"{len(found)} of {count} {needle!r}:\n" + relay.tail())
        await task.deferLater(relay._reactor, 0.1)
