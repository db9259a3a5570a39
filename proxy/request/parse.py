"""Stage 1, parse: read the body once, parse it once, check the fields the core needs.

Everything else in the body is the upstream's to judge: unknown fields pass through
untouched. Errors are 400 naming the ``param``, 413 for a
body over ``server.max_body_bytes``.
"""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from ..errors import Rejection
from ..types import RequestContext

#: Deepest nesting of a JSON body (orjson cannot serialise past 254 levels; real requests,
#: JSON schemas included, stay far below this).
MAX_DEPTH = 128


def too_deep(body: object) -> bool:
    """Whether ``body`` nests deeper than :data:`MAX_DEPTH` (iterative: no recursion limit)."""
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node if isinstance(v, (dict, list)))
    return False


def check_depth(raw: bytes, body: object) -> None:
    """400 for a body nested deeper than :data:`MAX_DEPTH`; bodies with fewer brackets
    than that cannot be, and are not walked."""
    if raw.count(b"{") + raw.count(b"[") > MAX_DEPTH and too_deep(body):
        raise Rejection(400, f"the request body nests deeper than {MAX_DEPTH} levels", param="body",
                        code="invalid_value", should_retry=False)


def too_large(max_body: int) -> Rejection:
    return Rejection(413, f"request body is larger than {max_body} bytes", code="request_too_large",
                     should_retry=False)


async def read_body(request: web.Request, ctx: RequestContext, max_body: int, timeout: float) -> None:
    """Read the whole body into ``ctx.raw``: at most ``max_body`` bytes within ``timeout`` seconds."""
    if request.content_length is not None and request.content_length > max_body:
        raise too_large(max_body)
    try:
        # Bounded by the application's client_max_size (= max_body_bytes).
        if not request.body_exists:
            ctx.raw = b""
        elif request.content.is_eof():  # the whole body came with the headers: nothing to wait for
            ctx.raw = await request.read()
        else:
            async with asyncio.timeout(timeout):
                ctx.raw = await request.read()
    except TimeoutError:
        raise Rejection(408, f"the request body did not arrive within {timeout:g}s", code="request_timeout",
                        headers={"Connection": "close"}) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large(max_body) from None
    except RequestPayloadError as exc:  # aiohttp wraps what its payload parser found wrong
        if isinstance(exc.__cause__, ContentEncodingError):
            raise Rejection(400, "the request body does not match its Content-Encoding", code="invalid_encoding",
                            should_retry=False, headers={"Connection": "close"}) from None
        raise Rejection(400, "could not read the request body (broken chunked encoding?)", code="invalid_body",
                        should_retry=False, headers={"Connection": "close"}) from None
    except (aiohttp.ClientError, HttpProcessingError) as exc:  # broken chunked upload
        raise Rejection(400, f"could not read the request body: {type(exc).__name__}") from None


async def parse_model_request(request: web.Request, ctx: RequestContext, max_body: int, timeout: float) -> None:
    """Fill ``ctx.body``, ``ctx.model`` and ``ctx.stream`` from a model endpoint's JSON body
    (routing sends only ``POST`` here: other methods on these paths pass through)."""
    await read_body(request, ctx, max_body, timeout)
    try:
        body = orjson.loads(ctx.raw)
    except orjson.JSONDecodeError as exc:
        raise Rejection(400, f"the request body is not valid JSON: {exc.args[0] if exc.args else exc}",
                        code="invalid_json", should_retry=False) from None
    if not isinstance(body, dict):
        raise Rejection(400, "the request body must be a JSON object", param="body", code="invalid_type",
                        should_retry=False)
    check_depth(ctx.raw, body)
    ctx.body = body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise Rejection(400, "you must provide a model parameter (a string)", param="model",
                        code="missing_required_parameter" if model is None else "invalid_type",
                        should_retry=False)
    ctx.model = model
    endpoint = ctx.endpoint
    if endpoint == "chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise Rejection(400, "'messages' must be a list of message objects", param="messages",
                            code="missing_required_parameter" if messages is None else "invalid_type",
                            should_retry=False)
        if not messages:
            raise Rejection(400, "'messages' must contain at least one message", param="messages",
                            code="invalid_value", should_retry=False)
    elif endpoint in ("completions", "embeddings"):
        key = "prompt" if endpoint == "completions" else "input"
        if key not in body:
            raise Rejection(400, f"'{key}' is required", param=key, code="missing_required_parameter",
                            should_retry=False)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise Rejection(400, "'stream' must be a boolean", param="stream", code="invalid_type",
                        should_retry=False)
    ctx.stream = bool(stream) and endpoint != "embeddings"
