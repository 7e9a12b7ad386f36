# -*- test-case-name: tests.test_scheduler_states -*-
"""
Why a queue is not moving: one :class:`QueueState` per (binding, domain), for operators.

Depth alone cannot tell a queue that is busy from one that waits for a proxy, a throttle
window or its messages' retry times; the state says which, and ``until`` when it next
tries.  Pure: :func:`queue_state` decides from facts, :func:`queue_states` gathers them
in constant work per queue (no walk over messages).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from hatwist.spool import PENDING

from ._outcome import domain_of
from ._queues import Board, Queue, QueueKey

#: Attempts are running, or could start now (perhaps after other queues' turns).
ACTIVE = "active"
#: Every message waits for its retry time; ``until`` is the earliest.
BACKOFF = "backoff"
#: Held for a plumbed proxy of its route; ``until`` is the next look (one health interval).
WAITING_FOR_PROXY = "waiting_for_proxy"
#: Its ``outbound_throttle_messages`` window is full; ``until`` is the next allowed start.
THROTTLED = "throttled"
#: No session answered for the destination: held for one ``retry_interval`` (``until``).
PAUSED = "paused"
#: Everything pending is held by the operator (``hatwist queue hold``): nothing will
#: try until it is released, so there is no ``until``.
HELD = "held"

#: Every state, in the order the status faces list them.
QUEUE_STATES = (ACTIVE, BACKOFF, WAITING_FOR_PROXY, THROTTLED, PAUSED, HELD)


@attrs.frozen
class QueueState:
    """One queue as an operator sees it: how much waits, what runs, and why the rest waits."""

    binding: str
    domain: str
    depth: int
    """Pending recipients (as :meth:`Scheduler.queue_depths` counts them)."""
    in_flight: int
    """Attempts running now."""
    state: str
    """One of :data:`QUEUE_STATES`."""
    until: float | None
    """When the queue next tries (Unix time), or None: active, or nothing scheduled."""
    reason: str | None = None
    """Why it waits: the hold's or pause's reason, the throttle, or the last temporary reply."""
    held: int = 0
    """Of ``depth``, the recipients of messages the operator holds."""


def queue_state(
    key: QueueKey,
    *,
    depth: int,
    queue: Queue | None,
    next_retry: float | None,
    retry_reason: str | None,
    throttle: str | None,
    throttled_until: float | None,
    held: int = 0,
) -> QueueState:
    """
    The state of one queue, the first that applies: paused, waiting for a proxy,
    throttled, active, held (all of it, with nothing to retry), backoff.

    :param queue: its live :class:`Queue` on the board, or None (every part waits
        for its retry time).
    :param next_retry: the earliest retry timer of its parts, if any.
    :param retry_reason: the last reply of the part that retries first.
    :param throttle: its ``outbound_throttle_messages`` as text, when throttled.
    :param throttled_until: its next allowed start, when throttled.
    :param held: its pending recipients in messages the operator holds.
    """
    binding, domain = key
    in_flight = queue.in_flight if queue is not None else 0

    def state(name: str, until: float | None, reason: str | None = None) -> QueueState:
        return QueueState(binding, domain, depth, in_flight, name, until, reason, held)

    if queue is not None:
        release = queue.release.getTime() if queue.release is not None else None
        if queue.paused:
            return state(PAUSED, release, queue.reason)
        if queue.held:
            return state(WAITING_FOR_PROXY, release, queue.reason)
        if queue.throttled:
            reason = None if throttle is None else f"outbound_throttle_messages {throttle}"
            return state(THROTTLED, throttled_until, reason)
        if queue.ready or queue.in_flight:
            return state(ACTIVE, None)
    if held >= depth and next_retry is None:
        return state(HELD, None, f"{held} held by the operator (hatwist queue release)")
    return state(BACKOFF, next_retry, retry_reason)


def queue_states(
    depths: dict[QueueKey, int],
    *,
    board: Board,
    due: Any,
    throttle_state: Callable[[Queue], tuple[str | None, float | None]],
    held: dict[QueueKey, int] | None = None,
) -> list[QueueState]:
    """
    The state of every queue in ``depths`` (pending recipients per queue), sorted.
    ``held``: of those, the recipients of held messages per queue.

    :param due: the scheduler's ``DueHeap``: a queue's first retry is its head.
    :param throttle_state: a throttled queue's throttle text and next allowed start.
    """
    states = []
    for key, depth in sorted(depths.items()):
        queue = board.get(key)
        retry = due.head(key)
        throttle = throttled_until = None
        if queue is not None and queue.throttled:
            throttle, throttled_until = throttle_state(queue)
        states.append(queue_state(
            key,
            depth=depth,
            queue=queue,
            next_retry=None if retry is None else retry.due,
            retry_reason=None if retry is None else last_reply(retry.entry.message, key[1]),
            throttle=throttle,
            throttled_until=throttled_until,
            held=held.get(key, 0) if held else 0,
        ))
    return states


def last_reply(message: Any, domain: str) -> str | None:
    """The last reply one of the message's pending recipients at ``domain`` got."""
    for recipient in message.recipients:
        if recipient.status == PENDING and recipient.reason and (
            domain_of(recipient.address) == domain
        ):
            code = f"{recipient.code} " if recipient.code else ""
            return code + recipient.reason
    return None
