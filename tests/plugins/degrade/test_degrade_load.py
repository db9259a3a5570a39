"""Under real load, through the ``openai`` SDK, against the mock behaving like a provider under quota:
adaptive concurrency finds a capacity the config does not know, and the ladder degrades instead of
failing. Each run is bounded to seconds (``e2e``: real time on a shared machine)."""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from proxy.mock import MockUpstream, ModelBehaviour
from proxy.testing import RunningGateway, mock_config

pytestmark = pytest.mark.e2e

MAIN, CHEAP = "deepseek-v3.2", "gemini-2.5-flash"
PLAIN = [{"role": "user", "content": "帮我查一下订单 20241105-88231 的物流"}]
LOOSE_FAQ = [{"role": "user", "content": "你好,我上周退的那件外套,退款多久能到账?订单号 20241105-88231"}]
KEYS = {"bulk": "fg-bulk-key-0001", "vip": "fg-vip-key-00002", "priority": "fg-priority-key-3"}


def provider(mock: MockUpstream, *, main: dict[str, Any], cheap: dict[str, Any], latency_ms: float,
             tps: float = 0.0, tokens: int = 16) -> None:
    """Two provider keys on the mock: ``sk-main`` for the main model, ``sk-cheap`` for the cheaper one."""
    mock.set_quota("sk-main", **main)
    mock.set_quota("sk-cheap", **cheap)
    for model in (MAIN, CHEAP):
        mock.settings.behaviours[model] = ModelBehaviour(latency_ms=latency_ms, tokens_per_second=tps,
                                                         completion_tokens=tokens)


def gateway_config(url: str, *, main: dict[str, Any], cheap: dict[str, Any], plugins: dict[str, Any]) -> dict[str, Any]:
    config = mock_config(url, models={
        MAIN: {"deployments": [{"upstream": "main-key", "name": "main", **main}],
               "price": {"input": 0.28, "output": 0.42}},
        CHEAP: {"deployments": [{"upstream": "cheap-key", "name": "flash", **cheap}],
                "price": {"input": 0.1, "output": 0.4}}}, plugin_settings=plugins)
    timeouts = {"connect": 2, "first_byte": 10, "total": 30}
    config["upstreams"].update({"main-key": {"base_url": url, "api_key": "sk-main", "timeouts": timeouts},
                                "cheap-key": {"base_url": url, "api_key": "sk-cheap", "timeouts": timeouts}})
    return config


async def offer(rate: float, seconds: float, send: Callable[[int], Awaitable[None]]) -> int:
    """Open-loop load: ``send(i)`` started ``rate`` times a second for ``seconds``; waits for all."""
    tasks, start, i = [], time.monotonic(), 0
    while (now := time.monotonic()) - start < seconds:
        due = start + i / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.ensure_future(send(i)))
        i += 1
    await asyncio.gather(*tasks)
    return i


async def streamed(client: openai.AsyncOpenAI, messages: list[dict[str, str]], **extra: Any) -> Any:
    raw = await client.chat.completions.with_raw_response.create(model=MAIN, messages=messages, stream=True,
                                                                 **extra)
    async for _ in raw.parse():
        pass
    return raw


