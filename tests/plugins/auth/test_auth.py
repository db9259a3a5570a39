"""The auth plugin: API keys, model allow-lists, admin key, secrets kept out of sight."""

from __future__ import annotations

import argparse
import hashlib
import logging
import re
from typing import Any

import openai
import pytest
from aiohttp import web

import proxy
from plugins.auth import AuthPlugin

SHOP_KEY = "fg-shop-secret-0123456789abcdef"
STAFF_KEY = "fg-staff-secret-fedcba9876543210"
ADMIN_KEY = "fg-admin-secret-0000111122223333"
WRONG_KEY = "fg-wrong-secret-9999888877776666"
MESSAGES = [{"role": "user", "content": "包邮吗?"}]


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


AUTH = {
    "admin_key_sha256": sha(ADMIN_KEY),
    "keys": [
        {"name": "shop", "key": SHOP_KEY, "models": ["deepseek-*", "gpt-4.1"], "priority": 5,
         "rate_limit": {"requests_per_second": 2, "burst": 4}, "budget": {"daily_usd": 1.5},
         "force_tier": True},
        {"name": "staff", "sha256": sha(STAFF_KEY)},
    ],
}


class Probe:
    """Records the principal of every finished request; adds an admin-only endpoint."""

    name = "probe"

    def __init__(self) -> None:
        self.principals: list[proxy.Principal] = []

    @proxy.hookimpl
    def proxy_finished(self, ctx: proxy.RequestContext) -> None:
        self.principals.append(ctx.principal)

    @proxy.hookimpl
    def proxy_add_routes(self, app: web.Application) -> None:
        async def secret_page(request: web.Request) -> web.Response:
            from proxy.errors import error_response

            try:
                principal = await proxy.require_admin(request)
            except proxy.Rejection as rejection:
                return error_response(rejection)
            return web.json_response({"caller": principal.name})

        app.router.add_get("/-/probe", secret_page)


class AttemptCounter:
    """An httpx client that counts the SDK's HTTP attempts (and can drop its key)."""

    def __init__(self, *, drop_key: bool = False) -> None:
        self.attempts = 0

        async def on_request(request: Any) -> None:
            self.attempts += 1
            if drop_key:
                del request.headers["Authorization"]

        self.client = openai.DefaultAsyncHttpxClient(event_hooks={"request": [on_request]})


async def start(floodgate: Any, auth: dict[str, Any] | None = AUTH, **kwargs: Any) -> Any:
    plugin_settings = {"auth": auth} if auth is not None else {}
    return await floodgate(plugins=[AuthPlugin(), *kwargs.pop("plugins", ())], plugin_settings=plugin_settings,
                           **kwargs)


async def test_valid_key_passes_and_upstream_gets_its_own_key(floodgate, mock_upstream):
    gw = await start(floodgate)
    r = await gw.openai(api_key=SHOP_KEY).chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
    assert r.choices[0].message.content
    sent = mock_upstream.stats.requests[-1].headers
    assert sent["Authorization"] == "Bearer sk-upstream-test"
    assert SHOP_KEY not in str(dict(sent))


@pytest.mark.parametrize("case", ["missing", "wrong"])
async def test_missing_or_wrong_key_is_401_and_not_retried(floodgate, mock_upstream, openai_schema, case):
    gw = await start(floodgate)
    counter = AttemptCounter(drop_key=case == "missing")
    client = gw.openai(api_key=WRONG_KEY, max_retries=2, http_client=counter.client)
    with pytest.raises(openai.AuthenticationError) as info:
        await client.chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
    error = info.value
    assert error.status_code == 401 and error.code == "invalid_api_key"
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.headers["www-authenticate"].startswith("Bearer")
    openai_schema("ErrorResponse", error.response.json())
    assert WRONG_KEY not in error.response.text and WRONG_KEY[3:12] not in error.response.text
    assert ("Incorrect API key provided" if case == "wrong" else "didn't provide an API key") in error.message
    assert counter.attempts == 1  # the SDK did not repeat it
    assert mock_upstream.stats.total == 0
    await counter.client.aclose()


async def test_sha256_only_key_and_azure_header(floodgate, mock_upstream):
    gw = await start(floodgate)
    r = await gw.openai(api_key=STAFF_KEY).chat.completions.create(model="claude-sonnet-4.5", messages=MESSAGES)
    assert r.model == "claude-sonnet-4.5"
    # Azure OpenAI SDKs send the key in `api-key` instead of Authorization.
    body = {"model": "gpt-4.1", "messages": MESSAGES}
    resp = await gw.client.post("/v1/chat/completions", json=body, headers={"api-key": STAFF_KEY})
    assert resp.status == 200
    resp = await gw.client.post("/v1/chat/completions", json=body, headers={"api-key": WRONG_KEY})
    assert resp.status == 401
    # A scheme other than Bearer is not a key.
    resp = await gw.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Basic {STAFF_KEY}"})
    assert resp.status == 401
    assert mock_upstream.stats.total == 2


