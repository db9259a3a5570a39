"""Degraded mode end to end: a gateway on its own redis-server, which the test kills and starts again.

The machine's Redis service is never touched: each test runs a private
``redis-server`` on a free loopback port and stops it by pid.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio

from proxy import hookimpl
from proxy.testing import mock_config
from proxy.testing.processes import RedisServer

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def redis_server(tmp_path):
    server = RedisServer(tmp_path)
    await server.start()
    yield server
    await server.kill()


class Visits:
    """A store the way plugins write them: one Redis call, its local share as the fallback."""

    name = "visits"

    @hookimpl
    def proxy_configure(self, config, registry, state):
        self.state = state
        self.local = state.keep("visits.local", lambda: [0])

    @hookimpl
    async def proxy_admit(self, ctx):
        state = self.state
        if state.shared:
            try:
                await state.redis.incr(state.key("visits"))
            except state.errors as exc:
                state.failed(exc)
            else:
                return
        state.fallback()
        self.local[0] += 1


async def wait_for_status(client, wanted: str) -> dict:
    for _ in range(200):
        body = await (await client.get("/readyz")).json()
        if body["status"] == wanted:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never said {wanted!r}; last: {body}")


@pytest.mark.parametrize("on_error", ["local", "reject"])
async def test_redis_down_then_back(floodgate, mock_upstream, redis_server, on_error, caplog):
    caplog.set_level(logging.INFO, "floodgate.state")
    visits = Visits()
    config = {**mock_config(mock_upstream.url), "state": {
        "backend": "redis", "url": f"redis://127.0.0.1:{redis_server.port}/0", "key_prefix": "fg-test",
        "on_error": on_error, "check_interval": 0.2, "timeouts": {"connect": 0.2, "command": 0.2}}}
    gw = await floodgate(config=config, plugins=[visits])
    direct = redis.asyncio.Redis(port=redis_server.port)
    try:
        for _ in range(3):
            assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert await direct.get("fg-test:visits") == b"3"

        await redis_server.kill()
        # No request needed: the health check notices.
        body = await wait_for_status(gw.client, "degraded" if on_error == "local" else "not ready")
        assert body["state"]["degraded"] and body["checks"]["state"] is (on_error == "local")
        ready = await gw.client.get("/readyz")
        assert ready.status == (200 if on_error == "local" else 503)
        assert "floodgate_state_degraded 1.0" in await gw.metrics()

        responses = [await gw.client.post("/v1/chat/completions", json=CHAT) for _ in range(10)]
        if on_error == "local":
            assert [r.status for r in responses] == [200] * 10 and visits.local == [10]
        else:
            assert [r.status for r in responses] == [503] * 10 and visits.local == [0]
            error = (await responses[0].json())["error"]
            assert error["code"] == "state_unavailable" and error["type"] == "server_error"
            assert int(responses[0].headers["retry-after"]) >= 1
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "floodgate.state"]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]

        await redis_server.start()  # same port, empty: shared state again without a restart
        await wait_for_status(gw.client, "ready")
        assert "floodgate_state_degraded 0.0" in await gw.metrics()
        for _ in range(2):
            assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status == 200
        assert await direct.get("fg-test:visits") == b"2"
        recovered = [r for r in caplog.records if "answers again after" in r.getMessage()]
        assert len(recovered) == 1
    finally:
        await direct.aclose()
