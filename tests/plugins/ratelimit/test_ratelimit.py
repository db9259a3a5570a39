"""Tests of the ratelimit plugin: configuration, then real HTTP through the gateway."""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import re
import time
from typing import Any

import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

import proxy
from plugins.ratelimit import RateLimitPlugin, format_duration
from plugins.ratelimit.store import Claim, MemoryBucketStore
from proxy.config import config_from_dict
from proxy.testing import mock_config

MSG = [{"role": "user", "content": "hi"}]
# The mock counts "hi" as 4 + 1 prompt tokens; it answers 16 completion tokens (fewer if capped).
HI_USAGE = 5 + 16
# The plugin's estimate of MSG: 3 (reply priming) + 4 (message) + 1 ("hi").
HI_ESTIMATE = 8
RESET_RE = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
__version__ = "test"  # the loader reads it for the test plugins here instead of scanning installed packages

_packages_distributions = functools.cache(importlib.metadata.packages_distributions)


@pytest.fixture(autouse=True)
def _cached_distributions(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loader calls importlib.metadata.packages_distributions() (a scan of every installed
    # package, ~0.7 s here) for each core plugin of every app built; cache it to keep this module fast.
    monkeypatch.setattr(importlib.metadata, "packages_distributions", _packages_distributions)


# -- helpers ------------------------------------------------------------------

class KeyAuth:
    """A tiny auth plugin: the bearer token names a principal of the table."""

    name = "testauth"

    def __init__(self, principals: dict[str, proxy.Principal]) -> None:
        self.principals = principals

    @proxy.hookimpl
    def proxy_authenticate(self, ctx: proxy.RequestContext) -> proxy.Principal | None:
        token = ctx.headers.get("Authorization", "").removeprefix("Bearer ")
        return self.principals.get(token)


class RefuseOnHeader:
    """An admit hook running after the limiter that refuses requests carrying x-test-refuse."""

    name = "refuser"

    @proxy.hookimpl(trylast=True)
    def proxy_admit(self, ctx: proxy.RequestContext) -> None:
        if ctx.headers.get("x-test-refuse"):
            raise proxy.Rejection(403, "refused by the test", code="refused", should_retry=False)


async def start(floodgate: Any, block: dict[str, Any], *, keys: dict[str, proxy.Principal] | None = None,
                extra: tuple[Any, ...] = (), **kwargs: Any) -> Any:
    plugins: list[Any] = [KeyAuth(keys)] if keys else []
    plugins += [RateLimitPlugin(), *extra]
    return await floodgate(plugins=plugins, plugin_settings={"ratelimit": block}, **kwargs)


def sample(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def wait_queue_length(gw: Any, n: int, timeout: float = 2.0) -> None:
    deadline = time.perf_counter() + timeout
    while sample(await gw.metrics(), "floodgate_ratelimit_queue_length") != n:
        assert time.perf_counter() < deadline, f"queue length never reached {n}"
        await asyncio.sleep(0.01)


async def chat(client: openai.AsyncOpenAI, model: str = "deepseek-v3.2", **kwargs: Any) -> Any:
    return await client.chat.completions.with_raw_response.create(model=model, messages=MSG, **kwargs)


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0s"), (0.0171, "18ms"), (0.02, "20ms"), (1.0, "1s"), (1.5, "1.5s"), (90.0, "1m30s"),
    (360.0, "6m0s"), (3725.0, "1h2m5s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


# -- configuration -------------------------------------------------------------

@pytest.mark.parametrize("block, path, message", [
    ({"models": {"gpt-9": {"requests_per_second": 1}}}, "plugins.ratelimit.models.gpt-9", "unknown model 'gpt-9'"),
    ({"upstreams": {"backup": {"max_concurrent": 2}}}, "plugins.ratelimit.upstreams.backup",
     "unknown upstream 'backup'"),
    ({"global": {"requests_per_second": -5}}, "plugins.ratelimit.global.requests_per_second",
     "greater than 0"),
    ({"per_key": {"requests_per_second": 1, "burst": 0}}, "plugins.ratelimit.per_key.burst",
     "greater than or equal to 1"),
    ({"models": {"gpt-4.1": {"tokens_per_minute": 0}}}, "plugins.ratelimit.models.gpt-4.1.tokens_per_minute",
     "greater than 0"),
    ({"mode": "drop"}, "plugins.ratelimit.mode", "'queue' or 'reject'"),
    ({"queue": {"max_wait": 100}}, "plugins.ratelimit.queue.max_wait", "did you mean 'max_wait_ms'"),
])
def test_config_errors_name_the_key(block: dict[str, Any], path: str, message: str) -> None:
    config = config_from_dict(mock_config("http://127.0.0.1:9", plugin_settings={"ratelimit": block}))
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, plugins=[RateLimitPlugin()], builtins=(), entry_points=False)
    [error] = info.value.errors
    assert error.path == path
    assert message in error.message


def test_config_error_has_the_yaml_line() -> None:
    text = """
upstreams:
  main: {base_url: "http://127.0.0.1:9"}
models:
  gpt-4.1: {upstream: main}
plugins:
  ratelimit:
    models:
      gpt-4.1: {requests_per_second: 5}
      gpt-4o: {requests_per_second: 5}
"""
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(proxy.parse_config(text, source="config.yaml"), plugins=[RateLimitPlugin()],
                         builtins=(), entry_points=False)
    assert str(info.value).startswith("config.yaml:10 plugins.ratelimit.models.gpt-4o: unknown model")


# -- through the gateway -------------------------------------------------------

async def test_unconfigured_is_a_pass_through(floodgate: Any, mock_upstream: Any) -> None:
    gw = await floodgate(plugins=[RateLimitPlugin()])
    client = gw.openai()
    for _ in range(20):
        raw = await chat(client)
        assert not any(h.startswith("x-ratelimit") for h in raw.headers)
    assert mock_upstream.stats.total == 20
    assert sample(await gw.metrics(), "floodgate_ratelimit_admitted_total") == 0


async def test_rate_accuracy_under_overload(floodgate: Any, mock_upstream: Any) -> None:
    """50 req/s with burst 10, offered 200 req/s for 2 s: about 10 + 100 admitted, never more."""
    gw = await start(floodgate, {"mode": "reject", "global": {"requests_per_second": 50, "burst": 10}})
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    last_admitted = 0.0
    body = {"model": "deepseek-v3.2", "messages": MSG}

    async def one() -> None:
        nonlocal last_admitted
        response = await gw.client.post("/v1/chat/completions", json=body)
        await response.read()
        statuses.append(response.status)
        if response.status == 200:
            last_admitted = max(last_admitted, loop.time())

    begin = loop.time()
    tasks = []
    for i in range(400):
        delay = begin + i * 0.005 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    admitted = statuses.count(200)
    assert statuses.count(429) == 400 - admitted
    # Every admission happened before its response: a sound upper bound even on a loaded machine.
    span = last_admitted - begin
    assert admitted <= 10 + 50 * span + 1, (admitted, span)
    assert admitted <= 112 or span > 2.04, (admitted, span)
    assert admitted >= 0.9 * (10 + 50 * 2), (admitted, span)
    assert mock_upstream.stats.total == admitted
    metrics = await gw.metrics()
    assert sample(metrics, "floodgate_ratelimit_admitted_total") == admitted
    assert sample(metrics, "floodgate_ratelimit_rejected_total", scope="global", reason="requests") == 400 - admitted


async def test_sdk_gets_rate_limit_error_and_honours_retry_after(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate, {"mode": "reject", "global": {"requests_per_second": 1, "burst": 1}})
    client = gw.openai()
    await chat(client)
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client)
    error = info.value
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    headers = error.response.headers
    assert headers["retry-after"] == "1"
    assert 500 <= int(headers["retry-after-ms"]) <= 1000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-request-id" in headers

    retrying = gw.openai(max_retries=1)
    began = time.perf_counter()
    raw = await chat(retrying)
    elapsed = time.perf_counter() - began
    assert raw.retries_taken == 1
    # It waited what retry-after-ms said (the SDK's own backoff would be <= 0.5 s) and then got in.
    assert 0.6 < elapsed < 2.0
    assert mock_upstream.stats.total == 2


async def test_queue_absorbs_a_burst(floodgate: Any) -> None:
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 1000},
                                 "global": {"requests_per_second": 20, "burst": 5}})
    client = gw.openai()
    await client.models.list()  # warm the client up; not rate limited
    began = time.perf_counter()

    async def one() -> float:
        await chat(client)
        return time.perf_counter() - began

    times = sorted(await asyncio.gather(*(one() for _ in range(15))))
    # The burst of 5 went straight through, the 10 others followed at 20/s: the last about 0.5 s later.
    assert 0.4 <= times[-1] - times[0] < 0.95
    metrics = await gw.metrics()
    # About 10 queued (one fewer if the clients' arrival was spread over more than 50 ms), waiting
    # 0.05 + 0.10 + ... + 0.50 = 2.75 s in all, less that spread; none longer than max_wait.
    queued = sample(metrics, "floodgate_ratelimit_queue_wait_seconds_count")
    assert 8 <= queued <= 10
    assert 1.0 < sample(metrics, "floodgate_ratelimit_queue_wait_seconds_sum") < 3.2
    assert sample(metrics, "floodgate_ratelimit_queue_wait_seconds_bucket", le="1.0") == queued
    assert sample(metrics, "floodgate_ratelimit_queue_length") == 0
    assert sample(metrics, "floodgate_ratelimit_admitted_total") == 15


