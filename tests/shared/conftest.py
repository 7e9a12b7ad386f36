"""Fixtures of the shared-limits tests: a real redis-server per test, and the nodes
(RedisLimits services) started against it."""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.shared.redis_server import RedisServer, require_redis
from tests.shared.test_redis import Nodes


@pytest.fixture
def redis_server(tmp_path):
    """A started redis-server on 127.0.0.1 at a free port, stopped after the test."""
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest_twisted.async_yield_fixture
async def nodes(reactor, redis_server):
    """RedisLimits nodes on ``redis_server`` (``nodes.start()``), all stopped after."""
    group = Nodes(reactor, redis_server.url)
    try:
        yield group
    finally:
        await group.stop_all()
