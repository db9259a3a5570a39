"""Catalogue deployments: one model on several upstreams (provider keys, accounts, regions) — their
validation, the targets routes are made of, prices per deployment, patterns."""

from __future__ import annotations

from typing import Any

import pytest

import proxy
from proxy.config import config_from_dict, parse_config

UPSTREAMS = {"key-a": {"base_url": "http://a.invalid/v1"}, "key-b": {"base_url": "http://b.invalid/v1"}}


def config(models: dict[str, Any], **more: Any) -> proxy.Config:
    return config_from_dict({"upstreams": UPSTREAMS, "models": models, **more})


def errors(models: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(proxy.ConfigErrors) as info:
        config(models)
    return {e.path: e.message for e in info.value.errors}


def test_a_models_deployments_are_targets_of_their_own_in_catalogue_order() -> None:
    cfg = config({
        "deepseek-v3.2": {"deployments": [
            {"upstream": "key-a", "upstream_model": "deepseek-chat", "limits": {"requests_per_minute": 600},
             "weight": 2},
            {"upstream": "key-b", "name": "backup", "price": {"input": 0.5, "output": 1.0}}],
            "price": {"input": 0.28, "output": 0.42}, "fallbacks": ["gemini-2.5-flash"]},
        "gemini-2.5-flash": {"upstream": "key-a"}})
    a, b, flash = cfg.targets_with_fallbacks("deepseek-v3.2")
    assert (a.upstream, a.upstream_model, a.deployment, a.qualified) == \
        ("key-a", "deepseek-chat", "key-a", "deepseek-v3.2@key-a")
    assert (b.upstream, b.upstream_model, b.deployment) == ("key-b", "deepseek-v3.2", "backup")
    assert (flash.deployment, flash.qualified) == (None, "gemini-2.5-flash")
    assert cfg.target("deepseek-v3.2") == a and cfg.deployments("deepseek-v3.2") == (a, b)
    assert cfg.models["deepseek-v3.2"].upstream == "key-a"  # the first deployment's
    assert cfg.price("deepseek-v3.2", "key-a").input == 0.28 and cfg.price("deepseek-v3.2", "backup").input == 0.5
    assert cfg.deployment(a).weight == 2 and cfg.deployment(a).limits.requests_per_minute == 600
    assert cfg.deployment(flash) is None
    assert a.with_overrides(max_tokens=5).deployment == "key-a"


def test_a_pattern_may_have_deployments_with_templates() -> None:
    cfg = config({"openai/*": {"price": None, "deployments": [
        {"upstream": "key-a", "upstream_model": "{1}"},
        {"upstream": "key-b", "name": "eu", "upstream_model": "eu-{1}"}]}})
    assert [(t.upstream, t.upstream_model, t.deployment) for t in cfg.deployments("openai/gpt-5")] == \
        [("key-a", "gpt-5", "key-a"), ("key-b", "eu-gpt-5", "eu")]
    assert cfg.price("openai/gpt-5", "eu") is None


@pytest.mark.parametrize(("models", "path", "message"), [
    ({"m": {"upstream": "key-a", "deployments": [{"upstream": "key-b"}]}}, "models.m", "either upstream"),
    ({"m": {"deployments": [{"upstream": "nowhere"}]}}, "models.m.deployments.0.upstream", "unknown upstream"),
    ({"m": {"deployments": [{"upstream": "key-a"}, {"upstream": "key-a"}]}}, "models.m.deployments.1.upstream",
     "already called 'key-a'"),
    ({"m": {"deployments": [{"upstream": "key-a", "adaptive": True}]}}, "models.m.deployments.0",
     "needs limits.max_concurrent"),
    ({"m": {"deployments": [{"upstream": "key-a", "weight": 0}]}}, "models.m.deployments.0.weight", "greater than 0"),
    ({"m": {"deployments": [{"upstream": "key-a", "name": "a b"}]}}, "models.m.deployments.0.name", "match pattern"),
    ({"m": {"deployments": [{"upstream": "key-a", "limits": {"rpm": 5}}]}},
     "models.m.deployments.0.limits.rpm", "unknown key"),
    ({"m": {"deployments": [{"upstream": "key-a", "upstream_model": "{1}"}]}},
     "models.m.deployments.0.upstream_model", "placeholders"),
])
def test_bad_deployments_are_refused_with_their_path(models: dict[str, Any], path: str, message: str) -> None:
    found = errors(models)
    assert path in found and message in found[path], found


def test_deployments_from_yaml_carry_their_lines() -> None:
    text = """
upstreams:
  key-a: {base_url: "http://a.invalid/v1"}
models:
  m:
    deployments:
      - upstream: key-a
      - upstream: key-z
"""
    with pytest.raises(proxy.ConfigErrors) as info:
        parse_config(text, source="festival.yaml")
    assert str(info.value.errors[0]).startswith("festival.yaml:8 models.m.deployments.1.upstream: unknown upstream")


async def test_the_router_lists_a_tiers_deployments(floodgate, mock_upstream) -> None:
    from plugins.router import RouterPlugin

    class Seen:
        name = "seen"
        routes: list[proxy.Route] = []

        @proxy.hookimpl
        def proxy_finished(self, ctx: proxy.RequestContext) -> None:
            self.routes.append(ctx.route)

    seen = Seen()
    models = {"deepseek-v3.2": {"deployments": [{"upstream": "main"}, {"upstream": "main", "name": "second"}]},
              "gemini-2.5-flash": {}}
    gw = await floodgate(plugins=[RouterPlugin(), seen], models=models, plugin_settings={"router": {
        "default": "simple", "routes": {"simple": {"model": "deepseek-v3.2", "fallbacks": ["gemini-2.5-flash"],
                                                   "max_tokens": {"default": 64}}}}})
    raw = await gw.openai().chat.completions.with_raw_response.create(
        model="simple", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-floodgate-deployment"] == "main" and raw.headers["x-floodgate-route"] == "simple"
    [route] = seen.routes
    assert [(t.model, t.deployment, t.overrides.get("max_tokens")) for t in route.targets] == [
        ("deepseek-v3.2", "main", 64), ("deepseek-v3.2", "second", 64), ("gemini-2.5-flash", None, 64)]
