# -*- test-case-name: tests.test_inbound -*-
"""
The pure parts of the inbound listener: SMTP paths and parameters, and the
X-Binding header.

No I/O and no protocol state, so every rule here can be tested with plain
values; :mod:`hatwist.inbound._session` decides what to answer.
"""

from __future__ import annotations

import ipaddress
import re
from email.utils import formatdate

import attrs

BINDING_HEADER = b"x-binding"
_PATH = re.compile(r"\A<(?:@[^:<>]*:)?([^<>\s]*)>(?:\s+(.*))?\Z")
_FIELD_NAME = re.compile(rb"\A[!-9;-~]+\Z")
_BODY_TYPES = ("7BIT", "8BITMIME")


@attrs.frozen
class Refusal:
    """A reply refusing a command: code, RFC 3463 enhanced code, text."""

    code: int
    enhanced: str
    text: str


class BindingHeaderError(ValueError):
    """The X-Binding header is present but unusable (empty, or more than one)."""


def printable(text: str, limit: int = 64) -> str:
    """``text`` safe to echo in a reply or a log line: printable ASCII, capped."""
    return "".join(c if " " < c < "\x7f" else "?" for c in text)[:limit]


def parse_path(keyword: str, argument: str) -> tuple[str, list[str]] | None:
    """Split ``FROM:<path> params``: the address without brackets (a source
    route dropped), and the parameters; None when it is not that shape."""
    if argument[:len(keyword)].upper() != keyword:
        return None
    found = _PATH.match(argument[len(keyword):].strip())
    if found is None:
        return None
    return found.group(1), (found.group(2) or "").split()


def is_mailbox(address: str) -> bool:
    """Whether a recipient has exactly one ``@`` with something on either side."""
    return address.count("@") == 1 and "" not in address.split("@")


def check_mail_parameters(params: list[str], max_message_size: int) -> Refusal | None:
    """
    Why MAIL's parameters are refused, or None.  Only what the EHLO answer
    advertises is accepted: ``SIZE`` (checked against the limit) and
    ``BODY=7BIT|8BITMIME``.
    """
    for param in params:
        key, _, value = param.partition("=")
        key = key.upper()
        if key == "SIZE" and value.isdigit():
            if int(value) > max_message_size:
                return Refusal(552, "5.3.4", "Message size exceeds fixed limit")
        elif not (key == "BODY" and value.upper() in _BODY_TYPES):
            return Refusal(555, "5.5.4", f"Unsupported option: {printable(param)}")
    return None


def received_field(*, helo: str | None,
                   peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                   hostname: str, date: float) -> bytes:
    """Our C{Received:} trace field (RFC 5321 section 4.4), the peer as an
    address literal (C{[IPv6:...]} for IPv6, section 4.1.3)."""
    if peer is None:
        literal = "[unknown]"
    elif peer.version == 6:
        literal = f"[IPv6:{peer}]"
    else:
        literal = f"[{peer}]"
    return (f"Received: from {helo} ({literal})\r\n"
            f"\tby {hostname} (hatwist) with ESMTP;\r\n"
            f"\t{formatdate(date)}\r\n").encode("ascii")


def split_binding(content: bytes) -> tuple[str | None, bytes, int]:
    """Find and remove every X-Binding field of the header section.

    @return: the binding named (or None), the content without the field, and the
        number of C{Received:} fields (for loop detection).
    @raise BindingHeaderError: more than one X-Binding field, or an empty one.
    """
    head_end = content.find(b"\r\n\r\n")
    head, rest = ((content[:head_end + 2], content[head_end + 2:]) if head_end >= 0
                  else (content, b""))
    fields: list[list[bytes]] = []
    lines = head.split(b"\r\n")
    body_at = len(lines)
    for i, line in enumerate(lines):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif b":" in line and _FIELD_NAME.match(line.split(b":", 1)[0]):
            fields.append([line])
        else:  # not a header line: the header section ended here
            body_at = i
            break
    values, kept, hops = [], [], 0
    for field in fields:
        name, _, value = field[0].partition(b":")
        if name.lower() == BINDING_HEADER:
            values.append(b"".join([value, *field[1:]]).strip())  # RFC 5322 unfolding
            continue
        hops += name.lower() == b"received"
        kept.extend(field)
    if not values:
        return None, content, hops
    if len(values) > 1:
        raise BindingHeaderError("more than one X-Binding header")
    if not values[0]:
        raise BindingHeaderError("empty X-Binding header")
    remaining = b"\r\n".join(kept + lines[body_at:])
    return values[0].decode("latin-1"), remaining + rest, hops
