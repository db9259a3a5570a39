"""LangChain's `ChatOpenAI` and `OpenAIEmbeddings` against the gateway and its mock, unchanged
but for `base_url`: invoke, stream, batch, tools, structured output in all three methods."""

from __future__ import annotations

import orjson
import pytest
from pydantic import BaseModel, Field

from proxy.testing import MOCK_MODELS, mock_config

QUESTION = "我的订单 A123 到哪了?"


class Parcel(BaseModel):
    """Where a parcel is (a schema with more than one field, none of them `query`)."""

    order_id: str = Field(description="the order number")
    carrier: str
    days_left: int = Field(ge=0, le=10)
    delivered: bool


def track_parcel(order_id: str, carrier: str) -> str:
    """Track a parcel by its order number and carrier."""
    return f"{order_id} via {carrier}: tomorrow"


@pytest.fixture(scope="module")
def lc():
    """``langchain_openai``, imported when these tests run: it is large, and importing it while the
    suite is collected makes every earlier test pay for it (a longer garbage-collection pause)."""
    return pytest.importorskip("langchain_openai", reason="langchain-openai is in the test extras")


@pytest.fixture
async def gateway(floodgate, mock_upstream):
    gw = await floodgate(mock_config(mock_upstream.url, models=MOCK_MODELS, plugin_settings={
        "auth": {"keys": [{"name": "lc", "key": "sk-langchain-1"}]}}), builtins=("plugins.auth",))
    return gw


def chat(lc, gw, **kwargs):
    return lc.ChatOpenAI(base_url=gw.url, api_key="sk-langchain-1", model="gpt-4.1", max_retries=0,
                                       **kwargs)


async def test_invoke_stream_batch(lc, gateway, mock_upstream):
    llm = chat(lc, gateway)
    reply = await llm.ainvoke(QUESTION)
    assert reply.content and reply.usage_metadata["output_tokens"] > 0
    chunks = [c async for c in llm.astream(QUESTION)]
    assert len(chunks) > 2 and "".join(c.content for c in chunks) == reply.content
    replies = await llm.abatch([QUESTION, "你好", "thanks"])
    assert len(replies) == 3 and all(r.content for r in replies)
    assert mock_upstream.stats.by_path["/v1/chat/completions"] == 5


async def test_bind_tools(lc, gateway):
    reply = await chat(lc, gateway).bind_tools([track_parcel]).ainvoke(QUESTION)
    [call] = reply.tool_calls
    assert call["name"] == "track_parcel" and set(call["args"]) == {"order_id", "carrier"}
    assert all(isinstance(v, str) for v in call["args"].values())


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
async def test_with_structured_output(lc, gateway, method):
    prompt = QUESTION
    if method == "json_mode":  # JSON mode knows no schema: the prompt must give it, as LangChain documents
        prompt = f"Answer in JSON matching this schema: {orjson.dumps(Parcel.model_json_schema()).decode()}\n{QUESTION}"
    structured = chat(lc, gateway).with_structured_output(Parcel, method=method)
    parcel = await structured.ainvoke(prompt)
    assert isinstance(parcel, Parcel) and 0 <= parcel.days_left <= 10
    raw = await chat(lc, gateway).with_structured_output(Parcel, method=method, include_raw=True).ainvoke(prompt)
    assert raw["parsing_error"] is None and raw["parsed"] == parcel  # the same request, the same answer


async def test_embeddings(lc, gateway):
    # check_embedding_ctx_length would fetch tiktoken's encoding from the network: not here.
    embeddings = lc.OpenAIEmbeddings(base_url=gateway.url, api_key="sk-langchain-1",
                                                   model="text-embedding-3-small", check_embedding_ctx_length=False)
    vectors = await embeddings.aembed_documents(["退货流程", "包邮吗"])
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0 and vectors[0] != vectors[1]
    assert await embeddings.aembed_query("退货流程") == vectors[0]
