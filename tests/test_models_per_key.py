"""`/v1/models` per key: exactly the names a key may use (catalogue, aliases, routes, and what
the patterns' upstreams list); `/v1/models/{id}` is 404 for any other, as OpenAI answers."""

from __future__ import annotations

import openai
import pytest

from proxy.testing import MOCK_MODELS, mock_config

KEYS = [
    {"name": "shop", "key": "sk-shop-key-1"},
    {"name": "trial", "key": "sk-trial-key-1", "models": ["deepseek-*", "cheap", "gpt-5*", "simple"]},
]
ROUTER = {"default": "simple", "routes": {"simple": {"model": "deepseek-v3.2"}, "complex": {"model": "gpt-4.1"}}}


async def start(floodgate, mock_upstream, models=None, **upstream):
    config = mock_config(mock_upstream.url, models=models or MOCK_MODELS, aliases={"cheap": "deepseek-v3.2"},
                         plugin_settings={"auth": {"keys": KEYS}, "router": ROUTER}, upstream=upstream or None)
    return await floodgate(config, builtins=("plugins.auth", "plugins.router"))


async def ids(gw, key):
    return [m.id for m in (await gw.openai(api_key=key).models.list()).data]


async def test_a_key_sees_exactly_what_it_may_use(floodgate, mock_upstream, openai_schema):
    gw = await start(floodgate, mock_upstream)
    assert await ids(gw, "sk-shop-key-1") == [*MOCK_MODELS, "cheap", "auto", "complex", "simple"]
    assert await ids(gw, "sk-trial-key-1") == ["deepseek-v3.2", "cheap", "simple"]
    trial = gw.openai(api_key="sk-trial-key-1")
    assert (await trial.models.retrieve("cheap")).id == "cheap"
    for name in ("gpt-4.1", "auto", "no-such-model"):
        with pytest.raises(openai.NotFoundError) as info:
            await trial.models.retrieve(name)
        assert info.value.code == "model_not_found"
    response = await gw.client.get("/v1/models", headers={"Authorization": "Bearer sk-trial-key-1"})
    openai_schema("ListModelsResponse", await response.json())
    assert mock_upstream.stats.total == 0  # no pattern: the upstream is never asked


async def test_names_patterns_serve_are_listed_from_their_upstream(floodgate, mock_upstream, openai_schema):
    mock_upstream.settings.models += ["gpt-5", "gpt-5-mini", "o3"]
    models = {**MOCK_MODELS, "gpt-*": {"price": None}, "openai/*": {"upstream_model": "{1}", "price": None}}
    gw = await start(floodgate, mock_upstream, models=models)
    listed = await ids(gw, "sk-shop-key-1")
    # The exact catalogue first; then, sorted, what the upstream lists that a pattern serves.
    assert listed[:len(MOCK_MODELS)] == list(MOCK_MODELS) and "gpt-*" not in listed
    assert sorted(listed[len(MOCK_MODELS) + 4:]) == listed[len(MOCK_MODELS) + 4:]
    assert {"gpt-5", "gpt-5-mini", "openai/o3", "openai/gpt-4.1", "openai/gpt-5"} <= set(listed)
    assert "o3" not in listed  # no pattern serves it under that name
    assert await ids(gw, "sk-trial-key-1") == ["deepseek-v3.2", "cheap", "simple", "gpt-5", "gpt-5-mini"]
    shop = gw.openai(api_key="sk-shop-key-1")
    model = await shop.models.retrieve("openai/o3")
    assert (model.id, model.owned_by) == ("openai/o3", "floodgate-mock")  # as the upstream listed it
    with pytest.raises(openai.NotFoundError):  # a pattern matches it, but the upstream has no such model
        await shop.models.retrieve("gpt-6")
    response = await gw.client.get("/v1/models/gpt-5", headers={"Authorization": "Bearer sk-shop-key-1"})
    openai_schema("Model", await response.json())
    assert mock_upstream.stats.by_path["/v1/models"] == 1  # listed once, reused


async def test_an_upstream_that_cannot_list_leaves_only_the_catalogue(floodgate, mock_upstream, caplog):
    models = {**MOCK_MODELS, "x-*": {"price": None, "upstream": "dead"}}
    config = mock_config(mock_upstream.url, models=models, plugin_settings={"auth": {"keys": KEYS}})
    config["upstreams"]["dead"] = {"base_url": "http://127.0.0.1:9/v1", "timeouts": {"connect": 1}}
    gw = await floodgate(config, builtins=("plugins.auth",))
    with caplog.at_level("WARNING", logger="floodgate"):
        assert await ids(gw, "sk-shop-key-1") == list(MOCK_MODELS)
        assert await ids(gw, "sk-shop-key-1") == list(MOCK_MODELS)
    assert sum("could not list its models" in m for m in caplog.messages) == 1  # asked again after the TTL
