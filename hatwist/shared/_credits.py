# -*- test-case-name: tests.shared.test_credits -*-
"""Throttle starts a node reserved in Redis ahead of use: one round trip for many starts.

A throttled start must be counted in the fleet's window, so without this every one of
them asks Redis (a thread hand-off and a round trip: 12 to 33% more of a relay's CPU per
message in bench_shared_limits.py's end-to-end rows).  Instead a busy queue asks for a
few *credits* (one CREDITS script): places in the window that Redis adds atomically,
only while the window has room.  The next starts of that queue on this node take a
credit without asking, like an unthrottled start takes a lingering slot, and the next
credits are asked for while some are left, so a busy queue's starts do not wait for
Redis at all.

Why the fleet can still never start more than N in any window: Redis records each
credit at the moment it *expires* (its time plus :func:`lifetime`), and a node uses a
credit only before that moment: for half the lifetime, measured from before the
question left.  So every start made from a credit lies inside the span Redis counts it
for: any window holds at least as many entries in Redis as starts really made in it.
The price is that a credit holds its place up to one lifetime longer than a start
would, which is why credits are short-lived and only ever a small share of a throttle
(none for a ``10/3600``: such a throttle keeps asking Redis at every start, exactly as
before).

An unused credit is given back (ZREM) when the node stops using it, half a lifetime
before Redis would let it go, so other nodes may use it (a node refused for a full
window while credits are out is told to ask again when they expire); a node that dies
with credits leaves them counted until their window passes: fewer starts for a while,
never more.  Pure: times are passed in.
"""

from __future__ import annotations

from collections import deque

import attrs

from hatwist.config.values import Throttle

from ._values import QueueKey

#: Seconds a credit holds its place in Redis after it was granted, at most.
LIFETIME = 0.5
#: Credits asked with one start, at most.
MAX_CREDITS = 64
#: A node holds at most 1/SHARE of a throttle's messages as credits at once.
SHARE = 16


def lifetime(throttle: Throttle) -> float:
    """How long credits of ``throttle`` may be used: short against its window too, so
    the longer hold of a credit is a small part of the window (a 1/16th at most)."""
    return min(LIFETIME, throttle.seconds / SHARE)


def usable(throttle: Throttle) -> float:
    """How long a node uses credits after asking for them: half their lifetime, so
    the unused ones are back in Redis before it would let them go."""
    return lifetime(throttle) / 2


