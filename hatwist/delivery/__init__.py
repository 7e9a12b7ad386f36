"""The safe outbound ESMTP client: sessions, reuse, TLS, per-recipient results.

(tests: tests/delivery/)

:func:`open_session` connects over any ``IStreamClientEndpoint`` (direct TCP, or
:class:`hatwist.endpoint.HAProxyClientEndpoint`), and the :class:`OutboundSession` it
gives sends one message after another over that connection. Each message ends in one
:class:`RecipientResult` per recipient; a :class:`SessionError` subclass means the
session itself failed.
"""

from hatwist.delivery._errors import (
    ConnectFailed,
    ConnectionLostDuringSession,
    GreetingRejected,
    NoGreeting,
    ReplyTooLarge,
    SessionError,
    SessionTimeout,
    TLSFailed,
    TLSUnavailable,
    UnexpectedReply,
)
from hatwist.delivery._values import Envelope, RecipientResult
from hatwist.delivery.client import OutboundSession, open_session

__all__ = [
    "ConnectFailed",
    "ConnectionLostDuringSession",
    "Envelope",
    "GreetingRejected",
    "NoGreeting",
    "OutboundSession",
    "RecipientResult",
    "ReplyTooLarge",
    "SessionError",
    "SessionTimeout",
    "TLSFailed",
    "TLSUnavailable",
    "UnexpectedReply",
    "open_session",
]
