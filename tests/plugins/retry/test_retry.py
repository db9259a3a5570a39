"""Tests of the retry plugin (plugins/retry/): retries, fallbacks, deadline, circuit breakers.

Real HTTP: the openai SDK (no SDK retries) -> the gateway -> the mock upstream. Time-bound
decisions (deadline, backoff, Retry-After) are tested offline in test_retry_decisions.py.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
from typing import Any

import openai
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

import proxy
from plugins.retry import RetryPlugin
from proxy.config import config_from_dict
from proxy.testing import MOCK_MODELS, mock_config

PRIMARY, FALLBACK = "deepseek-v3.2", "gemini-2.5-flash"
MSGS = [{"role": "user", "content": "when does the festival sale start?"}]
# Small backoff so retries cost milliseconds; a seed for reproducible jitter.
FAST: dict[str, Any] = {"backoff_base_s": 0.01, "max_backoff_s": 0.05, "seed": 7}
NOWHERE = "http://127.0.0.1:9/v1"  # configs that are never served


def catalogue(extra: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The mock catalogue where the primary falls back to Gemini Flash (the seed's setup),
    with ``extra`` keys merged into some entries."""
    models = copy.deepcopy(MOCK_MODELS)
    models[PRIMARY]["fallbacks"] = [FALLBACK]
    for name, values in (extra or {}).items():
        models[name].update(values)
    return models


async def start(floodgate: Any, settings: dict[str, Any] | None = None, *,
                clock: proxy.ManualClock | None = None, **kwargs: Any) -> Any:
    plugin = RetryPlugin(clock=clock) if clock is not None else RetryPlugin()
    kwargs.setdefault("models", catalogue())
    block = {**FAST, **(settings or {})}
    return await floodgate(plugins=[plugin], plugin_settings={"retry": block}, **kwargs)


async def chat(client: openai.AsyncOpenAI, model: str = PRIMARY) -> Any:
    return await client.chat.completions.with_raw_response.create(model=model, messages=MSGS)


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if found == labels:
                return float(line.rsplit(" ", 1)[1])
    return None


# -- retries and fallbacks --------------------------------------------------

async def test_fallback_after_retries_exhausted(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=100, error_status=503, retry_after=None)
    gw = await start(floodgate)
    raw = await chat(gw.openai())
    assert raw.headers["x-floodgate-model"] == FALLBACK
    assert raw.headers["x-floodgate-attempts"] == "4"  # 3 tries of the primary + 1 fallback
    assert raw.headers["x-floodgate-fallback"] == f"{PRIMARY}->{FALLBACK}"
    assert raw.parse().choices[0].message.content
    assert mock_upstream.stats.by_model == {PRIMARY: 3, FALLBACK: 1}


async def test_retry_succeeds_on_same_target(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=1, error_status=503, retry_after=None)
    gw = await start(floodgate)
    raw = await chat(gw.openai())
    assert raw.headers["x-floodgate-model"] == PRIMARY
    assert raw.headers["x-floodgate-attempts"] == "2"
    assert "x-floodgate-fallback" not in raw.headers
    assert mock_upstream.stats.by_model == {PRIMARY: 2}


async def test_connection_refused_falls_back(floodgate, mock_upstream):
    # A second upstream nobody listens on: every try is a connection error.
    models = catalogue()
    models[PRIMARY]["upstream"] = "dead"
    config = mock_config(mock_upstream.url, models=models, plugin_settings={"retry": FAST})
    config["upstreams"]["dead"] = {"base_url": NOWHERE, "timeouts": {"connect": 1}}
    gw = await floodgate(config, plugins=[RetryPlugin()])
    raw = await chat(gw.openai())
    assert raw.headers["x-floodgate-model"] == FALLBACK
    assert raw.headers["x-floodgate-attempts"] == "4"
    assert mock_upstream.stats.by_model == {FALLBACK: 1}


async def test_per_model_override_retries_timeouts(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, hang=True)
    models = catalogue({PRIMARY: {"timeouts": {"first_byte": 0.2}}})
    gw = await start(floodgate, {"models": {PRIMARY: {"retry_on_timeout": True, "max_retries": 1}}},
                     models=models)
    raw = await chat(gw.openai())
    assert raw.headers["x-floodgate-model"] == FALLBACK
    assert raw.headers["x-floodgate-attempts"] == "3"
    assert mock_upstream.stats.by_model == {PRIMARY: 2, FALLBACK: 1}


