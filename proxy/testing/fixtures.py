"""The ``mock_upstream`` and ``floodgate`` fixtures, ``mock_config`` and ``RunningGateway``.

Loaded by pytest through :mod:`proxy.testing` (the ``pytest11`` entry point), which re-exports them.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from proxy.app import create_app
from proxy.config import Config, config_from_dict, parse_config
from proxy.mock import MockSettings, MockUpstream

#: The catalogue used by :func:`mock_config`, with real list prices (USD per million tokens).
MOCK_MODELS: dict[str, dict[str, Any]] = {
    "deepseek-v3.2": {"price": {"input": 0.28, "output": 0.42, "cached_input": 0.028}},
    "gemini-2.5-flash": {"price": {"input": 0.30, "output": 2.50, "cached_input": 0.03}},
    "gpt-4.1": {"price": {"input": 2.00, "output": 8.00, "cached_input": 0.50}},
    "claude-sonnet-4.5": {"price": {"input": 3.00, "output": 15.00, "cached_input": 0.30}},
    "text-embedding-3-small": {"price": {"input": 0.02, "output": 0.0}, "kind": "embedding"},
}


def mock_config(
    upstream_url: str,
    *,
    models: Mapping[str, Mapping[str, Any]] | None = None,
    aliases: Mapping[str, str] | None = None,
    plugin_settings: Mapping[str, Any] | None = None,
    server: Mapping[str, Any] | None = None,
    upstream: Mapping[str, Any] | None = None,
    api_key: str | None = "sk-upstream-test",
) -> dict[str, Any]:
    """A config dict with one upstream ``main`` at ``upstream_url`` and the mock catalogue."""
    catalogue: dict[str, Any] = copy.deepcopy(dict(models if models is not None else MOCK_MODELS))
    for entry in catalogue.values():
        if not entry.get("deployments"):  # deployments name their own upstreams
            entry.setdefault("upstream", "main")
    main: dict[str, Any] = {"base_url": upstream_url, "timeouts": {"connect": 2, "first_byte": 5, "total": 30}}
    if api_key is not None:
        main["api_key"] = api_key
    main.update(upstream or {})
    return {
        "server": {"access_log": False, **(server or {})},
        "upstreams": {"main": main},
        "models": catalogue,
        "aliases": dict(aliases or {}),
        "plugins": dict(plugin_settings or {}),
    }


@dataclass
class RunningGateway:
    """A gateway started by the ``floodgate`` fixture."""

    app: web.Application
    client: Any  # aiohttp.test_utils.TestClient
    url: str  # base URL including /v1, for SDK clients
    mock: MockUpstream | None
    sdk_clients: list[Any] = field(default_factory=list)

    def openai(self, api_key: str = "sk-floodgate-test", **kwargs: Any) -> Any:
        """An ``openai.AsyncOpenAI`` client for this gateway (no SDK retries unless asked).

        Clients made here are closed when the test ends.
        """
        import openai

        kwargs.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(base_url=self.url, api_key=api_key, **kwargs)
        self.sdk_clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.sdk_clients:
            await client.close()
        self.sdk_clients.clear()

    async def metrics(self) -> str:
        response = await self.client.get("/metrics")
        return await response.text()


@pytest.fixture
async def mock_upstream() -> AsyncIterator[MockUpstream]:
    async with MockUpstream(MockSettings(seed=1234, api_key="sk-upstream-test")) as mock:
        yield mock


@pytest.fixture
async def floodgate(aiohttp_client: Any, mock_upstream: MockUpstream) -> AsyncIterator[Any]:
    started: list[RunningGateway] = []

    async def start(
        config: Mapping[str, Any] | str | Config | None = None,
        *,
        plugins: Sequence[Any] = (),
        builtins: Iterable[str] = (),
        **sections: Any,
    ) -> RunningGateway:
        if config is None:
            config = mock_config(mock_upstream.url, **sections)
        if isinstance(config, str):
            config = parse_config(config, source="<test>")
        elif not isinstance(config, Config):
            config = config_from_dict(config, source="<test>")
        app = create_app(config, plugins=plugins, builtins=builtins, entry_points=False)
        client = await aiohttp_client(app)
        gateway = RunningGateway(app=app, client=client, url=str(client.make_url("/v1")), mock=mock_upstream)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        await gateway.close()
