"""Bodies Floodgate writes itself: short-circuit replies, SSE framing, the model list."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from ..types import Reply, Usage

SSE_DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def sse_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def reply_json(reply: Reply, *, endpoint: str, model: str, usage: Usage) -> bytes:
    """A complete ``chat.completion`` (or ``text_completion``) for a short-circuit."""
    created = int(time.time())
    if endpoint == "completions":
        return orjson.dumps({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": model,
            "choices": [{"index": 0, "text": reply.content, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_dict(usage),
        })
    return orjson.dumps({
        "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply.content, "refusal": None},
            "logprobs": None, "finish_reason": "stop",
        }],
        "usage": usage_dict(usage),
    })


def reply_stream(reply: Reply, *, endpoint: str, model: str, usage: Usage, include_usage: bool) -> bytes:
    """The whole SSE stream of a short-circuit reply, in OpenAI's framing."""
    created = int(time.time())
    if endpoint == "completions":
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": model}
        events = [
            {**base, "choices": [{"index": 0, "text": reply.content, "logprobs": None, "finish_reason": None}]},
            {**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]},
        ]
    else:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": created,
                "model": model}

        def choice(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

        events = [
            {**base, "choices": [choice({"role": "assistant", "content": ""}, None)]},
            {**base, "choices": [choice({"content": reply.content}, None)]},
            {**base, "choices": [choice({}, "stop")]},
        ]
    if include_usage:
        for event in events:
            event["usage"] = None
        events.append({**base, "choices": [], "usage": usage_dict(usage)})
    return b"".join(sse_event(e) for e in events) + SSE_DONE


def model_object(model_id: str, *, created: Any = 0, owned_by: Any = "floodgate") -> dict[str, Any]:
    """A ``model`` object (``created`` and ``owned_by`` as an upstream listed them, when usable)."""
    return {"id": model_id, "object": "model", "created": created if type(created) is int else 0,
            "owned_by": owned_by if isinstance(owned_by, str) else "floodgate"}


def model_list(objects: list[dict[str, Any]]) -> bytes:
    """``GET /v1/models``: the model objects a key may see."""
    return orjson.dumps({"object": "list", "data": objects})
