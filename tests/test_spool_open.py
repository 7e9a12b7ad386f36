"""Tests for hatwist.spool's start-up step: one process per spool (the lock), and a spool
that cannot be written refused at once (issue 12)."""

from __future__ import annotations

import os
import subprocess

import pytest
import pytest_twisted

from hatwist.spool import SpoolUnavailable
from hatwist.spool._lock import LOCK_FILE
from tests import test_spool_helpers as kit
from tests.test_spool_helpers import CONTENT, deadline

pool, spools = kit.pool, kit.spools  # fixtures


@pytest_twisted.ensureDeferred
async def test_a_second_spool_on_the_directory_is_refused_naming_the_owner(tmp_path, spools):
    first = spools(tmp_path)
    first.open()
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    second = spools(tmp_path)
    with pytest.raises(SpoolUnavailable) as caught:
        second.open()
    assert str(caught.value) == f"spool {tmp_path} in use by pid {os.getpid()}"
    # Lazily opened (no open() call), the first operation fails the same way.
    with pytest.raises(SpoolUnavailable):
        await deadline(second.store("b", "", ["r@example.net"], CONTENT))
    await deadline(first.close())
    second.open()
    await deadline(second.store("b", "", ["r@example.net"], CONTENT))


def test_the_lock_is_held_against_other_processes_and_dies_with_its_owner(tmp_path, spools):
    probe = ("import sys; from hatwist.spool._lock import SpoolLock\n"
             "try:\n    SpoolLock.acquire(sys.argv[1])\n"
             "except Exception as e:\n    print(e); sys.exit(3)\n")
    spool = spools(tmp_path)
    spool.open()
    other = subprocess.run(["python3", "-c", probe, str(tmp_path)], capture_output=True,
                           text=True, cwd=os.getcwd())
    assert other.returncode == 3
    assert other.stdout.strip() == f"spool {tmp_path} in use by pid {os.getpid()}"
    holder = subprocess.Popen(["python3", "-c", probe + "import time; print('held', "
                               "flush=True); time.sleep(60)", str(tmp_path / "b")],
                              stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SpoolUnavailable, match=f"in use by pid {holder.pid}"):
            spools(tmp_path / "b").open()
    finally:
        holder.kill()
        holder.wait()
    spools(tmp_path / "b").open()  # kill -9 left no stale lock


@pytest.fixture
def read_only_mount(tmp_path):
    """A tmpfs holding ``ro/spool`` (an existing spool) and then remounted read-only."""
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              str(mountpoint)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest_twisted.ensureDeferred
async def test_a_spool_that_cannot_be_written_is_refused_at_open_with_one_line(
        read_only_mount, spools):
    existing = spools(read_only_mount / "spool")
    existing.open()
    await deadline(existing.store("b", "", ["r@example.net"], CONTENT))
    await deadline(existing.close())
    subprocess.run(["mount", "-o", "remount,ro", str(read_only_mount)], check=True)
    for directory in (read_only_mount / "spool", read_only_mount / "new"):
        with pytest.raises(SpoolUnavailable) as caught:
            spools(directory).open()
        message = str(caught.value)
        assert message.startswith(f"spool {directory}") and "cannot be written" in message
        assert "\n" not in message
