"""
Tests for hatwist.schedule: the pure retry and expiry rules.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hatwist.schedule import (
    MAX_BACKOFF,
    MAX_BACKOFF_FACTOR,
    RetryPolicy,
    default_max_interval,
    expires_at,
    is_expired,
    next_attempt_at,
    retry_delay,
)

intervals = st.integers(min_value=1, max_value=7 * 24 * 3600)
attempt_counts = st.integers(min_value=0, max_value=10_000)
moments = st.floats(min_value=0, max_value=4e9, allow_nan=False)


def test_first_retry_after_retry_interval():
    assert next_attempt_at(attempts=1, now=1000.0, retry_interval=60) == 1060.0


def test_delay_doubles_until_the_cap():
    delays = [retry_delay(attempts=n, retry_interval=60) for n in range(1, 7)]
    assert delays == [60, 120, 240, 480, 480, 480]


def test_cap_is_four_hours_for_long_intervals():
    # 30 minutes (RFC 5321's suggested minimum) * 8 would be 4 hours exactly;
    # 1 hour * 8 would be 8 hours, so the 4-hour ceiling applies.
    assert default_max_interval(30 * 60) == MAX_BACKOFF
    assert retry_delay(attempts=50, retry_interval=3600) == MAX_BACKOFF


def test_cap_never_below_retry_interval():
    six_hours = 6 * 3600
    assert default_max_interval(six_hours) == six_hours
    assert retry_delay(attempts=10, retry_interval=six_hours) == six_hours


def test_explicit_cap_is_honoured():
    assert retry_delay(attempts=10, retry_interval=10, max_interval=25) == 25


def test_zero_attempts_is_treated_as_first():
    assert retry_delay(attempts=0, retry_interval=60) == 60


def test_non_positive_interval_rejected():
    with pytest.raises(ValueError, match="retry_interval"):
        retry_delay(attempts=1, retry_interval=0)
    with pytest.raises(ValueError, match="retry_interval"):
        RetryPolicy(retry_interval=-1, message_expiration=10)


@given(retry_interval=intervals, attempts=attempt_counts)
def test_never_sooner_than_retry_interval(retry_interval, attempts):
    assert retry_delay(attempts=attempts, retry_interval=retry_interval) >= retry_interval


@given(retry_interval=intervals, attempts=attempt_counts)
def test_capped(retry_interval, attempts):
    delay = retry_delay(attempts=attempts, retry_interval=retry_interval)
    assert delay <= max(retry_interval, min(MAX_BACKOFF_FACTOR * retry_interval, MAX_BACKOFF))


@given(retry_interval=intervals, attempts=attempt_counts)
def test_monotone_in_attempts(retry_interval, attempts):
    assert retry_delay(attempts=attempts, retry_interval=retry_interval) <= retry_delay(
        attempts=attempts + 1, retry_interval=retry_interval
    )


@given(retry_interval=intervals, attempts=attempt_counts, now=moments)
def test_next_attempt_is_in_the_future(retry_interval, attempts, now):
    assert next_attempt_at(attempts=attempts, now=now, retry_interval=retry_interval) > now


def test_expiry_boundary():
    assert not is_expired(100.0, 199.9, 100)
    assert is_expired(100.0, 200.0, 100)
    assert expires_at(100.0, 100) == 200.0


@given(received=moments, expiration=intervals, elapsed=st.floats(0, 1e7))
def test_expiry_monotone(received, expiration, elapsed):
    if is_expired(received, received + elapsed, expiration):
        assert is_expired(received, received + elapsed + 1, expiration)


def test_policy_matches_functions():
    policy = RetryPolicy(retry_interval=60, message_expiration=3600)
    assert policy.max_interval == 480
    assert policy.delay(3) == retry_delay(attempts=3, retry_interval=60)
    assert policy.next_attempt_at(attempts=2, now=10.0) == 130.0
    assert policy.expires_at(5.0) == 3605.0
    assert policy.is_expired(0.0, 3600.0)
    assert not policy.is_expired(0.0, 3599.0)


def test_policy_from_settings():
    class Settings:
        retry_interval = 300
        message_expiration = 86400

    policy = RetryPolicy.from_settings(Settings())
    assert policy == RetryPolicy(retry_interval=300, message_expiration=86400, max_interval=2400)


def test_retry_at_is_the_next_backoff_step_while_the_message_has_time():
    policy = RetryPolicy(retry_interval=60, message_expiration=3600)
    assert policy.retry_at(attempts=2, received_at=0.0, now=10.0) == 130.0


def test_retry_at_is_the_expiry_when_the_backoff_would_overshoot_it():
    policy = RetryPolicy(retry_interval=60, message_expiration=3600)
    assert policy.retry_at(attempts=5, received_at=0.0, now=3500.0) == 3600.0


def test_retry_at_is_now_for_a_message_past_its_expiry():
    policy = RetryPolicy(retry_interval=60, message_expiration=3600)
    assert policy.retry_at(attempts=1, received_at=0.0, now=4000.0) == 4000.0
