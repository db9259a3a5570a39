"""SharedState against the real Redis on 127.0.0.1:6379 (each test in its own key prefix) and a closed port."""

from __future__ import annotations

import logging
import socket
import uuid

import pytest
from prometheus_client import CollectorRegistry

from proxy import ConfigErrors, Rejection, SharedState
from proxy.config import config_from_dict
from proxy.config.schema import StateSettings
from proxy.testing import mock_config

REDIS_URL = "redis://127.0.0.1:6379/0"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.fixture
async def prefix():
    """A fresh key prefix; every key under it is deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    cleanup = SharedState(StateSettings(backend="redis", url=REDIS_URL, key_prefix=name))
    await cleanup.start()
    keys = [key async for key in cleanup.redis.scan_iter(match=f"{name}:*")]
    if keys:
        await cleanup.redis.delete(*keys)
    await cleanup.close()


def redis_state(prefix: str, url: str = REDIS_URL, **settings) -> SharedState:
    state = SharedState(StateSettings(backend="redis", url=url, key_prefix=prefix, **settings), workers=2)
    state.bind_metrics(CollectorRegistry())
    return state


def gauge(state: SharedState) -> float:
    return state._metrics[0][0]._value.get()


def test_settings_are_strict_and_never_echo_the_url():
    base = mock_config("http://127.0.0.1:9/v1")
    cases = {
        "state: backend redis needs a url (e.g. redis://127.0.0.1:6379/0)": {"backend": "redis"},
        "state.url: must be a redis://, rediss:// or unix:// URL": {"backend": "redis",
                                                                   "url": "http://admin:hunter2@cache:6379"},
        "state.on_error: must be 'local' or 'reject'": {"on_error": "ignore"},
        "state.key_prefix: must be letters, digits, '_', '.', '-', in parts joined by ':'": {"key_prefix": "a b"},
        "state.pol_size: unknown key (did you mean 'pool_size'?)": {"pol_size": 3},
    }
    for message, section in cases.items():
        with pytest.raises(ConfigErrors) as info:
            config_from_dict({**base, "state": section})
        assert [f"{e.path}: {e.message}" for e in info.value.errors] == [message]
        assert "hunter2" not in str(info.value)
    workers = {**base, "server": {"workers": 0}}
    with pytest.raises(ConfigErrors, match="server.workers: must be 'auto' or a whole number from 1 to 256"):
        config_from_dict(workers)


def test_memory_state_keys_kept_objects_and_shares():
    state = SharedState(StateSettings(key_prefix="shop:eu", hosts=2), workers=4)
    assert state.backend == "memory" and not state.shared and not state.degraded
    assert state.key("rl", "key", 7) == "shop:eu:rl:key:7"
    buckets = state.keep("ratelimit.buckets", dict)
    assert state.keep("ratelimit.buckets", dict) is buckets  # what a reload gets back
    assert state.local_share(800) == 100  # 800 ÷ (2 hosts × 4 workers)
    assert state.instance != SharedState().instance  # a lease owner unique to this process
    state.fallback()  # memory state never refuses
    with pytest.raises(RuntimeError, match="state.backend is memory"):
        _ = state.redis
    with pytest.raises(ValueError):
        state.key()


async def test_redis_state_shares_keys_under_its_prefix(prefix):
    state = redis_state(prefix)
    await state.start()
    try:
        assert state.shared and state.where == "127.0.0.1:6379/0"
        await state.redis.set(state.key("hello"), "1", px=5000)
        assert await state.redis.get(f"{prefix}:hello") == b"1"
        assert gauge(state) == 0 and state.ready and state.status() == {"backend": "redis", "degraded": False}
    finally:
        await state.close()
    assert not state.shared


async def test_unreachable_redis_at_start_up_degrades_once(caplog):
    caplog.set_level(logging.INFO, "floodgate.state")
    port = closed_port()
    state = redis_state("test-closed", f"redis://user:hunter2@127.0.0.1:{port}/3", on_error="reject",
                        timeouts={"connect": 0.2, "command": 0.2})
    await state.start()
    try:
        assert state.degraded and not state.shared and not state.ready and gauge(state) == 1
        for _ in range(5):
            state.failed(ConnectionError("again"))  # a store's later failures: counted, not logged
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "hunter2" not in caplog.text
        assert f"Redis at 127.0.0.1:{port}/3 is unavailable" in warnings[0].getMessage()
        assert state._metrics[0][1]._value.get() == 6
        with pytest.raises(Rejection) as info:
            state.fallback()
        assert info.value.status == 503 and info.value.code == "state_unavailable"
        assert int(info.value.headers["retry-after"]) >= 1
        assert state.status()["on_error"] == "reject"
    finally:
        await state.close()


async def test_local_fallback_and_recovery_reported_by_a_store(prefix, caplog):
    caplog.set_level(logging.INFO, "floodgate.state")
    state = redis_state(prefix)
    await state.start()
    try:
        state.failed(TimeoutError("Timeout reading from socket"))
        assert state.degraded and state.ready  # on_error: local serves local shares, and is ready
        state.fallback()  # does not refuse under local
        state.succeeded()
        assert not state.degraded and gauge(state) == 0
        lines = [r.getMessage() for r in caplog.records if r.name == "floodgate.state"]
        assert sum("is unavailable (TimeoutError" in line for line in lines) == 1
        assert sum("answers again after" in line for line in lines) == 1
    finally:
        await state.close()


def test_a_reload_may_change_on_error_only():
    state = SharedState(StateSettings(on_error="local"))
    state.apply(StateSettings(on_error="reject", key_prefix="other"))
    assert state.on_error == "reject" and state.key("x") == "floodgate:x"


async def test_the_states_pipe_sends_large_batches_to_redis(prefix):
    state = redis_state(prefix)
    await state.start()
    try:
        keys = [state.key(f"k{i}") for i in range(200)]
        script = state.pipe.script("for i, k in ipairs(KEYS) do redis.call('SET', k, ARGV[i], 'PX', 5000) "
                                   "end return #KEYS")
        assert await script(keys=keys, args=[f"v {i} 中" for i in range(200)]) == 200
        assert await state.redis.get(keys[199]) == "v 199 中".encode()
    finally:
        await state.redis.delete(*keys)
        await state.close()
