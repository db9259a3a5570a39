"""Configuration reloads in-process: generations swap whole, in-flight requests finish on the old one."""

from __future__ import annotations

import asyncio
import logging

import pytest
import yaml
from prometheus_client import Counter, Histogram

from proxy import ConfigErrors, hookimpl
from proxy.config import config_from_dict
from proxy.keys import GENERATIONS, STATE
from proxy.metrics import MetricsRegistry
from proxy.server.reload import Coalesced, Reloader
from proxy.testing import mock_config

FAQ = "plugins.faq"
ASK = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "营业时间?"}]}
STREAM = {"model": "gpt-4.1", "stream": True, "messages": [{"role": "user", "content": "write a poem"}]}


def faq_config(url: str, answer: str, **extra) -> dict:
    rules = [{"name": "hours", "any": ["营业时间"], "answer": answer}]
    return {**mock_config(url, plugin_settings={"faq": {"rules": rules}}), **extra}


async def answer(gw) -> str:
    response = await gw.client.post("/v1/chat/completions", json=ASK)
    assert response.status == 200
    return (await response.json())["choices"][0]["message"]["content"]


class Seen:
    """Counts requests in a labelled counter; keeps a tally that must survive reloads."""

    name = "seen"

    @hookimpl
    def proxy_configure(self, config, registry, state):
        self.counter = Counter("floodgate_seen", "Requests seen", ["endpoint"], registry=registry)
        self.tally = state.keep("seen.tally", lambda: [0])

    @hookimpl
    def proxy_finished(self, ctx):
        self.counter.labels(ctx.endpoint).inc()
        self.tally[0] += 1


async def test_new_requests_use_the_new_config_in_flight_ones_finish_on_the_old(floodgate, mock_upstream):
    mock_upstream.set_behaviour("gpt-4.1", tokens_per_second=60, completion_tokens=30)  # a 0.5 s stream
    gw = await floodgate(config=faq_config(mock_upstream.url, "9:00-22:00"), builtins=(FAQ,))
    generations = gw.app[GENERATIONS]
    first = generations.current
    assert await answer(gw) == "9:00-22:00"

    stream = await gw.client.post("/v1/chat/completions", json=STREAM)
    assert stream.status == 200 and (await stream.content.readline()).startswith(b"data: ")
    second = await generations.reload(config_from_dict(faq_config(mock_upstream.url, "8:00-24:00")))
    assert generations.current is second and second.number == 2
    assert await answer(gw) == "8:00-24:00"  # at once, while the old stream still runs
    assert first.active == 1 and first.upstreams.ready  # the old sessions stay open for it

    rest = await stream.read()
    assert rest.rstrip().endswith(b"data: [DONE]") and b'"error"' not in rest
    for _ in range(100):  # the old generation stops once its last request is done
        if not first.upstreams.ready:
            break
        await asyncio.sleep(0.01)
    assert not first.upstreams.ready and second.upstreams.ready


async def test_a_broken_config_keeps_the_old_one_serving_and_every_error_is_logged(floodgate, mock_upstream,
                                                                                  tmp_path, caplog):
    gw = await floodgate(config=faq_config(mock_upstream.url, "9:00-22:00"), builtins=(FAQ,))
    path = tmp_path / "config.yaml"
    path.write_text("server:\n  max_body_bytes: -1\nupstreams:\n  main: {base_url: ftp://x}\n"
                    "plugins:\n  faq: {rules: [{name: hours, any: [x]}]}\n", encoding="utf-8")
    reloader = Reloader(gw.app, gw.app[GENERATIONS].current.config)
    assert not await reloader.reload_file(path)
    refused = [r.getMessage() for r in caplog.records if r.name == "floodgate.reload"]
    assert refused[:2] == ["reload refused: config.yaml:2 server.max_body_bytes: must be greater than 0",
                           "reload refused: config.yaml:4 upstreams.main.base_url: must be an http(s):// URL or "
                           "'builtin:mock'"]
    assert refused[-1].startswith("reload refused (2 errors): still serving generation 1")
    assert gw.app[GENERATIONS].current.number == 1 and await answer(gw) == "9:00-22:00"

    path.write_text("upstreams:\n  main: {base_url: '" + mock_upstream.url + "', api_key: sk-upstream-test}\n"
                    "models: {gpt-4.1: {upstream: main}}\n"
                    "plugins:\n  faq: {rules: [{name: hours, any: [x]}]}\n", encoding="utf-8")
    caplog.clear()
    assert not await reloader.reload_file(path)  # the plugin's own check: a rule needs an answer
    assert "reload refused: config.yaml:5 plugins.faq.rules.0.answer: required key is missing" in caplog.text


async def test_metrics_and_kept_state_continue_across_reloads(floodgate, mock_upstream):
    seen = Seen()
    gw = await floodgate(plugins=[seen])
    for _ in range(2):
        assert (await gw.client.post("/v1/chat/completions", json=ASK)).status == 200
    generations = gw.app[GENERATIONS]
    await generations.reload(config_from_dict(mock_config(mock_upstream.url)))
    # The same plugin object is configured again (extra plugins are reused); the counter continues.
    assert (await gw.client.post("/v1/chat/completions", json=ASK)).status == 200
    text = await gw.metrics()
    assert 'floodgate_seen_total{endpoint="chat/completions"} 3.0' in text
    assert 'floodgate_requests_total{endpoint="chat/completions",model="gpt-4.1",status="200"} 3.0' in text
    assert seen.tally == [3] and seen.tally is gw.app[STATE].keep("seen.tally", list)


