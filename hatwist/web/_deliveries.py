# -*- test-case-name: tests.web.test_deliveries -*-
"""
Delivery counts for /status and /metrics, read from the delivery agent's log events.

The agent emits one event per attempt (``hatwist_event="delivery_attempt"``, namespace
``hatwist.delivery.attempt``). Counting from the log keeps the two apart: the agent knows
nothing about metrics, and this observer reads event fields only. Fields read:

``binding``
    the binding name.
``route``
    ``"direct"`` or ``"proxy SERVER from SRC"``; ``None`` when no MX was reached
    (counted as :data:`NO_ROUTE`).
``codes``
    ``{recipient: reply code}``: one count per recipient, by the reply's class.
``no_greeting``
    the proxy servers (as configured) that accepted the TCP connection but never sent a
    220 banner during this attempt ("proxy connected, no greeting").
``tls_skipped``
    why the session went in plaintext although the MX offered STARTTLS (it refused, or
    the handshake failed and ``tls = ifavailable`` retried without it), else ``None``:
    one count per attempt, by binding, so an operator sees mail leaving unencrypted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from twisted.logger import ILogObserver
from zope.interface import implementer

from hatwist.delivery.attempt import ATTEMPT_EVENT

#: The ``hatwist_event`` value of the agent's one event per attempt.
DELIVERY_EVENT = ATTEMPT_EVENT

#: Result names, by the first digit of a recipient's final reply code (the vocabulary of
#: ``hatwist.delivery.RecipientResult.kind``).
RESULTS = {2: "delivered", 4: "temporary", 5: "permanent"}

#: The route label of an attempt that reached no MX (DNS failure, no usable route).
NO_ROUTE = "none"

ResultKey = tuple[str, str, str]
"""(binding, route, result)."""

NoGreetingKey = tuple[str, str]
"""(binding, proxy server)."""


def result_of(code: Any) -> str | None:
    """``"delivered"``, ``"temporary"`` or ``"permanent"`` for a reply code, else None."""
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    return RESULTS.get(code // 100)


def no_greeting_servers(event: Mapping[str, Any]) -> list[str]:
    """The proxy servers that connected but sent no greeting, per one attempt event."""
    servers = event.get("no_greeting")
    if isinstance(servers, list | tuple | set | frozenset):
        return [str(s) for s in servers]
    return []


@implementer(ILogObserver)
class DeliveryMetrics:
    """
    Counts recipients by (binding, route, result), no-greeting proxy sessions by
    (binding, server), attempts that skipped TLS by binding, and attempts of mail sent
    to a binding_group by (group, binding chosen). Add it with
    ``globalLogPublisher.addObserver``.

    Never raises: the log publisher would report a failing observer on every delivery,
    so a malformed event is skipped instead.
    """

    def __init__(self) -> None:
        self._results: Counter[ResultKey] = Counter()
        self._no_greeting: Counter[NoGreetingKey] = Counter()
        self._tls_skipped: Counter[str] = Counter()
        self._group_choices: Counter[tuple[str, str]] = Counter()
        self._attempts = 0

    def __call__(self, event: Mapping[str, Any]) -> None:
        if event.get("hatwist_event") != DELIVERY_EVENT:
            return
        binding = str(event.get("binding"))
        route = event.get("route") or NO_ROUTE
        codes = event.get("codes")
        if not isinstance(codes, Mapping):
            return
        self._attempts += 1
        for code in codes.values():
            result = result_of(code)
            if result is not None:
                self._results[(binding, str(route), result)] += 1
        for server in no_greeting_servers(event):
            self._no_greeting[(binding, server)] += 1
        reason = event.get("tls_skipped")
        if isinstance(reason, str) and reason:
            self._tls_skipped[binding] += 1
        group = event.get("group")
        if isinstance(group, str) and group:
            self._group_choices[(group, binding)] += 1

    @property
    def attempts(self) -> int:
        """Attempt events seen."""
        return self._attempts

    def results(self) -> dict[ResultKey, int]:
        """Recipients counted per (binding, route, result)."""
        return dict(self._results)

    def result_totals(self) -> dict[str, int]:
        """Recipients per result, every result named (zero included)."""
        totals = dict.fromkeys(RESULTS.values(), 0)
        for (_, _, result), count in self._results.items():
            totals[result] += count
        return totals

    def no_greeting(self) -> dict[NoGreetingKey, int]:
        """Sessions where the proxy connected but no greeting came, per (binding, server)."""
        return dict(self._no_greeting)

    def tls_skipped(self) -> dict[str, int]:
        """Attempts whose session was plaintext although STARTTLS was offered, per binding."""
        return dict(self._tls_skipped)

    def group_choices(self) -> dict[tuple[str, str], int]:
        """Attempts of mail sent to a binding_group, per (group, binding chosen)."""
        return dict(self._group_choices)

    def tls_skipped_total(self) -> int:
        """Attempts whose session was plaintext although STARTTLS was offered."""
        return sum(self._tls_skipped.values())
