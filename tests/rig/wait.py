"""Waiting for a condition in a test running on the real reactor.

Real neighbours (Postfix writing its log, a relay batching its own) get there when they
get there: a test polls for the state it needs, up to a deadline, instead of reading
it once right after the event that should lead to it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import task


async def until(reactor, condition: Callable[[], object], what: str, *,
                deadline: float = 30.0, step: float = 0.01) -> None:  # fmt: skip
    """Return once ``condition()`` is true; fail naming ``what`` after ``deadline`` s."""
    give_up = reactor.seconds() + deadline
    while not condition():
        if reactor.seconds() >= give_up:
            raise AssertionError(f"not within {deadline}s: {what}")
        await task.deferLater(reactor, step, lambda: None)
