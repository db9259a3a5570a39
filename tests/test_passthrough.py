"""Passthrough is governed: authenticated, authorised per key, admitted, and relayed as it
came (method, path, query, Content-Type, streamed body) to a recording upstream."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from proxy.testing import mock_config

KEYS = [
    {"name": "shop", "key": "sk-shop-key-1"},  # no lists: every passthrough endpoint
    {"name": "files-only", "key": "sk-files-key-1", "endpoints": ["files"]},
    {"name": "trial", "key": "sk-trial-key-1", "models": ["deepseek-*"]},  # no endpoints: JSON bodies only
    {"name": "slow", "key": "sk-slow-key-1", "rate_limit": {"requests_per_second": 0.01, "burst": 1}},
]


class Recorder:
    """An upstream that records what it received and answers a small JSON body."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append({"method": request.method, "path": request.path_qs,
                          "content_type": request.headers.get("Content-Type"), "body": body,
                          "authorization": request.headers.get("Authorization")})
        return web.json_response({"id": "file-abc", "object": "file", "bytes": len(body), "created_at": 0,
                                  "filename": "x.jsonl", "purpose": "batch", "status": "processed"})


@pytest.fixture
async def recorder(aiohttp_server: Any) -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", rec.handle)
    server = await aiohttp_server(app)
    yield rec, str(server.make_url("/v1"))


async def start(floodgate: Any, url: str, **server: Any) -> Any:
    config = mock_config(url, plugin_settings={
        "auth": {"keys": KEYS}, "ratelimit": {"mode": "reject"}}, server=server or None)
    return await floodgate(config, builtins=("plugins.auth", "plugins.ratelimit"))


async def test_a_multipart_upload_keeps_its_content_type_and_bytes(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url)
    content = b'{"custom_id": "1"}\n' * 1000
    client = gw.openai(api_key="sk-files-key-1")
    uploaded = await client.files.create(file=("batch.jsonl", io.BytesIO(content)), purpose="batch")
    assert uploaded.id == "file-abc"
    [seen] = rec.seen
    assert seen["method"] == "POST" and seen["path"] == "/v1/files"
    assert seen["content_type"].startswith("multipart/form-data; boundary=")
    assert content in seen["body"] and b'name="purpose"' in seen["body"]
    assert seen["authorization"] == "Bearer sk-upstream-test"  # the upstream's key, never the client's


async def test_keys_reach_only_the_endpoints_granted(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url)
    files_only = gw.openai(api_key="sk-files-key-1")
    await files_only.files.retrieve("file-abc")
    with pytest.raises(openai.PermissionDeniedError) as info:
        await files_only.batches.retrieve("batch_1")
    assert info.value.code == "endpoint_not_allowed"
    # A key limited to some models: a JSON body naming an allowed model passes, others do not.
    trial = gw.openai(api_key="sk-trial-key-1")
    with pytest.raises(openai.PermissionDeniedError):
        await trial.images.generate(model="gpt-image-1", prompt="a cat")
    with pytest.raises(openai.PermissionDeniedError):  # a multipart body: its model cannot be checked
        await trial.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="batch")
    await gw.openai(api_key="sk-shop-key-1").batches.retrieve("batch_1")
    assert [s["path"] for s in rec.seen] == ["/v1/files/file-abc", "/v1/batches/batch_1"]


async def test_passthrough_counts_against_the_rate_limit(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url)
    client = gw.openai(api_key="sk-slow-key-1")
    await client.files.list()
    with pytest.raises(openai.RateLimitError):
        await client.files.list()
    assert len(rec.seen) == 1


async def test_a_streamed_body_over_the_limit_is_refused(floodgate, recorder):
    rec, url = recorder
    gw = await start(floodgate, url, max_body_bytes=64 * 1024)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 4096  # chunked: no Content-Length announces the size

    response = await gw.client.post("/v1/files", data=chunks(), headers={
        "Authorization": "Bearer sk-shop-key-1", "Content-Type": "application/octet-stream"})
    assert response.status == 413
    assert orjson.loads(await response.read())["error"]["code"] == "request_too_large"
