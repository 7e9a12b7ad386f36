# -*- test-case-name: tests.test_dsn -*-
"""
Bounce and delay notices as RFC 3464 delivery status notifications.

A DSN is a C{multipart/report; report-type=delivery-status} with three parts: a
note for people, the C{message/delivery-status} report for programs (one block
per recipient: Final-Recipient, Action, Status, Diagnostic-Code), and the
original headers (C{text/rfc822-headers}) so the sender can tell which message
it was.  It is sent from the null reverse-path to the original sender
(L{bounce_envelope}), and never about a message that itself had a null sender
(L{should_bounce}): a bounce must never bounce (RFC 5321 section 4.5.5).

The result is plain 7-bit ASCII with CRLF line ends, so it can go to any MX
without 8BITMIME.  Pure: the caller supplies every time and name.
"""

from __future__ import annotations

import quopri
import re
from collections.abc import Iterable
from email.utils import formatdate
from typing import Literal, Protocol

import attrs

FAILED: Literal["failed"] = "failed"
DELAYED: Literal["delayed"] = "delayed"
CRLF = b"\r\n"
MAX_FIELD = 900
"""Longest value written into a report field (RFC 5322 caps lines at 998)."""
MAX_ORIGINAL_HEADERS = 64 * 1024
ENHANCED_CODE = re.compile(r"\A([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
EXPIRED_STATUS = {FAILED: "5.4.7", DELAYED: "4.4.7"}
"""RFC 3463 X.4.7, "delivery time expired", when no server ever answered."""


class Envelope(Protocol):
    """What a DSN needs of the original message (a L{SpooledMessage} will do)."""

    id: str
    mail_from: str


@attrs.frozen
class BounceEnvelope:
    """How a DSN is sent: from the null reverse-path, to the original sender."""

    mail_from: str
    rcpt_to: tuple[str, ...]


def should_bounce(mail_from: str) -> bool:
    """False for the null sender (C{""} or C{"<>"}): never bounce a bounce."""
    return mail_from.strip() not in ("", "<>")


def bounce_envelope(original: Envelope) -> BounceEnvelope:
    """C{MAIL FROM:<>} to the original sender; call only if L{should_bounce}."""
    if not should_bounce(original.mail_from):
        raise ValueError(f"message {original.id} has a null sender: it must not bounce")
    return BounceEnvelope(mail_from="", rcpt_to=(original.mail_from,))


def status_for(code: int | None, diagnostic: str | None, action: str) -> str:
    """The RFC 3463 status for one recipient.

    The server's own enhanced code when it gave one of the class the action
    implies (5 for failed, 4 for delayed), else the class of its reply code.  A
    reply of the other class means time ran out: a recipient that *failed* after
    a 4xx was given up on at expiry, so it is "delivery time expired" (X.4.7),
    never a 4.x.x under ``Action: failed``.
    """
    wanted = "5" if action == FAILED else "4"
    if code is not None and str(code)[0] != wanted:
        return EXPIRED_STATUS[action]
    found = ENHANCED_CODE.match(diagnostic or "")
    if found and found.group(1) == wanted:
        return found.group(0)
    if code is not None and 400 <= code < 600:
        return f"{code // 100}.0.0"
    return EXPIRED_STATUS[action]


def _said(code: int | None, diagnostic: str | None, action: str) -> str:
    """What the human part says about one recipient."""
    said = " ".join(str(p) for p in (code, diagnostic) if p is not None)
    if status_for(code, diagnostic, action) != EXPIRED_STATUS[action]:
        return said
    return "delivery time expired" + (f"; last error: {said}" if said else "")


def _field(text: str) -> str:
    """One line of printable ASCII, whatever the server or sender put in it."""
    flat = " ".join(text.split())
    return flat.encode("ascii", "replace").decode("ascii")[:MAX_FIELD]


def _headers_only(original_headers: bytes) -> bytes:
    lines = re.split(rb"\r?\n", original_headers[:MAX_ORIGINAL_HEADERS])
    kept = []
    for line in lines:
        if not line.strip(b"\r"):
            break
        kept.append(line.rstrip(b"\r"))
    return CRLF.join(kept) + CRLF


def _human(reporting_mta: str, action: str,
           failed: list[tuple[str, int | None, str | None]]) -> str:
    if action == FAILED:
        intro = ("Your message could not be delivered to one or more recipients.\r\n"
                 "It is attached below; delivery will not be tried again.")
    else:
        intro = ("Your message has not been delivered yet to one or more recipients.\r\n"
                 "Nothing needs to be done: delivery will be tried again.")
    lines = [f"This is the mail system at host {reporting_mta}.", "", intro, ""]
    for recipient, code, diagnostic in failed:
        lines.append(_field(f"<{recipient}>: {_said(code, diagnostic, action)}"))
    return "\r\n".join(lines) + "\r\n"


def _report(reporting_mta: str, original: Envelope, arrival_date: float, action: str,
            failed: list[tuple[str, int | None, str | None]]) -> str:
    blocks = [[f"Reporting-MTA: dns; {_field(reporting_mta)}",
               f"X-Hatwist-Queue-ID: {_field(original.id)}",
               f"Arrival-Date: {formatdate(arrival_date)}"]]
    for recipient, code, diagnostic in failed:
        block = [f"Final-Recipient: rfc822; {_field(recipient)}",
                 f"Action: {action}",
                 f"Status: {status_for(code, diagnostic, action)}"]
        if code is not None:
            block.append(_field(f"Diagnostic-Code: smtp; {code} {diagnostic or ''}"))
        blocks.append(block)
    return "\r\n\r\n".join("\r\n".join(block) for block in blocks) + "\r\n"


def build_dsn(*, reporting_mta: str, original: Envelope,
              failed: Iterable[tuple[str, int | None, str | None]],
              original_headers: bytes, arrival_date: float, date: float,
              action: Literal["failed", "delayed"] = FAILED) -> bytes:
    """The whole DSN message, headers included, ready for DATA.

    @param failed: C{(recipient, last reply code or None, reply text or None)}
        for each recipient the notice is about.  For a recipient given up on at
        expiry pass its last temporary reply: it is reported as expired (5.4.7)
        and its C{Diagnostic-Code} still quotes that reply.
    @param original_headers: the original message's header section (a whole
        message is fine: only the headers are kept).
    @param arrival_date: when the original was received (POSIX time).
    @param date: now, for the notice's own C{Date:} (POSIX time).
    """
    if action not in (FAILED, DELAYED):
        raise ValueError(f"action must be {FAILED!r} or {DELAYED!r}, not {action!r}")
    failed = list(failed)
    if not failed:
        raise ValueError("a DSN needs at least one recipient")
    envelope = bounce_envelope(original)
    headers = _headers_only(original_headers)
    if max(headers, default=0) > 0x7F:
        headers_part = (b"Content-Type: text/rfc822-headers\r\n"
                        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
                        + quopri.encodestring(headers))
    else:
        headers_part = b"Content-Type: text/rfc822-headers\r\n\r\n" + headers
    parts = [
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        + _human(reporting_mta, action, failed).encode("ascii"),
        b"Content-Type: message/delivery-status\r\n\r\n"
        + _report(reporting_mta, original, arrival_date, action, failed).encode("ascii"),
        headers_part,
    ]
    boundary = f"{original.id}/{int(date)}/{_field(reporting_mta)}"
    while any(boundary.encode() in part for part in parts):
        boundary += "="
    subject = ("Undelivered Mail Returned to Sender" if action == FAILED
               else "Delayed Mail (still being retried)")
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{_field(reporting_mta)}>",
        f"To: <{_field(envelope.rcpt_to[0])}>",
        f"Subject: {subject}",
        f"Date: {formatdate(date)}",
        f"Message-ID: <{original.id}.{action}.{int(date)}@{_field(reporting_mta)}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
    ]
    out = ["\r\n".join(top).encode("ascii"), CRLF, CRLF,
           b"This is a MIME-encapsulated message.\r\n\r\n"]
    for part in parts:
        out += [b"--", boundary.encode(), CRLF, part, CRLF]
    out += [b"--", boundary.encode(), b"--", CRLF]
    return b"".join(out)
