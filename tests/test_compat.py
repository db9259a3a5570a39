"""OpenAI SDK compatibility: the official ``openai`` client against the gateway, over real sockets."""

from __future__ import annotations

import json

import openai
import pytest

from proxy import Rejection, hookimpl

MESSAGES = [{"role": "user", "content": "你好,请问我的订单什么时候发货?"}]


async def test_chat_non_streaming(floodgate, mock_upstream):
    gw = await floodgate()
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    upstream_usage = mock_upstream.stats.requests[-1]
    assert reply.usage.completion_tokens == 16 and reply.usage.prompt_tokens > 0
    assert raw.headers["x-request-id"]
    assert raw.headers["x-floodgate-model"] == "gpt-4.1"
    # The upstream got the upstream's own key, never the client's.
    assert upstream_usage.headers["Authorization"] == "Bearer sk-upstream-test"


async def test_chat_streaming_with_and_without_usage(floodgate, mock_upstream):
    gw = await floodgate()
    client = gw.openai()
    stream = await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16

    stream = await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES, stream=True)
    chunks = [chunk async for chunk in stream]
    # Floodgate asked the upstream for usage (to account for it) but the client did not: no usage chunk.
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert mock_upstream.stats.requests[-1].body["stream_options"] == {"include_usage": True}
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


async def test_stream_wire_framing(floodgate):
    gw = await floodgate()
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "gpt-4.1", "messages": MESSAGES, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in resp.headers
    body = (await resp.read()).decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    for event in events[:-2]:
        assert event.startswith("data: ") and "\n" not in event
        json.loads(event[6:])


async def test_unknown_fields_forwarded_untouched(floodgate, mock_upstream):
    gw = await floodgate()
    await gw.openai().chat.completions.create(
        model="gpt-4.1", messages=MESSAGES, seed=7, max_tokens=5, parallel_tool_calls=False,
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
        extra_body={"vendor_flag": {"x": [1, 2]}})
    body = mock_upstream.stats.requests[-1].body
    assert body["seed"] == 7 and body["vendor_flag"] == {"x": [1, 2]}
    assert body["max_tokens"] == 5 and "max_completion_tokens" not in body
    assert body["parallel_tool_calls"] is False


async def test_tool_call_deltas_relayed_intact(floodgate):
    gw = await floodgate()
    tools = [{"type": "function", "function": {"name": "track_order", "description": "track",
                                               "parameters": {"type": "object", "properties": {}}}}]
    stream = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, tools=tools,
                                                       stream=True)
    name, arguments, finish = "", "", None
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta
            for call in delta.tool_calls or ():
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    assert name == "track_order"
    assert isinstance(json.loads(arguments), dict)
    assert finish == "tool_calls"


