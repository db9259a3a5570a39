"""The hook contract: every hook is documented and has a test named ``test_hook_<name>`` here."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys

import openai
import pytest
from aiohttp import web
from pydantic import Field

import proxy
from proxy import (
    STOP,
    Attempt,
    ConfigErrors,
    Principal,
    Rejection,
    Reply,
    Route,
    Settings,
    create_app,
    hookimpl,
    hookspecs,
)
from proxy.config import config_from_dict
from proxy.testing import PluginHarness, mock_config

MESSAGES = [{"role": "user", "content": "退款多久到账?"}]
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("proxy_"))


def undocumented_or_untested(module_globals: dict, docs: str) -> list[str]:
    """What the datasette-style contract check finds missing, one line per problem."""
    problems = []
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        if len(inspect.getdoc(spec) or "") <= 80:
            problems.append(f"{name} has no real docstring")
        signature = f"{name}({', '.join(inspect.signature(spec).parameters)})"
        if f"`{signature}`" not in docs:
            problems.append(f"docs/plugins.md lacks the signature `{signature}`")
        test = module_globals.get(f"test_hook_{name}")
        # A real test, defined under its own name: an alias of another test does not count.
        if not inspect.isfunction(test) or test.__name__ != f"test_hook_{name}":
            problems.append(f"{name} has no test_hook_{name}")
        if name not in hookspecs.MODES:
            problems.append(f"{name} declares no mode")
    return problems


def test_every_hook_is_documented_and_tested():
    assert undocumented_or_untested(globals(), _docs_path().read_text(encoding="utf-8")) == []


def test_the_contract_check_catches_what_is_missing():
    docs = _docs_path().read_text(encoding="utf-8").replace("`proxy_admit(ctx)`", "`proxy_admit`")
    aliased = {**globals(), "test_hook_proxy_route": test_hook_proxy_admit}
    del aliased["test_hook_proxy_finished"]
    assert undocumented_or_untested(aliased, docs) == [
        "docs/plugins.md lacks the signature `proxy_admit(ctx)`",
        "proxy_finished has no test_hook_proxy_finished",
        "proxy_route has no test_hook_proxy_route",
    ]


def test_async_implementation_of_a_sync_only_hook_fails_start_up(mock_upstream):
    class Chunky:
        name = "chunky"

        @hookimpl
        async def proxy_stream_chunk(self, ctx, chunk):  # would be created and dropped: never run
            chunk.drop = True

    with pytest.raises(ConfigErrors) as info:
        create_app(config_from_dict(mock_config(mock_upstream.url)), plugins=[Chunky()], builtins=(),
                   entry_points=False)
    assert [str(e) for e in info.value.errors] == [
        "<dict>: plugins: plugin 'chunky': proxy_stream_chunk is called synchronously and must be a plain "
        "function, not async def"]


async def test_a_first_result_hook_of_the_wrong_type_fails_closed(floodgate, caplog):
    class Sloppy:
        name = "sloppy"

        @hookimpl
        def proxy_route(self, ctx):
            return "gpt-4.1"  # a model name, not a Route

    gw = await floodgate(plugins=[Sloppy()])
    response = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    assert response.status == 500 and gw.mock.stats.total == 0
    assert "proxy_route returned str" in caplog.text


def test_hooks_facade_has_a_method_per_hook():
    for name in HOOKS:
        assert callable(getattr(proxy.hooks.Hooks, name.removeprefix("proxy_")))


def _docs_path():
    from pathlib import Path
    return Path(__file__).resolve().parents[1] / "docs" / "plugins.md"



class Recorder:
    """Records the order in which hooks run, per request."""

    name = "recorder"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.finished: list[proxy.RequestContext] = []

    @hookimpl
    def proxy_authenticate(self, ctx):
        self.calls.append("authenticate")

    @hookimpl
    def proxy_authorize(self, ctx):
        self.calls.append(f"authorize:{ctx.model}")

    @hookimpl
    async def proxy_short_circuit(self, ctx):
        await asyncio.sleep(0)
        self.calls.append("short_circuit")

    @hookimpl
    def proxy_route(self, ctx):
        self.calls.append("route")

    @hookimpl
    async def proxy_admit(self, ctx):
        self.calls.append("admit")

    @hookimpl
    def proxy_next_attempt(self, ctx):
        self.calls.append(f"next_attempt:{len(ctx.attempts)}")

    @hookimpl
    def proxy_response(self, ctx, response):
        self.calls.append("response")

    @hookimpl
    def proxy_finished(self, ctx):
        self.calls.append("finished")
        self.finished.append(ctx)


async def test_request_runs_hooks_in_stage_order(floodgate):
    recorder = Recorder()
    gw = await floodgate(plugins=[recorder])
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    # After a success the core does not ask for another attempt.
    assert recorder.calls == ["authenticate", "authorize:gpt-4.1", "short_circuit", "route", "admit",
                              "next_attempt:0", "response", "finished"]


# -- lifecycle hooks ----------------------------------------------------------

class Configured:
    name = "configured"

    class Options(Settings):
        greeting: str = "hi"
        repeat: int = Field(1, gt=0)

    @hookimpl
    def proxy_configure(self, config, registry, state):
        self.options = config.plugin_settings(self.name, self.Options)
        from prometheus_client import Counter
        self.counter = Counter("floodgate_configured_things", "things", registry=registry)
        self.state = state


def test_hook_proxy_configure():
    base = mock_config("http://127.0.0.1:9/v1")
    plugin = Configured()
    app = create_app(config_from_dict({**base, "plugins": {"configured": {"greeting": "你好"}}}), plugins=[plugin],
                     builtins=(), entry_points=False)
    assert plugin.options.greeting == "你好" and plugin.options.repeat == 1
    assert plugin.state is app[proxy.STATE] and plugin.state.backend == "memory"
    with pytest.raises(ConfigErrors) as info:
        create_app(config_from_dict({**base, "plugins": {"configured": {"repeat": 0, "greting": "x"}}}),
                   plugins=[Configured()], builtins=(), entry_points=False)
    paths = sorted(e.path for e in info.value.errors)
    assert paths == ["plugins.configured.greting", "plugins.configured.repeat"]


def test_hook_proxy_add_commands(capsys):
    class Hello:
        name = "hello"

        @hookimpl
        def proxy_add_commands(self, subparsers):
            parser = subparsers.add_parser("hello", help="say hello")
            parser.add_argument("--who", default="world")
            parser.set_defaults(func=lambda args: print(f"hello {args.who}") or 0)

    pm, _infos, errors = proxy.loader.build_plugin_manager(core=[], builtins=(), entry_points=False, extra=[Hello()])
    assert not errors
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    pm.hook.proxy_add_commands(subparsers=sub)
    args = parser.parse_args(["hello", "--who", "floodgate"])
    assert args.func(args) == 0
    assert capsys.readouterr().out == "hello floodgate\n"


def test_hook_proxy_route_names():
    class Tiers:
        name = "tiers"

        @hookimpl
        def proxy_route_names(self, config):
            return ["auto"]

    cfg = {**mock_config("http://127.0.0.1:9/v1"), "aliases": {"gpt-4o-mini": "auto"}}
    create_app(config_from_dict(cfg), plugins=[Tiers()], builtins=(), entry_points=False)
    with pytest.raises(ConfigErrors) as info:
        create_app(config_from_dict(cfg), builtins=(), entry_points=False)
    assert info.value.errors[0].path == "aliases.gpt-4o-mini"


async def test_hook_proxy_add_routes(floodgate):
    class Extra:
        name = "extra"

        @hookimpl
        def proxy_add_routes(self, app):
            async def hello(request):
                await proxy.require_admin(request)
                return web.json_response({"config": len(request.app[proxy.CONFIG].models)})
            app.router.add_get("/-/hello", hello)

            async def refuse(request):
                raise proxy.Rejection(409, "not now", code="busy")
            app.router.add_get("/-/refuse", refuse)

    gw = await floodgate(plugins=[Extra()])
    resp = await gw.client.get("/-/hello")
    assert resp.status == 200 and (await resp.json())["config"] == 5
    assert resp.headers["x-request-id"]
    # A Rejection raised in a plugin's endpoint is OpenAI's JSON error, not a plain-text 500.
    resp = await gw.client.get("/-/refuse")
    assert resp.status == 409 and resp.content_type == "application/json"
    assert (await resp.json())["error"] == {"message": "not now", "type": "invalid_request_error", "param": None,
                                            "code": "busy"}


async def test_hook_proxy_startup(aiohttp_client, mock_upstream):
    events: list[str] = []

    class Lifecycle:
        name = "lifecycle"

        @hookimpl
        async def proxy_startup(self, app):
            # Upstream sessions are open before plugins start (a plugin may call them).
            events.append(f"startup ready={app[proxy.UPSTREAMS].ready}")

    app = create_app(config_from_dict(mock_config(mock_upstream.url)), plugins=[Lifecycle()], builtins=(),
                     entry_points=False)
    client = await aiohttp_client(app)
    assert events == ["startup ready=True"]
    assert (await client.get("/readyz")).status == 200
    await client.close()


async def test_a_failing_startup_stops_the_start(aiohttp_client, mock_upstream):
    class Broken:
        name = "broken"

        @hookimpl
        def proxy_startup(self, app):
            raise RuntimeError("cannot open the database")

    app = create_app(config_from_dict(mock_config(mock_upstream.url)), plugins=[Broken()], builtins=(),
                     entry_points=False)
    with pytest.raises(RuntimeError, match="cannot open the database"):
        await aiohttp_client(app)


async def test_hook_proxy_shutdown(aiohttp_client, mock_upstream, caplog):
    events: list[str] = []

    class Flushes:
        name = "flushes"

        @hookimpl
        async def proxy_shutdown(self, app):
            events.append("flushed")

    class FailsToFlush:
        name = "fails-to-flush"

        @hookimpl(tryfirst=True)
        def proxy_shutdown(self, app):
            raise OSError("disk full")

    app = create_app(config_from_dict(mock_config(mock_upstream.url)), plugins=[Flushes(), FailsToFlush()],
                     builtins=(), entry_points=False)
    client = await aiohttp_client(app)
    response = await client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    assert response.status == 200 and events == []
    await client.close()
    # Observed: one plugin's failure is logged and the others still run.
    assert events == ["flushed"]
    assert "plugin 'fails-to-flush' failed in proxy_shutdown" in caplog.text


async def test_hook_proxy_builtin_upstream(aiohttp_client, mock_upstream):
    class Echo:
        name = "echo"
        started: list[str] = []

        @hookimpl
        async def proxy_builtin_upstream(self, name, settings):
            if settings.base_url != "builtin:echo":
                return None
            self.started.append(name)
            return mock_upstream.url

    config = mock_config("builtin:echo")
    app = create_app(config_from_dict(config), plugins=[Echo()], builtins=(), entry_points=False)
    client = await aiohttp_client(app)
    response = await client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    assert response.status == 200 and Echo.started == ["main"]
    assert mock_upstream.stats.total == 1
    await client.close()




# -- per-request hooks --------------------------------------------------------

class KeyAuth:
    name = "keyauth"

    @hookimpl
    def proxy_authenticate(self, ctx):
        auth = ctx.headers.get("Authorization", "")
        if auth == "Bearer good":
            return Principal("shop-bot", policy=proxy.KeyPolicy(priority=1))
        if auth == "Bearer admin":
            return Principal("admin", admin=True)
        raise Rejection(401, "Incorrect API key provided.", code="invalid_api_key", should_retry=False)


async def test_hook_proxy_authenticate(floodgate):
    seen: list[str] = []

    class Observer:
        name = "observer"

        @hookimpl
        def proxy_finished(self, ctx):
            seen.append(ctx.principal.name)

    gw = await floodgate(plugins=[KeyAuth(), Observer()])
    await gw.openai(api_key="good").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        await gw.openai(api_key="bad").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert seen == ["shop-bot", "anonymous"]
    # Admin endpoints use the same hook: details for admins, names only for others.
    plain = await (await gw.client.get("/-/plugins", headers={"Authorization": "Bearer good"})).json()
    assert plain["plugins"][0] == {"name": "core"}
    admin = await (await gw.client.get("/-/plugins", headers={"Authorization": "Bearer admin"})).json()
    assert "proxy_route" in admin["plugins"][0]["hooks"]
    assert (await gw.client.get("/-/plugins")).status == 401


async def test_auth_failing_with_a_bug_fails_closed(floodgate, mock_upstream):
    class Broken:
        name = "broken"

        @hookimpl
        def proxy_authenticate(self, ctx):
            raise KeyError("boom")

    gw = await floodgate(plugins=[Broken()])
    with pytest.raises(openai.InternalServerError) as info:
        await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert "boom" not in info.value.message and "Traceback" not in info.value.message
    assert mock_upstream.stats.total == 0


async def test_hook_proxy_authorize(floodgate):
    seen: list[tuple[str, str, str | None]] = []

    class OnlyCheapModels:
        name = "only-cheap"

        @hookimpl
        def proxy_authenticate(self, ctx):
            # Runs before the body is read: the model is not known yet.
            seen.append(("authenticate", ctx.kind.value, ctx.model))

        @hookimpl
        async def proxy_authorize(self, ctx):
            seen.append(("authorize", ctx.kind.value, ctx.model))
            if ctx.model == "gpt-4.1":
                raise Rejection(403, "too expensive for this caller", code="model_not_allowed", param="model")

    gw = await floodgate(plugins=[OnlyCheapModels()])
    client = gw.openai()
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
    # Passthrough is authorised too (a JSON body's model is read for it).
    response = await gw.client.post("/v1/images/generations", json={"model": "gpt-4.1", "prompt": "a cat"})
    assert response.status == 403
    assert seen == [("authenticate", "model", None), ("authorize", "model", "gpt-4.1"),
                    ("authenticate", "model", None), ("authorize", "model", "deepseek-v3.2"),
                    ("authenticate", "passthrough", None), ("authorize", "passthrough", "gpt-4.1")]
    assert gw.mock.stats.total == 1


async def test_hook_proxy_short_circuit(floodgate, mock_upstream, openai_schema):
    class Canned:
        name = "canned"

        @hookimpl
        async def proxy_short_circuit(self, ctx):
            if "营业时间" in ctx.last_user_text():
                return Reply("我们的客服时间是每天 9:00-21:00。", source="test/hours")

    gw = await floodgate(plugins=[Canned()])
    client = gw.openai()
    ask = [{"role": "user", "content": "你们营业时间是?"}]
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=ask)
    assert raw.headers["x-floodgate-short-circuit"] == "test/hours"
    assert raw.parse().choices[0].message.content == "我们的客服时间是每天 9:00-21:00。"
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": ask})
    openai_schema("CreateChatCompletionResponse", await resp.json())

    stream = await client.chat.completions.create(model="gpt-4.1", messages=ask, stream=True,
                                                  stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "我们的客服时间是每天 9:00-21:00。"
    assert chunks[-1].usage.completion_tokens > 0
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": ask, "stream": True})
    for line in (await resp.text()).split("\n\n"):
        if line.startswith("data: {"):
            import json
            openai_schema("CreateChatCompletionStreamResponse", json.loads(line[6:]))

    completion = await client.completions.create(model="gpt-4.1", prompt="营业时间")
    assert completion.choices[0].text.startswith("我们的客服时间")
    resp = await gw.client.post("/v1/completions", json={"model": "gpt-4.1", "prompt": "营业时间"})
    openai_schema("CreateCompletionResponse", await resp.json())
    assert mock_upstream.stats.total == 0


async def test_hook_proxy_route(floodgate, mock_upstream):
    class Cheapest:
        name = "cheapest"

        @hookimpl
        def proxy_route(self, ctx):
            if ctx.model == "auto":
                target = ctx.config.target("deepseek-v3.2").with_overrides(max_tokens=7)
                return Route("cheap", (target,))

        @hookimpl
        def proxy_route_names(self, config):
            return ["auto"]

    gw = await floodgate(plugins=[Cheapest()])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.headers["x-floodgate-route"] == "cheap" and raw.headers["x-floodgate-model"] == "deepseek-v3.2"
    sent = mock_upstream.stats.requests[-1].body
    assert sent["model"] == "deepseek-v3.2" and sent["max_tokens"] == 7
    # Without a plugin the core's default routes catalogue models only.
    with pytest.raises(openai.NotFoundError):
        await (await floodgate()).openai().chat.completions.create(model="auto", messages=MESSAGES)


async def test_hook_proxy_admit(floodgate, mock_upstream):
    class Closed:
        name = "closed"

        @hookimpl
        async def proxy_admit(self, ctx):
            ctx.response_headers["x-admit"] = "checked"
            if ctx.principal.name != "shop-bot":
                raise Rejection(429, "shop closed", code="rate_limit_exceeded", headers={"retry-after": "3"})

    gw = await floodgate(plugins=[KeyAuth(), Closed()])
    raw = await gw.openai(api_key="good").chat.completions.with_raw_response.create(model="gpt-4.1",
                                                                                     messages=MESSAGES)
    assert raw.headers["x-admit"] == "checked"
    before = mock_upstream.stats.total
    with pytest.raises(openai.RateLimitError) as info:
        await gw.openai(api_key="admin").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "3"
    assert info.value.response.headers["x-admit"] == "checked"
    assert mock_upstream.stats.total == before


async def test_hook_proxy_predicted_wait(floodgate, mock_upstream):
    class Busy:
        name = "busy"

        @hookimpl
        def proxy_predicted_wait(self, ctx, route):
            return 0.5 if route.name == "gpt-4.1" else None

    class Calm:
        name = "calm"

        @hookimpl
        async def proxy_predicted_wait(self, ctx, route):
            return 0.1

    class Asker:
        name = "asker"
        answers: list = []

        @hookimpl
        def proxy_startup(self, app):
            self.hooks = app[proxy.HOOKS]

        @hookimpl
        async def proxy_admit(self, ctx):
            for model in ("gpt-4.1", "deepseek-v3.2"):
                route = await self.hooks.preview_route(ctx, model)
                self.answers.append((route.name, await self.hooks.predicted_wait(ctx, route)))

    asker = Asker()
    gw = await floodgate(plugins=[Busy(), Calm(), asker])
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert asker.answers == [("gpt-4.1", 0.5), ("deepseek-v3.2", 0.1)]  # the largest answer wins
    asker.answers.clear()
    gw = await floodgate(plugins=[asker])
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert asker.answers == [("gpt-4.1", None), ("deepseek-v3.2", None)]  # nobody limits anything


async def test_hook_proxy_unavailable(floodgate, mock_upstream):
    class Tripped:
        name = "tripped"

        @hookimpl
        def proxy_unavailable(self, ctx, target):
            return "circuit open" if target.model == "gpt-4.1" and ctx.principal.name == "anonymous" else None

    class Chooser:
        """Places each request on the first target no plugin calls unavailable."""

        name = "chooser"

        @hookimpl
        def proxy_startup(self, app):
            self.hooks = app[proxy.HOOKS]

        @hookimpl
        def proxy_admit(self, ctx):
            usable = [t for t in ctx.route.targets if self.hooks.unavailable(ctx, t) is None]
            ctx.route = Route(ctx.route.name, tuple(usable))

    gw = await floodgate(plugins=[Tripped(), Chooser()], models={
        "gpt-4.1": {"fallbacks": ["deepseek-v3.2"]}, "deepseek-v3.2": {}})
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
    assert raw.headers["x-floodgate-model"] == "deepseek-v3.2"
    assert mock_upstream.stats.by_model["gpt-4.1"] == 0


async def test_hook_proxy_attempt_started(floodgate, mock_upstream):
    class Counting:
        name = "counting"
        events: list = []

        @hookimpl
        def proxy_attempt_started(self, ctx, attempt):
            assert ctx.attempts[-1] is attempt and attempt.status is None and attempt.ended == 0.0
            self.events.append(("started", attempt.target.model, len(ctx.attempts)))

        @hookimpl
        def proxy_attempt_result(self, ctx, attempt):
            self.events.append(("result", attempt.target.model, attempt.error))

    counting = Counting()
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=503)
    gw = await floodgate(plugins=[counting, TwiceThenFallback()])
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    # Every attempt, retries and fallbacks included, announced before it is sent.
    assert counting.events == [("started", "gpt-4.1", 1), ("result", "gpt-4.1", "http"),
                               ("started", "gpt-4.1", 2), ("result", "gpt-4.1", None)]
    counting.events.clear()
    hedged = await floodgate(plugins=[counting, HedgeOnce()])
    mock_upstream.set_behaviour("gpt-4.1", first_token_delay_ms=3000)
    stream = await hedged.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    assert [c async for c in stream]
    assert [e for e in counting.events if e[0] == "started"] == [("started", "gpt-4.1", 1),
                                                                ("started", "gemini-2.5-flash", 2)]


async def test_hook_proxy_attempt_result(floodgate, mock_upstream):
    class Learner:
        name = "learner"
        seen: list = []

        @hookimpl
        def proxy_attempt_result(self, ctx, attempt):
            headers = attempt.upstream_headers or {}
            self.seen.append((attempt.error, attempt.status, attempt.first_event is not None,
                              headers.get("x-ratelimit-limit-requests"), attempt.committed))

    class Twice:
        name = "twice"

        @hookimpl
        def proxy_next_attempt(self, ctx):
            return STOP if ctx.attempts and (ctx.attempts[-1].ok or len(ctx.attempts) > 1) \
                else Attempt(ctx.route.targets[0])

    learner = Learner()
    mock_upstream.set_quota("*", requests_per_minute=600)
    mock_upstream.set_behaviour("gpt-4.1", fail_first=1, error_status=503)
    gw = await floodgate(plugins=[learner, Twice()])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
    # Called as each outcome became known: the failure (before the retry), then the answer
    # (before it was sent: not committed yet); the provider's headers reach plugins, not the client.
    assert learner.seen == [("http", 503, False, "600", False), (None, 200, True, "600", False)]
    assert "x-ratelimit-limit-requests" not in raw.headers
    stream = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    assert [c async for c in stream] and learner.seen[-1] == (None, 200, True, "600", False)


class TwiceThenFallback:
    name = "twice"

    @hookimpl
    def proxy_next_attempt(self, ctx):
        if ctx.attempts and ctx.attempts[-1].ok:
            return STOP
        if len(ctx.attempts) < 2:
            return Attempt(ctx.route.targets[0], delay=0.01)
        if len(ctx.attempts) < 3:
            return Attempt(ctx.config.target("gemini-2.5-flash"))
        return STOP


async def test_hook_proxy_next_attempt(floodgate, mock_upstream):
    mock_upstream.set_behaviour("gpt-4.1", fail_first=5, error_status=503)
    gw = await floodgate(plugins=[TwiceThenFallback()])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
    assert raw.headers["x-floodgate-attempts"] == "3"
    assert raw.headers["x-floodgate-model"] == "gemini-2.5-flash"
    assert mock_upstream.stats.by_model["gpt-4.1"] == 2


class HedgeOnce:
    """Hedges every first attempt after 50 ms with Gemini Flash."""

    name = "hedger"

    def __init__(self) -> None:
        self.asked: list[proxy.AttemptRecord] = []

    @hookimpl(tryfirst=True)
    def proxy_next_attempt(self, ctx):
        if not ctx.attempts:
            return Attempt(ctx.route.targets[0], hedge_after=0.05)
        return STOP

    @hookimpl
    def proxy_hedge(self, ctx, attempt):
        self.asked.append(attempt)
        return Attempt(ctx.config.target("gemini-2.5-flash"))


async def test_hook_proxy_hedge(floodgate, mock_upstream):
    recorder, hedger = Recorder(), HedgeOnce()
    mock_upstream.set_behaviour("gpt-4.1", first_token_delay_ms=5000)  # the role chunk, then nothing for 5 s
    gw = await floodgate(plugins=[hedger, recorder])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES,
                                                                         stream=True)
    assert raw.headers["x-floodgate-model"] == "gemini-2.5-flash"
    assert "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
    [ctx] = recorder.finished
    slow, extra = ctx.attempts
    assert hedger.asked == [slow] and ctx.target.model == "gemini-2.5-flash"
    assert (slow.hedged, slow.hedge, slow.error, slow.committed) == (True, False, "cancelled", False)
    assert slow.usage.prompt_tokens > 0 and slow.usage_estimated  # the upstream saw the prompt
    assert (extra.hedged, extra.hedge, extra.error, extra.committed) == (True, True, None, True)
    assert extra.usage == ctx.usage and not extra.usage_estimated
    text = await gw.metrics()
    assert 'floodgate_hedges_total{model="gemini-2.5-flash"} 1.0' in text
    assert 'floodgate_hedge_wins_total{model="gemini-2.5-flash"} 1.0' in text
    # A first attempt that answers within hedge_after is never hedged.
    mock_upstream.set_behaviour("gpt-4.1")
    await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert len(hedger.asked) == 1 and len(recorder.finished[-1].attempts) == 1


async def test_hook_proxy_overloaded(floodgate, mock_upstream):
    class Queueing:
        name = "queueing"

        @hookimpl
        def proxy_overloaded(self, ctx):
            return "ratelimit queue"

    recorder, hedger = Recorder(), HedgeOnce()
    mock_upstream.set_behaviour("gpt-4.1", first_token_delay_ms=150)
    gw = await floodgate(plugins=[hedger, recorder, Queueing()])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES,
                                                                         stream=True)
    assert [c async for c in raw.parse()]
    assert raw.headers["x-floodgate-model"] == "gpt-4.1"  # slow, but never hedged into an overload
    assert hedger.asked == [] and len(recorder.finished[0].attempts) == 1


async def test_hook_proxy_response(floodgate):
    class Stamp:
        name = "stamp"

        @hookimpl
        def proxy_response(self, ctx, response):
            data = dict(response.data)
            data["system_fingerprint"] = "floodgate-test"
            response.replace(data)
            ctx.response_headers["x-stamped"] = "yes"

    gw = await floodgate(plugins=[Stamp()])
    raw = await gw.openai().chat.completions.with_raw_response.create(model="gpt-4.1", messages=MESSAGES)
    assert raw.headers["x-stamped"] == "yes"
    assert raw.parse().system_fingerprint == "floodgate-test"


async def test_hook_proxy_stream_chunk(floodgate, monkeypatch):
    class DropRole:
        name = "droprole"

        @hookimpl
        def proxy_stream_chunk(self, ctx, chunk):
            data = chunk.data
            if data and data.get("choices") and data["choices"][0]["delta"].get("role"):
                chunk.drop = True

    gw = await floodgate(plugins=[DropRole()])
    stream = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    chunks = [c async for c in stream]
    assert all(not c.choices[0].delta.role for c in chunks)

    # Nobody implements it: events are relayed without ever being wrapped or parsed.
    import proxy.request.sse
    monkeypatch.setattr(proxy.request.sse, "StreamChunk", None)
    gw = await floodgate()
    stream = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    assert len([c async for c in stream]) > 3


async def test_hook_proxy_finished(floodgate, mock_upstream):
    recorder = Recorder()
    gw = await floodgate(plugins=[recorder, KeyAuth()], upstream={"timeouts": {"first_byte": 0.3, "total": 1}})
    client = gw.openai(api_key="good")
    await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        await gw.openai(api_key="nope").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    mock_upstream.set_behaviour("gpt-4.1", hang=True)
    with pytest.raises(openai.APIStatusError):
        await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    statuses = [ctx.status for ctx in recorder.finished]
    assert statuses == [200, 401, 504]
    assert recorder.finished[0].usage.completion_tokens == 16 and not recorder.finished[0].usage_estimated
    assert recorder.finished[2].attempts[0].error == "timeout"


async def test_hook_proxy_status(floodgate, mock_upstream):
    class Rows:
        name = "rows"

        @hookimpl
        def proxy_status(self):
            return {"routes": {"simple": {"queue": 3}}, "mine": [1, 2]}

    class MoreRows:
        name = "more_rows"

        @hookimpl
        async def proxy_status(self):
            return {"routes": {"simple": {"degraded": "faq"}, "complex": {"queue": 0}}}

    gw = await floodgate(plugins=[Rows(), MoreRows()])
    response = await gw.client.get("/-/status")
    doc = await response.json()
    assert response.status == 200
    assert doc["routes"] == {"simple": {"queue": 3, "degraded": "faq"}, "complex": {"queue": 0}}
    assert doc["mine"] == [1, 2] and doc["gateway"]["ready"] is True and doc["gateway"]["in_flight"] >= 0
    # Admin only, once keys exist.
    gw = await floodgate(plugins=[Rows(), KeyAuth()])
    assert (await gw.client.get("/-/status", headers={"Authorization": "Bearer good"})).status == 403
    assert (await gw.client.get("/-/status", headers={"Authorization": "Bearer admin"})).status == 200


async def test_finished_runs_once_on_client_disconnect(floodgate, mock_upstream):
    recorder = Recorder()
    gw = await floodgate(plugins=[recorder])
    mock_upstream.set_behaviour("gpt-4.1", tokens_per_second=40, completion_tokens=200)
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": "gpt-4.1", "messages": MESSAGES, "stream": True})
    for _ in range(8):  # four events: role + three tokens
        await resp.content.readline()
    resp.close()  # the client goes away mid-stream
    for _ in range(100):
        if recorder.finished:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)
    [ctx] = recorder.finished
    assert ctx.client_disconnected and ctx.status == 499
    assert ctx.usage_estimated and 0 < ctx.usage.completion_tokens < 200
    # The upstream request was cancelled too: the mock stopped streaming.
    assert mock_upstream.stats.total == 1


async def test_observer_failure_changes_nothing(floodgate, caplog):
    class Broken:
        name = "broken"

        @hookimpl
        def proxy_finished(self, ctx):
            raise RuntimeError("observer bug")

    gw = await floodgate(plugins=[Broken()])
    reply = await gw.openai().chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert reply.choices[0].message.content
    assert "observer bug" in caplog.text


# -- discovery ------------------------------------------------------------------

def test_unknown_hook_fails_start_up():
    class Typo:
        name = "typo"

        @hookimpl
        def proxy_authenticat(self, ctx):
            return None

    with pytest.raises(ConfigErrors) as info:
        create_app(config_from_dict(mock_config("http://127.0.0.1:9/v1")), plugins=[Typo()], builtins=(),
                   entry_points=False)
    assert "proxy_authenticat" in str(info.value)


async def test_dotted_path_entry_point_and_disabled(floodgate, tmp_path, monkeypatch):
    (tmp_path / "shop_plugin.py").write_text(
        "from proxy import hookimpl, Reply\n"
        "class ShopPlugin:\n"
        "    name = 'shop'\n"
        "    @hookimpl\n"
        "    def proxy_short_circuit(self, ctx):\n"
        "        return Reply('hi from shop', source='shop/all')\n"
        "floodgate_plugin = ShopPlugin\n")
    (tmp_path / "ep_plugin.py").write_text(
        "from proxy import hookimpl\n"
        "__version__ = '1.2.3'\n"
        "@hookimpl\n"
        "def proxy_finished(ctx):\n"
        "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(proxy.loader, "_entry_point_refs", lambda: [("ep", "ep_plugin")])
    cfg = mock_config("http://127.0.0.1:9/v1")
    cfg["plugins"] = {"modules": ["shop_plugin"], "disabled": ["accesslog"]}
    cfg["server"]["access_log"] = True
    app = create_app(config_from_dict(cfg), builtins=())
    infos = {i.name: i for i in app[proxy.keys.PLUGINS]}
    assert infos["shop"].source == "config" and infos["shop"].hooks == ("proxy_short_circuit",)
    assert infos["ep_plugin"].source == "entrypoint" and infos["ep_plugin"].version == "1.2.3"
    assert "accesslog" not in infos and "core" in infos
    cfg["plugins"]["disabled"] = ["core"]
    with pytest.raises(ConfigErrors) as info:
        create_app(config_from_dict(cfg), builtins=())
    assert "cannot be disabled" in str(info.value)
    sys.modules.pop("shop_plugin", None)
    sys.modules.pop("ep_plugin", None)


async def test_plugins_endpoint_lists_core_defaults(floodgate):
    gw = await floodgate()
    data = await (await gw.client.get("/-/plugins")).json()
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["core"]["hooks"] == ["proxy_authenticate", "proxy_next_attempt", "proxy_route"]
    assert by_name["core"]["source"] == "core"
    assert by_name["metrics"]["hooks"] == ["proxy_finished"]


async def test_metrics_after_traffic(floodgate):
    gw = await floodgate()
    client = gw.openai()
    await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    stream = await client.chat.completions.create(model="gpt-4.1", messages=MESSAGES, stream=True)
    [c async for c in stream]
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MESSAGES)
    text = await gw.metrics()
    assert 'floodgate_requests_total{endpoint="chat/completions",model="gpt-4.1",status="200"} 2.0' in text
    assert 'floodgate_requests_total{endpoint="chat/completions",model="-",status="404"} 1.0' in text
    assert 'floodgate_proxy_overhead_seconds_count{endpoint="chat/completions"} 3.0' in text
    assert 'floodgate_upstream_duration_seconds_count{model="gpt-4.1",outcome="ok",upstream="main"} 2.0' in text
    assert 'floodgate_time_to_first_token_seconds_count{model="gpt-4.1"} 1.0' in text
    assert "floodgate_in_flight_requests 0.0" in text
    assert (await gw.client.get("/healthz")).status == 200
    ready = await (await gw.client.get("/readyz")).json()
    assert ready["status"] == "ready"


async def test_declared_routes_are_listed_as_models(floodgate):
    class Tiers:
        name = "tiers"

        @hookimpl
        def proxy_route_names(self, config):
            return ["auto", "simple"]

    gw = await floodgate(plugins=[Tiers()], aliases={"gpt-4o-mini": "auto"})
    client = gw.openai()
    ids = [m.id for m in (await client.models.list()).data]
    assert ids[-3:] == ["gpt-4o-mini", "auto", "simple"]
    assert (await client.models.retrieve("simple")).id == "simple"


async def test_event_loop_lag_is_measured():
    import time

    from prometheus_client import CollectorRegistry

    from proxy.metrics import CoreMetrics

    registry = CollectorRegistry()
    watcher = asyncio.create_task(CoreMetrics(registry).watch_loop_lag(interval=0.02))
    await asyncio.sleep(0.03)
    time.sleep(0.15)  # noqa: ASYNC251 - block the loop: the watcher's timer runs late
    await asyncio.sleep(0.05)
    watcher.cancel()
    count = registry.get_sample_value("floodgate_event_loop_lag_seconds_count")
    fast = registry.get_sample_value("floodgate_event_loop_lag_seconds_bucket", {"le": "0.1"})
    assert count and fast is not None and fast < count  # at least one sample was later than 100 ms


def test_a_plugins_version_comes_from_its_distribution_without_a_scan_for_local_modules(monkeypatch):
    import importlib.metadata

    import typing_extensions

    from proxy.loader import _Distributions, _version

    scans = []
    real = importlib.metadata.packages_distributions
    monkeypatch.setattr(importlib.metadata, "packages_distributions", lambda: scans.append(1) or real())
    assert _version(Configured(), _Distributions()) is None and scans == []  # a test's module: no scan
    distributions = _Distributions()
    # an installed module with no __version__ of its own: its distribution is looked up
    assert _version(typing_extensions.deprecated, distributions) == importlib.metadata.version("typing_extensions")
    assert scans == [1]


class _Deciding:
    """A plugin whose admission is deferred: it waits on ``reply`` (a store's answer)."""

    def __init__(self, name: str, refuse: bool = False) -> None:
        self.name, self.refuse = name, refuse
        self.reply: asyncio.Future[None] | None = None
        self.events: list[str] = []

    @proxy.hookimpl
    def proxy_admit(self, ctx):
        self.reply = asyncio.get_running_loop().create_future()  # the call is queued now
        self.events.append("asked")
        return proxy.Deferred(self._decide())

    async def _decide(self) -> None:
        try:
            await self.reply
        except asyncio.CancelledError:
            self.events.append("given back")
            raise
        self.events.append("decided")
        if self.refuse:
            raise proxy.Rejection(429, f"{self.name} refuses")


class _DecidingFirst(_Deciding):
    @proxy.hookimpl(tryfirst=True)
    def proxy_admit(self, ctx):
        return super().proxy_admit(ctx)


async def test_deferred_admissions_are_all_asked_before_any_is_awaited_and_the_first_refusal_wins():
    first, second = _DecidingFirst("first", refuse=True), _Deciding("second")
    h = PluginHarness(first, second)
    await h.start()
    try:
        ctx = h.context()
        admitting = asyncio.ensure_future(h.admit(ctx))
        await asyncio.sleep(0.01)
        assert first.events == ["asked"] and second.events == ["asked"]  # both asked before either answered
        second.reply.set_result(None)
        first.reply.set_result(None)
        with pytest.raises(proxy.Rejection, match="first refuses"):
            await admitting
        assert second.events == ["asked", "decided"]  # it was granted: what it took settles when finished

        ctx = h.context()
        admitting = asyncio.ensure_future(h.admit(ctx))
        await asyncio.sleep(0.01)
        first.reply.set_result(None)  # refused while the second's store has not answered
        with pytest.raises(proxy.Rejection, match="first refuses"):
            await admitting
        assert second.events[-2:] == ["asked", "given back"] and second.reply.cancelled()
    finally:
        await h.stop()
