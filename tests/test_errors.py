"""Bad input and upstream failures: every one gets a clear OpenAI-shaped error."""

from __future__ import annotations

import socket

import openai
import pytest

from proxy.testing import mock_config

MESSAGES = [{"role": "user", "content": "包邮吗?"}]


async def _error(resp, status, openai_schema):
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/json")
    assert resp.headers["x-request-id"]
    body = await resp.json()
    openai_schema("ErrorResponse", body)
    text = await resp.text()
    assert "Traceback" not in text and "sk-upstream-test" not in text
    return body["error"]


async def test_invalid_json(floodgate, openai_schema):
    gw = await floodgate()
    resp = await gw.client.post("/v1/chat/completions", data=b'{"model": "gpt-4.1", "messages": [',
                                headers={"Content-Type": "application/json"})
    error = await _error(resp, 400, openai_schema)
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert resp.headers["x-should-retry"] == "false"


@pytest.mark.parametrize(("body", "param"), [
    ([1, 2], "body"),
    ({"model": "gpt-4.1"}, "messages"),
    ({"model": "gpt-4.1", "messages": "hi"}, "messages"),
    ({"model": "gpt-4.1", "messages": []}, "messages"),
    ({"messages": MESSAGES}, "model"),
    ({"model": 5, "messages": MESSAGES}, "model"),
    ({"model": "gpt-4.1", "messages": MESSAGES, "stream": "yes"}, "stream"),
])
async def test_bad_body_names_param(floodgate, openai_schema, body, param):
    gw = await floodgate()
    resp = await gw.client.post("/v1/chat/completions", json=body)
    error = await _error(resp, 400, openai_schema)
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_body_too_large(floodgate, openai_schema, mock_upstream):
    gw = await floodgate(server={"max_body_bytes": 1000})
    body = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "x" * 2000}]}
    error = await _error(await gw.client.post("/v1/chat/completions", json=body), 413, openai_schema)
    assert error["code"] == "request_too_large"

    async def chunked():  # no Content-Length: the limit must still hold
        yield b'{"model": "gpt-4.1", "messages": [{"role": "user", "content": "'
        yield b"y" * 2000
        yield b'"}]}'
    await _error(await gw.client.post("/v1/chat/completions", data=chunked()), 413, openai_schema)
    assert mock_upstream.stats.total == 0


async def test_unknown_model_via_sdk(floodgate, openai_schema):
    gw = await floodgate()
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MESSAGES})
    error = await _error(resp, 404, openai_schema)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        await gw.openai().chat.completions.create(model="gpt-9", messages=MESSAGES)


async def test_other_methods_reach_the_upstream(floodgate, mock_upstream, openai_schema):
    """Floodgate owns POST on model endpoints and GET on /v1/models; other methods pass through
    (here to a mock that has no such endpoint: its 404 is relayed in OpenAI's shape)."""
    gw = await floodgate()
    error = await _error(await gw.client.get("/v1/chat/completions"), 404, openai_schema)
    assert "GET /v1/chat/completions" in error["message"]
    await _error(await gw.client.delete("/v1/models"), 404, openai_schema)
    assert [r.path for r in mock_upstream.stats.requests] == ["/v1/chat/completions", "/v1/models"]


async def test_unknown_path(floodgate, openai_schema):
    gw = await floodgate()
    await _error(await gw.client.get("/nothing/here"), 404, openai_schema)


async def test_upstream_garbage_is_502(floodgate, mock_upstream, openai_schema):
    gw = await floodgate()
    mock_upstream.set_behaviour("gpt-4.1", malformed=True)
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    error = await _error(resp, 502, openai_schema)
    assert "not JSON" in error["message"] and error["type"] == "server_error"


async def test_upstream_html_503_is_502_with_excerpt(floodgate, mock_upstream, openai_schema):
    gw = await floodgate()
    mock_upstream.set_behaviour("gpt-4.1", error_rate=1.0, error_status=503)
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    error = await _error(resp, 502, openai_schema)
    assert "HTTP 503" in error["message"] and "Service Temporarily Unavailable" in error["message"]
    assert "<html>" not in error["message"].lower() or len(error["message"]) < 400


async def test_upstream_timeout_is_504(floodgate, mock_upstream, openai_schema):
    gw = await floodgate(upstream={"timeouts": {"connect": 1, "first_byte": 0.3, "total": 1}})
    mock_upstream.set_behaviour("gpt-4.1", hang=True)
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    error = await _error(resp, 504, openai_schema)
    assert error["code"] == "upstream_timeout"


async def test_per_model_timeout_override(floodgate, mock_upstream, openai_schema):
    from proxy.testing import MOCK_MODELS
    models = {**MOCK_MODELS, "gpt-4.1": {**MOCK_MODELS["gpt-4.1"], "timeouts": {"first_byte": 0.2}}}
    gw = await floodgate(models=models)
    mock_upstream.set_behaviour("gpt-4.1", latency_ms=600)  # within the upstream's 5 s, past the model's 0.2 s
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    await _error(resp, 504, openai_schema)  # the model's override applied


async def test_stream_failing_before_first_byte_is_a_real_status(floodgate, mock_upstream, openai_schema):
    gw = await floodgate()
    mock_upstream.set_behaviour("gpt-4.1", error_rate=1.0, error_status=500)
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": "gpt-4.1", "messages": MESSAGES, "stream": True})
    await _error(resp, 502, openai_schema)
    with pytest.raises(openai.InternalServerError):
        await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)


async def test_stream_breaking_midway_ends_with_error_event(floodgate, mock_upstream):
    gw = await floodgate()
    mock_upstream.set_behaviour("gpt-4.1", break_stream_after=3)
    stream = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) >= 3  # the chunks that arrived were relayed before the error
    assert "upstream stream" in str(info.value.message)


async def test_upstream_connection_refused_is_502(floodgate, openai_schema, mock_upstream):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gw = await floodgate(config=mock_config(f"http://127.0.0.1:{port}/v1"))
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    error = await _error(resp, 502, openai_schema)
    assert "cannot connect" in error["message"]


async def test_upstream_rejecting_gateway_key_is_not_a_client_401(floodgate, mock_upstream, openai_schema):
    cfg = mock_config(mock_upstream.url, api_key="sk-wrong-key")
    gw = await floodgate(config=cfg)
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    error = await _error(resp, 502, openai_schema)
    assert error["code"] == "upstream_auth_failed" and "sk-wrong-key" not in error["message"]


async def test_upstream_4xx_is_relayed_in_openai_shape(floodgate, mock_upstream, openai_schema):
    gw = await floodgate()
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=400)
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    await _error(resp, 400, openai_schema)


async def test_large_body_arrives_whole(floodgate, mock_upstream):
    gw = await floodgate()
    text = "请帮我看看这个订单。" * 30000  # ~300 KB of UTF-8, many TCP segments
    reply = await gw.openai().chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": text}])
    assert reply.choices[0].message.content
    assert mock_upstream.stats.requests[-1].body["messages"][0]["content"] == text

