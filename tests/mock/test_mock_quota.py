"""The mock behaving like a provider under quota (proxy/mock/quota.py): per key requests and tokens per
minute with OpenAI's headers, 429 with ``retry-after``, a true capacity, latency rising with load —
seen through the ``openai`` SDK, as the gateway's upstream would be."""

from __future__ import annotations

import argparse
import asyncio
import time

import openai
import pytest

from proxy.mock import MockPlugin, MockSettings, MockUpstream, ModelBehaviour
from proxy.mock.cli import parse_quota, settings_from_args
from proxy.mock.quota import KeyQuota, Quota

MESSAGES = [{"role": "user", "content": "hi"}]


def sdk(mock: MockUpstream, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=mock.url, api_key=key, max_retries=0)


async def test_requests_per_minute_per_key_with_openais_headers() -> None:
    quotas = {"sk-small": Quota(requests_per_minute=2), "sk-big": Quota(requests_per_minute=600)}
    async with MockUpstream(MockSettings(api_key="sk-main", quotas=quotas)) as mock:
        small, big = sdk(mock, "sk-small"), sdk(mock, "sk-big")
        raw = await small.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
        assert (raw.headers["x-ratelimit-limit-requests"], raw.headers["x-ratelimit-remaining-requests"]) == ("2", "1")
        assert raw.headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
        await small.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as info:
            await small.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
        headers = info.value.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 25 <= float(headers["retry-after"]) <= 30 and int(headers["retry-after-ms"]) >= 25_000  # 1 per 30 s
        assert info.value.code == "rate_limit_exceeded"
        raw = await big.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES, stream=True)
        assert [c async for c in raw.parse()] and raw.headers["x-ratelimit-remaining-requests"] == "599"
        assert (await sdk(mock, "sk-main").chat.completions.with_raw_response.create(  # no quota: no headers
            model="gpt-4.1", messages=MESSAGES)).headers.get("x-ratelimit-limit-requests") is None
        stats = mock.quota_stats()
        assert (stats["sk-small"]["admitted"], stats["sk-small"]["throttled"], stats["sk-big"]["admitted"]) == (2, 1, 1)
        for client in (small, big):
            await client.close()


async def test_tokens_per_minute_count_the_prompt_and_the_answer() -> None:
    async with MockUpstream(MockSettings(completion_tokens=16, quotas={"*": Quota(tokens_per_minute=30)})) as mock:
        client = sdk(mock, "anything")
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES, max_tokens=10)
        usage = raw.parse().usage
        assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 30 - usage.total_tokens == 15
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)  # 5 + 16 > the 15 left
        assert info.value.response.headers["x-ratelimit-remaining-tokens"] == "15"
        await client.close()


async def test_a_true_capacity_refuses_past_it_and_latency_rises_with_load() -> None:
    settings = MockSettings(behaviours={"gpt-4.1": ModelBehaviour(latency_ms=100)},
                            quotas={"*": Quota(capacity=4, load_latency_ms=50, overload_retry_after=0.2)})
    async with MockUpstream(settings) as mock:
        client = sdk(mock, "k")

        async def one() -> tuple[float, int]:
            started = time.monotonic()
            try:
                await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
                return time.monotonic() - started, 200
            except openai.RateLimitError as exc:
                assert exc.response.headers["retry-after"] == "0.2"
                assert "x-ratelimit-remaining-requests" not in exc.response.headers  # no quota: an overload
                return time.monotonic() - started, 429

        alone, _ = await one()
        results = await asyncio.gather(*(one() for _ in range(6)))
        assert sorted(status for _, status in results) == [200] * 4 + [429] * 2
        slowest = max(seconds for seconds, status in results if status == 200)
        assert slowest >= alone + 0.15 - 0.02  # the fourth in flight waited 3 × 50 ms more
        assert mock.quota_stats()["*"]["max_in_flight"] == 4
        await client.close()


def test_quotas_refill_over_the_minute() -> None:
    now = [0.0]
    quota = KeyQuota(Quota(requests_per_minute=60), clock=lambda: now[0])
    for _ in range(60):
        assert quota.admit(1)[0] is None
        quota.done()
    wait, headers = quota.admit(1)
    assert wait == pytest.approx(1.0) and headers["x-ratelimit-reset-requests"] == "1m0s"
    now[0] = 1.0
    assert quota.admit(1)[0] is None


def test_the_command_line_and_the_builtin_block_set_quotas() -> None:
    assert parse_quota("requests_per_minute=600,capacity=20") == ("*", Quota(requests_per_minute=600, capacity=20))
    key, quota = parse_quota("sk-b:tokens_per_minute=1000")
    assert key == "sk-b" and quota.tokens_per_minute == 1000
    with pytest.raises(argparse.ArgumentTypeError):
        parse_quota("rpm=600")
    args = argparse.Namespace(models="gpt-4.1", tps=0.0, completion_tokens=16, api_key=None, seed=None,
                              latency_ms=0.0, jitter_ms=0.0, fault=[], quota=[("*", Quota(capacity=3))])
    assert settings_from_args(args).quotas == {"*": Quota(capacity=3)}


async def test_a_builtin_mock_upstream_takes_a_quota_block(floodgate) -> None:
    config = {"server": {"access_log": False},
              "upstreams": {"main": {"base_url": "builtin:mock", "mock": {"quota": {"requests_per_minute": 2}}}},
              "models": {"gpt-4.1": {"upstream": "main"}}}
    gw = await floodgate(config, plugins=[MockPlugin()])
    client = gw.openai()
    for _ in range(2):
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as info:  # the provider's 429, relayed
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert "x-ratelimit-limit-requests" not in info.value.response.headers  # never relayed by the gateway
