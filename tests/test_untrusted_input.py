"""Bad input gets a clear OpenAI-shaped 4xx, never a 500; secrets never reach error messages."""

from __future__ import annotations

import asyncio
import gzip

import openai
import orjson
import pytest
from test_paths import raw_request

from proxy import ConfigErrors, create_app, hookimpl, parse_config

CHAT = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(("encoding", "body", "status", "code"), [
    ("gzip", b"not gzip at all", 400, "invalid_encoding"),
    ("deflate", b"\x00\x01garbage", 400, "invalid_encoding"),
    ("x-custom", orjson.dumps(CHAT), 415, "unsupported_content_encoding"),
    ("gzip", gzip.compress(orjson.dumps(CHAT)), 200, None),
])
async def test_content_encoding(floodgate, encoding, body, status, code):
    gw = await floodgate()
    got, raw = await raw_request(gw.client.host, gw.client.port, "/v1/chat/completions", body=body,
                                 headers={"Content-Encoding": encoding})
    assert got == status
    if code:
        assert orjson.loads(raw)["error"]["code"] == code
    # The upstream never sees a Content-Encoding for a body the gateway decoded.
    for recorded in gw.mock.stats.requests:
        assert "Content-Encoding" not in recorded.headers


async def test_header_bytes_that_are_not_utf8(floodgate):
    gw = await floodgate(builtins=("plugins.auth",),
                         plugin_settings={"auth": {"keys": [{"name": "bot", "key": "sk-floodgate-test"}]}})
    host, port = gw.client.host, gw.client.port
    status, body = await raw_request(host, port, "/v1/chat/completions",
                                     headers={"Authorization": "Bearer sk-\udcff\udcfe".encode(
                                         "utf-8", "surrogateescape").decode("latin-1")})
    assert status == 401 and orjson.loads(body)["error"]["code"] == "invalid_api_key"
    status, body = await raw_request(host, port, "/v1/chat/completions", headers={
        "Authorization": "Bearer sk-floodgate-test", "X-Trace": "\xff\xfe"})
    assert status == 400 and orjson.loads(body)["error"]["param"] == "X-Trace"
    assert gw.mock.stats.total == 0


async def test_nesting_is_bounded_before_any_rewrite(floodgate):
    gw = await floodgate()
    client = gw.openai()
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gpt-4.1", messages=CHAT["messages"],
                                             extra_body={"metadata_blob": deep})
    assert info.value.code == "invalid_value" and "deeper than 128" in info.value.message
    shallow: object = "x"
    for _ in range(100):
        shallow = {"a": shallow}
    reply = await client.chat.completions.create(model="gpt-4.1", messages=CHAT["messages"],
                                                 extra_body={"blob": shallow})
    assert reply.choices and gw.mock.stats.total == 1


async def test_an_unknown_model_name_is_not_echoed_whole(floodgate):
    gw = await floodgate()
    response = await gw.client.post("/v1/chat/completions",
                                    json={**CHAT, "model": "m" * 1_000_000})
    body = await response.read()
    assert response.status == 404 and len(body) < 1024
    assert orjson.loads(body)["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("value", ['["sk-live-very-secret-1"]', '{inner: sk-live-very-secret-1}'])
def test_config_errors_never_print_secret_values(value):
    core = f"""
upstreams:
  main:
    base_url: http://127.0.0.1:9/v1
    api_key: {value}
    headers: {{OpenAI-Organization: {value}}}
"""
    plugin = f"""
upstreams:
  main: {{base_url: "http://127.0.0.1:9/v1"}}
plugins:
  auth:
    admin_key: {value}
    keys: [{{name: bot, key: {value}}}]
"""
    messages = []
    for text in (core, plugin):
        with pytest.raises(ConfigErrors) as info:
            create_app(parse_config(text, source="config.yaml", env={}), entry_points=False)
        messages.append(str(info.value))
    assert not any("sk-live-very-secret-1" in m for m in messages)
    assert "upstreams.main.api_key" in messages[0] and "upstreams.main.headers.OpenAI-Organization" in messages[0]
    assert "plugins.auth.admin_key" in messages[1] and "plugins.auth.keys.0.key" in messages[1]


async def test_overhead_excludes_the_upstream_wait_of_an_aborted_request(floodgate):
    finished = []

    class Recorder:
        name = "recorder"

        @hookimpl
        def proxy_finished(self, ctx):
            finished.append(ctx)

    gw = await floodgate(plugins=[Recorder()])
    gw.mock.set_behaviour("gpt-4.1", hang=True)
    client = gw.openai(timeout=0.3)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(**CHAT)
    for _ in range(100):
        if finished:
            break
        await asyncio.sleep(0.02)
    ctx = finished[0]
    assert ctx.client_disconnected and ctx.attempts[0].error == "cancelled"
    # The request lasted as long as the upstream wait; the proxy's own share is a sliver of it.
    assert ctx.timings.upstream > 0.2 and ctx.timings.overhead < ctx.timings.upstream / 5


async def test_client_chosen_model_names_never_mint_metric_series(floodgate):
    from proxy.testing import MOCK_MODELS

    gw = await floodgate(models={**MOCK_MODELS, "*": {"price": None}})
    for i in range(20):
        await gw.client.post("/v1/chat/completions", json={**CHAT, "model": f"made-up-{i}"})
    text = await gw.metrics()
    assert "made-up-" not in text
    assert 'model="*"' in text  # counted under the pattern that served them
