"""Fixtures of the shared-limits tests: a real redis-server per test."""

from __future__ import annotations

import pytest

from tests.shared.redis_server import RedisServer, require_redis


@pytest.fixture
def redis_server(tmp_path):
    """A started redis-server on 127.0.0.1 at a free port, stopped after the test."""
    require_redis()
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