async def test_adaptive_concurrency_finds_the_true_capacity_and_the_ladder_keeps_429s_away(
        floodgate: Callable[..., Awaitable[RunningGateway]], mock_upstream: MockUpstream) -> None:
    """The provider takes 10 requests at once (its latency doubles there; past it, 429); the config
    says 64. At 1.5× its capacity the learned limit settles within 20 % of 10, and the ladder's
    cheaper route keeps client-visible 429s under 1 %."""
    capacity, latency = 10, 200.0
    provider(mock_upstream, main={"capacity": capacity, "load_latency_ms": latency / capacity,
                                  "overload_retry_after": 0.5}, cheap={"capacity": 1000}, latency_ms=latency)
    gw = await floodgate(gateway_config(mock_upstream.url, main={"adaptive": True, "limits": {"max_concurrent": 64}},
                                        cheap={}, plugins={
        "ratelimit": {"queue": {"max_wait_ms": 3000, "max_length": 5000}},
        "retry": {"max_retries": 2, "max_retry_after_s": 2},
        "degrade": {"routes": {MAIN: {"threshold_ms": 300, "recover_ms": 100, "hold_s": 3,
                                      "steps": [{"name": "cheaper", "route": CHEAP}]}}}}),
        builtins=("plugins.ratelimit", "plugins.retry", "plugins.degrade"))
    limiter = _plugin(gw, "ratelimit")
    deployment = limiter.deployments.by_key[f"{MAIN}@main"]
    client = gw.openai(timeout=60)
    outcomes: Counter[str] = Counter()
    limits: list[float] = []

    async def send(i: int) -> None:
        try:
            raw = await streamed(client, PLAIN)
            outcomes[raw.headers.get("x-floodgate-degraded") or "main"] += 1
        except openai.APIStatusError as exc:
            outcomes[str(exc.status_code)] += 1

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.25)
            limits.append(deployment.adaptive.limit)

    sampler = asyncio.ensure_future(sample())
    rate = 1.5 * capacity / (2 * latency / 1000)  # 1.5 × what it serves at its capacity (latency doubled)
    sent = await offer(rate, 10.0, send)
    sampler.cancel()
    settled = limits[len(limits) // 2:]
    learned = statistics.mean(settled)
    refused = sum(n for outcome, n in outcomes.items() if outcome == "429")
    print(f"\nadaptive: sent {sent} at {rate:.1f}/s, outcomes {dict(outcomes)}, learned limit {learned:.1f} "
          f"(true capacity {capacity}), provider {mock_upstream.quota_stats()['sk-main']}")
    assert 0.8 * capacity <= learned <= 1.2 * capacity
    assert refused / sent < 0.01 and sum(outcomes.values()) == sent
    assert outcomes["main"] > outcomes["cheaper"] > 0  # the excess (a third) went to the cheaper route
    text = await gw.metrics()
    assert f'floodgate_ratelimit_deployment_limit{{deployment="{MAIN}@main",kind="concurrency"}}' in text


async def test_the_ladder_at_twice_capacity_degrades_in_order_and_comes_off(
        floodgate: Callable[..., Awaitable[RunningGateway]], mock_upstream: MockUpstream, tmp_path: Path) -> None:
    """Twice what the main deployment serves: the FAQ's looser matches, then the cheaper route, then
    shorter answers absorb the excess, in that order; no request fails; the headers and the ledger say
    which step served each; a key that opted out is never degraded; the steps come off once the load drops."""
    provider(mock_upstream, main={"capacity": 4}, cheap={"capacity": 2}, latency_ms=150, tps=200, tokens=40)
    ledger = tmp_path / "usage.db"
    gw = await floodgate(gateway_config(mock_upstream.url, main={"limits": {"max_concurrent": 4}},
                                        cheap={"limits": {"max_concurrent": 2}}, plugins={
        "auth": {"admin_key": "fg-admin-key-0001", "keys": [
            {"name": "bulk", "key": KEYS["bulk"]}, {"name": "vip", "key": KEYS["vip"], "priority": 10},
            {"name": "priority", "key": KEYS["priority"], "priority": 10, "degrade": False}]},
        "faq": {"rules": [{"name": "refund-time", "any": ["退款多久"], "max_length": 20, "answer": "1-3 个工作日。"}]},
        "ratelimit": {"queue": {"max_wait_ms": 5000, "max_length": 5000}},
        "retry": {"max_retries": 1},
        "cost": {"ledger": {"path": str(ledger), "flush_interval_s": 0.1}},
        "degrade": {"routes": {MAIN: {"threshold_ms": 300, "recover_ms": 100, "hold_s": 1, "escalate_s": 0.5,
                                      "steps": [{"faq": True}, {"name": "cheaper", "route": CHEAP},
                                                {"name": "short", "max_tokens": 4},
                                                {"name": "shed", "shed_below_priority": 5}, {"reject": True}]}}}}),
        builtins=("plugins.auth", "plugins.faq", "plugins.ratelimit", "plugins.retry", "plugins.cost",
                  "plugins.degrade", "plugins.traffic"))
    clients = {name: gw.openai(api_key=key, timeout=60) for name, key in KEYS.items()}
    seen: list[tuple[float, str, str, int, str | None, str]] = []  # time, key, step, status, request id, model
    start = time.monotonic()

    async def send(i: int) -> None:
        key = "priority" if i % 10 == 3 else "vip" if i % 10 == 5 else "bulk"
        messages = LOOSE_FAQ if i % 10 == 7 else PLAIN
        try:
            raw = await streamed(clients[key], messages)
            seen.append((time.monotonic() - start, key, raw.headers.get("x-floodgate-degraded", ""), 200,
                         raw.headers["x-request-id"], raw.headers.get("x-floodgate-model", "faq")))
        except openai.APIStatusError as exc:
            seen.append((time.monotonic() - start, key, exc.response.headers.get("x-floodgate-degraded", ""),
                         exc.status_code, exc.response.headers.get("x-request-id"), ""))

    capacity = 4 / 0.35  # four at once, each 150 ms to the first token + 40 tokens at 200/s
    sent = await offer(2 * capacity, 6.0, send)
    first_seen: dict[str, float] = {}  # when each step first served (or refused) a request
    for at, _, header, _, _, _ in sorted(seen):
        for step in filter(None, header.split(", ")):
            first_seen.setdefault(step, at)
    by_header = Counter(header for _, _, header, _, _, _ in seen)
    failed = [(key, header, status) for _, key, header, status, _, _ in seen if status != 200]
    print(f"\nladder: sent {sent}, by step {dict(by_header)}, failed {Counter(failed)}, first seen {first_seen}")
    # Served by the declared steps, in their order; nothing failed unless a step refused it.
    declared = ["faq", "cheaper", "short", "shed", "reject"]
    used = [step for step in declared if step in first_seen]
    assert used[:3] == ["faq", "cheaper", "short"]
    assert [first_seen[step] for step in used] == sorted(first_seen[step] for step in used)
    assert all(status == 429 and header.split(", ")[-1] in ("shed", "reject") for _, header, status in failed)
    # The key that opted out: never degraded, always the route's own model.
    assert {model for _, key, _, status, _, model in seen if key == "priority"} == {MAIN}
    assert not [header for _, key, header, _, _, _ in seen if key == "priority" and header]
    # Then the load drops: every step comes off, one per hold_s.
    await offer(3.0, 7.0, send)
    status = await (await gw.client.get("/-/status", headers={"Authorization": "Bearer fg-admin-key-0001"})).json()
    assert status["routes"][MAIN]["steps_in_force"] == [] and status["routes"][MAIN]["degraded"] is None
    assert status["routes"][MAIN]["requests_per_s"] >= 0 and f"{MAIN}@main" in status["deployments"]
    text = await gw.metrics()
    assert f'floodgate_degrade_steps_in_force{{route="{MAIN}"}} 0.0' in text
    for step in used:
        assert f'floodgate_degrade_transitions_total{{route="{MAIN}",step="{step}",to="off"}} 1.0' in text
    # The ledger says what the headers said.
    await _plugin(gw, "cost").ledger.flush()
    with sqlite3.connect(ledger) as conn:
        rows = dict(conn.execute("SELECT request_id, COALESCE(degraded, '') FROM usage WHERE hedged = 0"))
    assert all(rows[rid] == step for _, _, step, _, rid, _ in seen if rid is not None)


def _plugin(gw: RunningGateway, name: str) -> Any:
    from proxy.keys import PLUGIN_MANAGER

    return gw.app[PLUGIN_MANAGER].get_plugin(name)
