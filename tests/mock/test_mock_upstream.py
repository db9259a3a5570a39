"""Tests of the built-in mock upstream (proxy/mock/): its endpoints, faults and control API over real sockets."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.mock import MockSettings, MockUpstream, ModelBehaviour, count_tokens, create_mock_app

TOOLS = [{"type": "function", "function": {
    "name": "search", "parameters": {"type": "object",
                                     "properties": {"query": {"type": "string"}}}}}]
MSGS = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello 世界, how are you?"}]
PROMPT = (4 + count_tokens("Be brief.")) + (4 + count_tokens("hello 世界, how are you?"))


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockSettings(seed=7)) as m:
        yield m


@pytest.fixture
async def client(mock: MockUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=mock.url, api_key="sk-test", max_retries=0, timeout=5)
    yield c
    await c.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def raw_post(http: aiohttp.ClientSession, url: str, body: Any,
                   **kw: Any) -> tuple[int, dict[str, str], bytes]:
    async with http.post(url, data=orjson.dumps(body) if not isinstance(body, bytes) else body,
                         headers={"Content-Type": "application/json"}, **kw) as r:
        return r.status, dict(r.headers), await r.read()


def sse_data(raw: bytes) -> list[bytes]:
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""  # every frame terminated by a blank line
    return [f.removeprefix(b"data: ") for f in frames[:-1]]


def test_count_tokens_formula() -> None:
    assert count_tokens("hello 世界, how are you?") == 7  # hello 世 界 , how are you?
    assert count_tokens("") == 0
    assert PROMPT == 4 + 2 + 4 + 7


async def test_chat_non_stream_exact_usage(client: openai.AsyncOpenAI) -> None:
    r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.model == "gpt-4.1" and r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert count_tokens(r.choices[0].message.content or "") == 16
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        PROMPT, 16, PROMPT + 16)
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 0
    capped = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, max_tokens=5)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage and capped.usage.completion_tokens == 5
    assert count_tokens(capped.choices[0].message.content or "") == 5
    assert r.choices[0].message.content.startswith(capped.choices[0].message.content or "?")


async def test_cached_tokens_and_completion_override(mock: MockUpstream,
                                                     client: openai.AsyncOpenAI) -> None:
    mock.set_behaviour("gpt-4.1", cached_tokens=10_000, completion_tokens=3)
    r = await client.chat.completions.create(model="gpt-4.1", messages=MSGS,
                                             max_completion_tokens=50)
    assert r.usage and r.usage.completion_tokens == 3
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == PROMPT


async def test_chat_stream_include_usage(mock: MockUpstream, client: openai.AsyncOpenAI,
                                         http: aiohttp.ClientSession) -> None:
    stream = await client.chat.completions.create(
        model="deepseek-v3.2", messages=MSGS, stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert len(chunks) == 1 + 16 + 1 + 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == PROMPT and chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])
    assert count_tokens(text) == 16
    # Wire format: headers, `data: <json>\n\n` frames, explicit usage nulls, [DONE] last.
    status, headers, raw = await raw_post(http, mock.url + "/chat/completions", {
        "model": "deepseek-v3.2", "messages": MSGS, "stream": True,
        "stream_options": {"include_usage": True}})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert headers["Cache-Control"] == "no-cache"
    frames = sse_data(raw)
    assert frames[-1] == b"[DONE]"
    parsed = [orjson.loads(f) for f in frames[:-1]]
    assert parsed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all("usage" in p and p["usage"] is None for p in parsed[:-1])
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)


async def test_chat_stream_without_usage(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    status, _, raw = await raw_post(http, mock.url + "/chat/completions", {
        "model": "gpt-4.1", "messages": MSGS, "stream": True, "max_tokens": 4})
    frames = sse_data(raw)
    parsed = [orjson.loads(f) for f in frames[:-1]]
    assert status == 200 and frames[-1] == b"[DONE]" and len(parsed) == 1 + 4 + 1
    assert all("usage" not in p and p["choices"] for p in parsed)
    assert parsed[-1]["choices"][0]["finish_reason"] == "length"


async def test_tool_calls(client: openai.AsyncOpenAI) -> None:
    msgs = [{"role": "user", "content": "find cats"}]
    async with client.chat.completions.stream(model="gpt-4.1", messages=msgs,
                                              tools=TOOLS) as stream:
        deltas = [e async for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    assert len(deltas) > 1  # arguments arrive in several fragments
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.id.startswith("call_") and call.function.name == "search"
    assert orjson.loads(call.function.arguments) == {"query": "find cats"}
    r = await client.chat.completions.create(model="gpt-4.1", messages=msgs, tools=TOOLS)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert r.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    # After a tool result the model answers in text.
    follow = [*msgs, {"role": "assistant", "tool_calls": [call.model_dump()]},
              {"role": "tool", "tool_call_id": call.id, "content": "3 cats"}]
    r = await client.chat.completions.create(model="gpt-4.1", messages=follow, tools=TOOLS)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content


async def test_completions(client: openai.AsyncOpenAI) -> None:
    r = await client.completions.create(model="gpt-4.1", prompt="Say 你好 twice", max_tokens=6)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert count_tokens(r.choices[0].text) == 6
    assert r.usage and (r.usage.prompt_tokens, r.usage.completion_tokens) == (4, 6)
    stream = await client.completions.create(model="gpt-4.1", prompt="hi", stream=True,
                                             stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.total_tokens == 17
    assert count_tokens("".join(c.choices[0].text for c in chunks[:-1])) == 16


async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    default = await client.embeddings.create(model="text-embedding-3-small",
                                             input=["hello world", "你好"])  # base64 on the wire
    floats = await client.embeddings.create(model="text-embedding-3-small",
                                            input=["hello world", "你好"], encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 8
    assert floats.data[0].embedding != floats.data[1].embedding
    assert abs(sum(v * v for v in floats.data[0].embedding) - 1.0) < 1e-5
    assert floats.usage.prompt_tokens == 4 and floats.usage.total_tokens == 4
    raw = await client.embeddings.create(model="text-embedding-3-small", input="hello world",
                                         encoding_format="base64", dimensions=4)
    encoded = raw.data[0].embedding
    assert isinstance(encoded, str)
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == pytest.approx(
        (await client.embeddings.create(model="text-embedding-3-small", input="hello world",
                                        dimensions=4)).data[0].embedding)


async def test_responses(client: openai.AsyncOpenAI) -> None:
    r = await client.responses.create(model="gpt-4.1", input="hello 世界",
                                      instructions="Be brief.")
    assert r.id.startswith("resp_") and r.status == "completed" and r.model == "gpt-4.1"
    assert count_tokens(r.output_text) == 16
    assert r.usage and (r.usage.input_tokens, r.usage.output_tokens) == (2 + 4 + 3, 16)
    stream = await client.responses.create(model="gpt-4.1", input="hello", stream=True,
                                           max_output_tokens=5)
    events = [e async for e in stream]
    types = [e.type for e in events]
    assert types[0] == "response.created" and types.count("response.output_text.delta") == 5
    assert "response.output_text.done" in types and types[-1] == "response.incomplete"
    async with client.responses.stream(model="gpt-4.1", input="hello") as s:
        final = await s.get_final_response()
    assert final.status == "completed" and final.output_text == r.output_text


async def test_responses_wire_format(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, raw = await raw_post(http, mock.url + "/responses",
                                          {"model": "gpt-4.1", "input": "x", "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert b"[DONE]" not in raw
    first = raw.split(b"\n\n")[0].split(b"\n")
    assert first[0] == b"event: response.created" and first[1].startswith(b"data: {")


async def test_models(mock: MockUpstream, client: openai.AsyncOpenAI,
                      http: aiohttp.ClientSession) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == MockSettings().models
    assert all(m.owned_by == "floodgate-mock" for m in page.data)
    assert (await client.models.retrieve("gpt-4.1")).id == "gpt-4.1"
    with pytest.raises(openai.NotFoundError) as exc:
        await client.models.retrieve("nope")
    assert exc.value.code == "model_not_found"
    base = mock.url.removesuffix("/v1")
    async with http.get(base + "/models") as r:  # also served without /v1
        assert r.status == 200 and (await r.json())["object"] == "list"


async def test_request_errors(mock: MockUpstream, client: openai.AsyncOpenAI,
                              http: aiohttp.ClientSession) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        await client.chat.completions.create(model="nope", messages=MSGS)
    assert exc.value.body == {"message": exc.value.body["message"],  # type: ignore[index]
                              "type": "invalid_request_error", "param": "model",
                              "code": "model_not_found"}
    status, _, body = await raw_post(http, mock.url + "/chat/completions", b"{broken")
    assert status == 400 and orjson.loads(body)["error"]["type"] == "invalid_request_error"
    status, _, body = await raw_post(http, mock.url + "/chat/completions", {"messages": MSGS})
    assert status == 400 and orjson.loads(body)["error"]["param"] == "model"
    status, _, body = await raw_post(http, mock.url + "/audio/speech", {"model": "gpt-4.1"})
    assert status == 404 and "error" in orjson.loads(body)


async def test_reject_stream_options(client: openai.AsyncOpenAI, mock: MockUpstream) -> None:
    mock.settings.reject_stream_options = True
    with pytest.raises(openai.BadRequestError) as exc:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True,
                                             stream_options={"include_usage": True})
    assert exc.value.param == "stream_options"
    stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    assert len([c async for c in stream]) == 18


async def test_fail_first_503_html(mock: MockUpstream, client: openai.AsyncOpenAI,
                                   http: aiohttp.ClientSession) -> None:
    mock.set_behaviour("gpt-4.1", fail_first=2, error_status=503, retry_after=2)
    status, headers, body = await raw_post(http, mock.url + "/chat/completions",
                                           {"model": "gpt-4.1", "messages": MSGS})
    assert status == 503 and headers["Content-Type"].startswith("text/html")
    assert headers["Retry-After"] == "2" and body.startswith(b"<html><body><h1>503")
    with pytest.raises(openai.InternalServerError) as exc:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert exc.value.status_code == 503
    assert (await client.chat.completions.create(model="gpt-4.1", messages=MSGS)).choices
    mock.reset()  # the countdown starts again
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)


async def test_429_and_500(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.set_behaviour("gpt-4.1", fail_first=1, error_status=429, retry_after=0.5)
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert exc.value.response.headers["retry-after"] == "0.5"
    assert exc.value.code == "rate_limit_exceeded"
    mock.set_behaviour("gpt-4.1", fail_first=1, error_status=502)
    with pytest.raises(openai.InternalServerError) as exc2:
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    assert exc2.value.status_code == 502 and exc2.value.type == "server_error"


async def test_error_rate_is_seeded() -> None:
    async def pattern() -> list[int]:
        settings = MockSettings(seed=42, behaviours={"gpt-4.1": ModelBehaviour(error_rate=0.5)})
        async with MockUpstream(settings) as m, aiohttp.ClientSession() as s:
            return [(await raw_post(s, m.url + "/chat/completions",
                                    {"model": "gpt-4.1", "messages": MSGS}))[0]
                    for _ in range(20)]

    first, second = await pattern(), await pattern()
    assert first == second and set(first) == {200, 500}


async def test_hang_times_out_and_stop_is_prompt(mock: MockUpstream,
                                                 client: openai.AsyncOpenAI) -> None:
    mock.set_behaviour("gpt-4.1", hang=True)
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="gpt-4.1", messages=MSGS, timeout=0.2)
    pending = asyncio.create_task(client.chat.completions.create(model="gpt-4.1",
                                                                 messages=MSGS))
    await asyncio.sleep(0.1)
    # A hanging answer does not hold up the mock's shutdown (a guard against a hang, not a timing).
    await asyncio.wait_for(mock.stop(), 10)
    with pytest.raises(openai.APIConnectionError):
        await pending


async def test_latency(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.set_behaviour("gpt-4.1", latency_ms=100, jitter_ms=20)
    started = time.monotonic()
    await client.chat.completions.create(model="gpt-4.1", messages=MSGS)
    assert time.monotonic() - started >= 0.095


async def test_malformed(mock: MockUpstream, client: openai.AsyncOpenAI,
                         http: aiohttp.ClientSession) -> None:
    mock.set_behaviour("gpt-4.1", malformed=True)
    status, headers, body = await raw_post(http, mock.url + "/chat/completions",
                                           {"model": "gpt-4.1", "messages": MSGS})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    status, _, raw = await raw_post(http, mock.url + "/chat/completions",
                                    {"model": "gpt-4.1", "messages": MSGS, "stream": True})
    frames = sse_data(raw)
    assert len(frames) == 2 and frames[1] == b"{not json" and b"[DONE]" not in raw
    stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    with pytest.raises(ValueError):  # json.JSONDecodeError from the SDK's SSE parser
        async for _ in stream:
            pass


async def test_break_stream_after(mock: MockUpstream, client: openai.AsyncOpenAI,
                                  http: aiohttp.ClientSession) -> None:
    mock.set_behaviour("gpt-4.1", break_stream_after=3)
    stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert count_tokens("".join(got)) == 3
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(mock.url + "/chat/completions",
                             json={"model": "gpt-4.1", "messages": MSGS, "stream": True}) as r:
            async for data in r.content.iter_any():
                received += data
    assert received.count(b"data: ") == 4 and b"[DONE]" not in received
    assert b"finish_reason\":\"stop" not in received


async def test_api_key(http: aiohttp.ClientSession) -> None:
    async with MockUpstream(MockSettings(api_key="sk-up")) as m:
        bad = openai.AsyncOpenAI(base_url=m.url, api_key="sk-wrong", max_retries=0)
        good = openai.AsyncOpenAI(base_url=m.url, api_key="sk-up", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as exc:
            await bad.chat.completions.create(model="gpt-4.1", messages=MSGS)
        assert exc.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await bad.models.list()
        assert (await good.chat.completions.create(model="gpt-4.1", messages=MSGS)).choices
        assert m.stats.last and m.stats.last.headers["authorization"] == "Bearer sk-up"
        await bad.close()
        await good.close()


async def test_tokens_per_second_pacing(mock: MockUpstream, client: openai.AsyncOpenAI) -> None:
    mock.set_behaviour("gpt-4.1", tokens_per_second=100, completion_tokens=10)
    started = time.monotonic()
    stream = await client.chat.completions.create(model="gpt-4.1", messages=MSGS, stream=True)
    stamps = [time.monotonic() - started async for _ in stream]
    assert stamps[-1] >= 0.09 and stamps[-1] - stamps[1] >= 0.07  # spread out, not one burst
    started = time.monotonic()
    unthrottled = await client.chat.completions.create(model="deepseek-v3.2", messages=MSGS, stream=True)
    last = [time.monotonic() - started async for _ in unthrottled][-1]
    assert last < stamps[-1]  # the other model is not paced: it ends before the paced one did


async def test_stats_record_forwarded_requests(mock: MockUpstream,
                                               client: openai.AsyncOpenAI) -> None:
    await client.chat.completions.create(model="gpt-4.1", messages=MSGS, seed=3, tools=TOOLS,
                                         extra_body={"vendor_flag": {"x": 1}})
    await client.models.list()
    stats = mock.stats
    assert stats.total == 2 and stats.by_path["/v1/chat/completions"] == 1
    assert stats.by_model == {"gpt-4.1": 1}
    path, headers, body = stats.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["seed"] == 3 and body["tools"] == TOOLS and body["vendor_flag"] == {"x": 1}
    mock.reset()
    assert stats.total == 0 and not stats.requests


async def test_control_endpoints(mock: MockUpstream, http: aiohttp.ClientSession) -> None:
    base = mock.url.removesuffix("/v1")
    async with http.post(base + "/_mock/behaviour",
                         json={"model": "gpt-4.1", "fail_first": 1, "error_status": 429}) as r:
        assert r.status == 200 and (await r.json())["fail_first"] == 1
    assert mock.settings.behaviours["gpt-4.1"].error_status == 429
    async with http.post(base + "/_mock/behaviour", json={"model": "gpt-4.1", "bogus": 1}) as r:
        assert r.status == 400 and "bogus" in (await r.json())["error"]["message"]
    async with http.post(base + "/_mock/behaviour", json={"model": "gpt-4.1",
                                                          "error_rate": 2}) as r:
        assert r.status == 400
    status, _, _ = await raw_post(http, mock.url + "/chat/completions",
                                  {"model": "gpt-4.1", "messages": MSGS})
    assert status == 429
    async with http.get(base + "/_mock/stats") as r:
        stats = await r.json()
    assert stats["total"] == 1 and stats["by_model"] == {"gpt-4.1": 1}
    assert stats["requests"][0]["body"]["messages"] == MSGS
    async with http.post(base + "/_mock/reset") as r:
        assert r.status == 200
    assert mock.stats.total == 0
    status, _, _ = await raw_post(http, mock.url + "/chat/completions",
                                  {"model": "gpt-4.1", "messages": MSGS})
    assert status == 429  # reset restarted the fail_first countdown


async def test_create_mock_app_in_process(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_mock_app(MockSettings(completion_tokens=2)))
    r = await client.post("/chat/completions", json={"model": "gpt-4.1", "messages": MSGS})
    assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 2
