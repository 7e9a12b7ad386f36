"""Tests for hatwist.spool's recovery: batches, what changes while it runs, corrupt rows,
transient read errors (issue 12)."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads
from twisted.logger import globalLogPublisher

from hatwist.spool import SpoolError
from hatwist.spool import _db as db_module
from hatwist.spool._db import DATABASE
from hatwist.spool._inspect import spooled_ids
from tests import test_spool_helpers as kit
from tests.test_spool_helpers import CONTENT, GatedDatabase, deadline

pool, spools = kit.pool, kit.spools  # fixtures


async def stored(spool, count: int) -> list:
    return list(await deadline(defer.gatherResults(
        [spool.store("b", "s@x.example", [f"{n}@y.example"], CONTENT) for n in range(count)])))


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@pytest_twisted.ensureDeferred
async def test_batches_come_in_id_order_in_the_reactor_thread_at_most_batch_size_each(
        tmp_path, spools):
    spool = spools(tmp_path)
    messages = await stored(spool, 25)
    await deadline(spool.close())
    batches, where = [], []

    def on_batch(batch):
        batches.append(batch)
        where.append(threading.current_thread())

    total = await deadline(spools(tmp_path).recover_batches(on_batch, batch_size=10))
    assert total == 25
    assert [len(b) for b in batches] == [10, 10, 5]
    assert [m for b in batches for m in b] == sorted(messages, key=lambda m: m.id)
    assert all(thread is threading.main_thread() for thread in where)


@pytest_twisted.ensureDeferred
async def test_the_next_batch_is_read_only_after_on_batch_returned(tmp_path, spools,
                                                                   monkeypatch):
    spool = spools(tmp_path)
    await stored(spool, 6)
    reads = []
    real = db_module.read_rows

    def counting(*args):
        reads.append(args[1])
        return real(*args)

    monkeypatch.setattr(db_module, "read_rows", counting)
    release: defer.Deferred = defer.Deferred()
    batches = []

    def on_batch(batch):
        batches.append(batch)
        return release if len(batches) == 1 else None

    recovering = spool.recover_batches(on_batch, batch_size=2)
    await task.deferLater(reactor, 0.2)
    assert (len(reads), len(batches)) == (1, 1)  # the reactor turns; no read ahead
    release.callback(None)
    assert await deadline(recovering) == 6
    assert len(reads) == 4  # three batches and the empty read that ends it


@pytest_twisted.ensureDeferred
async def test_messages_stored_while_it_runs_or_still_being_stored_are_not_reported(
        tmp_path, spools):
    """The listener hands those on itself: recovery must not report them a second time."""
    spool = spools(tmp_path, database=GatedDatabase)
    old = await stored(spool, 4)
    gate = spool._database
    gate.close_gate()
    in_flight = spool.store("b", "", ["busy@y.example"], CONTENT)
    await deadline(threads.deferToThread(gate.entered.wait, 10))
    reported, during = [], []

    def on_batch(batch):
        reported.extend(batch)
        if len(reported) == 2:
            gate.open_gate()
            return spool.store("b", "", ["new@y.example"], CONTENT).addCallback(during.append)

    total = await deadline(spool.recover_batches(on_batch, batch_size=2))
    busy = await deadline(in_flight)
    assert (total, reported) == (4, old)
    assert busy.id in spooled_ids(str(tmp_path)) and during[0].id in spooled_ids(str(tmp_path))
    # A later recovery (a scheduler started again) sees them.
    later = [m.id for m in await deadline(spool.recover())]
    assert later == [m.id for m in old] + [busy.id, during[0].id]


@pytest_twisted.ensureDeferred
async def test_a_message_removed_before_the_read_reached_it_is_not_reported(tmp_path, spools):
    spool = spools(tmp_path)
    first, second, third = await stored(spool, 3)
    reported = []

    def on_batch(batch):
        reported.extend(batch)
        if len(reported) == 1:
            return spool.remove(third.id)

    assert await deadline(spool.recover_batches(on_batch, batch_size=1)) == 2
    assert reported == [first, second]


def _corrupt(path, message_id: str, sql: str) -> None:
    with sqlite3.connect(str(path / DATABASE)) as db:
        db.execute(sql, (message_id,))


@pytest_twisted.ensureDeferred
async def test_rows_that_cannot_be_decoded_are_set_aside_whole_and_logged(tmp_path, spools,
                                                                          events):
    spool = spools(tmp_path)
    good, bad_json, short, no_content, other_id = await stored(spool, 5)
    await deadline(spool.close())
    _corrupt(tmp_path, bad_json.id, "UPDATE message SET state = '{\"version\": 1,' WHERE id = ?")
    _corrupt(tmp_path, short.id, "UPDATE content SET data = x'00' WHERE id = ?")
    _corrupt(tmp_path, no_content.id, "DELETE FROM content WHERE id = ?")
    _corrupt(tmp_path, other_id.id,
             f"UPDATE message SET state = replace(state, id, '{good.id}') WHERE id = ?")
    restarted = spools(tmp_path)
    assert await deadline(restarted.recover()) == [good]
    assert spooled_ids(str(tmp_path)) == [good.id]
    aside = dict(await deadline(restarted.set_aside()))
    assert set(aside) == {bad_json.id, short.id, no_content.id, other_id.id}
    assert "unreadable" in aside[bad_json.id]
    assert "1 bytes" in aside[short.id]
    assert "content row missing" in aside[no_content.id]
    assert "names message" in aside[other_id.id]
    with sqlite3.connect(str(tmp_path / DATABASE)) as db:  # kept whole, content too
        assert db.execute("SELECT data FROM corrupt WHERE id = ?",
                          (bad_json.id,)).fetchone()[0] == CONTENT
    logged = [e for e in events if "set aside" in e.get("log_format", "")]
    assert {e["message_id"] for e in logged} == set(aside)


@pytest_twisted.ensureDeferred
async def test_a_transient_read_error_fails_recovery_loudly_and_sets_nothing_aside(
        tmp_path, spools, monkeypatch):
    """Issue 12: valid mail must never be set aside for an EIO, EMFILE or EACCES."""
    spool = spools(tmp_path)
    messages = await stored(spool, 3)
    await deadline(spool.close())
    real = db_module.read_rows
    calls = []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 2:
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorname = "SQLITE_IOERR_READ"
            raise error
        return real(*args)

    monkeypatch.setattr(db_module, "read_rows", flaky)
    restarted = spools(tmp_path)
    with pytest.raises(SpoolError) as caught:
        await deadline(restarted.recover_batches(lambda batch: None, batch_size=2))
    assert "read failed: disk I/O error" in str(caught.value)
    assert await deadline(restarted.set_aside()) == []
    assert spooled_ids(str(tmp_path)) == [m.id for m in messages]
    assert await deadline(restarted.recover()) == messages  # retried: all there


@pytest_twisted.ensureDeferred
async def test_recover_collects_every_batch_into_one_list(tmp_path, spools):
    spool = spools(tmp_path)
    messages = await stored(spool, 12)
    assert await deadline(spool.recover()) == sorted(messages, key=lambda m: m.id)
