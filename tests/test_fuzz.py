"""Fuzzing the whole gateway from outside: random methods, paths, headers and bodies sent over
raw sockets to a real server running the full plugin chain in front of the mock upstream.

It fails on any 5xx, any error body that is not OpenAI's JSON error shape, or a traceback in
the log. A few hundred cases in CI; set ``FLOODGATE_FUZZ_EXAMPLES`` for more (the count of
cases sent and the responses by status are printed with ``-s``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import create_app
from proxy.config import config_from_dict
from proxy.loader import BUILTIN_PLUGINS
from proxy.mock import MockSettings, MockUpstream
from proxy.server import listen_socket, run_app
from proxy.testing import mock_config

pytestmark = pytest.mark.e2e  # hundreds of requests against a served gateway

EXAMPLES = int(os.environ.get("FLOODGATE_FUZZ_EXAMPLES", "300"))
KEY = "sk-fuzz-key-123"
ADMIN = "sk-fuzz-admin-123"


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.bad: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.bad.append(f"{record.name}: {record.getMessage()}")


class Served:
    """The gateway, with the full chain, served by ``run_app`` in a thread of its own."""

    def __init__(self, tmp: str) -> None:
        self.ready = threading.Event()
        self.tmp = tmp
        self.host, self.port = "127.0.0.1", 0
        self.stop: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        async with MockUpstream(MockSettings(seed=7, api_key="sk-upstream-test")) as mock:
            config = config_from_dict(mock_config(mock.url, plugin_settings={
                "auth": {"admin_key": ADMIN, "keys": [
                    {"name": "bot", "key": KEY, "force_tier": True},
                    {"name": "trial", "key": "sk-fuzz-trial-1", "models": ["deepseek-*"], "endpoints": ["files"]}]},
                "faq": {"rules": [{"name": "hours", "any": ["营业时间", "hours"], "answer": "9-22"}]},
                "router": {"default": "simple", "routes": {
                    "simple": {"model": "deepseek-v3.2", "max_tokens": {"default": 64, "cap": 128}},
                    "complex": {"model": "gpt-4.1", "system_prompt": "be brief", "params": {"temperature": 0.2}}},
                    "rules": [{"route": "complex", "keywords": ["why", "为什么"]},
                              {"route": "complex", "features": ["tools"]},
                              {"route": "complex", "min_prompt_tokens": 500}]},
                "ratelimit": {"global": {"requests_per_second": 10_000}},
                "retry": {"max_retries": 1},
                "cost": {"ledger": {"path": os.path.join(self.tmp, "usage.db")},
                         "default_budget": {"daily_usd": 1000}},
            }, aliases={"gpt-4o-mini": "auto"}, server={"timeouts": {"headers": 2, "body": 2, "keepalive": 2}}))
            app = create_app(config, builtins=BUILTIN_PLUGINS, entry_points=False)
            sock = listen_socket(self.host, 0)
            self.port = sock.getsockname()[1]
            self.loop.call_soon(self.ready.set)
            await run_app(app, config, sock, self.stop)

    def __enter__(self) -> Served:
        self.thread.start()
        assert self.ready.wait(30), "the gateway did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None and self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def served(tmp_path_factory: Any) -> Iterator[tuple[Served, _Logs, collections.Counter[int]]]:
    logs = _Logs()
    root = logging.getLogger()
    root.addHandler(logs)
    statuses: collections.Counter[int] = collections.Counter()
    try:
        with Served(str(tmp_path_factory.mktemp("fuzz"))) as server:
            yield server, logs, statuses
    finally:
        root.removeHandler(logs)
        print(f"\nfuzz: {sum(statuses.values())} cases sent; responses by status: {dict(sorted(statuses.items()))}")


def exchange(host: str, port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a fresh connection; read until the server closes (``Connection: close``)."""
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(raw)  # no half-close: aiohttp takes the client's EOF for a departure
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return status, headers, body


def _dechunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(body[:size])
        body = body[size + 2:]
    return b"".join(out)


# -- what the fuzzer sends ---------------------------------------------------------------------

JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64), st.floats(allow_nan=False),
                      st.text(max_size=40))
JSON = st.recursive(JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                    max_leaves=20)
MODELS = st.sampled_from(["gpt-4.1", "deepseek-v3.2", "auto", "gpt-4o-mini", "simple", "complex",
                          "text-embedding-3-small", "no-such-model", "", "m" * 300])
CONTENT = st.one_of(st.text(max_size=60), st.sampled_from(["营业时间?", "why is the sky blue", "hi"]),
                    st.lists(st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text",
                                                                                         "image_url", "x"]),
                                                               "text": JSON}), JSON), max_size=3), JSON)
MESSAGE = st.one_of(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                           "content": CONTENT},
                                          optional={"tool_calls": JSON, "name": JSON, "tool_call_id": JSON}),
                    JSON)
CHAT = st.fixed_dictionaries(
    {"model": st.one_of(MODELS, JSON), "messages": st.one_of(st.lists(MESSAGE, max_size=4), JSON)},
    optional={"stream": st.one_of(st.booleans(), JSON), "max_tokens": JSON, "max_completion_tokens": JSON,
              "tools": JSON, "tool_choice": JSON, "response_format": JSON, "n": JSON, "logprobs": JSON,
              "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": JSON}), JSON),
              "temperature": JSON, "metadata": JSON})
