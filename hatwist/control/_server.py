# -*- test-case-name: tests.control.test_server -*-
"""
The control socket: a UNIX socket, mode 0600, where the running relay answers
``hatwist queue``.

Only the relay's own user (and root) can connect: the socket is created mode
0600.  Whoever connects is named in the log by the uid the kernel reports for
the peer (``SO_PEERCRED``), so a deleted message says who deleted it.

A hostile or broken client is bounded: at most :data:`MAX_CONNECTIONS` at once
(one more gets an error line and is closed), one request line of at most
``MAX_REQUEST`` bytes, :data:`IDLE_TIMEOUT` seconds to send it, and
:data:`DRAIN_TIMEOUT` seconds to read the answer (also between the lines of a
bulk action's, which wait for the client to read them: see ``_answer``).  One
request per connection; the relay closes it after the answer.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import struct
from typing import Any

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.policies import TimeoutMixin

from ._answer import Answer
from ._protocol import MAX_REQUEST, Request, RequestError, encode, error_line, parse_request

#: Control connections open at once.
MAX_CONNECTIONS = 8
#: Seconds a connection may take to send its request line.
IDLE_TIMEOUT = 10.0
#: Seconds an answer may take to be read by the client before the connection is
#: cut (a client that never reads would otherwise keep its answer in memory).
DRAIN_TIMEOUT = 60.0
#: Seconds a refused connection is kept to read its request (see ``_refuse``).
REFUSED_LINGER = 1.0
#: The socket's permissions: the relay's user only.
SOCKET_MODE = 0o600


class ControlError(Exception):
    """The control socket cannot be set up; the message names the path and why."""


def peer_uid(transport: Any) -> int | None:
    """The uid of the process at the other end of a UNIX socket (Linux), or None."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        raw = transport.getHandle().getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


class ControlProtocol(LineOnlyReceiver, TimeoutMixin):
    """One client: one request line, its answer, then the close."""

    delimiter = b"\n"
    MAX_LENGTH = MAX_REQUEST
    factory: ControlFactory

    _drain: Any = None
    _answer: Answer | None = None

    def connectionMade(self) -> None:
        self._answered = False
        if not self.factory.admit(self):
            self._refuse()
            return
        self.setTimeout(self.factory.idle_timeout)

    def _refuse(self) -> None:
        """One connection too many: say so, and let the client read it.  Closing with
        its request unread would reset the connection and lose the line, so write,
        half-close, and read (and drop) for up to :data:`REFUSED_LINGER` seconds --
        as many lingering at once as may be served, the rest closed at once."""
        self._answered = True
        self.transport.write(error_line(
            f"too many control connections (at most {self.factory.max_connections}); "
            "try again"))
        if not self.factory.linger(self):
            self.transport.loseConnection()
            return
        self.transport.loseWriteConnection()
        self._drain = self.factory.reactor.callLater(REFUSED_LINGER,
                                                     self.transport.abortConnection)

    def dataReceived(self, data: bytes) -> None:
        if self._answered and self not in self.factory.clients:
            return  # refused: its request is read and dropped
        super().dataReceived(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self._drain is not None and self._drain.active():
            self._drain.cancel()
        if self._answer is not None:
            self._answer.stopProducing()  # a bulk action stops between two slices
        self.factory.leave(self)

    def timeoutConnection(self) -> None:
        self._finish(error_line(f"no request within {self.factory.idle_timeout:g}s"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self._finish(error_line(f"request longer than {self.MAX_LENGTH} bytes"))

    def lineReceived(self, line: bytes) -> None:
        if self._answered:
            return
        self._answered = True
        self.setTimeout(None)
        try:
            request = parse_request(line.rstrip(b"\r"))
        except RequestError as e:
            self._finish(error_line(str(e)))
            return
        uid = peer_uid(self.transport)
        self._answer = Answer(self.transport, self.factory.reactor, self.factory.drain_timeout)
        d = defer.maybeDeferred(self.factory.handle, request, uid, self._answer)
        d.addCallback(lambda last: self._finish(encode(last)))
        d.addErrback(self._failed, request)

    def _failed(self, failure: Any, request: Request) -> None:
        self.factory.log.failure("control: {command} failed", failure, command=request.command)
        self._finish(error_line(f"internal error: {failure.getErrorMessage()}"))

    def _finish(self, last: bytes) -> None:
        self._answered = True
        if self._answer is not None:
            self._answer.close()
        if self.transport is not None and self.connected:
            self.transport.write(last)
            self.transport.loseConnection()
            self._drain = self.factory.reactor.callLater(
                self.factory.drain_timeout, self.transport.abortConnection)


class ControlFactory(protocol.Factory):
    """
    :param handler: has ``handle(request, uid, answer) -> dict | Deferred[dict]``:
        ``answer(line)`` sends early lines (list rows, an action's outcomes) and
        ``answer.ready()`` paces them (see ``_answer``); the dict is the last line.
    """

    protocol = ControlProtocol
    noisy = False
    log = Logger()

    def __init__(self, handler: Any, *, reactor: Any, max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT,
                 drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self._handler = handler
        self.reactor = reactor
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.drain_timeout = drain_timeout
        self.clients: set[ControlProtocol] = set()
        self.refused: set[ControlProtocol] = set()

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        p = ControlProtocol()
        p.factory = self
        p.callLater = self.reactor.callLater  # TimeoutMixin's clock
        return p

    def admit(self, client: ControlProtocol) -> bool:
        if len(self.clients) >= self.max_connections:
            return False
        self.clients.add(client)
        return True

    def linger(self, client: ControlProtocol) -> bool:
        """Whether a refused ``client`` may stay to read its request (bounded)."""
        if len(self.refused) >= self.max_connections:
            return False
        self.refused.add(client)
        return True

    def leave(self, client: ControlProtocol) -> None:
        self.clients.discard(client)
        self.refused.discard(client)

    def handle(self, request: Request, uid: int | None, write: Any) -> Any:
        return self._handler.handle(request, uid, write)


def clear_stale_socket(path: str) -> None:
    """
    Make room for the socket at ``path``: remove a socket left by a relay that
    died (nothing answers on it), refuse when a relay answers there or the path
    is something else.  Blocking, but a connect to a UNIX socket answers at once.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"control_socket {path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ControlError(f"control_socket {path}: {e.strerror}") from None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a relay that is gone
    else:
        raise ControlError(f"control_socket {path}: another relay is listening there")
    finally:
        probe.close()


class ControlService(service.Service):
    """Listens on the control socket while running; the socket is removed at stop."""

    name = "control_socket"
    log = Logger()

    def __init__(self, path: str, handler: Any, *, reactor: Any) -> None:
        self.path = path
        self.reactor = reactor
        self.factory = ControlFactory(handler, reactor=reactor)
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        clear_stale_socket(self.path)
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        try:
            self.port = self.reactor.listenUNIX(self.path, self.factory, mode=SOCKET_MODE,
                                                backlog=self.factory.max_connections)
        except Exception as e:
            raise ControlError(f"control_socket {self.path}: {_reason(e)}") from None
        self.log.info("control socket {path} listening (mode 0600): hatwist queue",
                      path=self.path)

    def stopService(self) -> Any:
        super().stopService()
        for client in list(self.factory.clients):
            client.transport.abortConnection()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def _reason(e: Exception) -> str:
    inner = getattr(e, "socketError", None) or e
    return getattr(inner, "strerror", None) or str(inner)