async def test_full_queue_rejects_at_once(floodgate: Any, mock_upstream: Any) -> None:
    mock_upstream.set_behaviour("deepseek-v3.2", latency_ms=300)
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 3000, "max_length": 2},
                                 "upstreams": {"main": {"max_concurrent": 1}}})
    client = gw.openai()
    tasks = [asyncio.create_task(chat(client)) for _ in range(3)]  # one in flight, two queued
    await wait_queue_length(gw, 2)
    began = time.perf_counter()
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client)
    assert time.perf_counter() - began < 0.2
    assert "queue is full" in info.value.message
    assert info.value.response.headers["retry-after"] == "1"
    await asyncio.gather(*tasks)
    metrics = await gw.metrics()
    assert sample(metrics, "floodgate_ratelimit_rejected_total", scope="upstream", reason="queue_full") == 1
    assert mock_upstream.stats.total == 3


async def test_a_wait_beyond_max_wait_is_refused_at_once(floodgate: Any) -> None:
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 100},
                                 "global": {"requests_per_second": 1, "burst": 1}})
    client = gw.openai()
    await chat(client)
    began = time.perf_counter()
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client)  # the bucket needs ~1 s, more than max_wait: no point queueing
    assert time.perf_counter() - began < 0.09
    assert int(info.value.response.headers["retry-after-ms"]) > 500
    assert sample(await gw.metrics(), "floodgate_ratelimit_rejected_total", scope="global",
                  reason="requests") == 1


