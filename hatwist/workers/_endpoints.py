# -*- test-case-name: tests.workers.test_endpoints -*-
"""
The two listeners a worker uses instead of binding its own addresses.

A worker accepts SMTP on a socket its supervisor bound and handed down, so port 25 needs
no privileges in the workers, and serves its /status and /metrics on a UNIX socket under
``spool_dir`` that only the supervisor reads.

Each worker has its own listening socket, all bound to ``listen`` with SO_REUSEPORT
(:func:`listening_sockets`): the kernel spreads new connections over the sockets by a
hash of the connection's addresses, so one connection wakes one worker. With one
socket shared by all workers every worker woke for every connection and all but one
found nothing to accept (the thundering herd). The supervisor keeps its copy of every
socket, so a socket outlives its worker: connections the kernel queued on a dead
worker's socket (and those it hashes there until the successor runs) wait in that
queue for the successor, which inherits the same socket, instead of being reset.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from zope.interface import implementer

__all__ = ["AdoptedPortEndpoint", "listening_socket", "listening_sockets", "status_endpoint"]

#: Pending connections the kernel keeps per listening socket (Twisted's default is 50,
#: too few at thousands of sessions per second; the kernel caps it at net.core.somaxconn).
BACKLOG = 1024
#: sun_path's size on Linux, terminating NUL included.
_UNIX_PATH_MAX = 108


def listening_socket(host: str, port: int, family: int, *, reuse_port: bool = False
                     ) -> socket.socket:
    """Bind and listen on ``host:port`` (in the supervisor). Non-blocking, as Twisted's
    ports are; raises OSError as ``bind`` does.

    With ``reuse_port`` the socket joins (or starts) the address's SO_REUSEPORT group
    *after* it bound: the bind itself is exclusive, so it fails with EADDRINUSE when
    anything else listens there, even another group (a second relay on the same
    ``listen`` gets the one-line error instead of silently sharing the port)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listening_sockets(host: str, port: int, family: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one address, one per worker, in one SO_REUSEPORT
    group. The first is bound exclusively (see :func:`listening_socket`) and fixes the
    port (``port`` 0: the one the kernel chose, shared by all); the others join it.
    Nothing else can join by mistake: a relay's exclusive first bind fails while this
    group listens (only a program of the same user setting SO_REUSEPORT itself could)."""
    first = listening_socket(host, port, family, reuse_port=True)
    sockets = [first]
    try:
        bound = first.getsockname()[1]
        for _ in range(count - 1):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, bound))
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def owns_its_socket(fd: int) -> bool:
    """Whether the listening socket ``fd`` is this worker's own (SO_REUSEPORT set: one
    of :func:`listening_sockets`) rather than one accept queue shared by all workers."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    finally:
        sock.close()


#: Connections one worker accepts per readiness event of a shared socket.
ACCEPTS_PER_TURN = 1


class SharedPort(tcp.Port):
    """A TCP port on a socket other workers accept from too, taking one connection per
    reactor turn.

    Every worker is woken for a new connection; Twisted's port would accept up to a
    growing batch (20 more after each full one) at once, so the worker that happens to
    wake first under a burst takes most of it and the workers end up very unevenly
    loaded. One accept per turn makes the next connection go to whichever worker gets
    back to its reactor first: the least busy one. A worker's own SO_REUSEPORT socket
    needs none of this: it is a plain :class:`tcp.Port`, batching accepts as Twisted does.
    """

    @property  # type: ignore[override]
    def numberAccepts(self) -> int:
        return ACCEPTS_PER_TURN

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass  # Twisted's own scaling of the batch is what this port turns off


@implementer(IStreamServerEndpoint)
class AdoptedPortEndpoint:
    """Listen on an inherited listening socket ``fd`` (as ``reactor.adoptStreamPort``
    does): the worker's own socket as a plain port, a socket shared by all workers as a
    :class:`SharedPort`.

    Twisted duplicates the descriptor and never shuts the socket down when the port stops
    listening, so a worker that stops leaves the accept queue intact. The inherited
    descriptor itself is closed once adopted: a worker that stopped listening then holds
    no copy of the socket, and when the supervisor closes its own too (at SIGTERM),
    connections are refused, as with a single relay.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        try:
            kind = tcp.Port if owns_its_socket(self._fd) else SharedPort
            port = kind._fromListeningDescriptor(
                self._reactor, self._fd, self._family, factory)
            port.startListening()
        except Exception:
            return defer.fail()
        # The port listens on a duplicate: close the inherited descriptor, or it would keep
        # the socket open (accepting into a queue no one reads) after stopListening.
        with contextlib.suppress(OSError):
            os.close(self._fd)
        return defer.succeed(port)


def status_endpoint(reactor: Any, path: str) -> IStreamServerEndpoint:
    """A UNIX listening endpoint at ``path``, replacing what a killed predecessor left.

    The supervisor starts worker N only once the previous worker N has exited, so a
    socket file at ``path`` is always stale. Mode 0600: only the relay's user reads it.
    """
    if len(os.fsencode(path)) >= _UNIX_PATH_MAX:
        raise ValueError(
            f"the worker status socket {path} is longer than {_UNIX_PATH_MAX - 1} bytes; "
            "use a shorter spool_dir"
        )
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return UNIXServerEndpoint(reactor, path, mode=0o600)
