"""Tests for hatwist.spool: durability, group commit, ordering, write failures.

Recovery: tests/test_spool_recovery.py; the old-layout import: tests/test_spool_import.py;
the lock and an unusable spool: tests/test_spool_open.py; helpers: tests/test_spool_helpers.py.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import threading

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from hatwist.spool import (
    DELIVERED,
    PENDING,
    Limits,
    MessageNotFound,
    RecipientState,
    Spool,
    SpoolWriteError,
)
from hatwist.spool._db import DATABASE
from hatwist.spool._errors import CorruptEntry
from hatwist.spool._inspect import spooled_contents, spooled_ids
from hatwist.spool._values import ID_PATTERN, SpooledMessage, decode, encode
from tests import test_spool_helpers as kit
from tests.test_spool_helpers import CONTENT, GatedDatabase, deadline

pool, spools = kit.pool, kit.spools  # fixtures


@pytest_twisted.ensureDeferred
async def test_store_fires_only_once_its_transaction_committed(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase)
    gate = spool._database
    gate.close_gate()
    stored = spool.store("b1", "a@example.com", ["x@example.net"], CONTENT)
    await deadline(threads.deferToThread(gate.entered.wait, 10))
    await task.deferLater(reactor, 0.05)
    assert not stored.called
    assert spooled_ids(str(tmp_path)) == []
    gate.open_gate()
    message = await deadline(stored)
    # Another connection (what a restarted relay would open) sees the commit.
    assert spooled_ids(str(tmp_path)) == [message.id]
    assert spooled_contents(str(tmp_path)) == {message.id: CONTENT}
    assert message.recipients == (RecipientState("x@example.net"),)
    assert (message.binding, message.mail_from, message.size) == ("b1", "a@example.com",
                                                                   len(CONTENT))


@pytest_twisted.ensureDeferred
async def test_the_database_is_wal_with_full_synchronous_commits(tmp_path, spools):
    spool = spools(tmp_path)
    await deadline(spool.store("b", "", ["x@example.net"], CONTENT))
    writer = spool._database._writer
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    with sqlite3.connect(str(tmp_path / DATABASE)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert os.stat(tmp_path / DATABASE).st_mode & 0o077 == 0  # mail is private


@pytest_twisted.ensureDeferred
async def test_stores_asked_for_during_a_commit_share_the_next_transaction(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase)
    gate = spool._database
    gate.close_gate()
    first = spool.store("b", "", ["x@example.net"], CONTENT)
    await deadline(threads.deferToThread(gate.entered.wait, 10))
    rest = [spool.store("b", "", [f"{i}@example.net"], CONTENT) for i in range(50)]
    gate.open_gate()
    await deadline(defer.gatherResults([first, *rest]))
    assert gate.batches == [1, 50]
    assert len(spooled_ids(str(tmp_path))) == 51


@pytest_twisted.ensureDeferred
async def test_a_transaction_takes_at_most_the_batch_limit(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase, limits=Limits(batch_operations=10))
    gate = spool._database
    gate.close_gate()
    first = spool.store("b", "", ["x@example.net"], CONTENT)
    await deadline(threads.deferToThread(gate.entered.wait, 10))
    rest = [spool.store("b", "", [f"{i}@example.net"], CONTENT) for i in range(34)]
    gate.open_gate()
    await deadline(defer.gatherResults([first, *rest]))
    assert gate.batches == [1, 10, 10, 10, 4]


@pytest_twisted.ensureDeferred
async def test_a_full_write_queue_refuses_at_once_and_keeps_what_it_holds(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase, limits=Limits(queue_operations=5))
    gate = spool._database
    gate.close_gate()
    first = spool.store("b", "", ["x@example.net"], CONTENT)
    await deadline(threads.deferToThread(gate.entered.wait, 10))
    queued = [spool.store("b", "", [f"{i}@example.net"], CONTENT) for i in range(4)]
    with pytest.raises(SpoolWriteError) as caught:
        await deadline(spool.store("b", "", ["late@example.net"], CONTENT))
    assert caught.value.errno == errno.EAGAIN
    gate.open_gate()
    stored = await deadline(defer.gatherResults([first, *queued]))
    assert spooled_ids(str(tmp_path)) == [m.id for m in stored]


@pytest_twisted.ensureDeferred
async def test_database_work_never_runs_in_the_reactor_thread(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase)
    message = await deadline(spool.store("b", "", ["x@example.net"], CONTENT))
    await deadline(spool.update(attrs.evolve(message, attempts=1)))
    assert await deadline(spool.content(message.id)) == CONTENT
    await deadline(spool.recover())
    await deadline(spool.remove(message.id))
    threads_seen = spool._database.threads
    assert {"commit", "reader"} <= {what for what, _ in threads_seen}
    assert all(thread is not threading.main_thread() for _, thread in threads_seen)


@pytest_twisted.ensureDeferred
async def test_recover_after_a_restart_returns_messages_oldest_first_with_content(
        tmp_path, spools):
    spool = spools(tmp_path)
    first = await deadline(spool.store("b", "a@x.example", ["1@y.example"], b"one\r\n"))
    second = await deadline(spool.store("b", "a@x.example", ["2@y.example", "3@y.example"],
                                        b"two\r\n"))
    await deadline(spool.close())
    restarted = spools(tmp_path)
    assert await deadline(restarted.recover()) == [first, second]
    assert await deadline(restarted.content(second.id)) == b"two\r\n"
    third = await deadline(restarted.store("b", "", ["4@y.example"], b"3\r\n"))
    assert third.id > second.id


def test_ids_are_unique_sortable_and_keep_increasing_when_the_clock_steps_back():
    clock = task.Clock()
    clock.advance(1_700_000_000.5)
    spool = Spool("/nonexistent", reactor=clock, threadpool=None)
    ids = [spool._new_id(clock.seconds()) for _ in range(1000)]
    clock.advance(-10)
    ids.append(spool._new_id(clock.seconds()))
    clock.advance(3600)
    ids.append(spool._new_id(clock.seconds()))
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(ID_PATTERN.match(i) for i in ids)


@pytest_twisted.ensureDeferred
async def test_update_replaces_the_state_and_leaves_the_content(tmp_path, spools):
    spool = spools(tmp_path)
    message = await deadline(spool.store("b", "a@x.example", ["1@y.example", "2@y.example"],
                                         CONTENT))
    changed = attrs.evolve(
        message, attempts=1, next_attempt_at=message.received_at + 600,
        recipients=(RecipientState("1@y.example", DELIVERED, 250, "2.0.0 ok", 1),
                    RecipientState("2@y.example", PENDING, 451, "4.7.1 later", 1)),
    )
    await deadline(spool.update(changed))
    await deadline(spool.close())
    restarted = spools(tmp_path)
    assert await deadline(restarted.recover()) == [changed]
    assert await deadline(restarted.content(message.id)) == CONTENT


@pytest_twisted.ensureDeferred
async def test_a_removed_message_is_gone_for_every_operation(tmp_path, spools):
    spool = spools(tmp_path)
    message = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    await deadline(spool.remove(message.id))
    for attempt in (spool.remove(message.id), spool.content(message.id),
                    spool.update(message)):
        with pytest.raises(MessageNotFound):
            await deadline(attempt)
    assert spooled_ids(str(tmp_path)) == []  # the update did not resurrect it


@pytest_twisted.ensureDeferred
async def test_updates_of_one_message_land_and_answer_in_the_order_asked(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase, limits=Limits(batch_operations=7))
    message = await deadline(spool.store("b", "", ["1@y.example"], CONTENT))
    gate = spool._database
    gate.close_gate()
    answered = []
    updates = [spool.update(attrs.evolve(message, attempts=n)).addCallback(
        lambda _, n=n: answered.append(n)) for n in range(1, 31)]
    gate.open_gate()
    await deadline(defer.gatherResults(updates))
    assert answered == list(range(1, 31))
    assert len(gate.batches) > 2  # spread over several transactions, still in order
    [saved] = await deadline(spool.recover())
    assert saved.attempts == 30


@pytest_twisted.ensureDeferred
async def test_content_asked_for_after_a_removal_waits_for_it(tmp_path, spools):
    spool = spools(tmp_path, database=GatedDatabase)
    message = await deadline(spool.store("b", "", ["1@y.example"], CONTENT))
    gate = spool._database
    gate.close_gate()
    removed = spool.remove(message.id)
    read = spool.content(message.id)
    await task.deferLater(reactor, 0.05)
    assert not read.called
    gate.open_gate()
    await deadline(removed)
    with pytest.raises(MessageNotFound):
        await deadline(read)


@pytest.mark.parametrize("errorname, code", [("SQLITE_IOERR_WRITE", errno.EIO),
                                             ("SQLITE_FULL", errno.ENOSPC)])
@pytest_twisted.ensureDeferred
async def test_a_failed_commit_writes_nothing_and_says_why(tmp_path, spools, errorname, code):
    spool = spools(tmp_path, database=GatedDatabase)
    kept = await deadline(spool.store("b", "", ["1@y.example"], CONTENT))
    spool._database.fail_next(errorname)
    with pytest.raises(SpoolWriteError) as caught:
        await deadline(spool.store("b", "", ["2@y.example"], CONTENT))
    assert caught.value.errno == code
    assert spooled_ids(str(tmp_path)) == [kept.id]
    spool._database.fail_next(errorname)
    with pytest.raises(SpoolWriteError):
        await deadline(spool.update(attrs.evolve(kept, attempts=9)))
    assert await deadline(spool.recover()) == [kept]  # the old state, whole
    await deadline(spool.update(attrs.evolve(kept, attempts=9)))  # and it works again
    assert [m.attempts for m in await deadline(spool.recover())] == [9]


def _fill(path) -> None:
    """Write zeros to ``path`` until the file system is full."""
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(bytes(4096))
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    return
                raise


@pytest_twisted.ensureDeferred
async def test_a_full_disk_fails_the_store_leaves_nothing_and_it_works_once_space_is_back(
        tiny_tmpfs, spools):
    directory = tiny_tmpfs / "spool"
    spool = spools(directory)
    first = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    _fill(tiny_tmpfs / "filler")
    with pytest.raises(SpoolWriteError) as caught:
        await deadline(spool.store("b", "a@x.example", ["2@y.example"], CONTENT))
    assert caught.value.errno == errno.ENOSPC
    message = await deadline(spool.store("b", "a@x.example", ["3@y.example"], b"x" * 100_000)
                             ).addErrback(lambda f: f.value)
    assert isinstance(message, SpoolWriteError)
    assert spooled_ids(str(directory)) == [first.id]
    os.unlink(tiny_tmpfs / "filler")
    again = await deadline(spool.store("b", "a@x.example", ["4@y.example"], CONTENT))
    assert spooled_ids(str(directory)) == [first.id, again.id]


@pytest_twisted.ensureDeferred
async def test_one_message_too_big_for_the_disk_does_not_fail_the_others_beside_it(
        tiny_tmpfs, spools):
    directory = tiny_tmpfs / "spool"
    spool = spools(directory, database=GatedDatabase)
    gate = spool._database
    await deadline(spool.recover())  # opened
    gate.close_gate()
    first = spool.store("b", "", ["0@y.example"], CONTENT)
    await deadline(threads.deferToThread(gate.entered.wait, 10))
    big = spool.store("b", "", ["1@y.example"], b"x" * 100_000)
    small = spool.store("b", "", ["2@y.example"], CONTENT)
    gate.open_gate()
    await deadline(first)
    with pytest.raises(SpoolWriteError):
        await deadline(big)
    stored = await deadline(small)
    assert stored.id in spooled_ids(str(directory))


@pytest_twisted.ensureDeferred
async def test_recovered_messages_share_repeated_strings(tmp_path, spools):
    spool = spools(tmp_path)
    for n in range(3):
        message = await deadline(spool.store("warm", "news@x.example", [f"{n}@y.example"],
                                             CONTENT))
        await deadline(spool.update(attrs.evolve(message, recipients=(
            RecipientState(f"{n}@y.example", PENDING, 451, "4.7.1 try later", 1),))))
    one = await deadline(spool.store("".join(["wa", "rm"]), "", ["x@y.example"], CONTENT))
    two = await deadline(spool.store("".join(["wa", "rm"]), "", ["x@y.example"], CONTENT))
    assert one.binding is two.binding  # stored ones share it too
    await deadline(spool.close())
    a, b, c, *_ = await deadline(spools(tmp_path).recover())
    assert a.binding is b.binding is c.binding
    assert a.mail_from is b.mail_from is c.mail_from
    ra, rb = a.recipients[0], b.recipients[0]
    assert ra.reason is rb.reason and ra.code is rb.code and ra.status is PENDING


@pytest.mark.parametrize("mangle", [
    lambda b: b.update(version=2),
    lambda b: b.update(size="12"),
    lambda b: b.update(recipients=[]),
    lambda b: b["recipients"][0].update(status="sent"),
    lambda b: b.update(id="../../etc/passwd"),
    lambda b: b.update(extra=1),
    lambda b: b.pop("binding"),
])
def test_decode_refuses_anything_encode_would_not_write(mangle):
    message = SpooledMessage("0000000000000a-00000000ff", "b", "", (RecipientState("r@x"),),
                             1.0, 0, 1.0, 3)
    assert decode(encode(message)) == message
    body = json.loads(encode(message))
    mangle(body)
    with pytest.raises(CorruptEntry):
        decode(json.dumps(body).encode())


@pytest_twisted.ensureDeferred
async def test_a_spool_closed_and_opened_again_reads_and_writes(tmp_path, spools):
    spool = spools(tmp_path)
    message = await deadline(spool.store("b", "", ["1@y.example"], CONTENT))
    assert await deadline(spool.content(message.id)) == CONTENT
    await deadline(spool.close())
    spool.open()
    assert await deadline(spool.content(message.id)) == CONTENT
    await deadline(spool.remove(message.id))
    assert await deadline(spool.recover()) == []
