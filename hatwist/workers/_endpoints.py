# -*- test-case-name: tests.workers.test_endpoints -*-
"""
The two listeners a worker uses instead of binding its own addresses.

A worker accepts SMTP on the socket its supervisor bound and handed down (one accept
queue for all workers, which survives any worker's death, so a restart never refuses a
connection and port 25 needs no privileges in the workers), and serves its /status and
/metrics on a UNIX socket under ``spool_dir`` that only the supervisor reads.
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

__all__ = ["AdoptedPortEndpoint", "listening_socket", "status_endpoint"]

#: Pending connections the kernel keeps for the workers together (Twisted's default is 50,
#: too few for N workers at thousands of sessions per second).
BACKLOG = 1024
#: sun_path's size on Linux, terminating NUL included.
_UNIX_PATH_MAX = 108


def listening_socket(host: str, port: int, family: int) -> socket.socket:
    """Bind and listen on ``host:port`` (in the supervisor): the socket every worker
    inherits. Non-blocking, as Twisted's ports are; raises OSError as ``bind`` does."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


#: Connections one worker accepts per readiness event of the shared socket.
ACCEPTS_PER_TURN = 1


class SharedPort(tcp.Port):
    """A TCP port on a socket other workers accept from too, taking one connection per
    reactor turn.

    Every worker is woken for a new connection; Twisted's port would accept up to a
    growing batch (20 more after each full one) at once, so the worker that happens to
    wake first under a burst takes most of it and the workers end up very unevenly
    loaded. One accept per turn makes the next connection go to whichever worker gets
    back to its reactor first: the least busy one.
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
    does, with a :class:`SharedPort`).

    Twisted duplicates the descriptor and never shuts the socket down when the port stops
    listening, so a worker that stops leaves the other workers' accept queue intact. The
    inherited descriptor itself is closed once adopted: a worker that stopped listening
    then holds no copy of the socket, and when all have stopped (the supervisor closes its
    own at SIGTERM) connections are refused, as with a single relay.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def listen(self, factory: Any) -> defer.Deferred[IListeningPort]:
        try:
            port = SharedPort._fromListeningDescriptor(
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
