# -*- test-case-name: tests.test_inbound -*-
"""
The pure parts of the inbound listener: SMTP paths and parameters, and the
X-Binding and X-Binding-Group headers.

No I/O and no protocol state, so every rule here can be tested with plain
values; :mod:`hatwist.inbound._session` decides what to answer.
"""

from __future__ import annotations

import ipaddress
import re
from email.utils import formatdate

import attrs

from hatwist.config.converters import binding_name
from hatwist.config.settings import group_route

BINDING_HEADER = b"x-binding"
GROUP_HEADER = b"x-binding-group"
_HEADER_NAMES = {BINDING_HEADER: "X-Binding", GROUP_HEADER: "X-Binding-Group"}
SMTPUTF8 = "SMTPUTF8"
_PATH = re.compile(r"\A<(?:@[^:<>]*:)?([^<>\s]*)>(?:\s+(.*))?\Z")
_FIELD_NAME = re.compile(rb"\A[!-9;-~]+\Z")
_BODY_TYPES = ("7BIT", "8BITMIME")
_WSP = b" \t"
MAX_PATH = 256
"""RFC 5321 section 4.5.3.1.3 (the path, brackets included, is 256 octets)."""
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_LABEL = 63
MAX_BINDING = 64


@attrs.frozen
class Refusal:
    """A reply refusing a command: code, RFC 3463 enhanced code, text."""

    code: int
    enhanced: str
    text: str


class BindingHeaderError(ValueError):
    """The X-Binding or X-Binding-Group header is present but unusable (empty,
    malformed, more than one, or both kinds at once)."""


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


def is_postmaster(address: str) -> bool:
    """The bare ``postmaster`` that RFC 5321 section 4.5.1 says MUST be accepted
    (case-insensitively), with no domain."""
    return address.lower() == "postmaster"


def address_problem(address: str) -> str | None:
    """
    Why ``local@domain`` can never be delivered, or None.

    Caught here so that a 501 at MAIL/RCPT tells the submitter at once, instead
    of a 250 followed by failing attempts for days: control characters (NUL
    included) and the RFC 5321 section 4.5.3.1 sizes (local part 64, domain 255,
    each DNS label 63 octets, empty labels).  Address literals (``[...]``) are
    passed on as they are.
    """
    if any(c < " " or "\x7f" <= c <= "\x9f" for c in address):
        return "control character in address"
    local, _, domain = address.rpartition("@")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART:  # octets: UTF-8 counts (RFC 6531)
        return f"local part over {MAX_LOCAL_PART} octets"
    problem = _literal_problem(domain) if domain.startswith("[") else _domain_problem(domain)
    if problem is None and len(address.encode("utf-8")) + 2 > MAX_PATH:
        return f"path over {MAX_PATH} octets"
    return problem


def _literal_problem(domain: str) -> str | None:
    return None if domain.endswith("]") else "unterminated address literal"


def _domain_problem(domain: str) -> str | None:
    if len(domain.encode("utf-8")) > MAX_DOMAIN:
        return f"domain over {MAX_DOMAIN} octets"
    labels = (domain[:-1] if domain.endswith(".") else domain).split(".")
    if any(len(label.encode("utf-8")) > MAX_LABEL for label in labels):
        return f"DNS label over {MAX_LABEL} octets"
    if "" in labels:
        return "empty DNS label"
    return None


def check_mail_parameters(params: list[str], max_message_size: int) -> Refusal | None:
    """
    Why MAIL's parameters are refused, or None.  Only what the EHLO answer
    advertises is accepted: ``SIZE`` (checked against the limit),
    ``BODY=7BIT|8BITMIME`` and ``SMTPUTF8`` (RFC 6531, no value).
    """
    for param in params:
        key, equals, value = param.partition("=")
        key = key.upper()
        if key == SMTPUTF8 and not equals:
            continue
        if key == "SIZE" and value.isdigit():
            if int(value) > max_message_size:
                return Refusal(552, "5.3.4", "Message size exceeds fixed limit")
        elif not (key == "BODY" and value.upper() in _BODY_TYPES):
            return Refusal(555, "5.5.4", f"Unsupported option: {printable(param)}")
    return None


def wants_smtputf8(params: list[str]) -> bool:
    """Whether MAIL asked for SMTPUTF8 (RFC 6531 section 3.4)."""
    return any(param.upper() == SMTPUTF8 for param in params)


def received_field(*, helo: str | None,
                   peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                   hostname: str, date: float, protocol: str = "ESMTP") -> bytes:
    """Our C{Received:} trace field (RFC 5321 section 4.4), the peer as an
    address literal (C{[IPv6:...]} for IPv6, section 4.1.3); ``protocol`` is the
    RFC 3848 / RFC 6531 C{with} keyword (ESMTPS, ESMTPSA, UTF8SMTPS...)."""
    if peer is None:
        literal = "[unknown]"
    elif peer.version == 6:
        literal = f"[IPv6:{peer}]"
    else:
        literal = f"[{peer}]"
    return (f"Received: from {helo} ({literal})\r\n"
            f"\tby {hostname} (hatwist) with {protocol};\r\n"
            f"\t{formatdate(date)}\r\n").encode("ascii")


def split_binding(content: bytes) -> tuple[str | None, bytes, int]:
    """Find and remove every X-Binding and X-Binding-Group field of the header section.

    @return: the route named (a binding, or C{group:NAME} for X-Binding-Group; None
        for neither), the content without those fields, and the number of
        C{Received:} fields (for loop detection).
    @raise BindingHeaderError: more than one such field, both kinds, or an empty one.
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
        elif b":" in line and _FIELD_NAME.match(line.split(b":", 1)[0].rstrip(_WSP)):
            fields.append([line])  # RFC 5322 section 4.5.8 allows WSP before the colon
        elif i == 0 and line.startswith(b"From "):
            fields.append([line])  # an mbox "From " line some submitters leave on top
        else:  # not a header line: the header section ended here
            body_at = i
            break
    values: list[tuple[bytes, bytes]] = []
    kept, hops = [], 0
    for field in fields:
        name, _, value = field[0].partition(b":")
        name = name.rstrip(_WSP).lower()
        if name in _HEADER_NAMES:
            values.append((name, b"".join([value, *field[1:]]).strip()))  # RFC 5322 unfolding
            continue
        hops += name == b"received"
        kept.extend(field)
    if not values:
        return None, content, hops
    kinds = {name for name, _ in values}
    if len(kinds) > 1:
        raise BindingHeaderError("both X-Binding and X-Binding-Group headers")
    (kind, value), header = values[0], _HEADER_NAMES[values[0][0]]
    if len(values) > 1:
        raise BindingHeaderError(f"more than one {header} header")
    if not value:
        raise BindingHeaderError(f"empty {header} header")
    remaining = b"\r\n".join(kept + lines[body_at:])
    name = canonical_binding(value, header)
    return (name if kind == BINDING_HEADER else group_route(name)), remaining + rest, hops


def canonical_binding(value: bytes, header: str = "X-Binding") -> str:
    """The binding (or group) an X-Binding (X-Binding-Group) value names, as the
    config stores names (lower case), so ``warm`` and ``WARM`` share one throttle
    window and one limit.

    @raise BindingHeaderError: not a name a config file could define.
    """
    text = value.decode("latin-1")
    try:
        if len(text) > MAX_BINDING:
            raise ValueError(text)
        return binding_name(text)
    except ValueError:
        raise BindingHeaderError(f'malformed {header} header "{printable(text)}"') from None
