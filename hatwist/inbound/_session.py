# -*- test-case-name: tests.test_inbound -*-
"""
One submitter's connection (L{InboundSession}) and the listening factory.

The promises are listed in L{hatwist.inbound}; the syntax rules (paths,
parameters, the X-Binding header) live in L{hatwist.inbound._syntax}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from hatwist.spool import SpooledMessage, SpoolWriteError

from ._syntax import (
    BindingHeaderError,
    check_mail_parameters,
    is_mailbox,
    parse_path,
    printable,
    received_field,
    split_binding,
)

DEFAULT_BINDING = "default"
MAX_COMMAND_LINE = 2048
"""RFC 5321 allows 512 octets plus what extensions add; more is abuse."""
MAX_RECIPIENTS = 1000
MAX_ERRORS = 20
MAX_HOPS = 100
MAX_SESSIONS = 100
"""Sessions at once: each may buffer a whole message, so this bounds memory."""
IDLE_TIMEOUT = 300.0
"""RFC 5321 section 4.5.3.2: at least five minutes between commands."""
FLUSH_PARTIAL_LINE = 64 * 1024
"""A DATA line still without its LF is counted (not held) past this many bytes."""

NOT_IMPLEMENTED = frozenset({"STARTTLS", "AUTH", "BDAT", "EXPN", "ETRN", "TURN", "HELP"})


def _peer_ip(transport: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    host = getattr(transport.getPeer(), "host", None)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
    return ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip


class InboundSession(protocol.Protocol, TimeoutMixin):
    """One submitter's connection: commands, then DATA, then the spool."""

    log = Logger()

    def __init__(self, factory: InboundFactory) -> None:
        self.factory = factory
        self.callLater = factory.reactor.callLater  # TimeoutMixin's clock
        self._buffer = b""
        self._in_data = False
        self._busy = False  # waiting for the spool: read nothing, answer nothing
        self._closing = False
        self._helo: str | None = None
        self._errors = 0
        self._reset()

    def _reset(self) -> None:
        self._mail_from: str | None = None
        self._rcpts: list[str] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._midline = False

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = _peer_ip(self.transport)
        if len(self.factory.sessions) >= self.factory.max_sessions:
            self.log.warn("refused {peer}: {count} sessions open already",
                          peer=str(self._peer), count=len(self.factory.sessions))
            return self._close(421, "4.3.2",
                               f"{self.factory.hostname} Error: too many connections")
        self.factory.sessions.add(self)
        self._relay_allowed = self._peer is not None and any(
            self._peer in net for net in self.factory.relay_from)
        self.setTimeout(self.factory.idle_timeout)
        self._reply(220, None, f"{self.factory.hostname} ESMTP hatwist")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.factory.session_ended(self)
        self._closing = True
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self._close(421, "4.4.2", f"{self.factory.hostname} Error: timeout exceeded")

    def _reply(self, code: int, enhanced: str | None, text: str) -> None:
        if not self._closing:
            prefix = f"{code} {enhanced} " if enhanced else f"{code} "
            self.transport.write((prefix + text + "\r\n").encode("ascii", "replace"))

    def _error(self, code: int, enhanced: str, text: str) -> None:
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self._close(421, "4.7.0", f"{self.factory.hostname} Error: too many errors")
        else:
            self._reply(code, enhanced, text)

    def _close(self, code: int, enhanced: str, text: str) -> None:
        self._reply(code, enhanced, text)
        self._closing = True
        self._buffer = b""
        self.transport.loseConnection()

    # -- input -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        self._process()

    def _process(self) -> None:
        while self._buffer and not (self._busy or self._closing):
            if self._in_data:
                if not self._take_data():
                    return
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_COMMAND_LINE:
                    self._close(500, "5.5.2", "Error: line too long")
                return
            line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                return self._bare_newline(line)
            self._command(line[:-2])

    def _bare_newline(self, text: bytes) -> None:
        kind = "CR" if text.count(b"\r") != text.count(b"\r\n") else "LF"
        self.log.info("bare {kind} from {peer}: closed", kind=kind, peer=str(self._peer))
        self._close(550, "5.5.2", f"Error: bare <{kind}> received")

    def _take_data(self) -> bool:
        """Consume DATA input; return whether progress was made."""
        buffer = self._buffer
        probe = (b"xx" if self._midline else b"\r\n") + buffer
        end = probe.find(b"\r\n.\r\n")
        if end >= 0:  # the dot line starts at buffer[end]; it is clean by construction
            if self._take_region(buffer[:end]):
                self._buffer = buffer[end + 3:]
                self._end_of_data()
            return True
        last_lf = buffer.rfind(b"\n")
        if last_lf >= 0:
            region, self._buffer = buffer[:last_lf + 1], buffer[last_lf + 1:]
            self._take_region(region)
            self._midline = False
            return True
        if len(buffer) > FLUSH_PARTIAL_LINE:  # keep the last byte: it may be a CR
            region, self._buffer = buffer[:-1], buffer[-1:]
            self._take_region(region)
            self._midline = True
            return True
        return False

    def _take_region(self, region: bytes) -> bool:
        """Check and keep one stretch of DATA; False if the session was closed."""
        pairs = region.count(b"\r\n")
        if region.count(b"\n") != pairs or region.count(b"\r") != pairs:
            self._bare_newline(region)
            return False
        prefix = b"xx" if self._midline else b"\r\n"
        unstuffed = (prefix + region).replace(b"\r\n.", b"\r\n")[2:]
        self._size += len(unstuffed)
        if self._size > self.factory.max_message_size:
            self._chunks = []  # over the limit: count the rest, keep none of it
        else:
            self._chunks.append(unstuffed)
        return True

    # -- commands --------------------------------------------------------

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            return self._error(500, "5.5.2", "Error: 8-bit command (SMTPUTF8 not offered)")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        handler = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        if verb in NOT_IMPLEMENTED:
            return self._error(502, "5.5.1", f"Error: {verb} not implemented")
        if handler is None:
            return self._error(500, "5.5.2", "Error: command not recognized")
        handler(argument.strip())

    def smtp_EHLO(self, argument: str, extended: bool = True) -> None:
        if not argument:
            return self._error(501, "5.5.4", "Syntax: EHLO hostname")
        self._helo = printable(argument, 255)
        self._reset()
        if not extended:
            return self._reply(250, None, self.factory.hostname)
        lines = [self.factory.hostname, "PIPELINING", f"SIZE {self.factory.max_message_size}",
                 "8BITMIME", "ENHANCEDSTATUSCODES"]
        out = [f"250-{line}\r\n" for line in lines[:-1]] + [f"250 {lines[-1]}\r\n"]
        if not self._closing:
            self.transport.write("".join(out).encode("ascii"))

    def smtp_HELO(self, argument: str) -> None:
        self.smtp_EHLO(argument, extended=False)

    def smtp_MAIL(self, argument: str) -> None:
        if self._helo is None:
            return self._error(503, "5.5.1", "Error: send HELO/EHLO first")
        if self._mail_from is not None:
            return self._error(503, "5.5.1", "Error: nested MAIL command")
        path = parse_path("FROM:", argument)
        if path is None:
            return self._error(501, "5.1.7", "Bad sender address syntax")
        address, params = path
        refusal = check_mail_parameters(params, self.factory.max_message_size)
        if refusal is not None:
            return self._error(refusal.code, refusal.enhanced, refusal.text)
        self._mail_from = address
        self._reply(250, "2.1.0", "Ok")

    def smtp_RCPT(self, argument: str) -> None:
        if self._mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        path = parse_path("TO:", argument)
        if path is None or not is_mailbox(path[0]):
            return self._error(501, "5.1.3", "Bad recipient address syntax")
        address, params = path
        if params:
            return self._error(555, "5.5.4", f"Unsupported option: {printable(params[0])}")
        if not self._relay_allowed:
            self.log.info("relay denied: {peer} -> {rcpt}", peer=str(self._peer), rcpt=address)
            return self._error(550, "5.7.1", f"<{printable(address, 256)}>: Relay access denied")
        if len(self._rcpts) >= MAX_RECIPIENTS:
            return self._reply(452, "4.5.3", "Error: too many recipients")
        self._rcpts.append(address)
        self._reply(250, "2.1.5", "Ok")

    def smtp_DATA(self, argument: str) -> None:
        if argument:
            return self._error(501, "5.5.4", "Syntax: DATA")
        if self._mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if not self._rcpts:
            return self._error(554, "5.5.1", "Error: no valid recipients")
        self._in_data = True
        self._reply(354, None, "End data with <CR><LF>.<CR><LF>")

    def smtp_RSET(self, argument: str) -> None:
        self._reset()
        self._reply(250, "2.0.0", "Ok")

    def smtp_NOOP(self, argument: str) -> None:
        self._reply(250, "2.0.0", "Ok")

    def smtp_VRFY(self, argument: str) -> None:
        self._reply(252, "2.0.0", "Cannot VRFY user")

    def smtp_QUIT(self, argument: str) -> None:
        self._close(221, "2.0.0", "Bye")

    # -- end of DATA -----------------------------------------------------

    def _end_of_data(self) -> None:
        self._in_data = False
        if self._size > self.factory.max_message_size:
            return self._refuse(552, "5.3.4", "Message size exceeds fixed limit")
        content = b"".join(self._chunks)
        try:
            binding, content, hops = split_binding(content)
        except BindingHeaderError as e:
            return self._refuse(550, "5.7.1", f"Error: {e}")
        binding = DEFAULT_BINDING if binding is None else binding
        if hops >= MAX_HOPS:
            return self._refuse(554, "5.4.6", "Too many hops")
        if not self.factory.binding_exists(binding):
            return self._refuse(550, "5.7.1", f'Unknown binding "{printable(binding)}"')
        self._busy = True
        self.setTimeout(None)
        self.transport.pauseProducing()
        mail_from, rcpts = self._mail_from, tuple(self._rcpts)
        d = maybeDeferred(self.factory.spool.store, binding, mail_from, rcpts,
                          received_field(helo=self._helo, peer=self._peer,
                                         hostname=self.factory.hostname,
                                         date=self.factory.reactor.seconds()) + content)
        d.addCallbacks(self._stored, self._not_stored)
        d.addBoth(self._resume)

    def _refuse(self, code: int, enhanced: str, text: str) -> None:
        """Refuse the message just received; the session goes on, ready for MAIL."""
        self._reset()
        self._reply(code, enhanced, text)

    def _stored(self, message: SpooledMessage) -> None:
        self._reply(250, "2.0.0", f"Ok: queued as {message.id}")
        self.log.info("accepted {id} from {peer}: binding {binding}, {size} bytes, "
                      "{count} recipients", id=message.id, peer=str(self._peer),
                      binding=message.binding, size=message.size,
                      count=len(message.recipients))
        try:  # spooled is spooled: hand it on even if the client is gone
            self.factory.on_accepted(message)
        except Exception:
            self.log.failure("on_accepted failed for {id}", id=message.id)

    def _not_stored(self, failure: Failure) -> None:
        if failure.check(SpoolWriteError):
            self.log.error("spool write failed: {error}", error=failure.value)
            self._reply(452, "4.3.1", "Insufficient system storage")
        else:
            self.log.failure("spool store failed", failure)
            self._reply(451, "4.3.0", "Local error in processing")

    def _resume(self, _: object) -> None:
        self._busy = False
        self._reset()
        if not self._closing:
            self.setTimeout(self.factory.idle_timeout)
            self.transport.resumeProducing()
            self._process()