OTHER_BODY = st.fixed_dictionaries({"model": st.one_of(MODELS, JSON)},
                                   optional={"prompt": JSON, "input": st.one_of(CONTENT, JSON), "stream": JSON,
                                             "instructions": JSON, "max_output_tokens": JSON})
PATHS = st.one_of(
    st.sampled_from(["/v1/chat/completions", "/chat/completions", "/v1/completions", "/v1/embeddings",
                     "/v1/responses", "/v1/models", "/v1/models/gpt-4.1", "/v1/models/x%20y", "/v1/files",
                     "/v1/files/file-1", "/v1/batches", "/healthz", "/readyz", "/metrics", "/-/plugins",
                     "/-/usage", "/-/usage?since=99999999999999999999", "/-/usage?by=x&since=-1",
                     "/-/usage?since=nan", "/v1/chat%2Fcompletions", "/v1/../x", "/v1/%2e%2e/x", "/",
                     "/v1/chat/completions?x=%ff", "*", "/v1/Chat/Completions", "/v1//x", "/v1/x\\y"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n "), max_size=30).map(lambda t: "/" + t),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO"])
AUTH = st.sampled_from([f"Bearer {KEY}", f"Bearer {ADMIN}", "Bearer sk-fuzz-trial-1", "Bearer wrong-key-xyz",
                        "Basic abc", "", "Bearer", f"bearer {KEY}", "Bearer \udcff\udcfe"])
HEADER_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=30)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(METHODS)
    path = draw(PATHS)
    body_kind = draw(st.sampled_from(["chat", "other", "json", "garbage", "none"]))
    def dumps(value: Any) -> bytes:  # the stdlib writes integers of any size (orjson would refuse)
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")

    body = {"chat": lambda: dumps(draw(CHAT)), "other": lambda: dumps(draw(OTHER_BODY)),
            "json": lambda: dumps(draw(JSON)), "garbage": lambda: draw(st.binary(max_size=200)),
            "none": lambda: b""}[body_kind]()
    headers = {"Host": "fuzz", "Connection": "close", "Authorization": draw(AUTH)}
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                                        "application/json; charset=utf-8"]))
    extra = draw(st.dictionaries(st.sampled_from(["x-floodgate-tier", "x-request-id", "Content-Encoding",
                                                  "api-key", "X-Custom", "Accept"]), HEADER_VALUE, max_size=3))
    headers.update(extra)
    if body or method in ("POST", "PUT", "PATCH"):
        headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("utf-8", "surrogateescape") + body


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(raw=requests())
def test_no_input_gets_a_5xx_a_non_json_error_or_a_traceback(served, raw):
    server, logs, statuses = served
    status, headers, body = exchange(server.host, server.port, raw)
    statuses[status] += 1
    assert status < 500, (raw[:300], status, body[:300])
    if status >= 400 and not raw.startswith(b"HEAD "):
        assert headers.get("content-type", "").startswith("application/json"), (raw[:300], status, body[:200])
        error = orjson.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    assert not logs.bad, logs.bad[:3]


# -- message shapes: a valid key, model and endpoint, odd content (where plugins read the body) -------

ODD_CONTENT = st.one_of(
    st.text(max_size=80), JSON,
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "input_text", "image_url"]), "text": JSON,
                                     "image_url": JSON}), max_size=3))
ODD_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "user", "system", "assistant", "tool"]), "content": ODD_CONTENT},
    optional={"tool_calls": st.one_of(JSON, st.lists(st.fixed_dictionaries({"function": JSON, "id": JSON}),
                                                     max_size=2)),
              "name": JSON})
ODD_CHAT = st.fixed_dictionaries(
    {"model": st.sampled_from(["auto", "gpt-4o-mini", "complex", "deepseek-v3.2", "gpt-4.1"]),
     "messages": st.lists(ODD_MESSAGE, min_size=1, max_size=4)},
    optional={"stream": st.booleans(), "tools": JSON, "tool_choice": JSON, "response_format": JSON, "n": JSON,
              "max_tokens": JSON, "stream_options": JSON, "functions": JSON, "logprobs": JSON})


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(body=ODD_CHAT, path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/responses"]),
       tier=st.sampled_from([None, "complex", "nope"]))
def test_odd_message_shapes_never_get_a_5xx(served, body, path, tier):
    server, logs, statuses = served
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    headers = {"Host": "fuzz", "Connection": "close", "Authorization": f"Bearer {KEY}",
               "Content-Type": "application/json", "Content-Length": str(len(payload))}
    if tier:
        headers["x-floodgate-tier"] = tier
    raw = (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    status, response_headers, response = exchange(server.host, server.port, raw + payload)
    statuses[status] += 1
    assert status < 500, (body, status, response[:300])
    if status >= 400:
        assert orjson.loads(response)["error"]["message"]
    assert not logs.bad, logs.bad[:3]
