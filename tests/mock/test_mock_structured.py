"""The mock answers structured requests like a real model: JSON valid against the schema,
tool calls valid against the tool's parameters, tool_choice honoured, deterministic by seed."""

from __future__ import annotations

import datetime
import enum
import random
from collections.abc import AsyncIterator
from typing import Literal

import jsonschema
import openai
import orjson
import pytest
from pydantic import BaseModel, Field

from proxy.mock import MockSettings, MockUpstream
from proxy.mock.regexgen import string_matching
from proxy.mock.schemas import SchemaValues

ASK = [{"role": "user", "content": "我的订单 A123 到哪了?"}]


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    postcode: str = Field(pattern=r"^[0-9]{6}$")


class Order(BaseModel):
    order_id: str = Field(pattern=r"^[A-Z]{2}-\d{4,6}$", description="the order number")
    status: Literal["paid", "shipped", "delivered"]
    quantity: int = Field(ge=1, le=5)
    price: float = Field(gt=0, lt=1000, multiple_of=0.5)
    colour: Colour
    tags: list[str] = Field(min_length=1, max_length=3)
    address: Address | None
    placed: datetime.datetime
    notes: dict[str, int]
    parent: Order | None = None


SCHEMAS = {
    "pydantic order (refs, recursion, anyOf null, enum, pattern, bounds)": Order.model_json_schema(),
    "strict OpenAI style": {"type": "object", "additionalProperties": False, "required": ["a", "b", "c", "d"],
                            "properties": {"a": {"type": ["string", "null"], "minLength": 30},
                                           "b": {"type": "array", "items": {"type": "integer", "minimum": 7},
                                                 "minItems": 4, "uniqueItems": True},
                                           "c": {"allOf": [{"$ref": "#/$defs/Id"}, {"maxLength": 12}]},
                                           "d": {"$ref": "#/$defs/Uuid"}},
                            "$defs": {"Id": {"type": "string", "minLength": 3}, "Uuid": {"type": "string",
                                                                                         "format": "uuid"}}},
    "scalars": {"type": "object", "properties": {
        "when": {"type": "string", "format": "date"}, "mail": {"type": "string", "format": "email"},
        "flag": {"type": "boolean"}, "nothing": {"type": "null"}, "fixed": {"const": 42},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2},
        "either": {"oneOf": [{"type": "integer", "multipleOf": 3}, {"type": "boolean"}]}}},
}


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with MockUpstream(MockSettings()) as mock:
        c = openai.AsyncOpenAI(base_url=mock.url, api_key="sk-test", max_retries=0, timeout=5)
        yield c
        await c.close()


def json_schema_format(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_generated_values_are_valid_for_many_seeds(schema):
    for seed in range(200):
        value = SchemaValues(schema, random.Random(seed)).value(schema)
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(value)


@pytest.mark.parametrize("pattern", [r"^[A-Z]{2}-\d{4,6}$", r"(foo|ba[rz])+\.txt", r"^\w+@\w+\.(com|cn)$",
                                     r"[^aeiou]{3}", r"^(ab)\1$", r"^\+?[0-9 ]{7,}$"])
def test_strings_for_patterns(pattern):
    import re

    for seed in range(50):
        text = string_matching(pattern, random.Random(seed))
        assert text is not None and re.search(pattern, text), (pattern, text)


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_answers_are_valid_and_deterministic_by_seed(client, stream):
    schema = SCHEMAS["pydantic order (refs, recursion, anyOf null, enum, pattern, bounds)"]

    async def ask(seed: int) -> str:
        kwargs = {"model": "gpt-4.1", "messages": ASK, "seed": seed, "response_format": json_schema_format(schema)}
        if not stream:
            reply = await client.chat.completions.create(**kwargs)
            assert reply.choices[0].finish_reason == "stop"
            return reply.choices[0].message.content
        chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs)]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    first = await ask(1)
    jsonschema.validate(orjson.loads(first), schema)
    assert await ask(1) == first
    assert await ask(2) != first


