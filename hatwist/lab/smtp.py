"""A small scripted SMTP client with a deadline (tests: tests.rig.test_rig).

Rig and end-to-end tests need to push one message through an endpoint and see every
reply, without ``twisted.mail``'s client traps (FIELD-NOTES section 4: results that never
fire, per-chunk dot-stuffing). This client runs one fixed conversation, records each
reply, stops at the first unexpected one, and always fires: with a :class:`Conversation`,
or with ``defer.TimeoutError`` at the deadline (after aborting its connection).
"""

from __future__ import annotations

import attrs
from twisted.internet import defer, error
from twisted.internet.endpoints import connectProtocol
from twisted.protocols.basic import LineReceiver

#: Overall deadline of one conversation, seconds.
DEFAULT_DEADLINE = 10.0


@attrs.frozen
class Reply:
    code: int
    text: str  # lines joined with "\n"


@attrs.define
class Conversation:
    """Every (command, reply) exchanged; ``command`` is None for the greeting."""

    exchanges: list[tuple[str | None, Reply]] = attrs.field(factory=list)
    tls: bool = False
    delivered: bool = False  # the final "." got a 2xx
    #: Why the connection ended, when not cleanly (e.g. a TLS verification error).
    lost: str | None = None

    def reply_to(self, verb: str) -> Reply | None:
        """The last reply to a command starting with ``verb`` (e.g. ``"RCPT"``)."""
        for command, reply in reversed(self.exchanges):
            if command is not None and command.upper().startswith(verb.upper()):
                return reply
        return None


def dot_stuff(data: bytes) -> bytes:
    """``data`` as DATA content: CRLF line ends, leading dots doubled, final CRLF."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


class _Client(LineReceiver):
    def __init__(self, script, tls_options) -> None:
        self.script = script
        self.tls_options = tls_options
        self.conversation = Conversation()
        self.done: defer.Deferred[Conversation] = defer.Deferred()
        self._lines: list[str] = []
        self._pending: str | None = None
        self._steps = None

    def connectionMade(self) -> None:
        self._steps = self._run()
        self._expect = next(self._steps)

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        self._lines.append(text[4:])
        if len(text) >= 4 and text[3] == "-":
            return
        reply = Reply(int(text[:3]), "\n".join(self._lines))
        self._lines = []
        self.conversation.exchanges.append((self._pending, reply))
        if reply.code // 100 != self._expect:
            self._finish()
            return
        try:
            self._expect = self._steps.send(reply)
        except StopIteration:
            self._finish()

    def _send(self, command: str) -> None:
        self._pending = command
        self.sendLine(command.encode("utf-8"))

    def _run(self):
        helo, mail_from, rcpt_tos, data = self.script
        yield 2  # greeting
        self._send(f"EHLO {helo}")
        ehlo = yield 2
        if self.tls_options is not None:
            if "STARTTLS" not in ehlo.text.upper().split("\n"):
                self.conversation.exchanges.append(("(client)", Reply(0, "no STARTTLS")))
                self._finish()
                return
            self._send("STARTTLS")
            yield 2
            self.transport.startTLS(self.tls_options)
            self.conversation.tls = True
            self._send(f"EHLO {helo}")
            yield 2
        self._send(f"MAIL FROM:<{mail_from}>")
        yield 2
        for rcpt in rcpt_tos:
            self._send(f"RCPT TO:<{rcpt}>")
            yield 2
        self._send("DATA")
        yield 3
        self._pending = "."
        self.transport.write(dot_stuff(data) + b".\r\n")
        yield 2
        self.conversation.delivered = True
        self._send("QUIT")
        yield 2

    def _finish(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        if not reason.check(error.ConnectionDone):
            self.conversation.lost = f"{reason.type.__name__}: {reason.getErrorMessage()}"
        if not self.done.called:
            self.done.callback(self.conversation)


@defer.inlineCallbacks
def send(
    reactor,
    endpoint,
    *,
    mail_from: str = "sender@client.test",
    rcpt_tos: tuple[str, ...] = ("rcpt@mx.test",),
    data: bytes = b"Subject: test\n\nhello\n",
    helo: str = "client.test",
    tls=None,
    timeout: float = DEFAULT_DEADLINE,
):
    """Connect with ``endpoint`` and run one SMTP conversation (STARTTLS if ``tls``).

    ``tls`` is client TLS options (e.g. ``sink.client_tls_options()``). Fires with the
    :class:`Conversation` once the connection closes, whatever the server answered
    (a TLS or connection error is in ``.lost``); a failed connect fails; ``timeout``
    bounds it all (``defer.TimeoutError``).
    """
    client = _Client((helo, mail_from, tuple(rcpt_tos), data), tls)
    connecting = connectProtocol(endpoint, client)
    connecting.addTimeout(timeout, reactor)
    started = reactor.seconds()
    yield connecting
    remaining = max(0.01, timeout - (reactor.seconds() - started))

    client.done.addTimeout(remaining, reactor)
    try:
        conversation = yield client.done
    except defer.TimeoutError:
        client.transport.abortConnection()
        raise
    return conversation