async def test_model_allow_list_with_globs(floodgate, mock_upstream):
    gw = await start(floodgate, aliases={"cheap": "deepseek-v3.2"})
    shop = gw.openai(api_key=SHOP_KEY)
    for model in ("deepseek-v3.2", "gpt-4.1"):
        assert (await shop.chat.completions.create(model=model, messages=MESSAGES)).model == model
    for model in ("claude-sonnet-4.5", "gpt-4.1-mini", "cheap"):  # globs match the name the client asked for
        with pytest.raises(openai.PermissionDeniedError) as info:
            await shop.chat.completions.create(model=model, messages=MESSAGES)
        assert info.value.code == "model_not_allowed"
        assert info.value.response.headers["x-should-retry"] == "false"
        assert "'shop'" in info.value.message and SHOP_KEY not in info.value.response.text
    assert mock_upstream.stats.total == 2
    # No model in the request: the list of models is not refused.
    assert [m.id async for m in shop.models.list()]
    # Another key without a list may use any model.
    staff = gw.openai(api_key=STAFF_KEY)
    assert (await staff.chat.completions.create(model="claude-sonnet-4.5", messages=MESSAGES)).model


async def test_model_allow_list_covers_passthrough_bodies(floodgate, mock_upstream):
    gw = await start(floodgate)
    headers = {"Authorization": f"Bearer {SHOP_KEY}"}
    resp = await gw.client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "a cat"},
                                headers=headers)
    assert resp.status == 403 and (await resp.json())["error"]["code"] == "model_not_allowed"
    resp = await gw.client.post("/v1/audio/transcriptions", data=b"--x\r\n", headers=headers)
    assert resp.status == 403  # not JSON: its model cannot be checked, so a limited key is refused
    assert mock_upstream.stats.total == 0
    resp = await gw.client.post("/v1/images/generations", json={"model": "dall-e-3", "prompt": "a cat"},
                                headers={"Authorization": f"Bearer {STAFF_KEY}"})
    assert resp.status != 403 and mock_upstream.stats.total == 1


async def test_principal_carries_the_per_key_settings(floodgate):
    probe = Probe()
    gw = await start(floodgate, plugins=[probe])
    await gw.openai(api_key=SHOP_KEY).chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
    await gw.openai(api_key=STAFF_KEY).chat.completions.create(model="deepseek-v3.2", messages=MESSAGES)
    shop, staff = probe.principals
    assert shop.name == "shop" and not shop.admin
    assert shop.policy == proxy.KeyPolicy(
        models=("deepseek-*", "gpt-4.1"), priority=5, rate_limit=proxy.RateLimits(requests_per_second=2.0, burst=4),
        budget=proxy.Budget(daily_usd=1.5), force_tier=True)
    assert shop.policy.budget.model_fields_set == {"daily_usd"}  # monthly falls back to the default
    assert staff.name == "staff" and staff.policy == proxy.UNRESTRICTED


async def test_admin_key_and_admin_endpoints(floodgate):
    gw = await start(floodgate, plugins=[Probe()])

    async def get(path: str, key: str | None) -> tuple[int, Any]:
        resp = await gw.client.get(path, headers={"Authorization": f"Bearer {key}"} if key else {})
        return resp.status, await resp.json()

    status, body = await get("/-/plugins", ADMIN_KEY)
    assert status == 200
    auth = next(p for p in body["plugins"] if p["name"] == "auth")
    # A plugin object reports its class's module.
    assert auth["module"] == "plugins.auth.plugin" and "proxy_authenticate" in auth["hooks"]
    status, body = await get("/-/plugins", SHOP_KEY)
    assert status == 200 and all(set(p) == {"name"} for p in body["plugins"])
    assert {"auth", "probe"} <= {p["name"] for p in body["plugins"]}
    assert (await get("/-/plugins", None))[0] == 401
    assert (await get("/-/plugins", WRONG_KEY))[0] == 401
    # An endpoint guarded by require_admin: only the admin key passes.
    assert await get("/-/probe", ADMIN_KEY) == (200, {"caller": "admin"})
    status, body = await get("/-/probe", STAFF_KEY)
    assert status == 403 and body["error"]["code"] == "admin_required"
    assert (await get("/-/probe", None))[0] == 401
    # The admin key is a key like the others on the API, without a model list.
    r = await gw.openai(api_key=ADMIN_KEY).chat.completions.create(model="claude-sonnet-4.5", messages=MESSAGES)
    assert r.model == "claude-sonnet-4.5"