async def test_retry_after_is_honoured(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=1, error_status=429, retry_after=0.4)
    gw = await start(floodgate, {"max_retry_after_s": 1})
    began = time.perf_counter()
    raw = await chat(gw.openai())
    elapsed = time.perf_counter() - began
    assert raw.headers["x-floodgate-model"] == PRIMARY
    assert raw.headers["x-floodgate-attempts"] == "2"
    assert elapsed >= 0.38  # waited (a lower bound: the machine may be slower, never faster)


async def test_retry_after_above_cap_without_fallback_relays_429(floodgate, mock_upstream):
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=429, retry_after=3)
    gw = await start(floodgate, {"max_retry_after_s": 1})
    with pytest.raises(openai.RateLimitError) as caught:
        await chat(gw.openai(), "gpt-4.1")
    assert caught.value.response.headers["retry-after"] == "3"
    assert mock_upstream.stats.by_model == {"gpt-4.1": 1}


async def test_client_error_stops_at_once(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=1, error_status=400)
    gw = await start(floodgate)
    with pytest.raises(openai.BadRequestError) as caught:
        await chat(gw.openai())
    assert "Injected upstream error 400" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert mock_upstream.stats.by_model == {PRIMARY: 1}


# -- circuit breakers -------------------------------------------------------

async def test_breaker_opens_skips_target_and_recovers(floodgate, mock_upstream):
    clock = proxy.ManualClock()
    mock_upstream.set_behaviour(PRIMARY, error_rate=1.0, error_status=500)
    gw = await start(floodgate, {"max_retries": 0, "breaker": {"failures": 2, "cooldown_s": 10}},
                     clock=clock)
    client = gw.openai()
    for _ in range(2):
        assert (await chat(client)).headers["x-floodgate-model"] == FALLBACK
    assert mock_upstream.stats.by_model[PRIMARY] == 2
    # Open: the primary is skipped without any request to it.
    raw = await chat(client)
    assert raw.headers["x-floodgate-model"] == FALLBACK
    assert raw.headers["x-floodgate-attempts"] == "1"
    assert raw.headers["x-floodgate-fallback"] == f"{PRIMARY}->{FALLBACK}"
    assert mock_upstream.stats.by_model[PRIMARY] == 2
    # Still open just before the cooldown ends.
    clock.advance(9.9)
    await chat(client)
    assert mock_upstream.stats.by_model[PRIMARY] == 2
    # Half-open: one probe; it succeeds, which closes the breaker.
    mock_upstream.set_behaviour(PRIMARY)
    clock.advance(0.2)
    assert (await chat(client)).headers["x-floodgate-model"] == PRIMARY
    assert mock_upstream.stats.by_model[PRIMARY] == 3
    for _ in range(2):
        assert (await chat(client)).headers["x-floodgate-model"] == PRIMARY
    assert mock_upstream.stats.by_model[PRIMARY] == 5
    text = await gw.metrics()
    assert metric(text, "floodgate_retry_breaker_state", model=PRIMARY) == 0
    for state in ("open", "half_open", "closed"):
        assert metric(text, "floodgate_retry_breaker_transitions_total", model=PRIMARY,
                      to=state) == 1


async def test_failed_probe_reopens_for_another_cooldown(floodgate, mock_upstream):
    clock = proxy.ManualClock()
    mock_upstream.set_behaviour(PRIMARY, error_rate=1.0, error_status=502)
    gw = await start(floodgate, {"max_retries": 2, "breaker": {"failures": 1, "cooldown_s": 10}},
                     clock=clock)
    client = gw.openai()
    await chat(client)  # opens on the first failure, so no retries of an open target
    assert mock_upstream.stats.by_model[PRIMARY] == 1
    clock.advance(10)
    assert (await chat(client)).headers["x-floodgate-model"] == FALLBACK  # the probe fails
    assert mock_upstream.stats.by_model[PRIMARY] == 2
    clock.advance(9)
    await chat(client)
    assert mock_upstream.stats.by_model[PRIMARY] == 2  # re-opened at the probe: still cooling
    clock.advance(1)
    mock_upstream.set_behaviour(PRIMARY)
    assert (await chat(client)).headers["x-floodgate-model"] == PRIMARY


async def test_half_open_lets_exactly_one_probe_through(floodgate, mock_upstream):
    clock = proxy.ManualClock()
    mock_upstream.set_behaviour(PRIMARY, fail_first=1, error_status=500)
    gw = await start(floodgate, {"max_retries": 0, "breaker": {"failures": 1, "cooldown_s": 5}},
                     clock=clock)
    client = gw.openai()
    await chat(client)
    clock.advance(5)
    mock_upstream.set_behaviour(PRIMARY, latency_ms=300)  # healthy, slow probe
    mock_upstream.stats.reset()
    results = await asyncio.gather(*(chat(client) for _ in range(4)))
    used = sorted(r.headers["x-floodgate-model"] for r in results)
    assert used == [PRIMARY, FALLBACK, FALLBACK, FALLBACK]
    assert mock_upstream.stats.by_model == {PRIMARY: 1, FALLBACK: 3}
    # The probe succeeded: closed again, concurrent requests all use the primary.
    results = await asyncio.gather(*(chat(client) for _ in range(3)))
    assert {r.headers["x-floodgate-model"] for r in results} == {PRIMARY}


