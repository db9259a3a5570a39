"""Bodies Floodgate writes itself: short-circuit replies, SSE framing, the model list."""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson

from ..config import Config
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


def model_object(model_id: str, owned_by: str = "floodgate") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owned_by}


def model_list(config: Config) -> bytes:
    """``GET /v1/models``: the catalogue plus the aliases and routes clients may ask for."""
    ids = list(config.models)
    ids += [a for a in config.aliases if a not in config.models]
    ids += sorted(r for r in config.route_names if r not in config.models and r not in config.aliases)
    return orjson.dumps({"object": "list", "data": [model_object(i) for i in ids]})
