"""Tests for hatwist.delivery.pool: idle sessions kept, reused, expired and closed."""

from __future__ import annotations

from twisted.internet import defer, task

from hatwist.config import TLSMode
from hatwist.delivery.pool import DEFAULT_IDLE_TIMEOUT, PoolKey, SessionPool

ROUTE = "proxy 127.0.0.1:5000 from 127.0.0.9"
KEY = PoolKey("b1", ROUTE, "127.0.0.20", "example.test", TLSMode.IFAVAILABLE)
OTHER = PoolKey("b1", ROUTE, "127.0.0.20", "other.test", TLSMode.IFAVAILABLE)


class Session:
    def __init__(self) -> None:
        self.is_open = True
        self.quits = 0
        self.aborts = 0
        self.quitting: defer.Deferred | None = None

    def quit(self):
        self.quits += 1
        self.is_open = False
        self.quitting = defer.Deferred()
        return self.quitting

    def abort(self):
        self.aborts += 1
        self.is_open = False


class ClosingSession(Session):
    """A session that reports when the peer closes it, like OutboundSession.when_closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[defer.Deferred] = []

    def when_closed(self):
        d = defer.Deferred()
        self.closed.append(d)
        return d

    def peer_closes(self):
        self.is_open = False
        for d in self.closed:
            d.callback(None)


def pool_and_clock(**kwargs):
    clock = task.Clock()
    return SessionPool(reactor=clock, **kwargs), clock


def released(pool, key=KEY, sent=1, max_messages=10):
    session = Session()
    pooled = pool.adopt(key, session)
    pooled.sent = sent
    pool.release(pooled, max_messages=max_messages)
    return session


def test_a_released_session_is_lent_again_for_the_same_key_only():
    pool, _clock = pool_and_clock()
    session = released(pool)
    assert pool.take(OTHER) is None
    pooled = pool.take(KEY)
    assert pooled.session is session and pooled.sent == 1
    assert pool.take(KEY) is None


def test_most_recently_used_session_is_lent_first():
    pool, _clock = pool_and_clock()
    released(pool)
    newest = released(pool)
    assert pool.take(KEY).session is newest
    assert pool.idle_count(KEY) == 1


def test_idle_session_is_quit_after_the_idle_timeout():
    pool, clock = pool_and_clock(idle_timeout=5)
    session = released(pool)
    clock.advance(4.9)
    assert session.quits == 0
    clock.advance(0.1)
    assert session.quits == 1
    assert pool.take(KEY) is None
    assert clock.getDelayedCalls() == []


def test_taking_a_session_stops_its_idle_timer():
    pool, clock = pool_and_clock()
    session = released(pool)
    pool.take(KEY)
    assert clock.getDelayedCalls() == []
    clock.advance(DEFAULT_IDLE_TIMEOUT * 2)
    assert session.quits == 0


def test_session_that_carried_max_messages_is_quit_not_kept():
    pool, _clock = pool_and_clock()
    session = released(pool, sent=3, max_messages=3)
    assert session.quits == 1
    assert pool.idle_count() == 0


def test_session_closed_by_the_peer_is_not_kept_or_lent():
    pool, clock = pool_and_clock()
    dead = Session()
    dead.is_open = False
    pool.release(pool.adopt(KEY, dead), max_messages=10)
    assert pool.idle_count() == 0
    closed_while_idle = released(pool)
    closed_while_idle.is_open = False
    assert pool.take(KEY) is None
    assert clock.getDelayedCalls() == []


def test_session_the_peer_closes_while_idle_is_forgotten_at_once():
    pool, clock = pool_and_clock()
    session = ClosingSession()
    pool.release(pool.adopt(KEY, session), max_messages=10)
    assert pool.idle_count(KEY) == 1
    session.peer_closes()
    assert pool.idle_count() == 0
    assert clock.getDelayedCalls() == []
    assert session.quits == 0


def test_a_session_reused_many_times_is_watched_for_closing_once():
    pool, _clock = pool_and_clock()
    session = ClosingSession()
    pooled = pool.adopt(KEY, session)
    for sent in range(1, 51):
        pooled.sent = sent
        pool.release(pooled, max_messages=100)
        assert pool.take(KEY) is pooled
    assert len(session.closed) == 1  # not one waiter per message carried


def test_discard_aborts_the_session():
    pool, _clock = pool_and_clock()
    session = Session()
    pool.discard(pool.adopt(KEY, session))
    assert session.aborts == 1
    assert pool.idle_count() == 0


def test_close_quits_every_idle_session_and_waits_for_them():
    pool, clock = pool_and_clock()
    sessions = [released(pool), released(pool, key=OTHER)]
    done = []
    pool.close().addCallback(done.append)
    assert [s.quits for s in sessions] == [1, 1]
    assert clock.getDelayedCalls() == []
    assert done == []
    sessions[0].quitting.callback(None)
    sessions[1].quitting.errback(ConnectionError("peer gone"))
    assert done == [None]
    assert pool.idle_count() == 0
