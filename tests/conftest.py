"""Fixtures for the real parts in ``tests/rig`` (tests: tests.rig.test_rig).

Every fixture is function-scoped and torn down even when the test fails: HAProxy is
stopped, listeners closed, sessions aborted, namespaces deleted. Start extra parts in a
test with the same classes (``HAProxy(reactor, ...)``, ``SMTPSink.start(...)``) and clean
them up yourself.
"""

from __future__ import annotations

import subprocess

import pytest
import pytest_twisted
from hypothesis import settings

from tests.rig.dns import DNSServer
from tests.rig.haproxy import HAProxy
from tests.rig.needs import require_haproxy, require_netns
from tests.rig.netns import NetNS
from tests.rig.sink import SMTPSink

# No per-example deadline: a deadline is a timed assertion, and on a loaded CI box one
# config fuzz example took 903 ms against Hypothesis's default 200 (the examples'
# count, not their speed, is what these tests are about)
settings.register_profile("hatwist", deadline=None)
settings.load_profile("hatwist")


@pytest.fixture
def reactor():
    """The global reactor pytest-twisted runs."""
    from twisted.internet import reactor

    return reactor


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 128 KiB tmpfs to fill up (a full disk); skips where mounting is refused.

    Room for an empty SQLite spool (database, WAL and its 32 KiB shared-memory file)
    and a few small messages, not for one of 100 KB."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs",
                              str(mountpoint)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        if subprocess.run(["umount", str(mountpoint)]).returncode:
            # Still busy (a fixture torn down after this one holds a file open):
            # detach now, freed when the last file closes.
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest_twisted.async_yield_fixture
async def haproxy(reactor):
    """A started HAProxy relay on 127.0.0.1 at a free port (``.server_text``)."""
    require_haproxy()
    relay = HAProxy(reactor)
    try:
        await relay.start()
        yield relay
    finally:
        await relay.close()


@pytest_twisted.async_yield_fixture
async def smtp_sink(reactor):
    """A recording SMTP sink on 127.0.0.20, any free port, no TLS."""
    sink = await SMTPSink.start(reactor, host="127.0.0.20")
    try:
        yield sink
    finally:
        await sink.stop()


@pytest_twisted.async_yield_fixture
async def tls_smtp_sink(reactor):
    """A recording SMTP sink on 127.0.0.20 offering STARTTLS as ``mx.test``
    (trust it with ``sink.client_tls_options()``)."""
    sink = await SMTPSink.start(reactor, host="127.0.0.20", tls=True)
    try:
        yield sink
    finally:
        await sink.stop()


@pytest_twisted.async_yield_fixture
async def dns_server(reactor):
    """An authoritative DNS server on 127.0.0.1 (``.address``), empty: add records."""
    server = await DNSServer.start(reactor)
    try:
        yield server
    finally:
        await server.stop()


@pytest_twisted.async_yield_fixture
async def netns(reactor):
    """A fresh network namespace with lo up and fd00::9, fd00::20 on it."""
    require_netns()
    namespace = await NetNS.create(reactor)
    try:
        yield namespace
    finally:
        await namespace.delete()
