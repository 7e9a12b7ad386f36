"""Tests for hatwist.spool's one-time import of the old file layout (tmp/, msg/, corrupt/),
written here by the old code's own writer (hatwist.spool._legacy.SpoolDirectory)."""

from __future__ import annotations

import errno

import attrs
import pytest
import pytest_twisted
from twisted.logger import globalLogPublisher

from hatwist.spool import DELIVERED, Disk, RecipientState, SpoolError
from hatwist.spool._inspect import spooled_contents, spooled_ids
from tests import test_spool_helpers as kit
from tests.test_spool_helpers import (
    CONTENT,
    deadline,
    old_files,
    old_message,
    write_old_layout,
)

pool, spools = kit.pool, kit.spools  # fixtures


@pytest.fixture
def events():
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


def imported_lines(events) -> list[dict]:
    return [e for e in events if "imported" in e.get("log_format", "")]


@pytest_twisted.ensureDeferred
async def test_old_messages_are_imported_once_with_their_state_and_the_files_go(
        tmp_path, spools, events):
    first, second = old_message(1), old_message(2, content=b"second\r\n")
    old = write_old_layout(tmp_path, [first, second])
    tried = attrs.evolve(second[0], attempts=2, recipients=(
        RecipientState("r@example.net", DELIVERED, 250, "ok", 2),))
    old.update(tried)
    spool = spools(tmp_path)
    spool.open()
    assert await deadline(spool.recover()) == [first[0], tried]
    assert await deadline(spool.content(second[0].id)) == b"second\r\n"
    assert old_files(tmp_path) == {"corrupt": []}  # tmp/ and msg/ are gone
    [line] = imported_lines(events)
    assert (line["imported"], line["set_aside"], line["debris"]) == (2, 0, 0)
    newer = await deadline(spool.store("b", "", ["n@example.net"], CONTENT))
    assert newer.id > second[0].id
    await deadline(spool.close())
    del events[:]
    spools(tmp_path).open()  # once: nothing left to import
    assert imported_lines(events) == []
    assert spooled_ids(str(tmp_path)) == [first[0].id, second[0].id, newer.id]


class CrashAfterCommit(Disk):
    """Fails like a crash right after the import committed, before any file went."""

    def unlink(self, path):
        if path.endswith(".json"):
            raise OSError(errno.EIO, "simulated crash")
        super().unlink(path)


@pytest_twisted.ensureDeferred
async def test_an_import_interrupted_after_its_commit_repeats_without_duplicates(
        tmp_path, spools):
    messages = [old_message(n) for n in range(3)]
    write_old_layout(tmp_path, messages)
    with pytest.raises(SpoolError) as caught:
        spools(tmp_path, disk=CrashAfterCommit()).open()
    assert "retried at the next start" in str(caught.value)
    assert spooled_ids(str(tmp_path)) == [m.id for m, _ in messages]  # committed
    assert len(old_files(tmp_path)["msg"]) == 6  # and every file still there
    spool = spools(tmp_path)
    spool.open()
    assert await deadline(spool.recover()) == [m for m, _ in messages]
    assert old_files(tmp_path) == {"corrupt": []}


class FlakyRead(Disk):
    """EIO on reading one state file: a transient error, not a corrupt file."""

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self, path):
        if path.endswith(self.name):
            raise OSError(errno.EIO, "Input/output error", path)
        return super().read(path)


@pytest_twisted.ensureDeferred
async def test_a_transient_error_stops_the_import_sets_nothing_aside_and_it_is_retried(
        tmp_path, spools):
    messages = [old_message(n) for n in range(3)]
    write_old_layout(tmp_path, messages)
    with pytest.raises(SpoolError) as caught:
        spools(tmp_path, disk=FlakyRead(messages[1][0].id + ".json")).open()
    assert "Input/output error" in str(caught.value)
    files = old_files(tmp_path)
    assert files["corrupt"] == [] and len(files["msg"]) == 6
    spool = spools(tmp_path)
    spool.open()
    assert await deadline(spool.recover()) == [m for m, _ in messages]


@pytest_twisted.ensureDeferred
async def test_undecodable_files_are_set_aside_and_unacknowledged_debris_is_removed(
        tmp_path, spools, events):
    good, bad, short, lone = (old_message(n) for n in range(4))
    write_old_layout(tmp_path, [good, bad, short, lone])
    msg = tmp_path / "msg"
    (msg / f"{bad[0].id}.json").write_bytes(b'{"version": 1, "id": ')
    (msg / f"{short[0].id}.eml").write_bytes(b"trunc")
    (msg / f"{lone[0].id}.json").unlink()  # a store that never got its 250
    (msg / "stray.txt").write_bytes(b"?")
    (tmp_path / "tmp" / "debris.json").write_bytes(b"half")
    spool = spools(tmp_path)
    spool.open()
    assert await deadline(spool.recover()) == [good[0]]
    assert spooled_contents(str(tmp_path)) == {good[0].id: CONTENT}
    assert old_files(tmp_path) == {"corrupt": sorted([
        f"{bad[0].id}.eml", f"{bad[0].id}.json", f"{short[0].id}.eml", f"{short[0].id}.json",
        "stray.txt"])}
    [line] = imported_lines(events)
    assert (line["imported"], line["set_aside"], line["debris"]) == (1, 5, 2)
    reasons = {e["name"]: e["reason"] for e in events if "name" in e and "reason" in e}
    assert "unreadable" in reasons[f"{bad[0].id}.json"]
    assert "5 bytes" in reasons[f"{short[0].id}.eml"]
