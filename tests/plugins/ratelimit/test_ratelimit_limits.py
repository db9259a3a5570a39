"""What the limiter takes and gives back, per scope, on a manual clock: headers, tokens,
concurrency, overrides, passthrough. Every level here is exact (time moves only when told)."""

from __future__ import annotations

from typing import Any

import pytest

import proxy


async def test_unconfigured_is_a_pass_through(limiter: Any) -> None:
    lim = await limiter({})
    ctx = lim.admit_now(lim.request())
    assert lim.plugin.proxy_admit(ctx) is None  # not even a plan
    assert not ctx.response_headers and lim.metric("floodgate_ratelimit_admitted_total") == 0


async def test_ratelimit_headers_on_success_and_429(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "global": {"requests_per_second": 2, "burst": 3,
                                                       "tokens_per_minute": 6000}})
    first = lim.admit_now(lim.request(max_tokens=50))
    headers = first.response_headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "2"
    assert headers["x-ratelimit-reset-requests"] == "500ms"  # one request at 2/s
    assert headers["x-ratelimit-limit-tokens"] == "6000"
    assert headers["x-ratelimit-remaining-tokens"] == str(6000 - lim.HI_ESTIMATE - 50)
    assert headers["x-ratelimit-reset-tokens"] == "580ms"  # 58 tokens at 100/s
    lim.admit_now(lim.request(max_tokens=50))
    third = lim.admit_now(lim.request(max_tokens=50))
    assert third.response_headers["x-ratelimit-remaining-requests"] == "0"
    fourth = lim.request(max_tokens=50)
    refused = lim.refused_now(fourth)
    assert refused.headers["retry-after"] == "1" and refused.headers["retry-after-ms"] == "500"
    assert fourth.response_headers["x-ratelimit-limit-requests"] == "3"
    assert fourth.response_headers["x-ratelimit-remaining-requests"] == "0"
    assert fourth.response_headers["x-ratelimit-reset-requests"] == "1.5s"  # three at 2/s
    assert fourth.response_headers["x-ratelimit-remaining-tokens"] == str(6000 - 3 * (lim.HI_ESTIMATE + 50))
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="global", reason="requests") == 1


async def test_tokens_reserved_then_refunded(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "per_key": {"tokens_per_minute": 200}})
    first = lim.admit_now(lim.request(max_tokens=100))  # reserves 8 + 100
    assert first.response_headers["x-ratelimit-remaining-tokens"] == "92"  # too few for another 108...
    lim.refused_now(lim.request(max_tokens=100))
    await lim.finish(first, usage=proxy.Usage(5, 16))  # ...until the unused 87 come back
    second = lim.admit_now(lim.request(max_tokens=100))
    assert second.response_headers["x-ratelimit-remaining-tokens"] == str(200 - 21 - 108)


async def test_token_overrun_is_charged(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "per_key": {"tokens_per_minute": 1000}})
    first = lim.admit_now(lim.request(max_tokens=10))
    await lim.finish(first, usage=proxy.Usage(300, 14))  # far more than the 18 reserved
    second = lim.admit_now(lim.request(max_tokens=10))
    assert second.response_headers["x-ratelimit-remaining-tokens"] == str(1000 - 314 - 18)


async def test_a_debt_is_paid_off_before_anyone_is_served(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "per_key": {"tokens_per_minute": 60}})  # 1 token/s
    first = lim.admit_now(lim.request(max_tokens=2))
    await lim.finish(first, usage=proxy.Usage(100, 0))  # 90 over the bucket: a debt of 40
    refused = lim.refused_now(lim.request(max_tokens=2))
    assert refused.headers["retry-after-ms"] == str((40 + 10) * 1000)  # the debt, then its own 10
    await lim.advance(50)
    lim.admit_now(lim.request(max_tokens=2))


async def test_never_reaching_an_upstream_refunds_everything(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "per_key": {"tokens_per_minute": 150, "requests_per_second": 0.01,
                                                        "burst": 2, "max_concurrent": 1}})
    refused_later = lim.admit_now(lim.request(max_tokens=100))  # e.g. a later admit hook refused it
    await lim.finish(refused_later, reached=False)
    assert lim.levels("key:anonymous:requests", "key:anonymous:tokens", "key:anonymous:concurrency") == \
        (2.0, 150.0, 1.0)


async def test_a_request_larger_than_the_token_limit_is_refused_for_good(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "global": {"tokens_per_minute": 100}})
    refused = lim.refused_now(lim.request(max_tokens=500))
    assert refused.type == "tokens" and refused.headers["x-should-retry"] == "false"
    assert "Request too large" in refused.message and "requested 508" in refused.message
    assert len(lim.plugin.queue) == 0