async def test_a_waiter_not_admitted_within_max_wait_gets_429(floodgate: Any, mock_upstream: Any) -> None:
    mock_upstream.set_behaviour("deepseek-v3.2", latency_ms=700)
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 200},
                                 "per_key": {"max_concurrent": 1}})
    client = gw.openai()
    first = asyncio.create_task(chat(client))
    await asyncio.sleep(0.1)
    began = time.perf_counter()
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client)
    assert 0.15 < time.perf_counter() - began < 0.6
    assert "not admitted within 200 ms" in info.value.message
    assert "x-ratelimit-limit-requests" not in info.value.response.headers  # no request-rate limit here
    await first
    metrics = await gw.metrics()
    assert sample(metrics, "floodgate_ratelimit_rejected_total", scope="key", reason="timeout") == 1
    assert sample(metrics, "floodgate_ratelimit_queue_length") == 0
    assert sample(metrics, "floodgate_ratelimit_queue_wait_seconds_count") == 1
    assert mock_upstream.stats.total == 1


async def test_priority_decides_who_waits_less(floodgate: Any, mock_upstream: Any) -> None:
    mock_upstream.set_behaviour("deepseek-v3.2", latency_ms=300)  # long enough to queue both meanwhile
    keys = {"first": proxy.Principal("first"), "low": proxy.Principal("low", proxy.KeyPolicy(priority=0)),
            "high": proxy.Principal("high", proxy.KeyPolicy(priority=10))}
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 3000},
                                 "upstreams": {"main": {"max_concurrent": 1}}}, keys=keys)
    finished: list[str] = []
    clients = {key: gw.openai(api_key=key) for key in keys}
    for client in clients.values():
        await client.models.list()  # warm up: the first SDK call is slow

    async def call(key: str) -> None:
        await chat(clients[key])
        finished.append(key)

    tasks = [asyncio.create_task(call("first"))]
    await asyncio.sleep(0.05)
    tasks.append(asyncio.create_task(call("low")))
    await wait_queue_length(gw, 1)
    tasks.append(asyncio.create_task(call("high")))  # queued after "low", served before it
    await wait_queue_length(gw, 2)
    await asyncio.gather(*tasks)
    assert finished == ["first", "high", "low"]


