"""The mock as an aiohttp app (:func:`create_mock_app`) and on a real socket (:class:`MockUpstream`)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .control import _ctl_behaviour, _ctl_quota, _ctl_reset, _ctl_stats
from .endpoints import _chat, _completions, _embeddings, _get_model, _list_models, _not_found, _responses
from .faults import QUOTA, QUOTA_HEADERS, _Reply
from .settings import STATE_KEY, MockSettings, MockStats, _State


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    tasks = request.app[STATE_KEY].tasks
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
    try:
        return await handler(request)
    except _Reply as reply:
        return reply.response
    finally:
        if task is not None:
            tasks.discard(task)
        quota = request.get(QUOTA)
        if quota is not None:
            quota.done()


async def _quota_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The provider's ``x-ratelimit-*`` headers on every answer under quota (streams included)."""
    headers = request.get(QUOTA_HEADERS)
    if headers:
        response.headers.update(headers)


async def _cancel_in_flight(app: web.Application) -> None:
    # Hanging/slow handlers would otherwise hold shutdown for the runner's shutdown_timeout.
    current = asyncio.current_task()
    for task in list(app[STATE_KEY].tasks):
        if task is not current:
            task.cancel()


def create_mock_app(settings: MockSettings | None = None) -> web.Application:
    """Build the mock aiohttp app; its state is reachable as ``app[STATE_KEY]``."""
    app = web.Application(middlewares=[_middleware], client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = _State(settings if settings is not None else MockSettings())
    app.on_shutdown.append(_cancel_in_flight)
    app.on_response_prepare.append(_quota_headers)
    r = app.router
    r.add_get("/_mock/stats", _ctl_stats)
    r.add_post("/_mock/behaviour", _ctl_behaviour)
    r.add_post("/_mock/reset", _ctl_reset)
    r.add_post("/_mock/quota", _ctl_quota)
    for prefix in ("/v1", ""):
        r.add_get(f"{prefix}/models", _list_models)
        r.add_get(prefix + "/models/{model_id:.+}", _get_model)
        r.add_post(f"{prefix}/chat/completions", _chat)
        r.add_post(f"{prefix}/completions", _completions)
        r.add_post(f"{prefix}/embeddings", _embeddings)
        r.add_post(f"{prefix}/responses", _responses)
    r.add_route("*", "/{tail:.*}", _not_found)
    return app


class MockUpstream:
    """Runs the mock app on a real socket; ``async with MockUpstream() as mock: mock.url``."""

    def __init__(self, settings: MockSettings | None = None, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.settings = settings if settings is not None else MockSettings()
        self.host = host
        self.port = port
        self.app = create_mock_app(self.settings)
        self._state = self.app[STATE_KEY]
        self._runner: web.AppRunner | None = None

    @property
    def stats(self) -> MockStats:
        return self._state.stats

    @property
    def url(self) -> str:
        """Base URL including ``/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    async def start(self) -> MockUpstream:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> MockUpstream:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def set_behaviour(self, model: str, **values: Any) -> None:
        """Replace ``model``'s behaviour (fields of ModelBehaviour); adds unknown models."""
        self._state.set_behaviour(model, values)

    def reset(self) -> None:
        """Clear stats, quota state and fail_first counters, and reseed the RNG."""
        self._state.reset()

    def set_quota(self, key: str, **values: Any) -> None:
        """Put API key ``key`` (``"*"``: every other key) under a provider quota (fields of
        :class:`~.quota.Quota`); no values: remove it."""
        from .quota import Quota

        if values:
            self.settings.quotas[key] = Quota(**values)
        else:
            self.settings.quotas.pop(key, None)
        self._state.key_quotas.pop(key, None)

    def quota_stats(self) -> dict[str, dict[str, object]]:
        """Each key's quota state: in flight (and most ever), admitted, throttled, its limits."""
        return {key: quota.stats() for key, quota in self._state.key_quotas.items()}
