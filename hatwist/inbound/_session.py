# -*- test-case-name: tests.test_inbound -*-
"""
One submitter's connection (L{InboundSession}).

The promises are listed in L{hatwist.inbound}; the syntax rules (paths,
parameters, the X-Binding header) live in L{hatwist.inbound._syntax}, DATA in
L{hatwist.inbound._data}, the connection slots in L{hatwist.inbound._admission}.

Memory per session is bounded whatever the peer does: the session is the
transport's streaming producer, so when our replies are not being read (the
transport's write buffer is full) it stops reading until they drain; a command
line longer than C{MAX_COMMAND_LINE} ends the session; DATA keeps at most one
message of C{max_message_size}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from ._admission import Peer, peer_of
from ._data import DataReader, Step
from ._handoff import SpoolHandoff
from ._secure import SecureCommands
from ._syntax import (
    address_problem,
    check_mail_parameters,
    is_mailbox,
    is_postmaster,
    parse_path,
    printable,
    wants_smtputf8,
)

if TYPE_CHECKING:
    from ._factory import InboundFactory

MAX_COMMAND_LINE = 2048
"""RFC 5321 allows 512 octets plus what extensions add; more is abuse."""
MAX_RECIPIENTS = 1000
MAX_ERRORS = 20
CLOSE_GRACE = 10.0
"""Seconds a closing session has to flush its last replies; a peer that reads none
of them is cut off then, so a session we closed never keeps its slot."""

NOT_IMPLEMENTED = frozenset({"BDAT", "EXPN", "ETRN", "TURN", "HELP"})
JUNK = frozenset({"NOOP", "RSET", "VRFY"})
"""Commands that move no mail (Postfix's smtpd_junk_command_limit counts NOOP,
VRFY, ETRN and RSET); unknown and unimplemented verbs and a repeated HELO/EHLO
count too.  They never restart the idle timer."""


@implementer(IPushProducer)
class InboundSession(SecureCommands, SpoolHandoff, protocol.Protocol, TimeoutMixin):
    """One submitter's connection: commands, then DATA, then the spool."""

    log = Logger()

    def __init__(self, factory: InboundFactory) -> None:
        self.factory = factory
        self.callLater = factory.reactor.callLater  # TimeoutMixin's clock
        self._buffer = b""
        self._at = 0  # where the unhandled input starts in _buffer
        self._data: DataReader | None = None  # set between 354 and the dot line
        self._busy = False  # waiting for the spool: read nothing, answer nothing
        self._unread = False  # our replies are not being read: read nothing
        self._closing = False
        self._admitted = False
        self._helo: str | None = None
        self._errors = 0
        self._junk = 0
        self._peer: Peer = None
        self._relay_allowed = False
        self._abort_call: Any = None
        self._lost = False
        self._tls_active = False
        self._user: str | None = None
        self._sasl: Any = None  # the handler of the next line (a SASL answer), if any
        self._reset()

    def _reset(self) -> None:
        self._mail_from: str | None = None
        self._rcpts: list[str] = []
        self._data = None
        self._smtputf8 = False

    @property
    def peer(self) -> Peer:
        return self._peer

    @property
    def relay_allowed(self) -> bool:
        """Whether the peer's address is inside relay_from (fixed for the session: it
        decides the admission pool)."""
        return self._relay_allowed

    @property
    def may_relay(self) -> bool:
        """Inside relay_from, or logged in: an authenticated client relays from anywhere."""
        return self._relay_allowed or self._user is not None

    @property
    def waiting_for_reader(self) -> bool:
        """Whether reading is paused because the peer is not reading our replies."""
        return self._unread

    @property
    def pending_input(self) -> int:
        """Input bytes read from the peer and not handled yet (bounded: we stop
        reading while they wait)."""
        return len(self._buffer) - self._at

    # -- connection ------------------------------------------------------

    def connectionMade(self) -> None:
        self._peer = peer_of(self.transport)
        self._relay_allowed = self.factory.relays_for(self._peer)
        refused = self.factory.admit(self)
        hostname = self.factory.hostname
        if refused is not None:
            self.log.warn("refused {peer}: {reason}", peer=str(self._peer), reason=refused.text)
            return self._close(421, refused.enhanced, f"{hostname} Error: {refused.text}")
        self._admitted = True
        self.transport.registerProducer(self, True)
        self.setTimeout(self.factory.idle_timeout)
        self._reply(220, None, f"{hostname} ESMTP hatwist")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._admitted:
            self._admitted = False
            self.factory.session_ended(self)
        self._closing = True
        self._lost = True
        self._data = None
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()

    def timeoutConnection(self) -> None:
        self._close(421, "4.4.2", f"{self.factory.hostname} Error: timeout exceeded")

    def _useful(self) -> None:
        """The peer moved a transaction on: restart the idle timer.  Nothing else
        does, so NOOPs cannot keep a session open."""
        self.resetTimeout()

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
        """The last reply, then close (RFC 5321 section 3.8: a 421 says why)."""
        self._reply(code, enhanced, text)
        self._closing = True
        self._buffer, self._at = b"", 0
        self._data = None
        if self._admitted:
            # A registered producer would keep the connection open (FileDescriptor).
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        if self._abort_call is None and not self._lost:
            self._abort_call = self.factory.reactor.callLater(
                CLOSE_GRACE, self.transport.abortConnection)

    def _fatal(self, code: int, enhanced: str, text: str) -> None:
        """Refuse what was sent, then close with the 421 that says the session ends."""
        self._reply(code, enhanced, text)
        self._close(421, "4.7.0", f"{self.factory.hostname} Error: closing connection")

    # -- flow control: IPushProducer, and the spool wait -------------------

    def pauseProducing(self) -> None:
        """The transport's write buffer is full: the peer is not reading our
        replies.  Read nothing more until it drains."""
        self._unread = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._unread = False
        if getattr(self.transport, "disconnecting", False):
            # Closed from outside (a shutdown's drain): answer nothing more, and let the
            # close finish (a registered producer would hold it open).
            self._closing = True
            self.transport.unregisterProducer()
            return
        self._update_reading()
        self._process()

    def stopProducing(self) -> None:
        self._closing = True

    def _update_reading(self) -> None:
        if self._closing:
            return
        if self._busy or self._unread:
            self.transport.pauseProducing()
        else:
            self.transport.resumeProducing()

    # -- input -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._process()

    def _process(self) -> None:
        # Commands are taken at an offset, and the buffer is cut once at the end:
        # cutting it at every line would copy a pipelined buffer once per command.
        try:
            while self._at < len(self._buffer) and not (self._busy or self._closing
                                                         or self._unread):
                if self._data is not None:
                    if not self._take_data(self._data):
                        return
                    continue
                buffer, at = self._buffer, self._at
                end = buffer.find(b"\n", at, at + MAX_COMMAND_LINE + 2)
                if end < 0:
                    if len(buffer) - at > MAX_COMMAND_LINE + 1:
                        self._line_too_long()
                    return
                line, self._at = buffer[at:end + 1], end + 1
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    return self._bare_newline(line)
                if self._sasl is not None:
                    self._sasl_line(line[:-2])
                else:
                    self._command(line[:-2])
        finally:
            self._buffer, self._at = self._buffer[self._at:], 0

    def _line_too_long(self) -> None:
        self.log.info("command line over {limit} octets from {peer}: closed",
                      limit=MAX_COMMAND_LINE, peer=str(self._peer))
        self._fatal(500, "5.5.2", "Error: line too long")

    def _bare_newline(self, text: bytes) -> None:
        kind = "CR" if text.count(b"\r") != text.count(b"\r\n") else "LF"
        self._bare(kind)

    def _bare(self, kind: str) -> None:
        self.log.info("bare {kind} from {peer}: closed", kind=kind, peer=str(self._peer))
        self._fatal(550, "5.5.2", f"Error: bare <{kind}> received")

    def _take_data(self, reader: DataReader) -> bool:
        """Feed DATA input to the reader; return whether progress was made."""
        fed = reader.feed(self._buffer[self._at:] if self._at else self._buffer)
        if fed.step in (Step.BARE_LF, Step.BARE_CR):
            self._bare(fed.step.value)
            return False
        if not fed.used:
            return False
        self._at += fed.used
        self._useful()
        if fed.step is Step.END:
            self._end_of_data(reader)
        return True

    # -- commands --------------------------------------------------------

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(500, "5.5.2", "Error: command is not UTF-8")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        if not text.isascii() and verb not in ("MAIL", "RCPT"):
            return self._error(500, "5.5.2", "Error: 8-bit text outside an address")
        handler = getattr(self, "smtp_" + verb, None) if verb.isalpha() else None
        junk = verb in JUNK or handler is None or (verb in ("EHLO", "HELO") and bool(self._helo))
        if junk and self._too_much_junk():
            return
        if verb in NOT_IMPLEMENTED:
            return self._error(502, "5.5.1", f"Error: {verb} not implemented")
        if handler is None:
            return self._error(500, "5.5.2", "Error: command not recognized")
        handler(argument.strip())

    def _too_much_junk(self) -> bool:
        self._junk += 1
        if self._junk <= self.factory.junk_command_limit:
            return False
        self.log.info("too many junk commands from {peer}: closed", peer=str(self._peer))
        self._close(421, "4.7.0", f"{self.factory.hostname} Error: too many junk commands")
        return True

    def smtp_EHLO(self, argument: str, extended: bool = True) -> None:
        if not argument:
            return self._error(501, "5.5.4", "Syntax: EHLO hostname")
        if self._helo is None:
            self._useful()
        self._helo = printable(argument, 255)
        self._reset()
        if not extended:
            return self._reply(250, None, self.factory.hostname)
        lines = [self.factory.hostname, "PIPELINING", f"SIZE {self.factory.max_message_size}",
                 "8BITMIME", *self._extension_lines(), "ENHANCEDSTATUSCODES", "SMTPUTF8"]
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
        if self._tls_refusal():
            return
        path = parse_path("FROM:", argument)
        if path is None or (path[0] and not is_mailbox(path[0])):
            return self._error(501, "5.1.7", "Bad sender address syntax")
        address, params = path
        problem = address and address_problem(address)
        if problem:
            return self._error(501, "5.1.7", f"Bad sender address syntax: {problem}")
        refusal = check_mail_parameters(params, self.factory.max_message_size)
        if refusal is not None:
            return self._error(refusal.code, refusal.enhanced, refusal.text)
        smtputf8 = wants_smtputf8(params)
        if not address.isascii() and not smtputf8:
            return self._error(553, "5.6.7", "Error: a UTF-8 address needs MAIL FROM:<...> "
                               "SMTPUTF8")
        self._mail_from = address
        self._smtputf8 = smtputf8
        if self.may_relay:  # outside relay_from and not logged in, MAIL leads nowhere
            self._useful()
        self._reply(250, "2.1.0", "Ok")

    def smtp_RCPT(self, argument: str) -> None:
        if self._mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        path = parse_path("TO:", argument)
        if path is not None and is_postmaster(path[0]):
            path = (self.factory.postmaster_address, path[1])
        if path is None or not is_mailbox(path[0]):
            return self._error(501, "5.1.3", "Bad recipient address syntax")
        address, params = path
        problem = address_problem(address)
        if problem:
            return self._error(501, "5.1.3", f"Bad recipient address syntax: {problem}")
        if params:
            return self._error(555, "5.5.4", f"Unsupported option: {printable(params[0])}")
        if not address.isascii() and not self._smtputf8:
            return self._error(553, "5.6.7", "Error: a UTF-8 address needs MAIL FROM:<...> "
                               "SMTPUTF8")
        if not self.may_relay:
            self.log.info("relay denied: {peer} -> {rcpt}", peer=str(self._peer), rcpt=address)
            return self._error(550, "5.7.1", f"<{printable(address, 256)}>: Relay access denied")
        if len(self._rcpts) >= MAX_RECIPIENTS:
            return self._reply(452, "4.5.3", "Error: too many recipients")
        self._rcpts.append(address)
        self._useful()
        self._reply(250, "2.1.5", "Ok")

    def smtp_DATA(self, argument: str) -> None:
        if argument:
            return self._error(501, "5.5.4", "Syntax: DATA")
        if self._mail_from is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if not self._rcpts:
            return self._error(554, "5.5.1", "Error: no valid recipients")
        self._data = DataReader(self.factory.max_message_size)
        self._useful()
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

    def _resume(self, _: object) -> None:
        self._busy = False
        self._reset()
        if not self._closing:
            self.setTimeout(self.factory.idle_timeout)
            self._update_reading()
            self._process()