async def test_parse_with_a_pydantic_model(client):
    parsed = await client.chat.completions.parse(model="gpt-4.1", messages=ASK, response_format=Order, seed=5)
    assert isinstance(parsed.choices[0].message.parsed, Order)


async def test_json_object_follows_a_schema_in_the_prompt(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
              "required": ["city", "days"]}
    prompt = [{"role": "system", "content": f"Reply in JSON matching this schema: {orjson.dumps(schema).decode()}"},
              *ASK]
    reply = await client.chat.completions.create(model="gpt-4.1", messages=prompt,
                                                  response_format={"type": "json_object"})
    jsonschema.validate(orjson.loads(reply.choices[0].message.content), schema)
    reply = await client.chat.completions.create(model="gpt-4.1", messages=ASK, response_format={"type": "json_object"})
    assert isinstance(orjson.loads(reply.choices[0].message.content), dict)


async def test_a_token_limit_cuts_a_structured_answer(client):
    reply = await client.chat.completions.create(model="gpt-4.1", messages=ASK, max_tokens=3,
                                                 response_format=json_schema_format(SCHEMAS["scalars"]))
    assert reply.choices[0].finish_reason == "length" and len(reply.choices[0].message.content) <= 12
    assert reply.usage.completion_tokens == 3


TOOLS = [
    {"type": "function", "function": {"name": "track_parcel", "parameters": {
        "type": "object", "required": ["order_id", "carrier"], "additionalProperties": False,
        "properties": {"order_id": {"type": "string"}, "carrier": {"enum": ["SF", "JD", "EMS"]}}}}},
    {"type": "function", "function": {"name": "refund", "parameters": Order.model_json_schema()}},
    {"type": "function", "function": {"name": "ping"}},  # no parameters: {}
]
PARAMETERS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls_are_valid_for_their_tool(client, stream):
    seen = set()
    for seed in range(12):
        kwargs = {"model": "gpt-4.1", "messages": ASK, "tools": TOOLS, "seed": seed}
        if stream:
            async with client.chat.completions.stream(**kwargs) as events:
                reply = await events.get_final_completion()
        else:
            reply = await client.chat.completions.create(**kwargs)
        [call] = reply.choices[0].message.tool_calls
        assert reply.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(orjson.loads(call.function.arguments), PARAMETERS[call.function.name])
        seen.add(call.function.name)
    assert seen == set(PARAMETERS)  # "one of the tools": each gets its turn


async def test_tool_choice_is_honoured(client):
    async def answer(messages, tool_choice):
        reply = await client.chat.completions.create(model="gpt-4.1", messages=messages, tools=TOOLS,
                                                     tool_choice=tool_choice)
        return reply.choices[0]

    named = {"type": "function", "function": {"name": "track_parcel"}}
    for seed in range(5):
        choice = await answer([*ASK, {"role": "user", "content": str(seed)}], named)
        assert choice.message.tool_calls[0].function.name == "track_parcel"
    assert (await answer(ASK, "none")).message.tool_calls is None
    call = (await answer(ASK, "auto")).message.tool_calls[0]
    after = [*ASK, {"role": "assistant", "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": "顺丰, 明天到"}]
    assert (await answer(after, "auto")).finish_reason == "stop"  # it has its result: it answers
    assert (await answer(after, "required")).finish_reason == "tool_calls"
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [
        {"type": "function", "function": {"name": "ping"}}]}}
    assert (await answer(after, allowed)).message.tool_calls[0].function.name == "ping"
    with pytest.raises(openai.BadRequestError) as info:
        await answer(ASK, {"type": "function", "function": {"name": "nope"}})
    assert info.value.param == "tool_choice"


async def test_responses_text_format(client):
    schema = SCHEMAS["strict OpenAI style"]
    reply = await client.responses.create(model="gpt-4.1", input="订单", text={
        "format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}})
    jsonschema.validate(orjson.loads(reply.output_text), schema)
    assert reply.text.format.type == "json_schema"