async def test_a_saturated_key_does_not_hold_up_others(floodgate: Any) -> None:
    keys = {"alice": proxy.Principal("alice", proxy.KeyPolicy(rate_limit={"requests_per_second": 2, "burst": 1})),
            "bob": proxy.Principal("bob")}
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 3000},
                                 "global": {"requests_per_second": 1000}}, keys=keys)
    alice, bob = gw.openai(api_key="alice"), gw.openai(api_key="bob")
    await chat(alice)
    queued = asyncio.create_task(chat(alice))  # alice's bucket refills in 0.5 s
    await wait_queue_length(gw, 1)
    began = time.perf_counter()
    await chat(bob)
    assert time.perf_counter() - began < 0.2
    raw = await queued
    assert raw.headers["x-ratelimit-limit-requests"] == "1"


async def test_tokens_reserved_then_refunded(floodgate: Any) -> None:
    # 200 tokens per minute; each request reserves 8 (prompt estimate) + 100 (max_tokens) but uses 21.
    gw = await start(floodgate, {"mode": "reject", "per_key": {"tokens_per_minute": 200}})
    client = gw.openai()
    first = await chat(client, max_tokens=100)
    assert first.headers["x-ratelimit-limit-tokens"] == "200"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(200 - HI_ESTIMATE - 100)  # 92: too few for
    # another reservation of 108, unless the unused 87 came back when the first request finished
    second = await chat(client, max_tokens=100)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 200 - HI_USAGE - 108 <= remaining <= 200 - HI_USAGE - 108 + 4  # plus a little refill


async def test_streamed_usage_is_reconciled_too(floodgate: Any) -> None:
    gw = await start(floodgate, {"mode": "reject", "per_key": {"tokens_per_minute": 200}})
    client = gw.openai()
    for _ in range(3):  # each reserves 108 of 200: only possible if the unused part comes back
        stream = await client.chat.completions.create(model="deepseek-v3.2", messages=MSG, max_tokens=100,
                                                      stream=True)
        assert [chunk async for chunk in stream]


async def test_token_overrun_is_charged(floodgate: Any) -> None:
    gw = await start(floodgate, {"mode": "reject", "per_key": {"tokens_per_minute": 1000}})
    client = gw.openai()
    # The estimate (4 chars a token: 157 + 10) is well below what the mock counts (one token a word: 314).
    words = [{"role": "user", "content": "a " * 300}]
    first = await client.chat.completions.with_raw_response.create(model="deepseek-v3.2", messages=words,
                                                                   max_tokens=10)
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - 167)
    second = await chat(client, max_tokens=10)
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    expected = 1000 - 314 - (HI_ESTIMATE + 10)  # charged the real 314, not the reserved 167
    assert expected <= remaining <= expected + 10


async def test_never_reaching_an_upstream_refunds_everything(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate, {"mode": "reject", "per_key": {
        "tokens_per_minute": 150, "requests_per_second": 0.01, "burst": 2}}, extra=(RefuseOnHeader(),))
    client = gw.openai()
    with pytest.raises(openai.PermissionDeniedError):
        await chat(client, max_tokens=100, extra_headers={"x-test-refuse": "1"})
    # Both the 108 tokens and the request token came back: two more requests fit.
    await chat(client, max_tokens=100)
    await chat(client, max_tokens=100)
    assert mock_upstream.stats.total == 2


async def test_a_request_larger_than_the_token_limit_is_refused_for_good(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate, {"mode": "queue", "global": {"tokens_per_minute": 100}})
    with pytest.raises(openai.RateLimitError) as info:
        await chat(gw.openai(max_retries=2), max_tokens=500)
    assert info.value.type == "tokens"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "Request too large" in info.value.message
    metrics = await gw.metrics()
    assert sample(metrics, "floodgate_requests_total", status="429") == 1  # the SDK did not retry
    assert mock_upstream.stats.total == 0


