# -*- test-case-name: tests.test_chatter -*-
"""
Twisted's per-connection chatter, which an operator's log is better without.

Every DNS query of ``twisted.names`` opens a UDP port of its own, and ``twisted.internet.udp``
logs its start and its close unconditionally (4-6 lines per lookup, hundreds a minute on a
busy relay, none of them actionable). :func:`is_chatter` names exactly those events; the
relay's log observer drops them (:func:`without_chatter`) before formatting anything. Errors
are never chatter: only the informational lines listed here are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from twisted.logger import FilteringLogObserver, ILogObserver, LogLevel, PredicateResult

#: Legacy ``log.msg`` texts of twisted.internet.udp and twisted.names' datagram protocol.
_CHATTER = re.compile(
    r"\A(?:\(UDP Port \d+ Closed\)"
    r"|DNSDatagramProtocol starting on \d+"
    r"|(?:Starting|Stopping) protocol <twisted\.names\.dns\.DNSDatagramProtocol object at \w+>)"
    r"\Z"
)


def is_chatter(event: Mapping[str, Any]) -> bool:
    """True for an informational per-connection line of Twisted's listed above."""
    if event.get("log_namespace") != "log_legacy" or event.get("isError"):
        return False
    level = event.get("log_level")
    if level is not None and level not in (LogLevel.info, LogLevel.debug):
        return False
    text = event.get("log_text")
    if not isinstance(text, str):
        message = event.get("message")
        text = message[0] if isinstance(message, tuple) and len(message) == 1 else None
    return isinstance(text, str) and _CHATTER.match(text) is not None


def _predicate(event: Mapping[str, Any]) -> PredicateResult:
    return PredicateResult.no if is_chatter(event) else PredicateResult.maybe


def without_chatter(observer: ILogObserver) -> ILogObserver:
    """``observer`` behind a filter that drops :func:`is_chatter` events."""
    return FilteringLogObserver(observer, [_predicate])
