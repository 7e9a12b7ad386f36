"""The relay as operators run it, for end-to-end tests (tests: tests.service.test_relay).

``twistd -n hatwist --config FILE`` runs in a real child process, so ``kill -9``, SIGTERM
and SIGHUP are real signals and the spool is what a real crash leaves behind. This module
writes the config file (:func:`config_text`), runs the process (:class:`Relay`), and submits
mail with the standard library's ``smtplib`` in a thread (:func:`submit`), so the client is
independent of every line of hatwist and of ``twisted.mail``.

Readiness is proven, not slept for: :meth:`Relay.start` waits for Twisted's own
"InboundFactory starting on PORT" log line of the configured listen port, and fails with
the relay's log if the process exits first or the deadline passes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import smtplib
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import attrs
from twisted.internet import defer, error, protocol, task, threads

#: The project root: the relay's working directory, so the plugin in twisted/plugins is found.
ROOT = Path(__file__).resolve().parents[2]
#: How long :meth:`Relay.start` waits for the listen line.
START_DEADLINE = 20.0
#: How long :meth:`Relay.stop` waits after SIGTERM before SIGKILL.
STOP_DEADLINE = 15.0
#: Socket timeout of every smtplib call: a wedged relay fails the test instead of hanging it.
SMTP_TIMEOUT = 10.0
#: EHLO name of the test submitter (smtplib would otherwise look up this host's FQDN).
CLIENT_NAME = "submitter.test"

_LAUNCH = (
    "import sys; sys.argv = ['twistd', '-n', '--pidfile=', 'hatwist', '--config', {config!r}]; "
    "from twisted.scripts.twistd import run; run()"
)
#: ``twist --log-format=json hatwist --config FILE``: one JSON object per log line.
_LAUNCH_JSON = (
    "import sys; sys.argv = ['twist', '--log-format=json', 'hatwist', '--config', {config!r}]; "
    "from twisted.application.twist._twist import Twist; Twist.main()"
)

#: pid of every relay started here and not yet seen to exit.
_RUNNING: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave a relay behind, even when a test forgot to stop its own."""
    for pid in list(_RUNNING):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def config_text(
    *,
    listen: int,
    status_listen: int,
    spool_dir: str,
    resolver: tuple[str, int],
    proxy: str,
    smtp_port: int,
    bindings: Mapping[str, str],
    retry_interval: int = 1,
    shutdown_grace: int = 5,
    relay_from: str = "127.0.0.0/8",
    health_interval: int = 2,
    extra: str = "",
) -> str:
    """A relay config: ``bindings`` maps binding name -> IPv4 PROXY source address.

    Health checks run every ``health_interval`` seconds (timeout 1) and flip a server
    after one failed or one successful check, so a proxy change is seen within one
    interval. Outbound TLS is off: the sink does not offer it.
    """
    lines = [
        f"listen = 127.0.0.1:{listen}",
        f"status_listen = 127.0.0.1:{status_listen}",
        f'spool_dir = "{spool_dir}"',
        f"resolver = {resolver[0]}:{resolver[1]}",
        f'relay_from = "{relay_from}"',
        f"shutdown_grace = {shutdown_grace}",
        f'ha_proxy_server = "{proxy}"',
        f"remote_smtp_port = {smtp_port}",
        f"retry_interval = {retry_interval}",
        "tls = no",
        "connect_timeout = 2",
        "smtp_timeout = 5",
        "ehlo_hostname = relay.hatwist.test",
        "ha_proxy_client {",
        f"  health_check_interval = {health_interval}",
        "  health_check_timeout = 1",
        "  health_check_failure_threshold = 1",
        "  health_check_success_threshold = 1",
        "}",
    ]
    for name, source in bindings.items():
        scope = "binding" if name == "default" else f"binding {name}"
        lines += [f"{scope} {{", f"  ha_proxy_src_addr = {source}", "}"]
    return "\n".join(lines) + "\n" + extra


class RelayExited(Exception):
    """The relay process ended while a test waited for it to do something."""


class _RelayProcess(protocol.ProcessProtocol):
    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._buffers: dict[int, bytes] = {1: b"", 2: b""}
        self.ended: defer.Deferred[int | None] = defer.Deferred()
        self.exited = False
        self.status: int | None = None

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        buffer = self._buffers.get(childFD, b"") + data
        *lines, self._buffers[childFD] = buffer.split(b"\n")
        for line in lines:
            self._relay._line(line.decode("utf-8", "replace"))

    def processEnded(self, reason) -> None:
        for rest in self._buffers.values():
            if rest:
                self._relay._line(rest.decode("utf-8", "replace"))
        self._buffers = {}
        self.exited = True
        value = reason.value
        # ProcessDone/ProcessTerminated: exitCode, or the signal that ended it (negated).
        self.status = value.exitCode if value.exitCode is not None else -(value.signal or 0)
        self._relay._ended()
        self.ended.callback(self.status)


