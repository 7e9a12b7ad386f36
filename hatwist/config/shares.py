# -*- test-case-name: tests.workers.test_share -*-
"""
What one of N processes may use of a limit that they would otherwise each apply in full.

Without limits shared between processes, the only way N workers keep a relay-wide limit
is that each keeps 1/N of it. Rounding must never let the N together exceed the limit's
intent: a count is divided downwards, and where the share would be below one, the window
is stretched instead (a ``1/3600`` throttle over two workers is ``1/7200`` each, so the
relay still starts at most one message an hour on average). A concurrency limit cannot
be stretched: a ``max_connections`` smaller than the number of workers still gives each
worker one connection, and ``check-config`` says that the limits are divided.

Pure, and here in the config package (not hatwist.workers) because the scheduler's rules
apply it to every queue's settings: ``ServiceSettings.limit_share`` is the divisor.
"""

from __future__ import annotations

from hatwist.config.values import Throttle

__all__ = ["share_count", "share_throttle"]


def share_count(limit: int, workers: int) -> int:
    """One worker's part of a count limit: ``limit // workers``, at least 1."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    return max(1, limit // workers)


def share_throttle(throttle: Throttle | None, workers: int) -> Throttle | None:
    """One worker's part of an ``outbound_throttle_messages`` window.

    ``m/s`` becomes ``(m // n)/s`` while that is at least one message; below that,
    ``1/ceil(s * n / m)``: one message per a window long enough that the n workers
    together stay at or under m messages per s seconds.
    """
    if throttle is None or workers == 1:
        return throttle
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers!r}")
    if throttle.messages >= workers:
        return Throttle(throttle.messages // workers, throttle.seconds)
    seconds = -(-throttle.seconds * workers // throttle.messages)  # ceiling division
    return Throttle(1, seconds)