async def test_failure_ratio_over_rolling_window(floodgate, mock_upstream):
    clock = proxy.ManualClock()
    settings = {"max_retries": 0, "breaker": {"failures": 100, "failure_ratio": 0.5,
                                              "min_requests": 4, "window_s": 30}}
    gw = await start(floodgate, settings, clock=clock)
    client = gw.openai()

    async def outcome(fail: bool) -> str:
        mock_upstream.set_behaviour(PRIMARY, fail_first=int(fail), error_status=503,
                                    retry_after=None)
        return (await chat(client)).headers["x-floodgate-model"]

    await outcome(False)
    await outcome(True)
    clock.advance(31)  # those two left the window
    await outcome(False)
    await outcome(True)
    assert await outcome(False) == PRIMARY  # 1 failure in 3: still closed
    assert await outcome(True) == FALLBACK  # 2 failures in 4: opens
    before = mock_upstream.stats.by_model[PRIMARY]
    assert await outcome(False) == FALLBACK
    assert mock_upstream.stats.by_model[PRIMARY] == before


async def test_client_errors_do_not_trip_the_breaker(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=3, error_status=422)
    gw = await start(floodgate, {"breaker": {"failures": 1}})
    client = gw.openai()
    for _ in range(3):
        with pytest.raises(openai.UnprocessableEntityError):
            await chat(client)
    assert (await chat(client)).headers["x-floodgate-model"] == PRIMARY
    assert mock_upstream.stats.by_model == {PRIMARY: 4}


async def test_all_targets_open_is_503_with_retry_after(floodgate, mock_upstream):
    clock = proxy.ManualClock()
    mock_upstream.set_behaviour(PRIMARY, error_rate=1.0, error_status=500)
    mock_upstream.set_behaviour(FALLBACK, error_rate=1.0, error_status=500)
    gw = await start(floodgate, {"max_retries": 0, "breaker": {"failures": 1, "cooldown_s": 10}},
                     clock=clock)
    client = gw.openai()
    with pytest.raises(openai.InternalServerError) as caught:
        await chat(client)
    assert caught.value.status_code == 502  # both tried and failed: the last failure
    clock.advance(2.5)
    with pytest.raises(openai.InternalServerError) as caught:
        await chat(client)
    error = caught.value
    assert error.status_code == 503
    assert error.response.headers["retry-after"] == "8"  # ceil(10 - 2.5)
    assert error.body["code"] == "upstream_unavailable"
    assert "circuit open" in error.message
    assert mock_upstream.stats.by_model == {PRIMARY: 1, FALLBACK: 1}


async def test_unused_probe_slot_is_released(mock_upstream):
    # A request that takes the half-open probe slot but ends before using it
    # (client gone during the backoff) must not block probing forever.
    clock = proxy.ManualClock()
    config = config_from_dict(mock_config(mock_upstream.url, models=catalogue(), plugin_settings={
        "retry": {"breaker": {"failures": 1, "cooldown_s": 1}}}))
    plugin = RetryPlugin(clock=clock)
    registry = CollectorRegistry()
    plugin.proxy_configure(config, registry, proxy.SharedState())
    route = proxy.Route(PRIMARY, config.targets_with_fallbacks(PRIMARY))

    def context() -> proxy.RequestContext:
        ctx = proxy.RequestContext(request_id="r", method="POST", endpoint="chat/completions",
                                   headers=CIMultiDictProxy(CIMultiDict()), config=config)
        ctx.route = route
        return ctx

    first = context()
    attempt = plugin.proxy_next_attempt(first)
    first.attempts.append(proxy.AttemptRecord(attempt.target, 0.0, 0.1, status=500, error="http"))
    plugin.proxy_finished(first)  # opened
    clock.advance(1)
    holder = context()
    assert plugin.proxy_next_attempt(holder).target.model == PRIMARY  # holds the probe
    assert registry.get_sample_value("floodgate_retry_breaker_state", {"model": PRIMARY}) == 1
    assert plugin.proxy_next_attempt(context()).target.model == FALLBACK
    plugin.proxy_finished(holder)  # ended without an attempt
    assert plugin.proxy_next_attempt(context()).target.model == PRIMARY