async def test_admin_key_alone_guards_only_admin_endpoints(floodgate, mock_upstream):
    probe = Probe()
    gw = await start(floodgate, {"admin_key": ADMIN_KEY}, plugins=[probe])
    r = await gw.openai(api_key="anything-at-all").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert r.choices and probe.principals[-1] is proxy.ANONYMOUS
    assert (await gw.client.get("/-/probe")).status == 401
    resp = await gw.client.get("/-/probe", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert resp.status == 200


async def test_without_keys_the_plugin_does_nothing(floodgate, mock_upstream):
    probe = Probe()
    gw = await start(floodgate, None, plugins=[probe])
    r = await gw.openai(api_key="whatever").chat.completions.create(model="gpt-4.1", messages=MESSAGES)
    assert r.choices and probe.principals[-1] is proxy.ANONYMOUS
    resp = await gw.client.get("/-/plugins")  # anonymous: details, as without the plugin
    assert "hooks" in (await resp.json())["plugins"][0]
    assert "floodgate_auth_requests_total{" not in await gw.metrics()


async def test_secrets_stay_out_of_logs_metrics_and_bodies(floodgate, caplog):
    caplog.set_level(logging.DEBUG)
    gw = await start(floodgate, server={"access_log": True, "log_level": "debug"})
    bodies = []
    for key in (SHOP_KEY, STAFF_KEY, ADMIN_KEY, WRONG_KEY):
        client = gw.openai(api_key=key)
        for model in ("deepseek-v3.2", "claude-sonnet-4.5"):
            try:
                r = await client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
                bodies.append(r.text)
            except openai.APIStatusError as exc:
                bodies.append(exc.response.text)
    resp = await gw.client.get("/-/plugins", headers={"Authorization": f"Bearer {WRONG_KEY}"})
    bodies.append(await resp.text())
    metrics = await gw.metrics()
    assert "key=shop" in caplog.text  # the access log names callers by key name
    for secret in (SHOP_KEY, STAFF_KEY, ADMIN_KEY, WRONG_KEY):
        for part in (secret, secret[3:15], secret[-12:], sha(secret)):
            assert part not in caplog.text
            assert part not in metrics
            assert all(part not in body for body in bodies)

    def count(key: str, outcome: str) -> float:
        found = re.search(rf'floodgate_auth_requests_total{{key="{key}",outcome="{outcome}"}} (\S+)', metrics)
        return float(found.group(1)) if found else 0.0

    # "ok": the key was recognised (from the headers); the forbidden model is refused after that.
    assert count("shop", "ok") == 2 and count("shop", "forbidden_model") == 1
    assert count("staff", "ok") == 2 and count("admin", "ok") == 2
    assert count("-", "invalid") == 3  # two API calls and /-/plugins with the wrong key
    await gw.client.post("/v1/chat/completions", json={"model": "gpt-4.1", "messages": MESSAGES})
    assert re.search(r'floodgate_auth_requests_total\{key="-",outcome="missing"\} 1\.0', await gw.metrics())


def _errors(yaml_text: str, env: dict[str, str] | None = None) -> list[proxy.ConfigError]:
    config = proxy.parse_config(yaml_text, source="config.yaml", env=env or {})
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.create_app(config, plugins=[AuthPlugin()], builtins=(), entry_points=False)
    return info.value.errors


BASE_YAML = """\
upstreams:
  main: {base_url: "http://127.0.0.1:1"}
models:
  gpt-4.1: {upstream: main}
plugins:
  auth:
"""


def test_config_errors_name_the_key_path():
    errors = _errors(BASE_YAML + f"""\
    keys:
      - {{name: shop, key: "{SHOP_KEY}"}}
      - {{name: shop, key: "{STAFF_KEY}"}}
      - {{name: team, sha256: "{sha(SHOP_KEY)}"}}
      - {{name: both, key: "{ADMIN_KEY}", sha256: "{sha(WRONG_KEY)}"}}
      - {{name: neither}}
""")
    found = {e.path: e for e in errors}
    assert set(found) == {"plugins.auth.keys.1.name", "plugins.auth.keys.2.sha256", "plugins.auth.keys.3.sha256",
                          "plugins.auth.keys.4"}
    assert "duplicate key name 'shop'" in found["plugins.auth.keys.1.name"].message
    assert "same secret as keys.0.key" in found["plugins.auth.keys.2.sha256"].message
    assert "not both" in found["plugins.auth.keys.3.sha256"].message
    assert "either key" in found["plugins.auth.keys.4"].message
    assert found["plugins.auth.keys.4"].line == 12
    assert "config.yaml:10 plugins.auth.keys.2.sha256" in str(found["plugins.auth.keys.2.sha256"])
    for secret in (SHOP_KEY, STAFF_KEY, ADMIN_KEY, WRONG_KEY):
        assert all(secret not in str(e) for e in errors)


def test_config_errors_of_field_values():
    errors = _errors(BASE_YAML + """\
    admin_key: short
    keys:
      - {name: a, key: 12345678901}
      - {name: "has space", sha256: abc}
      - {name: admin, key: "${MISSING_KEY:-}"}
      - {name: b, sha256: "B_SHA", models: [], rate_limit: {burst: 0, requests_per_second: -1, tpm: 5}}
      - {name: c, sha256: "C_SHA", budget: {daily_usd: -1}, priority: high, force_tier: maybe}
""".replace("B_SHA", sha("b" * 20)).replace("C_SHA", sha("c" * 20)))
    messages = {e.path: e.message for e in errors}
    assert messages["plugins.auth.admin_key"] == "must be at least 8 characters"
    assert messages["plugins.auth.keys.0.key"].startswith("must be a string")
    assert "12345678901" not in str(errors)  # a secret of the wrong type is not echoed either
    assert messages["plugins.auth.keys.1.name"].startswith("must be 1-64 characters")
    assert messages["plugins.auth.keys.1.sha256"].startswith("must be 64 hex characters")
    assert "reserved" in messages["plugins.auth.keys.2.name"]
    assert "environment variable" in messages["plugins.auth.keys.2.key"]
    assert "at least one model" in messages["plugins.auth.keys.3.models"]
    assert messages["plugins.auth.keys.3.rate_limit.burst"] == "must be greater than 0"
    assert messages["plugins.auth.keys.3.rate_limit.requests_per_second"] == "must be greater than 0"
    assert messages["plugins.auth.keys.3.rate_limit.tpm"].startswith("unknown key")
    assert "plugins.auth.keys.4.budget.daily_usd" in messages
    assert "plugins.auth.keys.4.priority" in messages and "plugins.auth.keys.4.force_tier" in messages


async def test_key_from_environment_variable(floodgate):
    config = proxy.parse_config(BASE_YAML.replace("http://127.0.0.1:1", "http://127.0.0.1:9") + """\
    keys:
      - {name: shop, key: "${SHOP_BOT_KEY}"}
""", env={"SHOP_BOT_KEY": SHOP_KEY})
    app = proxy.create_app(config, plugins=[AuthPlugin()], builtins=(), entry_points=False)
    assert app[proxy.CONFIG] is config
    with pytest.raises(proxy.ConfigErrors) as info:
        proxy.parse_config(BASE_YAML + """\
    keys:
      - {name: shop, key: "${SHOP_BOT_KEY}"}
""", env={})
    errors = info.value.errors
    assert errors[0].path == "plugins.auth.keys.0.key" and "SHOP_BOT_KEY is not set" in errors[0].message


def key_command(capsys: Any, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="floodgate")
    subparsers = parser.add_subparsers(dest="command")
    AuthPlugin().proxy_add_commands(subparsers=subparsers)
    args = parser.parse_args(list(argv))
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


async def test_key_new_prints_a_key_and_its_config_entry(floodgate, capsys):
    status, out, _ = key_command(capsys, "key", "new", "--name", "shop-bot")
    assert status == 0
    key = re.search(r"^\s+(fg-[A-Za-z0-9_-]{43})$", out, re.MULTILINE).group(1)
    entry = re.search(r"^\s+(- \{name: shop-bot, sha256: ([0-9a-f]{64})\})$", out, re.MULTILINE)
    assert entry.group(2) == sha(key)
    assert "FLOODGATE_KEY_SHOP_BOT" in out and '"${FLOODGATE_KEY_SHOP_BOT}"' in out
    assert key_command(capsys, "key", "new", "--name", "shop-bot")[1] != out  # random every time
    # The printed entry, pasted into a config, accepts the printed key.
    gw = await floodgate(plugins=[AuthPlugin()], plugin_settings={"auth": {"keys": [
        {"name": "shop-bot", "sha256": entry.group(2)}]}})
    resp = await gw.client.get("/-/plugins", headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 200


def test_key_command_help_and_bad_names(capsys):
    parser = argparse.ArgumentParser(prog="floodgate")
    AuthPlugin().proxy_add_commands(subparsers=parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["key", "new", "--help"])
    out = capsys.readouterr().out
    assert "--name" in out and "SHA-256" in out
    status, _, err = key_command(capsys, "key", "new", "--name", "bad name")
    assert status == 2 and "must be 1-64 characters" in err
    assert key_command(capsys, "key", "new", "--name", "admin")[0] == 2
    status, out, _ = key_command(capsys, "key")
    assert status == 2 and "new" in out
