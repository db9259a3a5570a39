"""The SSE relay offline: what counts as meaningful, errors before content, how streams end."""

from __future__ import annotations

import orjson
import pytest

from proxy.request.sse import SSERelay, UpstreamStreamError


def chat(delta: dict | None = None, finish: str | None = None, **extra: object) -> bytes:
    choice = {"index": 0, "delta": delta or {}, "finish_reason": finish}
    return b"data: " + orjson.dumps({"object": "chat.completion.chunk", "choices": [choice], **extra}) + b"\n\n"


def responses(kind: str, **payload: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


@pytest.mark.parametrize("event, meaningful", [
    (chat({"role": "assistant"}), False),
    (chat({"role": "assistant", "content": ""}), False),
    (chat({"content": None, "refusal": None}), False),
    (b": keep-alive\n\n", False),
    (chat({"content": "hi"}), True),
    (chat({"tool_calls": [{"index": 0, "function": {"name": "lookup", "arguments": ""}}]}), True),
    (chat({"refusal": "no"}), True),
    (chat({"reasoning_content": "hmm"}), True),
    (chat({}, "stop"), True),
    (b'data: {"object":"text_completion","choices":[{"text":"hi","index":0}]}\n\n', True),
])
def test_chat_events_held_until_meaningful(event: bytes, meaningful: bool) -> None:
    relay = SSERelay(openai_framing=True, hide_usage=False)
    assert relay.feed(event) and relay.meaningful is meaningful


@pytest.mark.parametrize("event, meaningful", [
    (responses("response.created", response={"status": "in_progress", "error": None}), False),
    (responses("response.in_progress", response={}), False),
    (responses("response.output_item.added", item={"type": "message", "content": []}), False),
    (responses("response.content_part.added", part={"type": "output_text", "text": ""}), False),
    (responses("response.output_item.added", item={"type": "function_call", "name": "lookup"}), True),
    (responses("response.output_text.delta", delta="hi"), True),
    (responses("response.completed", response={"usage": {"input_tokens": 3, "output_tokens": 1}}), True),
])
def test_responses_events_held_until_meaningful(event: bytes, meaningful: bool) -> None:
    relay = SSERelay(openai_framing=False, hide_usage=False)
    assert relay.feed(event) == event and relay.meaningful is meaningful


@pytest.mark.parametrize("framing, event", [
    (True, b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n'),
    (True, b"data: {not json\n\n"),
    (False, responses("error", code="server_error", message="overloaded")),
    (False, responses("response.failed", response={"error": {"message": "x"}})),
])
def test_an_error_before_content_is_raised(framing: bool, event: bytes) -> None:
    relay = SSERelay(openai_framing=framing, hide_usage=False)
    relay.feed(chat({"role": "assistant"}) if framing else responses("response.created", response={}))
    with pytest.raises(UpstreamStreamError):
        relay.feed(event)


def test_after_content_events_are_relayed_unparsed() -> None:
    relay = SSERelay(openai_framing=True, hide_usage=False)
    relay.feed(chat({"content": "hi"}))
    error = b'data: {"error": {"message": "late"}}\n\n'
    assert relay.feed(error) == error and relay.content_events == 1


def test_how_a_chat_stream_ends() -> None:
    relay = SSERelay(openai_framing=True, hide_usage=True)
    relay.feed(chat({"content": "hi"}, usage=None))
    assert not relay.complete
    relay.feed(chat({}, "length", usage=None))
    assert relay.finished and not relay.done and relay.complete  # lenient: [DONE] may not follow
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    assert relay.feed(usage) == b"" and relay.usage.completion_tokens == 2  # hidden from the client
    assert relay.feed(b"event: done\ndata: {}\n\n") == b"data: [DONE]\n\n" and relay.done
    assert relay.feed(b"data: [DONE]\n\n") == b""  # one end for the client


def test_the_usage_chunk_alone_completes_a_stream() -> None:
    relay = SSERelay(openai_framing=True, hide_usage=False)
    relay.feed(chat({"content": "hi"}, usage=None))
    relay.feed(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n')
    assert relay.complete and not relay.done
