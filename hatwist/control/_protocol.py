# -*- test-case-name: tests.control.test_protocol -*-
"""
The control socket's little protocol: one JSON request line in, JSON lines out.

A client (``hatwist queue``) connects, writes one request such as
``{"command": "hold", "ids": ["0005f1c2a3b4c5-0a1b2c3d4e"]}`` and a newline, and
reads until the relay closes the connection.  The answer is one or more lines,
each a JSON object; the last one has ``"ok"``: true with the result, or false
with an ``"error"`` a person can act on.  ``list`` sends one ``{"message": ...}``
line per row before its last line, so a long answer streams.

Pure: this module only turns bytes into a checked :class:`Request` (or a
:class:`RequestError` saying what is wrong) and values into lines.  Everything a
client sends is bounded here: the line length (in the server), the number of
ids, the length of every string, the list limit.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from hatwist.scheduler import QUEUE_STATES
from hatwist.spool._values import ID_PATTERN

#: The longest request line, in bytes (a thousand ids fit, with room to spare).
MAX_REQUEST = 65536
#: Message ids one request may name.
MAX_IDS = 1000
#: The longest binding or domain name a filter may give.
MAX_NAME = 255
#: Rows ``list`` prints by default, and at most.
DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000

#: Commands that look; commands that act on messages; the queue command.
LOOKS = ("list", "show")
ACTIONS = ("hold", "release", "delete", "bounce")
COMMANDS = (*LOOKS, "flush", *ACTIONS)

#: What ``--state`` accepts: a queue's state, or ``held`` (held by the operator).
STATES = (*QUEUE_STATES, "held")


class RequestError(ValueError):
    """A request the relay will not run; the message says why, for the operator."""


@attrs.frozen
class Request:
    """One checked request."""

    command: str
    ids: tuple[str, ...] = ()
    binding: str | None = None
    domain: str | None = None
    state: str | None = None
    limit: int = DEFAULT_LIMIT

    @property
    def filtered(self) -> bool:
        return any(v is not None for v in (self.binding, self.domain, self.state))

    def to_json(self) -> dict[str, Any]:
        """The request as a client sends it (only what is set)."""
        body: dict[str, Any] = {"command": self.command}
        if self.ids:
            body["ids"] = list(self.ids)
        for name in ("binding", "domain", "state"):
            if getattr(self, name) is not None:
                body[name] = getattr(self, name)
        if self.command == "list":
            body["limit"] = self.limit
        return body


def encode(value: dict[str, Any]) -> bytes:
    """One answer line."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8") + b"\n"


def error_line(message: str) -> bytes:
    return encode({"ok": False, "error": message})


def parse_request(line: bytes) -> Request:
    """The request in ``line`` (without its newline), checked; :class:`RequestError` if not."""
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the request is not a JSON object on one line") from None
    if not isinstance(body, dict):
        raise RequestError("the request is not a JSON object on one line")
    unknown = sorted(set(body) - {"command", "ids", "binding", "domain", "state", "limit"})
    if unknown:
        raise RequestError(f"unknown field(s) in the request: {', '.join(unknown)}")
    command = body.get("command")
    if command not in COMMANDS:
        raise RequestError(f"unknown command {command!r}; one of: {', '.join(COMMANDS)}")
    request = Request(
        command=command,
        ids=_ids(body.get("ids", [])),
        binding=_name(body, "binding"),
        domain=_domain(body),
        state=_state(body),
        limit=_limit(body),
    )
    _check_shape(request)
    return request


def _ids(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError("ids must be a list of message ids")
    if len(value) > MAX_IDS:
        raise RequestError(f"at most {MAX_IDS} message ids per request, not {len(value)}")
    for message_id in value:
        if not ID_PATTERN.match(message_id):
            raise RequestError(f"{message_id[:80]!r} is not a message id "
                               "(like 0005f1c2a3b4c5-0a1b2c3d4e: see hatwist queue list)")
    return tuple(dict.fromkeys(value))  # each once, in the order given


def _name(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise RequestError(f"{field} must be a name of 1 to {MAX_NAME} characters")
    return value


def _domain(body: dict[str, Any]) -> str | None:
    value = _name(body, "domain")
    return None if value is None else value.lower().rstrip(".")


def _state(body: dict[str, Any]) -> str | None:
    value = body.get("state")
    if value is not None and value not in STATES:
        raise RequestError(f"unknown state {value!r}; one of: {', '.join(STATES)}")
    return value


def _limit(body: dict[str, Any]) -> int:
    value = body.get("limit", DEFAULT_LIMIT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise RequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return value


def _check_shape(request: Request) -> None:
    """Which commands take ids, which take filters."""
    command, ids = request.command, request.ids
    if command == "show":
        if len(ids) != 1 or request.filtered:
            raise RequestError("show takes exactly one message id")
    elif command in ("list", "flush"):
        if ids:
            raise RequestError(f"{command} takes filters, not message ids")
        if command == "flush" and request.state is not None:
            raise RequestError("flush takes --binding and --domain, not --state")
    elif ids and request.filtered:
        raise RequestError(f"{command} takes message ids or filters, not both")
    elif not ids and not request.filtered:
        raise RequestError(f"{command} needs message ids or a filter "
                           "(--binding, --domain, --state)")
