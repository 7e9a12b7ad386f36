"""The spool in a real ``twistd hatwist`` process (hatwist.spool.SpoolService): one relay
per spool_dir, an unwritable spool stops the start, an old-layout spool is imported and
delivered (the rig of tests/service/test_relay.py: real HAProxy, DNS, sink)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from hatwist.spool import Disk
from hatwist.spool._inspect import spooled_ids
from hatwist.spool._legacy import SpoolDirectory
from tests.rig.haproxy import free_port
from tests.service import test_relay as relay_tests
from tests.service._relay import STOP_DEADLINE, Relay, RelayExited, config_text, make_message
from tests.test_spool_helpers import old_message

pytestmark = pytest.mark.integration

rig = relay_tests.rig  # fixture
DEADLINE = 20.0
#: A relay that cannot start gives up well within this (it starts in about a second).
FAIL_TIMEOUT = 8.0


def other_relay(rig, spool_dir: str) -> Relay:
    """A second relay with its own ports and config file, on ``spool_dir``."""
    listen = free_port()
    path = os.path.join(rig.directory, f"other-{listen}.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config_text(listen=listen, status_listen=free_port(), spool_dir=spool_dir,
                            resolver=rig.dns.address, proxy=rig.haproxy.server_text,
                            smtp_port=rig.sink.port, bindings={"default": "127.0.0.9"}))
    relay = Relay(rig.reactor, path, listen)
    rig.relays.append(relay)
    return relay


async def failed_start(relay: Relay) -> int:
    with contextlib.suppress(RelayExited):
        await relay.start(timeout=FAIL_TIMEOUT)
    return await relay.exited(STOP_DEADLINE)


@pytest_twisted.ensureDeferred
async def test_a_second_relay_on_the_spool_exits_naming_the_pid_of_the_first(rig):
    first = await rig.start_relay()
    await first.wait_for_log(f"spool {rig.spool_dir} open", since=0, timeout=DEADLINE)
    second = other_relay(rig, rig.spool_dir)
    assert await failed_start(second) not in (0, None), second.tail()
    lines = second.lines_with(f"spool {rig.spool_dir} in use by pid {first.pid}")
    assert len(lines) == 1, second.tail()
    assert not second.lines_with("Traceback"), second.tail()
    assert first.running
    await rig.send("still-1@t")
    await rig.sink.wait_for(1, timeout=DEADLINE)


@pytest_twisted.ensureDeferred
async def test_a_relay_on_a_spool_it_cannot_write_stops_at_start_with_one_line(rig, tmp_path):
    mountpoint = tmp_path / "ro"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                              str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        relay = other_relay(rig, str(mountpoint / "spool"))
        assert await failed_start(relay) not in (0, None), relay.tail()
        lines = relay.lines_with(f"spool {mountpoint / 'spool'} cannot be written")
        assert len(lines) == 1, relay.tail()
        assert not relay.lines_with("Traceback"), relay.tail()
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest_twisted.ensureDeferred
async def test_a_relay_started_on_the_old_file_layout_imports_it_once_and_delivers_it(rig):
    old = SpoolDirectory(rig.spool_dir, Disk())
    ids = [f"old-{n}@t" for n in range(3)]
    for n, message_id in enumerate(ids):
        content = make_message(message_id).replace("\n", "\r\n").encode("ascii")
        old.store(*old_message(n, recipients=("a@dest.test",), content=content,
                               since=time.time() - 60))
    relay = await rig.start_relay()
    await relay.wait_for_log("imported 3 messages from the old file layout", since=0,
                             timeout=DEADLINE)
    try:
        await rig.sink.wait_until(lambda: set(ids) <= rig.delivered().keys(),
                                  timeout=DEADLINE)
    except defer.TimeoutError:
        pytest.fail("not delivered:\n" + relay.tail())
    assert sorted(os.listdir(rig.spool_dir)) == sorted(  # control.sock: hatwist queue's
        ["control.sock", "corrupt", "lock", "spool.db", "spool.db-shm", "spool.db-wal"])
    await relay.stop()
    assert spooled_ids(rig.spool_dir) == []
    again = await rig.relay().start()
    assert not again.lines_with("from the old file layout"), again.tail()
    assert len(rig.sink.messages) == 3  # delivered once, none again after the restart
