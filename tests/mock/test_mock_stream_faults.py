"""The mock's stream faults: role chunk then break or stall, stall after N tokens, a slow first
token on a share of requests, a stream request answered with JSON — per model, from code, the
control API and the config block."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from proxy.config import config_from_dict
from proxy.mock import MockSettings, MockUpstream, ModelBehaviour
from proxy.mock.plugin import MockPlugin
from proxy.testing import mock_config

BODY = {"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockSettings(seed=7)) as m:
        yield m


async def frames(mock: MockUpstream, *, wait: float = 2.0) -> tuple[list[bytes], bool]:
    """The data frames received within ``wait`` seconds, and whether the stream ended by then."""
    received: list[bytes] = []
    async with aiohttp.ClientSession() as session, session.post(mock.url + "/chat/completions", json=BODY) as resp:
        try:
            async with asyncio.timeout(wait):
                async for line in resp.content:
                    if line.startswith(b"data: "):
                        received.append(line[6:].strip())
            return received, True
        except (TimeoutError, aiohttp.ClientPayloadError):
            return received, False


async def test_role_chunk_then_break(mock: MockUpstream) -> None:
    mock.set_behaviour("gpt-4.1", break_stream_after=0)
    received, _ = await frames(mock)
    assert len(received) == 1 and b'"role":"assistant"' in received[0]


async def test_role_chunk_then_stall_and_stall_after_tokens(mock: MockUpstream) -> None:
    mock.set_behaviour("gpt-4.1", stall_stream_after=0)
    received, ended = await frames(mock, wait=0.3)
    assert len(received) == 1 and not ended  # silent, not closed
    mock.set_behaviour("gpt-4.1", stall_stream_after=3)
    received, ended = await frames(mock, wait=0.3)
    assert len(received) == 4 and not ended  # the role chunk and three tokens


async def test_faults_on_a_share_of_streams(mock: MockUpstream) -> None:
    mock.set_behaviour("gpt-4.1", break_stream_after=0, stream_fault_rate=0.5)
    outcomes = [len((await frames(mock))[0]) for _ in range(20)]
    broken = outcomes.count(1)
    assert 0 < broken < 20  # some broke after the role chunk, the others are whole
    assert all(n == 1 or n > 10 for n in outcomes)


async def test_slow_first_token_on_a_share_of_requests(mock: MockUpstream) -> None:
    mock.set_behaviour("gpt-4.1", first_token_delay_ms=300, first_token_delay_rate=0.5)
    loop = asyncio.get_running_loop()

    async def slow() -> bool:
        started = loop.time()
        received, _ = await frames(mock)
        assert received[-1] == b"[DONE]"
        return loop.time() - started >= 0.3

    outcomes = await asyncio.gather(*(slow() for _ in range(10)))
    assert 0 < sum(outcomes) < 10


async def test_a_stream_request_answered_with_json(mock: MockUpstream) -> None:
    mock.set_behaviour("gpt-4.1", ignore_stream=True)
    async with aiohttp.ClientSession() as session, session.post(mock.url + "/chat/completions", json=BODY) as resp:
        assert resp.content_type == "application/json"
        assert (await resp.json())["object"] == "chat.completion"


async def test_new_faults_are_validated_and_configurable() -> None:
    with pytest.raises(ValueError, match="stream_fault_rate"):
        ModelBehaviour(stream_fault_rate=1.5)
    with pytest.raises(ValueError, match="first_token_delay_ms"):
        ModelBehaviour(first_token_delay_ms=-1)
    config = mock_config("builtin:mock", upstream={"mock": {"behaviours": {"gpt-4.1": {
        "stall_stream_after": 2, "stream_fault_rate": 0.1, "first_token_delay_ms": 3000,
        "first_token_delay_rate": 0.05, "ignore_stream": False}}}})
    plugin = MockPlugin()
    plugin.proxy_configure(config_from_dict(config))
    assert plugin.blocks["main"].behaviours["gpt-4.1"].first_token_delay_rate == 0.05
