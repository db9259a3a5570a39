"""Every call the official `openai` SDK makes that Floodgate does not implement reaches the
upstream as sent (method, path, content type, body), with or without `/v1` in `base_url`,
governed like all passthrough; `responses.create()` without a model (a stored prompt) too."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

import proxy
from proxy.testing import mock_config

KEYS = [
    {"name": "shop", "key": "sk-shop-key-1"},
    {"name": "trial", "key": "sk-trial-key-1", "models": ["deepseek-*"]},
    {"name": "stored", "key": "sk-stored-key-1", "endpoints": ["chat", "responses"]},
]
STORED_RESPONSE = {
    "id": "resp_1", "object": "response", "created_at": 0, "status": "completed", "model": "gpt-4.1",
    "output": [], "usage": {"input_tokens": 100, "output_tokens": 50, "total_tokens": 150,
                            "input_tokens_details": {"cached_tokens": 0}},
}


class Recorder:
    """An upstream that records what it received and answers what the SDK expects there."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.path_qs,
                          "content_type": request.headers.get("Content-Type"), "body": body})
        path = request.path
        if request.method == "GET" and (path.endswith(("/messages", "/input_items")) or path.endswith("/completions")):
            return web.json_response({"object": "list", "data": [], "has_more": False, "first_id": None,
                                      "last_id": None})
        if path == "/v1/responses" and request.method == "POST":
            if orjson.loads(body).get("stream"):
                return await self._stream(request)
            return web.json_response(STORED_RESPONSE)
        if request.method == "DELETE":
            return web.json_response({"id": path.rsplit("/", 1)[1], "object": "deleted", "deleted": True})
        return web.json_response({"id": path.rsplit("/", 1)[1], "object": "thing", "created": 0,
                                  "created_at": 0, "bytes": len(body), "filename": "x", "purpose": "batch",
                                  "status": "processed"})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n, (kind, payload) in enumerate([
            ("response.created", {"response": {**STORED_RESPONSE, "status": "in_progress", "usage": None}}),
            ("response.completed", {"response": STORED_RESPONSE}),
        ]):
            event = {"type": kind, "sequence_number": n, **payload}
            await response.write(f"event: {kind}\ndata: ".encode() + orjson.dumps(event) + b"\n\n")
        await response.write_eof()
        return response


class Finished:
    """Records the context every request finished with (what the ledger sees)."""

    def __init__(self) -> None:
        self.contexts: list[proxy.RequestContext] = []

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        self.contexts.append(ctx)


@pytest.fixture
async def recorder(aiohttp_server: Any) -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    server = await aiohttp_server(app)
    yield rec, str(server.make_url("/v1"))


async def start(floodgate: Any, url: str, finished: Finished | None = None) -> Any:
    config = mock_config(url, plugin_settings={"auth": {"keys": KEYS}, "cost": {"ledger": {"enabled": False}}})
    return await floodgate(config, builtins=("plugins.auth", "plugins.cost"),
                           plugins=[finished] if finished else ())


def sdk(gw: Any, prefix: str, api_key: str = "sk-shop-key-1") -> openai.AsyncOpenAI:
    """An SDK client whose ``base_url`` is the gateway with ``prefix`` (``/v1`` or nothing)."""
    client = openai.AsyncOpenAI(base_url=str(gw.client.make_url(prefix or "/")), api_key=api_key, max_retries=0)
    gw.sdk_clients.append(client)  # closed with the gateway
    return client


Call = Callable[[openai.AsyncOpenAI], Awaitable[Any]]
#: (SDK call, method, path upstream, content type, JSON body or None)
CALLS: list[tuple[str, Call, str, str, str | None, Any]] = [
    ("chat.completions.list", lambda c: c.chat.completions.list(limit=2),
     "GET", "/v1/chat/completions?limit=2", None, None),
    ("chat.completions.retrieve", lambda c: c.chat.completions.retrieve("chatcmpl-1"),
     "GET", "/v1/chat/completions/chatcmpl-1", None, None),
    ("chat.completions.update", lambda c: c.chat.completions.update("chatcmpl-1", metadata={"k": "v"}),
     "POST", "/v1/chat/completions/chatcmpl-1", "application/json", {"metadata": {"k": "v"}}),
    ("chat.completions.delete", lambda c: c.chat.completions.delete("chatcmpl-1"),
     "DELETE", "/v1/chat/completions/chatcmpl-1", None, None),
    ("chat.completions.messages.list", lambda c: c.chat.completions.messages.list("chatcmpl-1"),
     "GET", "/v1/chat/completions/chatcmpl-1/messages", None, None),
    ("models.delete", lambda c: c.models.delete("ft:gpt-4o:acme:1"),
     "DELETE", "/v1/models/ft:gpt-4o:acme:1", None, None),
    ("responses.retrieve", lambda c: c.responses.retrieve("resp_1"),
     "GET", "/v1/responses/resp_1", None, None),
    ("responses.cancel", lambda c: c.responses.cancel("resp_1"),
     "POST", "/v1/responses/resp_1/cancel", None, None),
    ("responses.delete", lambda c: c.responses.delete("resp_1"),
     "DELETE", "/v1/responses/resp_1", None, None),
    ("responses.input_items.list", lambda c: c.responses.input_items.list("resp_1"),
     "GET", "/v1/responses/resp_1/input_items", None, None),
    ("responses.create(prompt=...)", lambda c: c.responses.create(prompt={"id": "pmpt_1", "version": "2"}),
     "POST", "/v1/responses", "application/json", {"prompt": {"id": "pmpt_1", "version": "2"}}),
]