class InboundFactory(protocol.Factory):
    """Listen with this: one L{InboundSession} per submitter connection.

    @param spool: has C{store(binding, mail_from, rcpt_to, content)} returning a
        Deferred that fires once the message is durable (L{hatwist.spool.Spool}).
    @param relay_from: networks (L{ipaddress.ip_network}) allowed to relay.
    @param binding_exists: C{name -> bool}, asked for every message.
    @param on_accepted: called with each L{SpooledMessage} after its 250.
    @param reactor: L{IReactorTime}, for timeouts and the Received date.
    @param max_sessions: sessions at once; one more gets C{421 4.3.2} at connect.
    """

    def __init__(self, *, spool: Any,
                 relay_from: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
                 max_message_size: int, hostname: str, binding_exists: Callable[[str], bool],
                 on_accepted: Callable[[SpooledMessage], object], reactor: Any,
                 idle_timeout: float = IDLE_TIMEOUT, max_sessions: int = MAX_SESSIONS) -> None:
        if max_message_size <= 0:
            raise ValueError("max_message_size must be positive")
        self.spool = spool
        self.relay_from = tuple(relay_from)
        self.max_message_size = max_message_size
        self.hostname = hostname
        self.binding_exists = binding_exists
        self.on_accepted = on_accepted
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.sessions: set[InboundSession] = set()
        """Open sessions, for a graceful shutdown to wait on (L{when_idle})."""
        self._idle_waiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> InboundSession:
        return InboundSession(self)

    def when_idle(self) -> Deferred[None]:
        """Fires once no session is open (at once if none is), so a shutdown can let
        transactions finish without polling; cancel it to stop waiting."""
        if not self.sessions:
            return succeed(None)
        d: Deferred[None] = Deferred(self._idle_waiters.remove)
        self._idle_waiters.append(d)
        return d

    def session_ended(self, session: InboundSession) -> None:
        """A session's connection is gone (called by the session)."""
        self.sessions.discard(session)
        if not self.sessions:
            waiters, self._idle_waiters = self._idle_waiters, []
            for d in waiters:
                d.callback(None)