async def test_per_key_overrides_from_principal_settings(floodgate: Any) -> None:
    keys = {"small": proxy.Principal("small", proxy.KeyPolicy(rate_limit={"requests_per_second": 0.5, "burst": 2})),
            "big": proxy.Principal("big")}
    gw = await start(floodgate, {"mode": "reject", "per_key": {"requests_per_second": 1, "burst": 100}},
                     keys=keys)
    small, big = gw.openai(api_key="small"), gw.openai(api_key="big")
    await chat(small)
    await chat(small)
    with pytest.raises(openai.RateLimitError) as info:
        await chat(small)
    assert "key 'small'" in info.value.message
    assert info.value.response.headers["x-ratelimit-limit-requests"] == "2"
    for _ in range(5):
        raw = await chat(big)
    assert raw.headers["x-ratelimit-limit-requests"] == "100"
    assert raw.headers["x-ratelimit-remaining-requests"] == "95"
    assert sample(await gw.metrics(), "floodgate_ratelimit_rejected_total", scope="key", reason="requests") == 1


async def test_key_overrides_apply_without_a_plugin_block(floodgate: Any) -> None:
    keys = {"capped": proxy.Principal("capped", proxy.KeyPolicy(rate_limit={"requests_per_second": 0.1, "burst": 1}))}
    gw = await floodgate(plugins=[KeyAuth(keys), RateLimitPlugin()])  # default mode: queue, 2 s max wait
    client = gw.openai(api_key="capped")
    await chat(client)
    with pytest.raises(openai.RateLimitError):
        await chat(client)  # 10 s to wait, more than the queue's max wait: refused at once
    await chat(gw.openai(api_key="someone-else"))  # anonymous: no limits


def test_a_wrong_per_key_limit_fails_where_the_policy_is_built() -> None:
    # Typed: a broken per-key limit cannot reach a request (no 500 at request time).
    with pytest.raises(ValidationError):
        proxy.KeyPolicy(rate_limit={"requests_per_second": -1})
    config = config_from_dict(mock_config("http://127.0.0.1:9", plugin_settings={
        "auth": {"keys": [{"name": "broken", "key": "sk-broken-key", "rate_limit": {"requests_per_second": -1}}]}}))
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, entry_points=False)
    assert [e.path for e in info.value.errors] == ["plugins.auth.keys.0.rate_limit.requests_per_second"]


async def test_per_model_limit(floodgate: Any) -> None:
    gw = await start(floodgate, {"mode": "reject", "models": {"gpt-4.1": {"requests_per_second": 0.5, "burst": 1}}},
                     aliases={"smart": "gpt-4.1"})
    client = gw.openai()
    await chat(client, model="gpt-4.1")
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client, model="smart")  # the alias resolves to the same catalogue model
    assert "model 'gpt-4.1'" in info.value.message
    for _ in range(3):
        raw = await chat(client, model="deepseek-v3.2")
        assert "x-ratelimit-limit-requests" not in raw.headers
    assert sample(await gw.metrics(), "floodgate_ratelimit_rejected_total", scope="model", reason="requests") == 1


async def test_max_concurrent_per_key_rejects_and_releases(floodgate: Any, mock_upstream: Any) -> None:
    mock_upstream.set_behaviour("deepseek-v3.2", latency_ms=250)
    gw = await start(floodgate, {"mode": "reject", "per_key": {"max_concurrent": 2}})
    client = gw.openai()

    async def wave(n: int) -> list[Any]:
        return await asyncio.gather(*(chat(client) for _ in range(n)), return_exceptions=True)

    results = await wave(3)
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], openai.RateLimitError)
    assert "Too many concurrent requests for key 'anonymous'" in errors[0].message
    assert errors[0].response.headers["retry-after"] == "1"
    # The slots came back exactly once: again two of three, then two of two.
    assert sum(isinstance(r, Exception) for r in await wave(3)) == 1
    assert not any(isinstance(r, Exception) for r in await wave(2))
    assert sample(await gw.metrics(), "floodgate_ratelimit_rejected_total", scope="key",
                  reason="concurrency") == 2


async def test_max_concurrent_per_upstream_queues(floodgate: Any, mock_upstream: Any) -> None:
    mock_upstream.set_behaviour("deepseek-v3.2", latency_ms=150)
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 3000},
                                 "upstreams": {"main": {"max_concurrent": 2}}})
    client = gw.openai()
    await client.models.list()
    began = time.perf_counter()
    await asyncio.gather(*(chat(client) for _ in range(6)))
    assert time.perf_counter() - began >= 0.42  # three waves of two
    metrics = await gw.metrics()
    assert sample(metrics, "floodgate_ratelimit_queue_wait_seconds_count") == 4
    assert sample(metrics, "floodgate_ratelimit_queue_length") == 0
    assert mock_upstream.stats.total == 6


