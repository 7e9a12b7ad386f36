# -*- test-case-name: tests.test_inbound -*-
"""
The inbound ESMTP listener: where submitters hand mail to hatwist.

Purpose-built on L{Protocol} rather than C{twisted.mail.smtp.ESMTP}, whose limits
(FIELD-NOTES section 4) are exactly what a relay must get right: it advertises no
SIZE, 8BITMIME or PIPELINING, an asynchronous recipient check breaks pipelined
clients, it refuses 16 KiB lines and it cannot see bare line ends.  Here every
command is answered strictly in order from one input buffer; the only wait, the
spool write at the end of DATA, stops reading until the reply is out, so a client
may pipeline as RFC 2920 allows.

Promises:
  - a 250 for a message is sent only after L{Spool.store} fired (content, state
    and directory fsynced); a L{SpoolWriteError} gives C{452 4.3.1};
  - only peers inside C{relay_from}, or clients that logged in with SMTP AUTH
    (PLAIN or LOGIN, only over STARTTLS, L{hatwist.inbound._secure}), may name
    recipients (others get C{550 5.7.1} for every RCPT);
  - STARTTLS (TLS 1.2+) discards whatever was pipelined after it in plaintext;
    with C{listen_tls = required} MAIL before it gets C{530 5.7.0};
  - a binding whose C{allowed_submitters} does not list the submitter (by
    address or user) refuses its message with C{550 5.7.1} naming the binding;
  - SMTPUTF8 is advertised; a UTF-8 address needs MAIL's C{SMTPUTF8} parameter
    (else C{553 5.6.7}), and the flag is spooled with the message;
  - every resource a peer can make us spend has a bound it cannot raise: a
    session stops reading while its replies are not read (so it holds at most
    about one socket buffer of input and of output), every command line is at
    most 2,048 octets however it was segmented, junk commands (NOOP, RSET,
    VRFY, unknown verbs, repeated EHLO) are limited, the idle timer restarts
    only on commands that move a transaction on, and the connection slots are
    limited per pool and per address (peers outside C{relay_from} have a small
    pool of their own, so they never take the slots of those inside it);
  - a message with a line over 998 octets is refused at end of data with
    C{550 5.6.0} (never relayed, never silently folded);
  - an address that could never be delivered (control characters, a local
    part over 64 octets, a domain over 255, a DNS label over 63) is refused at
    MAIL or RCPT with C{501}; the bare C{postmaster} (RFC 5321 section 4.5.1)
    is accepted and delivered to C{postmaster_address};
  - C{SIZE} is enforced at MAIL (declared size) and during DATA (a body past the
    limit is counted and dropped, never buffered, and refused with C{552 5.3.4});
  - a bare LF or bare CR anywhere (command or DATA) is answered as Postfix's
    C{smtpd_forbid_bare_newline = reject} does, C{550 5.5.2 Error: bare <LF>
    received}, and the connection is closed at once: whatever followed it is
    never read as SMTP (no smuggling).  DATA ends only at CR LF . CR LF;
  - the binding is taken from the C{X-Binding:} header, which is removed; no
    header means C{default}; an unknown binding gets C{550 5.7.1} naming it;
  - every reply carries an RFC 3463 enhanced code, except the 220 greeting,
    the EHLO/HELO answer and the 354 go-ahead, which RFC 2034 exempts.

Stored content is the message exactly as received (dots unstuffed, CRLF line
ends), minus X-Binding, plus our C{Received:} trace line on top.

Layout: C{_syntax} (paths, parameters, X-Binding: pure), C{_data} (the DATA
reader: pure), C{_admission} (connection slots: pure), C{_auth} (users file,
SASL, failed-login throttle: pure but for the hash check), C{_tls} (the
certificate), C{_credentials} (both, loaded together), C{_secure} (STARTTLS and
AUTH commands), C{_handoff} (end of DATA to the spool), C{_session} (the protocol)
and C{_factory} (the listening factory).
"""

from ._credentials import Credentials, CredentialsError, load_credentials
from ._factory import (
    IDLE_TIMEOUT,
    JUNK_COMMAND_LIMIT,
    MAX_SESSIONS,
    MAX_SESSIONS_PER_IP,
    MAX_SESSIONS_UNLISTED,
    InboundFactory,
)
from ._session import InboundSession
from ._syntax import BindingHeaderError, split_binding

# Logs (a Logger's namespace is its class's module) and reprs (Twisted's
# "Starting factory <...>") name the public home.
InboundFactory.__module__ = InboundSession.__module__ = __name__

__all__ = [
    "IDLE_TIMEOUT",
    "JUNK_COMMAND_LIMIT",
    "MAX_SESSIONS",
    "MAX_SESSIONS_PER_IP",
    "MAX_SESSIONS_UNLISTED",
    "BindingHeaderError",
    "Credentials",
    "CredentialsError",
    "InboundFactory",
    "InboundSession",
    "load_credentials",
    "split_binding",
]
