"""Tests for hatwist.spool: durability, atomic state, recovery, write failures."""

from __future__ import annotations

import errno
import json
import os
import threading

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.python.threadpool import ThreadPool

from hatwist.spool import (
    DELIVERED,
    PENDING,
    Disk,
    MessageNotFound,
    RecipientState,
    Spool,
    SpoolWriteError,
)
from hatwist.spool._errors import CorruptEntry
from hatwist.spool._values import ID_PATTERN, SpooledMessage, decode, encode

DEADLINE = 10
CONTENT = b"Subject: hi\r\n\r\nbody\r\n"


class RecordingDisk(Disk):
    """The real disk, recording every call with its thread, and failing on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, threading.Thread]] = []
        self.fail_on: tuple[str, str] | None = None  # (operation, path fragment)
        self.error = OSError(errno.EIO, "Input/output error")

    def _note(self, op: str, path: str) -> None:
        self.calls.append((op, path, threading.current_thread()))
        if self.fail_on and self.fail_on[0] == op and self.fail_on[1] in path:
            raise self.error

    def write(self, path, data):
        self._note("write", path)
        super().write(path, data)

    def fsync_dir(self, path):
        self._note("fsync_dir", path)
        super().fsync_dir(path)

    def rename(self, source, destination):
        self._note("rename", destination)
        super().rename(source, destination)

    def ops(self) -> list[tuple[str, str]]:
        return [(op, os.path.basename(path)) for op, path, _ in self.calls]


@pytest.fixture
def pool():
    threadpool = ThreadPool(minthreads=1, maxthreads=4, name="test-spool")
    threadpool.start()
    yield threadpool
    threadpool.stop()


def deadline(d: defer.Deferred) -> defer.Deferred:
    return d.addTimeout(DEADLINE, reactor)


def listing(directory, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(str(directory), sub)))


@pytest_twisted.ensureDeferred
async def test_store_fsyncs_content_state_and_directory_before_firing(tmp_path, pool):
    disk = RecordingDisk()
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool, disk=disk)
    message = await deadline(spool.store("b1", "a@example.com", ["x@example.net"], CONTENT))
    assert disk.ops()[-5:] == [
        ("write", f"{message.id}.0.eml"), ("write", f"{message.id}.1.json"),
        ("rename", f"{message.id}.eml"), ("rename", f"{message.id}.json"),
        ("fsync_dir", "msg"),
    ]
    assert listing(tmp_path, "msg") == [f"{message.id}.eml", f"{message.id}.json"]
    assert listing(tmp_path, "tmp") == []
    assert (tmp_path / "msg" / f"{message.id}.eml").read_bytes() == CONTENT
    assert message.recipients == (RecipientState("x@example.net"),)
    assert (message.binding, message.mail_from) == ("b1", "a@example.com")
    assert message.size == len(CONTENT)


@pytest_twisted.ensureDeferred
async def test_file_io_never_runs_in_the_reactor_thread(tmp_path, pool):
    disk = RecordingDisk()
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool, disk=disk)
    message = await deadline(spool.store("b", "", ["x@example.net"], CONTENT))
    await deadline(spool.update(attrs.evolve(message, attempts=1)))
    await deadline(spool.recover())
    await deadline(spool.remove(message.id))
    assert disk.calls
    assert all(thread is not threading.main_thread() for _, _, thread in disk.calls)


@pytest_twisted.ensureDeferred
async def test_recover_returns_stored_messages_oldest_first_with_content(tmp_path, pool):
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool)
    first = await deadline(spool.store("b", "a@x.example", ["1@y.example"], b"one\r\n"))
    second = await deadline(spool.store("b", "a@x.example", ["2@y.example", "3@y.example"],
                                        b"two\r\n"))
    restarted = Spool(str(tmp_path), reactor=reactor, threadpool=pool)
    assert await deadline(restarted.recover()) == [first, second]
    assert await deadline(restarted.content(second.id)) == b"two\r\n"


def test_ids_are_unique_file_safe_and_sort_by_time():
    clock = task.Clock()
    clock.advance(1_700_000_000.5)
    spool = Spool("/nonexistent", reactor=clock, threadpool=None)
    ids = [spool._new_id(clock.seconds()) for _ in range(1000)]
    clock.advance(-10)  # the wall clock steps back: ids still increase
    ids.append(spool._new_id(clock.seconds()))
    clock.advance(3600)
    ids.append(spool._new_id(clock.seconds()))
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(ID_PATTERN.match(i) for i in ids)


@pytest_twisted.ensureDeferred
async def test_update_replaces_state_atomically(tmp_path, pool):
    disk = RecordingDisk()
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool, disk=disk)
    message = await deadline(spool.store("b", "a@x.example", ["1@y.example", "2@y.example"],
                                         CONTENT))
    changed = attrs.evolve(
        message, attempts=1, next_attempt_at=message.received_at + 600,
        recipients=(RecipientState("1@y.example", DELIVERED, 250, "2.0.0 ok", 1),
                    RecipientState("2@y.example", PENDING, 451, "4.7.1 later", 1)),
    )
    del disk.calls[:]
    await deadline(spool.update(changed))
    assert disk.ops() == [("write", f"{message.id}.2.json"), ("rename", f"{message.id}.json"),
                          ("fsync_dir", "msg")]
    assert await deadline(Spool(str(tmp_path), reactor=reactor, threadpool=pool).recover()) == [
        changed]
    assert changed.pending() == (changed.recipients[1],)
    assert listing(tmp_path, "tmp") == []


@pytest_twisted.ensureDeferred
async def test_removed_message_is_gone_for_every_operation(tmp_path, pool):
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool)
    message = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    await deadline(spool.remove(message.id))
    assert listing(tmp_path, "msg") == []
    for attempt in (spool.remove(message.id), spool.content(message.id),
                    spool.update(message)):
        with pytest.raises(MessageNotFound):
            await deadline(attempt)
    assert listing(tmp_path, "msg") == []  # the update did not resurrect a state file


class ManualPool:
    """A thread pool whose jobs run only when the test says so."""

    def __init__(self) -> None:
        self.jobs: list = []

    def callInThreadWithCallback(self, on_result, f, *args, **kwargs):
        self.jobs.append((on_result, f, args, kwargs))

    def run_next(self) -> None:
        on_result, f, args, kwargs = self.jobs.pop(0)
        on_result(True, f(*args, **kwargs))


class ImmediateReactor(task.Clock):
    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def test_updates_of_one_message_land_in_the_order_they_were_asked(tmp_path):
    pool, clock = ManualPool(), ImmediateReactor()
    spool = Spool(str(tmp_path), reactor=clock, threadpool=pool)
    stored = spool.store("b", "", ["1@y.example"], CONTENT)
    pool.run_next()
    message = stored.result
    done = []
    spool.update(attrs.evolve(message, attempts=1)).addCallback(lambda _: done.append(1))
    spool.update(attrs.evolve(message, attempts=2)).addCallback(lambda _: done.append(2))
    spool.store("b", "", ["2@y.example"], CONTENT).addCallback(lambda _: done.append("other"))
    assert len(pool.jobs) == 2  # the second update waits; another message does not
    pool.jobs.reverse()  # let the other message's job run first
    pool.run_next()
    pool.run_next()
    assert len(pool.jobs) == 1 and done == ["other", 1]
    pool.run_next()
    assert done == ["other", 1, 2]
    recovered = spool.recover()
    pool.run_next()
    assert [m.attempts for m in recovered.result] == [2, 0]
    assert spool._locks == {}


class InterleavingDisk(Disk):
    """Runs ``between`` once, just after a store moved its content into msg/."""

    def __init__(self, between) -> None:
        self.between = between

    def rename(self, source, destination):
        super().rename(source, destination)
        if destination.endswith(".eml") and self.between:
            between, self.between = self.between, None
            between()


def test_recovery_running_while_a_message_is_stored_neither_breaks_nor_sets_it_aside(
        tmp_path):
    """The listener may accept mail while start-up recovery reads the spool: recovery
    must not take a store in progress for crash debris (its tmp/ file deleted, its
    content without state moved to corrupt/): that message already got, or is about
    to get, its 250."""
    pool, clock = ManualPool(), ImmediateReactor()
    disk = InterleavingDisk(lambda: pool.run_next())  # the recovery job, mid-store
    spool = Spool(str(tmp_path), reactor=clock, threadpool=pool, disk=disk)
    stored = spool.store("b", "a@x.example", ["1@y.example"], CONTENT)
    recovered = spool.recover()
    pool.run_next()  # the store, which lets recovery run in the middle
    message = stored.result  # raises if the store failed
    assert recovered.result == []  # in progress: the listener hands it on, not recovery
    assert listing(tmp_path, "corrupt") == []
    assert listing(tmp_path, "msg") == [f"{message.id}.eml", f"{message.id}.json"]
    again = Spool(str(tmp_path), reactor=clock, threadpool=pool).recover()
    pool.run_next()
    assert again.result == [message]


class ListingDisk(Disk):
    """Runs ``after`` once, just after recovery listed msg/."""

    def __init__(self, after) -> None:
        self.after = after

    def listdir(self, path):
        names = super().listdir(path)
        if path.endswith("msg") and self.after:
            after, self.after = self.after, None
            after()
        return names


def test_message_finished_while_recovery_reads_is_skipped_not_reported_corrupt(tmp_path):
    pool, clock = ManualPool(), ImmediateReactor()
    spool = Spool(str(tmp_path), reactor=clock, threadpool=pool)
    stored = spool.store("b", "a@x.example", ["1@y.example"], CONTENT)
    pool.run_next()
    message = stored.result
    gone = Spool(str(tmp_path), reactor=clock, threadpool=pool,
                 disk=ListingDisk(lambda: Spool(str(tmp_path), reactor=clock, threadpool=pool)
                                  ._files.remove(message.id)))
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        recovered = gone.recover()
        pool.run_next()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert recovered.result == []
    assert listing(tmp_path, "corrupt") == []
    assert not [e for e in events if "set aside" in e.get("log_format", "")]


@pytest.mark.parametrize("operation, fragment", [
    ("write", ".eml"), ("write", ".json"), ("rename", ".eml"), ("rename", ".json"),
    ("fsync_dir", "msg"),
])
@pytest_twisted.ensureDeferred
async def test_write_error_at_any_step_leaves_nothing_behind(tmp_path, pool, operation,
                                                             fragment):
    disk = RecordingDisk()
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool, disk=disk)
    await deadline(spool.recover())  # create the directories first
    disk.fail_on = (operation, fragment)
    with pytest.raises(SpoolWriteError) as caught:
        await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    assert caught.value.errno == errno.EIO
    assert listing(tmp_path, "msg") == listing(tmp_path, "tmp") == []


@pytest.mark.parametrize("operation, directory", [("write", "tmp"), ("rename", "msg")])
@pytest_twisted.ensureDeferred
async def test_failed_update_keeps_the_old_state_and_names_the_failing_file(
        tmp_path, pool, operation, directory):
    disk = RecordingDisk()
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool, disk=disk)
    message = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    disk.fail_on = (operation, ".json")
    with pytest.raises(SpoolWriteError) as caught:
        await deadline(spool.update(attrs.evolve(message, attempts=5)))
    assert os.path.dirname(caught.value.path) == str(tmp_path / directory)
    assert listing(tmp_path, "tmp") == []
    assert await deadline(spool.recover()) == [message]


@pytest_twisted.ensureDeferred
async def test_full_disk_fails_the_store_and_leaves_nothing_half_written(tiny_tmpfs, pool):
    spool = Spool(str(tiny_tmpfs / "spool"), reactor=reactor, threadpool=pool)
    small = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    with pytest.raises(SpoolWriteError) as caught:
        await deadline(spool.store("b", "a@x.example", ["1@y.example"], b"x" * 100_000))
    assert caught.value.errno == errno.ENOSPC
    assert listing(tiny_tmpfs / "spool", "tmp") == []
    assert listing(tiny_tmpfs / "spool", "msg") == [f"{small.id}.eml", f"{small.id}.json"]
    # The space came back: the spool still works.
    await deadline(spool.store("b", "a@x.example", ["2@y.example"], CONTENT))


@pytest_twisted.ensureDeferred
async def test_recovery_sets_aside_corrupt_and_half_written_files_and_logs_them(
        tmp_path, pool):
    spool = Spool(str(tmp_path), reactor=reactor, threadpool=pool)
    good = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    bad_json = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    short = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    orphan = await deadline(spool.store("b", "a@x.example", ["1@y.example"], CONTENT))
    msg = tmp_path / "msg"
    (msg / f"{bad_json.id}.json").write_bytes(b'{"version": 1, "id": ')
    (msg / f"{short.id}.eml").write_bytes(b"trunc")
    (msg / f"{orphan.id}.json").unlink()
    (msg / "stray.txt").write_bytes(b"?")
    (tmp_path / "tmp" / "debris.json").write_bytes(b"half")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        recovered = await deadline(Spool(str(tmp_path), reactor=reactor,
                                         threadpool=pool).recover())
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert recovered == [good]
    assert listing(tmp_path, "msg") == [f"{good.id}.eml", f"{good.id}.json"]
    assert listing(tmp_path, "tmp") == []
    assert listing(tmp_path, "corrupt") == sorted([
        f"{bad_json.id}.eml", f"{bad_json.id}.json", f"{short.id}.eml", f"{short.id}.json",
        f"{orphan.id}.eml", "stray.txt"])
    logged = {e.get("name"): e.get("reason") for e in events if "reason" in e}
    assert "missing" in logged[f"{orphan.id}.eml"]
    assert "5 bytes" in logged[f"{short.id}.eml"]
    assert "unreadable" in logged[f"{bad_json.id}.json"]


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