@pytest.mark.parametrize("prefix", ["/v1", ""], ids=["with-v1", "without-v1"])
@pytest.mark.parametrize(("name", "call", "method", "path", "content_type", "body"), CALLS,
                         ids=[c[0] for c in CALLS])
async def test_sdk_calls_reach_the_upstream(floodgate, recorder, prefix, name, call, method, path,
                                            content_type, body):
    rec, url = recorder
    finished = Finished()
    gw = await start(floodgate, url, finished)
    client = sdk(gw, prefix)
    await call(client)
    [seen] = rec.seen
    assert (seen["method"], seen["path"]) == (method, path)
    if body is None:
        assert seen["body"] == b""
    else:
        assert seen["content_type"] == content_type and orjson.loads(seen["body"]) == body
    [ctx] = finished.contexts
    assert ctx.kind is proxy.EndpointKind.PASSTHROUGH and ctx.status == 200 and ctx.response_bytes > 0
    assert ctx.principal.name == "shop"


@pytest.mark.parametrize("prefix", ["/v1", ""], ids=["with-v1", "without-v1"])
async def test_multipart_upload_without_or_with_v1(floodgate, recorder, prefix):
    rec, url = recorder
    gw = await start(floodgate, url)
    client = sdk(gw, prefix)
    content = b'{"custom_id": "1"}\n' * 100
    await client.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    [seen] = rec.seen
    assert (seen["method"], seen["path"]) == ("POST", "/v1/files")
    assert seen["content_type"].startswith("multipart/form-data; boundary=") and content in seen["body"]


async def test_a_stored_prompt_is_recorded_and_priced_at_the_model_that_ran(floodgate, recorder):
    rec, url = recorder
    finished = Finished()
    gw = await start(floodgate, url, finished)
    client = gw.openai(api_key="sk-stored-key-1")
    await client.responses.create(prompt={"id": "pmpt_1"})
    events = [e.type async for e in await client.responses.create(prompt={"id": "pmpt_1"}, stream=True)]
    assert events == ["response.created", "response.completed"]
    assert [orjson.loads(s["body"]) for s in rec.seen] == [{"prompt": {"id": "pmpt_1"}},
                                                           {"prompt": {"id": "pmpt_1"}, "stream": True}]
    for ctx in finished.contexts:
        assert ctx.endpoint == "responses" and ctx.kind is proxy.EndpointKind.PASSTHROUGH
        assert (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (100, 50)
        assert ctx.target.model == "gpt-4.1"  # the catalogue entry the answer names prices it
        assert ctx.cost == pytest.approx((100 * 2.00 + 50 * 8.00) / 1e6)


async def test_passthrough_of_model_endpoints_is_governed(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url)
    trial = gw.openai(api_key="sk-trial-key-1")  # limited to some models, no endpoint grant
    with pytest.raises(openai.PermissionDeniedError):
        await trial.chat.completions.list()
    with pytest.raises(openai.PermissionDeniedError):  # a stored prompt's model cannot be checked
        await trial.responses.create(prompt={"id": "pmpt_1"})
    with pytest.raises(openai.AuthenticationError):
        await gw.openai(api_key="sk-nobody-1").responses.retrieve("resp_1")
    stored = gw.openai(api_key="sk-stored-key-1")  # granted chat and responses, not files
    await stored.chat.completions.list()
    with pytest.raises(openai.PermissionDeniedError):
        await stored.files.list()
    assert [s["path"] for s in rec.seen] == ["/v1/chat/completions"]


async def test_the_gateway_keeps_what_it_owns(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url)
    headers = {"Authorization": "Bearer sk-shop-key-1"}
    for path in ("/-/nothing", "/-/usage/x"):
        response = await gw.client.get(path, headers=headers)
        assert response.status == 404 and (await response.json())["error"]["code"] == "not_found"
    for path in ("/v1/models", "/models"):  # GET /v1/models is the gateway's own list
        assert (await gw.client.get(path, headers=headers)).status == 200
    # A POST to a model endpoint without a model is the gateway's 400, not a passthrough.
    response = await gw.client.post("/v1/chat/completions", json={"messages": []}, headers=headers)
    assert response.status == 400 and (await response.json())["error"]["param"] == "model"
    response = await gw.client.post("/v1/responses", json={}, headers=headers)
    assert response.status == 400
    assert rec.seen == []


async def test_an_encoded_slash_is_only_part_of_a_model_id_the_gateway_looks_up(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url)
    headers = {"Authorization": "Bearer sk-shop-key-1"}
    response = await gw.client.get("/v1/models/openai%2Fgpt-5", headers=headers)
    assert response.status == 404 and (await response.json())["error"]["code"] == "model_not_found"
    for method, path in (("DELETE", "/v1/models/openai%2Fgpt-5"), ("GET", "/v1/models/a%2F..%2F..%2Fx"),
                         ("GET", "/v1/files/a%2Fb"), ("POST", "/models/x%2fy")):
        response = await gw.client.request(method, path, headers=headers)
        assert response.status == 400 and (await response.json())["error"]["code"] == "invalid_path", path
    response = await gw.client.get("/v1/files?after=a%2Fb", headers=headers)  # a query is relayed as sent
    assert response.status == 200
    assert [s["path"] for s in rec.seen] == ["/v1/files?after=a/b"]  # (the recorder shows it decoded)
