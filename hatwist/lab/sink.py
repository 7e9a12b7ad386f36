"""An in-process SMTP server that records what it was sent (tests: tests.rig.test_rig).

The sink stands in for a remote MX: a real SMTP server on a real socket, so whatever
reaches it has crossed HAProxy exactly as mail would. It records, per session, the peer
address (the source IP HAProxy used), the EHLO name, every command, whether TLS was on,
and every accepted message as raw bytes after dot-unstuffing.

It is hand-written rather than built on ``twisted.mail.smtp.ESMTP`` so that tests control
every reply and see the bytes unaltered (that server rewrites line endings, answers
pipelined commands out of order when validation is asynchronous, and cannot be told to
misbehave). Misbehaviour is configured with plain attributes that take effect for the
next command, so a test can change them between sessions:

    sink = await SMTPSink.start(reactor, host="127.0.0.20", tls=True)
    sink.recipient_replies["bad@x.test"] = (550, "5.1.1 no such user")
    sink.replies["MAIL"] = (451, "4.3.0 try later")
    await sink.wait_for(1, timeout=5)
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTCP
from twisted.protocols.basic import LineReceiver

from hatwist.lab.certs import CA, shared_ca

Reply = tuple[int, str]

#: Host name the sink greets with and its TLS certificate is issued for.
DEFAULT_NAME = "mx.test"
DEFAULT_GREETING: Reply = (220, f"{DEFAULT_NAME} ESMTP hatwist test sink")
#: ESMTP extensions advertised after EHLO (STARTTLS is added when TLS is on).
DEFAULT_EXTENSIONS = ("PIPELINING", "8BITMIME", "SIZE 52428800", "ENHANCEDSTATUSCODES")
#: Key of :attr:`SMTPSink.replies` for the reply after the message's final ``.``.
END_OF_DATA = "."
#: Reply value meaning "never answer this": the sink goes quiet for the rest of the session.
SILENT = None
#: Longest line the sink accepts; long enough for any sane test, finite for safety.
MAX_LINE = 1024 * 1024


@attrs.frozen
class SinkMessage:
    """One accepted message: its envelope, its raw bytes, and the session it came in."""

    peer: tuple[str, int]
    helo: str | None
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    tls: bool


@attrs.define
class SinkSession:
    """What one SMTP connection did; filled in as the session runs."""

    peer: tuple[str, int]
    local: tuple[str, int]
    helo: str | None = None
    tls: bool = False
    mail_from: str | None = None
    #: Every recipient the client asked for in this session, accepted or not.
    rcpt_tos: list[str] = attrs.field(factory=list)
    #: Every command line received, decoded, without CRLF.
    commands: list[str] = attrs.field(factory=list)
    messages: list[SinkMessage] = attrs.field(factory=list)
    closed: bool = False


def _path(argument: str) -> str:
    """The address inside ``<...>`` of a MAIL/RCPT argument (parameters dropped)."""
    start = argument.find("<")
    end = argument.find(">", start + 1)
    if start == -1 or end == -1:
        return argument.split(" ")[0]
    return argument[start + 1 : end]


class _SinkProtocol(LineReceiver):
    delimiter = b"\n"  # split on LF and keep each CR, so DATA is recorded byte for byte
    MAX_LENGTH = MAX_LINE

    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink
        self.session: SinkSession
        self.silent = False
        self._reset()
        self._data: list[bytes] | None = None
        self._previous_line_complete = True

    def _reset(self) -> None:
        self.mail_from: str | None = None
        self.accepted: list[str] = []

    def connectionMade(self) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.session = SinkSession(peer=(peer.host, peer.port), local=(host.host, host.port))
        self.sink._connected(self)
        greeting = self.sink.refuse_from.get(peer.host, self.sink.greeting)
        if greeting is SILENT:
            self.silent = True
            return
        self.reply(greeting)
        if greeting[0] >= 400:
            # A refusing server still answers QUIT; everything else gets 503.
            self._refused = True

    _refused = False
    _dropped = False
    _breaking_tls = False

    def dataReceived(self, data: bytes) -> None:
        if self._breaking_tls:
            # The client's first handshake bytes: reset instead of answering them.
            self._dropped = True
            self.transport.abortConnection()
            return
        super().dataReceived(data)

    def reply(self, reply: Reply) -> None:
        code, text = reply
        lines = text.split("\n") or [""]
        out = [f"{code}-{line}" for line in lines[:-1]] + [f"{code} {lines[-1]}"]
        self.transport.write("".join(line + "\r\n" for line in out).encode("utf-8"))

    def _answer(self, verb: str, default: Reply) -> None:
        """Send the configured reply for ``verb`` (or ``default``); SILENT stops answering."""
        reply = self.sink.replies.get(verb, default)
        if reply is SILENT:
            self.silent = True
            return
        self.reply(reply)
        if reply[0] == 421:
            self.transport.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        if self._dropped:
            return  # lines already buffered when we aborted
        if self._data is not None:
            self._data_line(line)
            return
        if self.silent:
            return
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        self.session.commands.append(text)
        if self.session.tls is False and getattr(self, "_tls_started", False):
            self.session.tls = True
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        if self._refused and verb != "QUIT":
            self.reply((503, "5.5.1 go away"))
        else:
            handler = getattr(self, "smtp_" + verb, None)
            if handler is None:
                self._answer(verb, (500, "5.5.2 command not recognized"))
            else:
                handler(argument.strip())
        self.sink._changed()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.reply((500, "5.5.6 line too long"))
        self.transport.loseConnection()

    # -- commands -------------------------------------------------------------------------

    def smtp_EHLO(self, argument: str) -> None:
        self.session.helo = argument
        self._reset()
        extensions = list(self.sink.extensions)
        if self.sink.tls_options is not None and not self.session.tls:
            extensions.append("STARTTLS")
        self._answer("EHLO", (250, "\n".join([self.sink.name, *extensions])))

    def smtp_HELO(self, argument: str) -> None:
        self.session.helo = argument
        self._reset()
        self._answer("HELO", (250, self.sink.name))

    def smtp_STARTTLS(self, argument: str) -> None:
        if self.sink.tls_options is None or self.session.tls:
            self.reply((502, "5.5.1 STARTTLS not available"))
            return
        if "STARTTLS" in self.sink.replies:
            self._answer("STARTTLS", (220, "2.0.0 ready"))
            return
        if self.sink.break_starttls:
            self.reply((220, "2.0.0 ready to start TLS"))
            self.clearLineBuffer()
            self._breaking_tls = True
            return
        self.reply((220, "2.0.0 ready to start TLS"))
        # Drop anything pipelined after STARTTLS (the classic injection) and restart.
        self.clearLineBuffer()
        self.transport.startTLS(self.sink.tls_options)
        self._tls_started = True
        self.session.helo = None
        self._reset()

    def smtp_MAIL(self, argument: str) -> None:
        if self.session.helo is None:
            self.reply((503, "5.5.1 EHLO first"))
            return
        if self.mail_from is not None:
            self.reply((503, "5.5.1 nested MAIL"))
            return
        path = _path(argument.partition(":")[2].strip())
        self.session.mail_from = path
        reply = self.sink.replies.get("MAIL", (250, "2.1.0 ok"))
        if reply is not SILENT and reply[0] == 250:
            self.mail_from = path
        self._answer("MAIL", (250, "2.1.0 ok"))

    def smtp_RCPT(self, argument: str) -> None:
        if self.mail_from is None:
            self.reply((503, "5.5.1 MAIL first"))
            return
        path = _path(argument.partition(":")[2].strip())
        self.session.rcpt_tos.append(path)
        reply = self.sink.recipient_replies.get(path)
        if reply is None:
            reply = self.sink.replies.get("RCPT", (250, "2.1.5 ok"))
        if reply is SILENT:
            self.silent = True
            return
        if reply[0] == 250:
            self.accepted.append(path)
        self.reply(reply)

    def smtp_DATA(self, argument: str) -> None:
        if not self.accepted:
            self.reply((503, "5.5.1 no valid recipients"))
            return
        reply = self.sink.replies.get("DATA", (354, "end with <CRLF>.<CRLF>"))
        if reply is not SILENT and reply[0] == 354:
            self._data = []
            self._previous_line_complete = True
        self._answer("DATA", (354, "end with <CRLF>.<CRLF>"))

    def smtp_RSET(self, argument: str) -> None:
        self._reset()
        self._answer("RSET", (250, "2.0.0 ok"))

    def smtp_NOOP(self, argument: str) -> None:
        self._answer("NOOP", (250, "2.0.0 ok"))

    def smtp_VRFY(self, argument: str) -> None:
        self._answer("VRFY", (252, "2.5.2 cannot verify"))

    def smtp_QUIT(self, argument: str) -> None:
        self._answer("QUIT", (221, "2.0.0 bye"))
        self.transport.loseConnection()

    # -- message content --------------------------------------------------------------------

    def _data_line(self, line: bytes) -> None:
        """One raw line of DATA (with its CR, without its LF)."""
        complete = line.endswith(b"\r")
        if line == b".\r" and self._previous_line_complete:
            self._end_of_data()
            return
        if self.sink.drop_in_data:
            self._dropped = True
            self.transport.abortConnection()
            return
        if self._previous_line_complete and line.startswith(b"."):
            line = line[1:]
        self._data.append(line + b"\n")
        self._previous_line_complete = complete

    def _end_of_data(self) -> None:
        data, self._data = b"".join(self._data), None
        reply = self.sink.replies.get(END_OF_DATA, (250, "2.0.0 queued"))
        if reply is not SILENT and reply[0] == 250:
            message = SinkMessage(
                peer=self.session.peer,
                helo=self.session.helo,
                mail_from=self.mail_from,
                rcpt_tos=tuple(self.accepted),
                data=data,
                tls=self.session.tls,
            )
            self.session.messages.append(message)
            self.sink.messages.append(message)
        self._reset()
        self._answer(END_OF_DATA, (250, "2.0.0 queued"))
        self.sink._changed()

    def connectionLost(self, reason) -> None:
        self.session.closed = True
        self.sink._disconnected(self)


class _SinkFactory(protocol.Factory):
    def __init__(self, sink: SMTPSink) -> None:
        self.sink = sink

    def buildProtocol(self, addr):
        return _SinkProtocol(self.sink)


class SMTPSink:
    """A recording SMTP server on one loopback address. Build it with :meth:`start`.

    Knobs (plain attributes, read at each command):

    - ``greeting``: the banner reply, e.g. ``(554, "5.3.2 go away")``; ``SILENT`` never greets.
    - ``refuse_from``: banners by peer address, in place of ``greeting``: a source IP the
      server refuses (``{"127.0.0.10": (554, "5.7.1 blocked")}``), as a blocklist would.
    - ``replies``: per-verb overrides, ``{"MAIL": (451, "4.3.0 later")}``; the key
      ``END_OF_DATA`` (``"."``) is the reply to the message's final dot; a ``SILENT`` value
      makes the sink stop answering at that point; a 421 reply also closes the connection.
    - ``recipient_replies``: per-recipient RCPT replies, ``{"bad@x.test": (550, "5.1.1 no")}``.
    - ``drop_in_data``: abort the connection at the first line of message content.
    - ``break_starttls``: say 220 to STARTTLS, then abort the connection when the TLS
      handshake starts (an MX that offers TLS but cannot do it).
    - ``extensions``: EHLO keywords (STARTTLS is added while TLS is available).
    - ``tls_options``: server TLS options; :meth:`start` sets them when ``tls=True``.
    """

    def __init__(self, reactor: IReactorTCP, *, name: str = DEFAULT_NAME) -> None:
        self._reactor = reactor
        self.name = name
        self.greeting: Reply | None = (220, f"{name} ESMTP hatwist test sink")
        self.refuse_from: dict[str, Reply | None] = {}
        self.replies: dict[str, Reply | None] = {}
        self.recipient_replies: dict[str, Reply | None] = {}
        self.drop_in_data = False
        self.break_starttls = False
        self.extensions: list[str] = list(DEFAULT_EXTENSIONS)
        self.tls_options = None
        #: The CA that signed the sink's certificate (trust it in clients), if TLS is on.
        self.ca: CA | None = None
        self.sessions: list[SinkSession] = []
        self.messages: list[SinkMessage] = []
        self.host = ""
        self.port = 0
        self._port = None
        self._open: dict[_SinkProtocol, defer.Deferred[None]] = {}
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None]]] = []

    @classmethod
    def start(
        cls,
        reactor: IReactorTCP,
        host: str = "127.0.0.20",
        port: int = 0,
        *,
        tls: bool = False,
        name: str = DEFAULT_NAME,
        ca: CA | None = None,
    ) -> defer.Deferred[SMTPSink]:
        """Listen on ``host:port`` (port 0: any free one). ``tls`` offers STARTTLS with a
        certificate for ``name`` signed by ``ca`` (default: :func:`shared_ca`)."""
        sink = cls(reactor, name=name)
        if tls:
            sink.ca = ca if ca is not None else shared_ca()
            sink.tls_options = sink.ca.issue(name).server_options()
        sink._port = reactor.listenTCP(port, _SinkFactory(sink), interface=host)
        address = sink._port.getHost()
        sink.host, sink.port = address.host, address.port
        return defer.succeed(sink)

    def client_tls_options(self, hostname: str | None = None):
        """Client TLS options that trust this sink's certificate for ``hostname``."""
        if self.ca is None:
            raise ValueError("this sink was started without tls=True")
        return self.ca.client_options(hostname or self.name)

    @property
    def connections(self) -> int:
        """How many sessions are open right now."""
        return len(self._open)

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 5.0
    ) -> defer.Deferred[None]:
        """Fire once ``predicate()`` is true (checked now and after every sink event)."""
        if predicate():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        waiter = (predicate, d)
        self._waiters.append(waiter)

        def forget(result):
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return result

        d.addTimeout(timeout, self._reactor)
        d.addBoth(forget)
        return d

    def wait_for(self, n: int, timeout: float = 5.0) -> defer.Deferred[None]:
        """Fire once ``n`` messages in total have been accepted."""
        return self.wait_until(lambda: len(self.messages) >= n, timeout)

    def wait_for_sessions(self, n: int, timeout: float = 5.0) -> defer.Deferred[None]:
        """Fire once ``n`` sessions in total have been opened."""
        return self.wait_until(lambda: len(self.sessions) >= n, timeout)

    def wait_closed(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """Fire once every session opened so far has closed."""
        return self.wait_until(lambda: not self._open, timeout)

    def _changed(self) -> None:
        for waiter in list(self._waiters):
            predicate, d = waiter
            if waiter in self._waiters and predicate():
                self._waiters.remove(waiter)
                d.callback(None)

    def _connected(self, proto: _SinkProtocol) -> None:
        self.sessions.append(proto.session)
        self._open[proto] = defer.Deferred()
        self._changed()

    def _disconnected(self, proto: _SinkProtocol) -> None:
        d = self._open.pop(proto, None)
        if d is not None:
            d.callback(None)
        self._changed()

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening and abort open sessions; fires when all are gone."""
        if self._port is not None:
            port, self._port = self._port, None
            yield port.stopListening()
        pending = list(self._open.items())
        for proto, _ in pending:
            proto.transport.abortConnection()
        yield defer.DeferredList([d for _, d in pending])
        return None