async def test_ratelimit_headers_on_success_and_429(floodgate: Any) -> None:
    gw = await start(floodgate, {"mode": "reject", "global": {
        "requests_per_second": 2, "burst": 3, "tokens_per_minute": 6000}})
    client = gw.openai()
    raw = await chat(client, max_tokens=50)
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-reset-requests"] == "500ms"  # one request at 2/s
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert headers["x-ratelimit-remaining-tokens"] == str(6000 - HI_ESTIMATE - 50)
    assert headers["x-ratelimit-reset-tokens"] == "580ms"  # 58 tokens at 100/s
    await chat(client, max_tokens=50)
    third = await chat(client, max_tokens=50)
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as info:
        await chat(client, max_tokens=50)
    refused = info.value.response.headers
    assert refused["x-ratelimit-limit-requests"] == "3"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    assert int(refused["x-ratelimit-remaining-tokens"]) > 5800
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        assert RESET_RE.match(refused[name]), refused[name]
    assert refused["x-ratelimit-reset-requests"].endswith("s")
    assert 1.3 < float(refused["x-ratelimit-reset-requests"].rstrip("s")) <= 1.5


async def test_a_client_leaving_the_queue_consumes_nothing(floodgate: Any, mock_upstream: Any) -> None:
    gw = await start(floodgate, {"mode": "queue", "queue": {"max_wait_ms": 3000},
                                 "global": {"requests_per_second": 2, "burst": 1}})
    client = gw.openai()
    await client.models.list()
    began = time.perf_counter()
    await chat(client)  # empties the bucket; the next token is due 0.5 s later
    leaving = asyncio.create_task(chat(client))
    await wait_queue_length(gw, 1)
    leaving.cancel()
    await wait_queue_length(gw, 0)
    # Had the departed waiter taken the token due at 0.5 s, this one would wait until about 1 s.
    await asyncio.sleep(max(0.0, began + 0.6 - time.perf_counter()))
    started = time.perf_counter()
    await chat(client)
    assert time.perf_counter() - started < 0.25
    assert mock_upstream.stats.total == 2
    metrics = await gw.metrics()
    assert sample(metrics, "floodgate_ratelimit_queue_wait_seconds_count") == 1
    assert sample(metrics, "floodgate_ratelimit_admitted_total") == 2


async def test_a_waiter_admitted_as_its_client_leaves_gives_everything_back() -> None:
    """The race the gateway cannot show: the queue admits a waiter whose task is being cancelled."""
    store = MemoryBucketStore()
    plugin = RateLimitPlugin(store)
    block = {"mode": "queue", "global": {"requests_per_second": 1, "burst": 1, "tokens_per_minute": 6000}}
    config = config_from_dict(mock_config("http://127.0.0.1:9", plugin_settings={"ratelimit": block}))
    proxy.create_app(config, plugins=[plugin], builtins=(), entry_points=False)

    def request() -> proxy.RequestContext:
        ctx = proxy.RequestContext(request_id="r", method="POST", endpoint="chat/completions",
                                   headers=CIMultiDictProxy(CIMultiDict()), config=config, model="gpt-4.1",
                                   body={"model": "gpt-4.1", "messages": MSG, "max_tokens": 10})
        ctx.route = proxy.Route("gpt-4.1", (config.target("gpt-4.1"),))
        return ctx

    loop = asyncio.get_running_loop()
    requests = Claim("global:-:requests", 1.0, 1.0, 1.0)
    tokens = Claim("global:-:tokens", 100.0, 6000.0, 1.0)
    first, second = request(), request()
    assert plugin.proxy_admit(first) is None
    waiting = plugin.proxy_admit(second)
    assert waiting is not None
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0.01)  # queued: the next request token is a second away
    store.give_back(requests, 1.0, loop.time())  # as if that second had passed
    plugin.queue.scan()  # the queue admits it (its tokens are taken) ...
    task.cancel()  # ... and its client leaves before the waiter runs again
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "ratelimit.admission" in second.state  # it was admitted: proxy_finished settles it
    plugin.proxy_finished(second)  # the core runs it for every request; no attempt was made
    levels = store.peek([requests, tokens], loop.time()).levels
    assert levels[0] >= 0.99  # the request token came back
    assert 6000 - (HI_ESTIMATE + 10) <= levels[1] <= 6000 - (HI_ESTIMATE + 10) + 5  # only first's reservation
    assert not plugin.queue
