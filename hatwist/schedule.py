# -*- test-case-name: tests.test_schedule -*-
"""
When to try a deferred message again, and when to give up on it.

RFC 5321 section 4.5.4.1 asks a sender to wait at least the configured retry
interval between attempts and to give up only after days.  Retrying at a fixed
interval wastes effort on a destination that is down for hours; retrying with
unbounded doubling leaves a message idle for days after the destination came
back.  So the delay doubles from ``retry_interval`` and is capped:

- the cap is ``MAX_BACKOFF_FACTOR`` (8) times ``retry_interval`` -- three
  doublings, so a short outage is retried quickly -- but at most
  ``MAX_BACKOFF`` (4 hours), so that after a long outage a message waits at
  most four hours once the destination is back (Postfix's default ceiling is
  similar, ``maximal_backoff_time`` = 4000 s);
- the cap is never below ``retry_interval`` itself: an operator who asks for a
  six-hour interval gets six hours, never less.

Pure: no reactor, no I/O.  Times are seconds since the epoch as floats, the
unit of ``IReactorTime.seconds()``.
"""

from __future__ import annotations

import attrs

#: Upper bound of the backoff cap, in seconds (see the module docstring).
MAX_BACKOFF = 4 * 60 * 60

#: The cap as a multiple of ``retry_interval`` (three doublings).
MAX_BACKOFF_FACTOR = 8

#: Doublings beyond this change nothing (the cap applies long before) and would
#: only build huge integers.
_MAX_DOUBLINGS = 32


def default_max_interval(retry_interval: int) -> int:
    """
    The backoff cap for ``retry_interval``: ``8 * retry_interval``, at most four
    hours, but never below ``retry_interval``.
    """
    return max(retry_interval, min(MAX_BACKOFF_FACTOR * retry_interval, MAX_BACKOFF))


def retry_delay(*, attempts: int, retry_interval: int, max_interval: int | None = None) -> int:
    """
    Seconds to wait after the ``attempts``-th failed attempt (counting from 1).

    ``retry_interval`` after the first, then doubling, capped at
    ``max_interval`` (default: :func:`default_max_interval`), and never less
    than ``retry_interval``.  ``attempts`` below 1 is treated as 1.
    """
    if retry_interval <= 0:
        raise ValueError(f"retry_interval must be positive, not {retry_interval!r}")
    cap = default_max_interval(retry_interval) if max_interval is None else max_interval
    doublings = min(max(attempts, 1) - 1, _MAX_DOUBLINGS)
    return max(retry_interval, min(retry_interval * 2**doublings, cap))


def next_attempt_at(
    *, attempts: int, now: float, retry_interval: int, max_interval: int | None = None
) -> float:
    """
    When to try again, given that the ``attempts``-th attempt just failed at ``now``.
    """
    return now + retry_delay(
        attempts=attempts, retry_interval=retry_interval, max_interval=max_interval
    )


def expires_at(received_at: float, message_expiration: int) -> float:
    """The moment a message received at ``received_at`` stops being retried."""
    return received_at + message_expiration


def is_expired(received_at: float, now: float, message_expiration: int) -> bool:
    """
    Whether a message received at ``received_at`` has been queued for
    ``message_expiration`` seconds or more by ``now``, and must be bounced.
    """
    return now >= expires_at(received_at, message_expiration)


@attrs.frozen
class RetryPolicy:
    """
    The retry rules for one (binding, domain), taken from its delivery settings.

    A value, so the scheduler can read a fresh one after every config reload
    and a test can build one by hand.
    """

    retry_interval: int = attrs.field()
    message_expiration: int
    max_interval: int = attrs.field()

    @retry_interval.validator
    def _positive(self, attribute: attrs.Attribute, value: int) -> None:
        if value <= 0:
            raise ValueError(f"retry_interval must be positive, not {value!r}")

    @max_interval.default
    def _default_cap(self) -> int:
        return default_max_interval(self.retry_interval)

    @classmethod
    def from_settings(cls, settings: object) -> RetryPolicy:
        """
        The policy of a ``DeliverySettings`` (anything with ``retry_interval``
        and ``message_expiration``).
        """
        return cls(
            retry_interval=settings.retry_interval,  # type: ignore[attr-defined]
            message_expiration=settings.message_expiration,  # type: ignore[attr-defined]
        )

    def delay(self, attempts: int) -> int:
        """Seconds to wait after the ``attempts``-th failed attempt."""
        return retry_delay(
            attempts=attempts, retry_interval=self.retry_interval, max_interval=self.max_interval
        )

    def next_attempt_at(self, *, attempts: int, now: float) -> float:
        """When to try again after the ``attempts``-th attempt failed at ``now``."""
        return now + self.delay(attempts)

    def expires_at(self, received_at: float) -> float:
        """When a message received at ``received_at`` is given up on."""
        return expires_at(received_at, self.message_expiration)

    def retry_at(self, *, attempts: int, received_at: float, now: float) -> float:
        """
        When to try again after the ``attempts``-th attempt failed at ``now``: the
        next backoff step, but no later than the expiry, so a message is given up
        on when it runs out of time and not at the first retry after that.
        """
        return min(
            self.next_attempt_at(attempts=attempts, now=now),
            max(self.expires_at(received_at), now),
        )

    def is_expired(self, received_at: float, now: float) -> bool:
        """Whether a message received at ``received_at`` must be bounced by ``now``."""
        return is_expired(received_at, now, self.message_expiration)