class Relay:
    """One ``twistd hatwist`` process for ``config_path``, listening on ``listen_port``.

    :attr:`logs` keeps every output line across restarts; :meth:`start` may be called
    again after the process ended (same config, same spool).
    """

    def __init__(
        self, reactor, config_path: str, listen_port: int, *, json_logs: bool = False
    ) -> None:
        self._reactor = reactor
        self._launch = _LAUNCH_JSON if json_logs else _LAUNCH
        self.config_path = config_path
        self.listen_port = listen_port
        self.logs: list[str] = []
        self._process: _RelayProcess | None = None
        self._transport = None
        self._waiters: list[tuple[str, int, defer.Deferred[str]]] = []

    @property
    def running(self) -> bool:
        return self._process is not None and not self._process.exited

    @property
    def pid(self) -> int | None:
        return self._transport.pid if self.running else None

    def _line(self, line: str) -> None:
        self.logs.append(line)
        for waiter in list(self._waiters):
            needle, start, d = waiter
            if needle in line and len(self.logs) > start:
                self._waiters.remove(waiter)
                d.callback(line)

    def _ended(self) -> None:
        _RUNNING.discard(self._transport.pid if self._transport else -1)
        for waiter in list(self._waiters):
            self._waiters.remove(waiter)
            waiter[2].errback(RelayExited("relay exited:\n" + self.tail()))

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.logs[-n:])

    def mark(self) -> int:
        """A position in :attr:`logs`; pass it to :meth:`wait_for_log` as ``since``."""
        return len(self.logs)

    def lines_with(self, *needles: str, since: int = 0) -> list[str]:
        return [line for line in self.logs[since:] if all(n in line for n in needles)]

    def wait_for_log(
        self, needle: str, timeout: float = 10.0, since: int | None = None
    ) -> defer.Deferred[str]:
        """Fire with the first line containing ``needle`` at or after position ``since``
        (default: lines from now on); fail if the relay exits first."""
        start = self.mark() if since is None else since
        for line in self.logs[start:]:
            if needle in line:
                return defer.succeed(line)
        if not self.running:
            return defer.fail(RelayExited(f"relay not running; no {needle!r}:\n" + self.tail()))
        d: defer.Deferred[str] = defer.Deferred()
        waiter = (needle, start, d)
        self._waiters.append(waiter)

        def forget(result):
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return result

        d.addTimeout(timeout, self._reactor)
        d.addBoth(forget)
        return d

    async def start(self, timeout: float = START_DEADLINE) -> Relay:
        """Run the relay and return once its SMTP listener is listening."""
        if self.running:
            raise RuntimeError("the relay is already running")
        since = self.mark()
        argv = [sys.executable, "-c", self._launch.format(config=self.config_path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._process = process = _RelayProcess(self)
        self._transport = self._reactor.spawnProcess(
            process, argv[0], argv, env=env, path=str(ROOT),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        _RUNNING.add(self._transport.pid)
        try:
            await self.wait_for_log(
                f"InboundFactory starting on {self.listen_port}", timeout, since=since
            )
        except defer.TimeoutError:
            await self.kill()
            raise RelayExited(f"relay not listening within {timeout}s:\n" + self.tail()) from None
        return self

    def signal(self, name: str) -> None:
        """Send ``name`` ("TERM", "HUP", "KILL") to the relay process."""
        self._transport.signalProcess(name)

    def exited(self, timeout: float) -> defer.Deferred[int | None]:
        """Fire with the exit status (negative: killed by that signal) within ``timeout``."""
        process = self._process
        if process is None or process.exited:
            return defer.succeed(None if process is None else process.status)
        observer: defer.Deferred[int | None] = defer.Deferred()
        process.ended.addBoth(lambda status: (observer.callback(status), status)[1])
        return observer.addTimeout(timeout, self._reactor)

    async def kill(self) -> int | None:
        """SIGKILL, and wait until the process is gone (what a crash leaves behind)."""
        if self.running:
            with contextlib.suppress(error.ProcessExitedAlready):
                self.signal("KILL")
        return await self.exited(STOP_DEADLINE)

    async def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after :data:`STOP_DEADLINE`."""
        if not self.running:
            return None if self._process is None else self._process.status
        with contextlib.suppress(error.ProcessExitedAlready):
            self.signal("TERM")
        try:
            return await self.exited(STOP_DEADLINE)
        except defer.TimeoutError:
            return await self.kill()


# -- submission ---------------------------------------------------------------------------


def make_message(
    message_id: str, *, binding: str | None = None, subject: str = "test", body: str = ""
) -> str:
    """A small RFC 5322 message (CRLF added by smtplib) with a unique Message-ID."""
    headers = [
        "From: sender@src.test",
        "To: rcpt@dest.test",
        f"Subject: {subject}",
        f"Message-ID: <{message_id}>",
    ]
    if binding is not None:
        headers.append(f"X-Binding: {binding}")
    return "\n".join(headers) + "\n\n" + (body or f"body of {message_id}\n")


@attrs.frozen
class Submission:
    """Every reply of one submission: MAIL, each RCPT, and DATA (None if not reached)."""

    mail: tuple[int, str]
    rcpts: tuple[tuple[int, str], ...]
    data: tuple[int, str] | None

    @property
    def accepted(self) -> bool:
        return self.data is not None and self.data[0] == 250


def _reply(pair: tuple[int, bytes]) -> tuple[int, str]:
    return pair[0], pair[1].decode("utf-8", "replace")


def _transaction(
    client: smtplib.SMTP, mail_from: str, rcpts: Sequence[str], message: str
) -> Submission:
    mail = _reply(client.mail(mail_from))
    if mail[0] != 250:
        client.rset()
        return Submission(mail, (), None)
    replies = tuple(_reply(client.rcpt(r)) for r in rcpts)
    if not any(code == 250 for code, _ in replies):
        client.rset()
        return Submission(mail, replies, None)
    content = message.replace("\n", "\r\n").encode("ascii")
    return Submission(mail, replies, _reply(client.data(content)))


def submit_blocking(
    port: int,
    mail_from: str,
    rcpts: Sequence[str],
    message: str,
    *,
    source: str | None = None,
) -> Submission:
    """One SMTP session, one transaction (blocking: run it in a thread)."""
    source_address = (source, 0) if source is not None else None
    with smtplib.SMTP(
        "127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=SMTP_TIMEOUT,
        source_address=source_address,
    ) as client:
        client.ehlo()
        return _transaction(client, mail_from, rcpts, message)


def submit(reactor, port: int, mail_from: str, rcpts: Sequence[str], message: str,
           **kwargs) -> defer.Deferred[Submission]:
    """:func:`submit_blocking` in a thread, with a deadline."""
    d = threads.deferToThread(submit_blocking, port, mail_from, rcpts, message, **kwargs)
    return d.addTimeout(SMTP_TIMEOUT * 2, reactor)


def open_session(port: int) -> smtplib.SMTP:
    """A connected, EHLO-greeted session for a test to drive step by step (in threads)."""
    client = smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME, timeout=SMTP_TIMEOUT)
    client.ehlo()
    return client


def close_quietly(client: smtplib.SMTP) -> None:
    with contextlib.suppress(OSError, smtplib.SMTPException):
        client.close()


def connect_refused(port: int) -> bool:
    """Whether a TCP connect to 127.0.0.1:``port`` is refused right now (blocking)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=SMTP_TIMEOUT):
            return False
    except ConnectionRefusedError:
        return True


#: Interval between connects while waiting for a listener to go away.
REFUSED_POLL = 0.05


async def wait_refused(reactor, port: int, timeout: float) -> None:
    """Return once connecting to 127.0.0.1:``port`` is refused; TimeoutError after
    ``timeout`` (a connect racing the close may still be accepted, then reset)."""
    deadline = reactor.seconds() + timeout
    while True:
        with contextlib.suppress(OSError):
            if await threads.deferToThread(connect_refused, port):
                return
        if reactor.seconds() > deadline:
            raise defer.TimeoutError(f"127.0.0.1:{port} still accepts after {timeout}s")
        await task.deferLater(reactor, REFUSED_POLL)


class SessionGone(Exception):
    """The submitter's connection broke (e.g. the relay was killed)."""


def submit_many_blocking(
    port: int, mail_from: str, rcpt: str, message_ids: Iterable[str],
    on_accepted=lambda message_id: None,
) -> list[str]:
    """Submit one message per id over one session; return the ids that got 250.

    Stops quietly at the first broken connection (that is what a crash looks like to a
    client); ``on_accepted(id)`` is called from this thread after each 250.
    """
    accepted: list[str] = []
    try:
        with smtplib.SMTP("127.0.0.1", port, local_hostname=CLIENT_NAME,
                          timeout=SMTP_TIMEOUT) as client:
            client.ehlo()
            for message_id in message_ids:
                result = _transaction(client, mail_from, [rcpt], make_message(message_id))
                if not result.accepted:
                    raise SessionGone(f"{message_id}: {result}")
                accepted.append(message_id)
                on_accepted(message_id)
    except (OSError, smtplib.SMTPException):
        pass  # a dead relay: what got 250 so far is the answer
    return accepted


_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>\r\n]*)>\r?$", re.MULTILINE | re.IGNORECASE)


def message_id_of(data: bytes) -> str | None:
    """The Message-ID (without brackets) of a delivered message's bytes (cheap: no
    full parse, because waiting on hundreds of messages asks again at every sink event)."""
    found = _MESSAGE_ID.search(data.split(b"\r\n\r\n", 1)[0])
    return None if found is None else found.group(1).decode("ascii", "replace")
