"""Throw-away network namespaces for IPv6 end-to-end tests (tests: tests.rig.test_rig).

The host running the tests may have no IPv6 addresses to spare, and tests must never touch
an address outside loopback. A fresh namespace has only ``lo``; inside it we can add
``fd00::9`` (a binding's source) and ``fd00::20`` (the MX) and run HAProxy, the sink and a
client there, all private to the test. Needs root (CAP_SYS_ADMIN); :func:`netns_available`
says whether this machine allows it, so tests can skip with the reason.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import subprocess

import attrs
from twisted.internet import defer, error, protocol

#: Addresses a namespace gets unless the test asks for others.
DEFAULT_ADDRESSES = ("fd00::9/128", "fd00::20/128")
#: Deadline for one ``ip`` command.
IP_DEADLINE = 10.0

_counter = itertools.count()


class NetNSError(Exception):
    """An ``ip netns`` command failed; the message carries its output."""


@attrs.frozen
class ProcessResult:
    """What a finished subprocess printed and how it ended."""

    out: bytes
    err: bytes
    code: int | None  # None: killed by a signal (e.g. at its deadline)


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[ProcessResult] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(ProcessResult(b"".join(self.out), b"".join(self.err), code))


@defer.inlineCallbacks
def run_process(reactor, argv: list[str], timeout: float, cwd: str | None = None, env=None):
    """Run ``argv`` without blocking the reactor; kill it at ``timeout`` seconds.

    Fires with a :class:`ProcessResult`; a killed process reports ``code=None``.
    """
    collect = _Collect()
    transport = reactor.spawnProcess(
        collect, argv[0], argv, env=os.environ.copy() if env is None else env, path=cwd
    )
    killer = reactor.callLater(timeout, _kill, transport)
    try:
        result = yield collect.done
    finally:
        if killer.active():
            killer.cancel()
    return result


def _kill(transport) -> None:
    with contextlib.suppress(error.ProcessExitedAlready):
        transport.signalProcess("KILL")


@functools.cache
@functools.cache
def _probe() -> str | None:
    """None when namespaces work here, else why not (checked once per process)."""
    if os.geteuid() != 0:
        return "not running as root"
    name = f"hatwist-probe-{os.getpid()}"
    try:
        added = subprocess.run(
            ["ip", "netns", "add", name], capture_output=True, text=True, timeout=IP_DEADLINE
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"ip netns add: {e}"
    if added.returncode != 0:
        return f"ip netns add: {added.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=IP_DEADLINE)
    return None


def netns_unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    return _probe()


def netns_available() -> bool:
    """Whether this machine lets us create network namespaces (see the reason function)."""
    return _probe() is None


class NetNS:
    """A uniquely named network namespace with ``lo`` up. Build it with :meth:`create`."""

    def __init__(self, reactor, name: str) -> None:
        self._reactor = reactor
        self.name = name
        self.addresses: list[str] = []

    @classmethod
    @defer.inlineCallbacks
    def create(cls, reactor, addresses=DEFAULT_ADDRESSES):
        """Add the namespace, bring ``lo`` up and give it ``addresses`` (CIDR strings)."""
        ns = cls(reactor, f"hatwist-{os.getpid()}-{next(_counter)}")
        yield ns._ip("netns", "add", ns.name)
        try:
            yield ns._ip("-n", ns.name, "link", "set", "lo", "up")
            for address in addresses:
                yield ns.add_address(address)
        except BaseException:
            yield ns.delete()
            raise
        return ns

    @defer.inlineCallbacks
    def _ip(self, *args: str):
        result = yield run_process(self._reactor, ["ip", *args], IP_DEADLINE)
        if result.code != 0:
            raise NetNSError(
                f"ip {' '.join(args)} failed ({result.code}): {result.err.decode().strip()}"
            )
        return result

    @defer.inlineCallbacks
    def add_address(self, cidr: str):
        """Add ``cidr`` (e.g. ``fd00::9/128`` or ``127.0.0.9/8``) to ``lo``.

        IPv6 addresses are added ``nodad``: they are usable at once, with no
        duplicate-address-detection wait (which would otherwise mean polling).
        """
        family = "-6" if ":" in cidr else "-4"
        extra = ("nodad",) if family == "-6" else ()
        yield self._ip("-n", self.name, family, "addr", "add", cidr, "dev", "lo", *extra)
        self.addresses.append(cidr)

    def exec_argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed so that it runs inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout: float = 30.0, cwd: str | None = None, env=None):
        """Run ``argv`` inside the namespace; fires with a :class:`ProcessResult`."""
        return run_process(self._reactor, self.exec_argv(*argv), timeout, cwd=cwd, env=env)

    @defer.inlineCallbacks
    def delete(self):
        """Delete the namespace (processes still inside keep it alive until they exit)."""
        yield run_process(self._reactor, ["ip", "netns", "del", self.name], IP_DEADLINE)
        return None