async def test_per_key_overrides_from_the_key_policy(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "per_key": {"requests_per_second": 1, "burst": 100}})
    small = lim.key("small", requests_per_second=0.5, burst=2)
    lim.admit_now(lim.request(small))
    lim.admit_now(lim.request(small))
    refused = lim.refused_now(lim.request(small))
    assert "key 'small'" in refused.message and refused.headers["retry-after"] == "2"
    for _ in range(5):
        big = lim.admit_now(lim.request(lim.key("big")))
    assert big.response_headers["x-ratelimit-limit-requests"] == "100"
    assert big.response_headers["x-ratelimit-remaining-requests"] == "95"
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="key", reason="requests") == 1


async def test_per_model_limit_applies_through_aliases(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "models": {"gpt-4.1": {"requests_per_second": 0.5, "burst": 1}}},
                        aliases={"smart": "gpt-4.1"})
    lim.admit_now(lim.request(model="gpt-4.1"))
    refused = lim.refused_now(lim.request(model="smart"))  # the alias resolves to the same catalogue model
    assert "model 'gpt-4.1'" in refused.message
    other = lim.admit_now(lim.request(model="deepseek-v3.2"))
    assert "x-ratelimit-limit-requests" not in other.response_headers
    await lim.advance(2.0)
    lim.admit_now(lim.request(model="smart"))


async def test_max_concurrent_rejects_and_releases_exactly_once(limiter: Any) -> None:
    lim = await limiter({"mode": "reject", "per_key": {"max_concurrent": 2}})
    held = [lim.admit_now(lim.request()), lim.admit_now(lim.request())]
    refused = lim.refused_now(lim.request())
    assert "Too many concurrent requests for key 'anonymous': limit 2" in refused.message
    assert refused.headers["retry-after"] == "1"  # nothing has ended yet: no better guess
    await lim.advance(0.4)
    await lim.finish(held[0])
    await lim.finish(held[0])  # finished twice (it cannot be, but must not free two slots)
    again = lim.admit_now(lim.request())
    refused = lim.refused_now(lim.request())
    # Slots are held about 0.4 s and both are in use: one is expected back in 0.2 s.
    assert refused.headers["retry-after-ms"] == "200"
    await lim.finish(again)
    lim.admit_now(lim.request())


async def test_max_concurrent_per_upstream_queues_and_wakes_on_finish(limiter: Any) -> None:
    lim = await limiter({"mode": "queue", "queue": {"max_wait_ms": 3000}, "upstreams": {"main": {"max_concurrent": 2}}})
    contexts = [lim.request() for _ in range(6)]
    tasks = [lim.wait(ctx) for ctx in contexts]
    await lim.h.settle()
    assert [t.done() for t in tasks] == [True, True, False, False, False, False]
    for wave in (2, 4):
        await lim.advance(0.1)
        for ctx in contexts[wave - 2:wave]:
            await lim.finish(ctx)
        assert sum(t.done() for t in tasks) == wave + 2  # two more, as soon as two ended
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_count") == 4
    assert lim.metric("floodgate_ratelimit_queue_wait_seconds_sum") == pytest.approx(2 * 0.1 + 2 * 0.2)


async def test_passthrough_counts_requests_and_concurrency_and_reserves_no_tokens(limiter: Any) -> None:
    """Issue 7: ``files``, ``batches``... are limited like model calls: the global, key and default
    upstream scopes; their token usage is unknown, so they reserve none."""
    lim = await limiter({"mode": "reject",
                         "global": {"requests_per_second": 100, "burst": 10, "tokens_per_minute": 6000},
                         "per_key": {"requests_per_second": 1, "burst": 3},
                         "upstreams": {"main": {"max_concurrent": 1}}})
    upload = lim.admit_now(lim.passthrough())
    assert upload.route is None and upload.response_headers["x-ratelimit-remaining-requests"] == "2"
    assert "x-ratelimit-limit-tokens" not in upload.response_headers
    refused = lim.refused_now(lim.passthrough(endpoint="batches"))  # the default upstream's one slot
    assert "upstream 'main'" in refused.message
    lim.refused_now(lim.request())  # model calls to that upstream wait for it too
    await lim.finish(upload)  # the slot comes back at finish
    chat = lim.admit_now(lim.request(max_tokens=10))
    assert chat.response_headers["x-ratelimit-remaining-tokens"] == str(6000 - 18)  # nothing taken before
    await lim.finish(chat)
    await lim.finish(lim.admit_now(lim.passthrough()))
    refused = lim.refused_now(lim.passthrough())  # the key's burst of 3 requests: passthrough counted
    assert "key 'anonymous' on requests per second" in refused.message
    assert lim.metric("floodgate_ratelimit_rejected_total", scope="upstream", reason="concurrency") == 2
    assert lim.metric("floodgate_ratelimit_admitted_total") == 3