def test_the_registry_continues_same_metrics_and_resets_changed_ones():
    live = MetricsRegistry()
    first = live.stage()
    requests = Counter("floodgate_x", "X", ["k"], registry=first)
    latency = Histogram("floodgate_y_seconds", "Y", buckets=(1, 2), registry=first)
    live.commit(first)
    requests.labels("a").inc(5)
    latency.observe(1.5)

    second = live.stage()
    again = Counter("floodgate_x", "X", ["k"], registry=second)
    rebucketed = Histogram("floodgate_y_seconds", "Y", buckets=(1, 2, 4), registry=second)
    with pytest.raises(ValueError, match="Duplicated"):
        Counter("floodgate_x", "X", ["k"], registry=second)  # twice in one generation is still a bug
    assert live.get_sample_value("floodgate_x_total", {"k": "a"}) == 5  # not exported before the commit
    live.commit(second)
    requests.labels("a").inc()  # the old generation's in-flight request still counts
    again.labels("a").inc()
    assert live.get_sample_value("floodgate_x_total", {"k": "a"}) == 7
    assert live.get_sample_value("floodgate_y_seconds_count") == 0  # new buckets: a new series
    rebucketed.observe(3)
    assert live.get_sample_value("floodgate_y_seconds_bucket", {"le": "4.0"}) == 1

    with pytest.raises(ValueError, match="Duplicated"):
        Counter("floodgate_core_thing", "core", registry=live)
        Counter("floodgate_core_thing", "core", registry=live.stage())  # a plugin clashing with the core


async def test_a_reload_that_fails_to_start_changes_nothing(floodgate, mock_upstream, caplog):
    class Broken:
        name = "broken"

        def __init__(self) -> None:
            self.fail = False

        @hookimpl
        def proxy_configure(self, config):
            self.config = config

        @hookimpl
        async def proxy_startup(self, app):
            if self.fail:
                raise RuntimeError("cannot open the thing")

    broken = Broken()
    gw = await floodgate(plugins=[broken])
    broken.fail = True
    reloader = Reloader(gw.app, gw.app[GENERATIONS].current.config)
    assert not await reloader.reload_text(yaml.safe_dump(mock_config(mock_upstream.url)), "<test>")
    assert "reload failed while starting the new configuration; still serving generation 1" in caplog.text
    assert gw.app[GENERATIONS].current.number == 1
    assert (await gw.client.post("/v1/chat/completions", json=ASK)).status == 200


async def test_restart_only_settings_are_named_with_their_line(floodgate, mock_upstream, tmp_path, caplog):
    caplog.set_level(logging.INFO, "floodgate.reload")
    gw = await floodgate()
    path = tmp_path / "gw.yaml"
    path.write_text(f"server:\n  port: 9999\n  max_body_bytes: 1000\nstate:\n  on_error: reject\n"
                    f"upstreams:\n  main: {{base_url: '{mock_upstream.url}', api_key: sk-upstream-test}}\n"
                    "models: {gpt-4.1: {upstream: main}}\n", encoding="utf-8")
    assert await Reloader(gw.app, gw.app[GENERATIONS].current.config).reload_file(path)
    assert "gw.yaml:2 server.port: changed: takes effect when the gateway restarts" in caplog.text
    assert "max_body_bytes" not in caplog.text  # applied at once
    assert gw.app[STATE].on_error == "reject"
    big = {**ASK, "messages": [{"role": "user", "content": "x" * 2000}]}
    assert (await gw.client.post("/v1/chat/completions", json=big)).status == 413


async def test_workers_need_shared_state(mock_upstream):
    from proxy import create_app
    from proxy.state import SharedState

    config = config_from_dict(mock_config(mock_upstream.url, server={"workers": 2}))
    with pytest.raises(ConfigErrors) as info:
        create_app(config, builtins=(), entry_points=False)
    assert [f"{e.path}: {e.message}" for e in info.value.errors] == [
        "state.backend: 2 worker processes need shared state: set state.backend: redis (and state.url); memory "
        "state is per process, so each worker would enforce every limit, budget and breaker on its own"]
    create_app(config, builtins=(), entry_points=False, state=SharedState(workers=1))  # one process: fine


async def test_signals_during_a_reload_make_exactly_one_more():
    runs: list[int] = []
    gate = asyncio.Event()

    async def reload() -> None:
        runs.append(len(runs))
        await gate.wait()

    coalesced = Coalesced(reload)
    coalesced.trigger()
    await asyncio.sleep(0)
    for _ in range(3):  # three edits and signals while the first reload runs
        coalesced.trigger()
    gate.set()
    await coalesced.wait()
    assert runs == [0, 1]  # the last edit is applied once, not three times