# -- streams ----------------------------------------------------------------

async def test_stream_falls_back_before_first_byte(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=1, error_status=503, retry_after=None)
    gw = await start(floodgate, {"max_retries": 0})
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model=PRIMARY, messages=MSGS, stream=True)
    assert raw.headers["x-floodgate-model"] == FALLBACK
    assert raw.headers["x-floodgate-attempts"] == "2"
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse()
                    if chunk.choices])
    assert text
    assert mock_upstream.stats.by_model == {PRIMARY: 1, FALLBACK: 1}


async def test_stream_broken_mid_way_is_not_retried(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, break_stream_after=3)
    gw = await start(floodgate)
    stream = await gw.openai().chat.completions.create(model=PRIMARY, messages=MSGS, stream=True)
    pieces = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) == 3
    assert "stream" in caught.value.message
    assert mock_upstream.stats.by_model == {PRIMARY: 1}


# -- metrics ----------------------------------------------------------------

async def test_metrics(floodgate, mock_upstream):
    mock_upstream.set_behaviour(PRIMARY, fail_first=100, error_status=503, retry_after=None)
    mock_upstream.set_behaviour(FALLBACK, malformed=True)  # 200 with a body that is not JSON
    models = catalogue({PRIMARY: {"fallbacks": [FALLBACK, "gpt-4.1"]}})
    gw = await start(floodgate, {"max_retries": 1, "breaker": {"failures": 2}}, models=models)
    raw = await chat(gw.openai())
    assert raw.headers["x-floodgate-model"] == "gpt-4.1"
    assert raw.headers["x-floodgate-fallback"] == f"{PRIMARY}->gpt-4.1"
    text = await gw.metrics()
    assert metric(text, "floodgate_retry_retries_total", model=PRIMARY, reason="503") == 1
    assert metric(text, "floodgate_retry_retries_total", model=FALLBACK, reason="invalid_body") == 1
    fallbacks = "floodgate_retry_fallbacks_total"
    assert metric(text, fallbacks, from_model=PRIMARY, to_model=FALLBACK) == 1
    assert metric(text, fallbacks, from_model=FALLBACK, to_model="gpt-4.1") == 1
    # Two failures each opened both breakers; the target that answered stays closed.
    assert metric(text, "floodgate_retry_breaker_state", model=PRIMARY) == 2
    assert metric(text, "floodgate_retry_breaker_state", model=FALLBACK) == 2
    assert metric(text, "floodgate_retry_breaker_state", model="gpt-4.1") == 0
    assert metric(text, "floodgate_retry_breaker_transitions_total", model=PRIMARY, to="open") == 1


# -- configuration ----------------------------------------------------------

def config_errors(settings: dict[str, Any]) -> dict[str, str]:
    config = config_from_dict(mock_config(NOWHERE, plugin_settings={"retry": settings}))
    with pytest.raises(proxy.ConfigErrors) as caught:
        proxy.create_app(config, plugins=[RetryPlugin()], builtins=(), entry_points=False)
    return {e.path: e.message for e in caught.value.errors}


def test_config_errors_name_their_paths():
    errors = config_errors({
        "max_retries": -1, "deadline_s": 0, "breaker": {"failure_ratio": 1.5, "failures": 0}})
    assert set(errors) == {"plugins.retry.max_retries", "plugins.retry.deadline_s",
                           "plugins.retry.breaker.failure_ratio", "plugins.retry.breaker.failures"}
    assert "less than or equal to 1" in errors["plugins.retry.breaker.failure_ratio"]
    errors = config_errors({"models": {"gpt-9": {"max_retries": 1}}})
    assert errors == {"plugins.retry.models.gpt-9": "unknown model 'gpt-9' (not in the catalogue)"}
    errors = config_errors({"models": {PRIMARY: {"max_retrys": 1}}})
    assert "did you mean 'max_retries'" in errors[f"plugins.retry.models.{PRIMARY}.max_retrys"]
    errors = config_errors({"backoff_base_s": 2, "max_backoff_s": 1})
    assert set(errors) == {"plugins.retry.max_backoff_s"}


def test_config_errors_carry_the_line():
    text = f"""
upstreams:
  main: {{base_url: "{NOWHERE}"}}
models:
  deepseek-v3.2: {{upstream: main}}
plugins:
  retry:
    breaker:
      window_s: -3
"""
    with pytest.raises(proxy.ConfigErrors) as caught:
        proxy.create_app(proxy.parse_config(text, source="config.yaml"), plugins=[RetryPlugin()],
                         builtins=(), entry_points=False)
    (error,) = caught.value.errors
    assert error.path == "plugins.retry.breaker.window_s"
    assert error.line == 9