def most(throttle: Throttle, max_credits: int = MAX_CREDITS) -> int:
    """Credits one start may ask for under ``throttle``: 0 for small throttles."""
    return min(max_credits, throttle.messages // SHARE)


@attrs.define
class _Stock:
    """One queue's credits (oldest first, with when this node stops using each) and
    its recent demand."""

    throttle: Throttle
    span: float
    """:func:`usable` of the throttle: how far back demand counts."""
    cap: int
    """:func:`most` of the throttle: credits held at most."""
    credits: deque[tuple[float, str]] = attrs.field(factory=deque)
    recent: deque[float] = attrs.field(factory=deque)
    """When its last starts were asked (at most ``MAX_CREDITS + 1`` of them)."""
    asking: bool = False
    """A question for credits is in flight: no second one meanwhile."""


class Credits:
    """Every queue's credits on this node, and when to ask for more.

    Demand decides: a queue asks for as many credits as starts of it were asked in the
    last :func:`usable` span besides the current one (capped), and asks again once fewer than half
    of that are left; so a queue starting once a minute asks for none, and a busy one
    asks once per few dozen starts, before it runs out.  Bounded: at most
    ``max_credits`` asked at once and as many remembered times per queue, and queues
    quiet for that span are dropped at :meth:`expired`.
    """

    def __init__(self, max_credits: int = MAX_CREDITS) -> None:
        self._max = max_credits
        self._stocks: dict[QueueKey, _Stock] = {}
        self._returns: list[tuple[QueueKey, str]] = []

    def take(self, key: QueueKey, throttle: Throttle, now: float) -> str | None:
        """A credit of ``key`` still usable at ``now`` under ``throttle``, if any: the
        id of the start it becomes."""
        stock = self._stocks.get(key)
        if stock is None or stock.throttle != throttle:
            return None
        credits = self._drop_expired(key, stock, now)
        if not credits:
            return None
        self._note(stock, now)
        return credits.popleft()[1]

    def wanted(self, key: QueueKey, throttle: Throttle, now: float, *, start: bool) -> int:
        """How many credits to ask for now (0: none), after a credit was taken or with
        a start asked of Redis (``start``: counts as demand).  Expects
        :meth:`answered` when it is not 0."""
        stock = self._stocks.get(key)
        if stock is None or stock.throttle != throttle:
            cap = most(throttle, self._max)
            if cap == 0:
                return 0
            if stock is not None:  # a reload changed the throttle: its credits go back
                self._give_back(key, stock)
            stock = self._stocks[key] = _Stock(throttle, usable(throttle), cap)
        if start:
            self._note(stock, now)
        if stock.asking:
            return 0
        want = min(stock.cap, len(stock.recent) - 1)  # the others asked lately, not this one
        held = len(self._drop_expired(key, stock, now))
        if held * 2 >= want:
            return 0
        stock.asking = True
        return want - held

    def answered(self, key: QueueKey, ids: list[str], until: float) -> None:
        """The reply to a question for credits (``ids`` empty: none, or Redis failed).

        ``until`` is when this node stops using them (on its clock: the asking time
        plus :func:`usable`).
        """
        stock = self._stocks.get(key)
        if stock is None or not stock.asking:
            self._returns.extend((key, i) for i in ids)  # dropped meanwhile: back at once
            return
        stock.asking = False
        stock.credits.extend((until, i) for i in ids)

    def expired(self, now: float) -> list[tuple[QueueKey, str]]:
        """Take the credits to give back at ``now`` (expired unused, or stale), and
        forget queues that asked nothing for a :func:`usable` span."""
        for key, stock in list(self._stocks.items()):
            credits = self._drop_expired(key, stock, now)
            while stock.recent and stock.recent[0] + stock.span <= now:
                stock.recent.popleft()
            if not credits and not stock.recent and not stock.asking:
                del self._stocks[key]
        out, self._returns = self._returns, []
        return out

    def take_all(self) -> list[tuple[QueueKey, str]]:
        """Every unused credit (at a stop), to give back."""
        for key, stock in self._stocks.items():
            self._give_back(key, stock)
        self._stocks.clear()
        out, self._returns = self._returns, []
        return out

    def drop_all(self) -> None:
        """Forget every credit without giving any back (Redis is away: they stay
        counted there until their window passes, which only errs on the safe side)."""
        self._stocks.clear()
        self._returns.clear()

    def next_expiry(self) -> float | None:
        """When the earliest credit held expires (None: none held)."""
        times = [s.credits[0][0] for s in self._stocks.values() if s.credits]
        return min(times) if times else None

    def held(self, key: QueueKey) -> int:
        stock = self._stocks.get(key)
        return len(stock.credits) if stock is not None else 0

    def __len__(self) -> int:
        return len(self._stocks)

    def _note(self, stock: _Stock, now: float) -> None:
        recent = stock.recent
        recent.append(now)
        cutoff = now - stock.span
        while recent[0] <= cutoff:  # now itself stays
            recent.popleft()
        if len(recent) > self._max + 1:
            recent.popleft()

    def _drop_expired(self, key: QueueKey, stock: _Stock, now: float) -> deque:
        """The stock's credits still usable at ``now`` (expired ones go back)."""
        credits = stock.credits
        while credits and credits[0][0] <= now:
            self._returns.append((key, credits.popleft()[1]))  # never used in time
        return credits

    def _give_back(self, key: QueueKey, stock: _Stock) -> None:
        self._returns.extend((key, i) for _, i in stock.credits)
        stock.credits.clear()
