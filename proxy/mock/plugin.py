"""The gateway plugin of the mock: serves ``base_url: builtin:mock`` and adds ``floodgate mock-upstream``."""

from __future__ import annotations

import argparse

from pydantic import BaseModel, ConfigDict, Field

from proxy.config import MOCK_BASE_URL, Config, UpstreamSettings, is_pattern
from proxy.hookspecs import hookimpl

from .cli import add_arguments, run
from .quota import Quota
from .server import MockUpstream
from .settings import DEFAULT_MODELS, MockSettings, ModelBehaviour


class _BehaviourBlock(BaseModel):
    """``upstreams.<name>.mock.behaviours.<model>``: the fields of :class:`ModelBehaviour`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    fail_first: int = Field(0, ge=0)
    error_status: int = Field(500, ge=400, le=599)
    retry_after: float | None = Field(1.0, ge=0)
    hang: bool = False
    malformed: bool = False
    break_stream_after: int | None = Field(None, ge=0)
    stall_stream_after: int | None = Field(None, ge=0)
    stream_fault_rate: float = Field(1.0, ge=0, le=1)
    first_token_delay_ms: float = Field(0.0, ge=0)
    first_token_delay_rate: float = Field(1.0, ge=0, le=1)
    ignore_stream: bool = False
    tokens_per_second: float | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, gt=0)
    cached_tokens: int = Field(0, ge=0)


class _QuotaBlock(BaseModel):
    """``upstreams.<name>.mock.quota``: the mock behaves like a provider under quota (:mod:`.quota`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    capacity: int | None = Field(None, gt=0)
    load_latency_ms: float = Field(0.0, ge=0)
    overload_retry_after: float = Field(1.0, ge=0)


class _MockBlock(BaseModel):
    """``upstreams.<name>.mock``: options of a ``base_url: builtin:mock`` upstream."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokens_per_second: float = Field(0.0, ge=0)
    completion_tokens: int = Field(16, gt=0)
    seed: int | None = None
    behaviours: dict[str, _BehaviourBlock] = {}
    quota: _QuotaBlock | None = None


class MockPlugin:
    """Serves ``base_url: builtin:mock``: a :class:`MockUpstream` started in-process; adds
    ``floodgate mock-upstream``.

    Registered through the ``floodgate`` entry-point group, so the gateway's core
    never imports the mock: it only asks, at start-up, who serves ``builtin:mock``
    (and, in the CLI, who adds commands).
    """

    name = "mock"

    def __init__(self) -> None:
        self.blocks: dict[str, _MockBlock] = {}
        self.models: list[str] = []
        self.mocks: list[MockUpstream] = []

    @hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(
            "mock-upstream", help="run the built-in fake OpenAI-compatible upstream",
            description="A fake OpenAI-compatible API for tests, demos and benchmarks, with streaming at a "
                        "chosen speed and fault injection per model.")
        add_arguments(parser)
        parser.set_defaults(func=run)

    @hookimpl
    def proxy_configure(self, config: Config) -> None:
        self.blocks = {name: config.section(("upstreams", name, "mock"), _MockBlock)
                       for name, upstream in config.upstreams.items() if upstream.base_url == MOCK_BASE_URL}
        # A pattern (gpt-*) is no model id: the mock serves the exact names (add others with
        # `floodgate mock-upstream --models` or MockSettings.models).
        self.models = sorted({m.upstream_model or name for name, m in config.models.items() if not is_pattern(name)})

    @hookimpl
    async def proxy_builtin_upstream(self, name: str, settings: UpstreamSettings) -> str | None:
        if settings.base_url != MOCK_BASE_URL:
            return None
        block = self.blocks.get(name, _MockBlock())
        mock = MockUpstream(MockSettings(
            models=self.models or list(DEFAULT_MODELS), tokens_per_second=block.tokens_per_second,
            completion_tokens=block.completion_tokens, seed=block.seed,
            behaviours={m: ModelBehaviour(**b.model_dump()) for m, b in block.behaviours.items()},
            api_key=settings.api_key.get_secret_value() if settings.api_key is not None else None,
            quotas={"*": Quota(**block.quota.model_dump())} if block.quota is not None else {}))
        await mock.start()
        self.mocks.append(mock)
        print(f"floodgate: built-in mock upstream at {mock.url}", flush=True)
        return mock.url

    @hookimpl
    async def proxy_shutdown(self) -> None:
        mocks, self.mocks = self.mocks, []
        for mock in mocks:
            await mock.stop()