async def test_completions_embeddings_models(floodgate):
    gw = await floodgate(aliases={"gpt-4o-mini": "deepseek-v3.2"})
    client = gw.openai()
    completion = await client.completions.create(model="deepseek-v3.2", prompt="包邮吗")
    assert completion.object == "text_completion" and completion.choices[0].text

    # The SDK asks for base64 by default and decodes it.
    embedding = await client.embeddings.create(model="text-embedding-3-small", input=["退货", "换货"])
    assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8
    floats = await client.embeddings.create(model="text-embedding-3-small", input="退货",
                                            encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(embedding.data[0].embedding, rel=1e-6)

    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert "gpt-4.1" in ids and "gpt-4o-mini" in ids
    assert (await client.models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("no-such-model")


async def test_alias_resolves_to_catalogue(floodgate, mock_upstream):
    gw = await floodgate(aliases={"gpt-4o-mini": "deepseek-v3.2"})
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-floodgate-model"] == "deepseek-v3.2"
    assert mock_upstream.stats.requests[-1].body["model"] == "deepseek-v3.2"


async def test_upstream_model_name_is_rewritten(floodgate, mock_upstream):
    from proxy.testing import MOCK_MODELS
    models = {**MOCK_MODELS, "cheap": {"upstream_model": "deepseek-v3.2", "price": {"input": 0.1}}}
    gw = await floodgate(models=models)
    reply = await gw.openai().chat.completions.create(model="cheap", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert mock_upstream.stats.requests[-1].body["model"] == "deepseek-v3.2"


async def test_responses_api(floodgate):
    gw = await floodgate()
    client = gw.openai()
    response = await client.responses.create(model="gpt-4.1", input="发票怎么开?")
    assert response.output_text
    stream = await client.responses.create(model="gpt-4.1", input="发票怎么开?", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds


async def test_paths_without_v1_prefix(floodgate):
    gw = await floodgate()
    resp = await gw.client.post("/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    assert resp.status == 200
    assert (await resp.json())["object"] == "chat.completion"
    resp = await gw.client.get("/models")
    assert resp.status == 200


async def test_passthrough_other_v1_paths(floodgate, mock_upstream):
    gw = await floodgate()
    resp = await gw.client.get("/v1/files?purpose=batch")
    # The mock does not serve /files: its own OpenAI-shaped 404 comes back through the gateway.
    assert resp.status == 404
    assert mock_upstream.stats.by_path.get("/v1/files") == 1
    assert mock_upstream.stats.requests[-1].headers["Authorization"] == "Bearer sk-upstream-test"
    assert resp.headers["x-request-id"]


# -- error mapping: the SDK's exception classes and retry behaviour -------------

class RequestCounter:
    """Counts the requests that reach the gateway (to see the SDK's retries)."""

    name = "counter"

    def __init__(self) -> None:
        self.count = 0

    @hookimpl
    def proxy_finished(self, ctx):
        self.count += 1


def _client(gw, retries):
    return gw.openai(max_retries=retries)


async def test_404_unknown_model_is_not_retried(floodgate):
    counter = RequestCounter()
    gw = await floodgate(plugins=[counter])
    with pytest.raises(openai.NotFoundError) as info:
        await _client(gw, 2).chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert info.value.code == "model_not_found"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert counter.count == 1


async def test_401_maps_to_authentication_error(floodgate):
    class DenyAll:
        name = "deny"

        @hookimpl
        def proxy_authenticate(self, ctx):
            raise Rejection(401, "Incorrect API key provided.", code="invalid_api_key", should_retry=False)

    counter = RequestCounter()
    gw = await floodgate(plugins=[DenyAll(), counter])
    with pytest.raises(openai.AuthenticationError) as info:
        await _client(gw, 2).chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert info.value.code == "invalid_api_key"
    assert counter.count == 1


async def test_429_maps_to_rate_limit_error_and_sdk_retries(floodgate, mock_upstream):
    counter = RequestCounter()
    gw = await floodgate(plugins=[counter])
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=429, retry_after=0)
    reply = await _client(gw, 1).chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert counter.count == 2  # the SDK retried the relayed 429 once, then succeeded

    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=429, retry_after=0)
    with pytest.raises(openai.RateLimitError) as info:
        await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert info.value.response.headers.get("retry-after")


@pytest.mark.parametrize("status", [500, 503])
async def test_upstream_5xx_maps_to_internal_server_error(floodgate, mock_upstream, status):
    counter = RequestCounter()
    gw = await floodgate(plugins=[counter])
    mock_upstream.set_behaviour("gpt-4.1", error_rate=1.0, error_status=status)
    with pytest.raises(openai.InternalServerError) as info:
        await _client(gw, 1).chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert info.value.status_code == 502
    assert f"HTTP {status}" in info.value.message
    assert counter.count == 2  # 5xx are retryable for the SDK
    if status == 503:  # the HTML page became an OpenAI-shaped error with an excerpt
        assert "text/html" in info.value.message and "503 Service Temporarily Unavailable" in info.value.message


async def test_model_list_matches_openai_schema(floodgate, openai_schema):
    gw = await floodgate(aliases={"gpt-4o-mini": "deepseek-v3.2"})
    listing = await (await gw.client.get("/v1/models")).json()
    openai_schema("ListModelsResponse", listing)
    one = await (await gw.client.get("/v1/models/gpt-4o-mini")).json()
    openai_schema("Model", one)
