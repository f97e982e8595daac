"""The redis_server test helper itself: free ports, restarts, and what happens without Redis."""

from __future__ import annotations

import shutil

import pytest

from tests import redis_support
from tests.redis_support import RedisServer, ping


def test_server_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    """stop() kills the server, start() brings an empty one back on the same port."""
    port = redis_server.port
    assert port != 6379 and ping(port)
    redis_server.stop()
    assert not redis_server.running and not ping(port)
    redis_server.start()
    assert redis_server.port == port and ping(port)
    assert redis_server.cli("PING").strip() == "PONG"


def test_missing_binary_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server, tests are skipped with an install hint when not on CI."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install redis-server"):
        redis_support.require_binary("redis-server")


def test_missing_binary_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server and with CI=true, tests fail loudly instead of skipping."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="redis-server not found"):
        redis_support.require_binary("redis-server")
