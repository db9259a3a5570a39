"""The hook contract: every hook a Floodgate plugin can implement.

Hooks are grouped by the stage of a request they belong to, in the order they
run. Implement them with :data:`proxy.hookimpl`; any per-request hook may be a
plain function or ``async def`` (the core awaits what is awaitable). Keep
CPU-only work (lookups, matching, in-memory counters) synchronous: it is cheaper.

Ordering follows pluggy: ``tryfirst`` implementations run before plain ones, and
``trylast`` after; the core's own defaults are ``trylast``. Do not use pluggy's
``firstresult``/``wrapper`` machinery: the core's dispatcher implements "first
non-None result" itself so that async implementations work.

Each spec declares its mode in code, once (:func:`spec`); the dispatcher
(:class:`proxy.hooks.Hooks`) calls every hook by its declared mode, and the loader
refuses at start-up an ``async def`` implementation of a sync-only hook.

- ``FIRST``: implementations run in order until one returns something other
  than ``None``; that is the result.
- ``ALL``: every implementation runs; an exception propagates (the request is
  refused: security stages fail closed); the non-``None`` results are collected.
- ``OBSERVE``: every implementation runs; an exception is logged and changes
  nothing (observers fail open).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

if TYPE_CHECKING:
    import argparse

    from aiohttp import web
    from prometheus_client import CollectorRegistry

    from .config import Config, UpstreamSettings
    from .state import SharedState
    from .types import (
        Attempt,
        AttemptRecord,
        Principal,
        Reply,
        RequestContext,
        Route,
        Stop,
        StreamChunk,
        Target,
        UpstreamResponse,
    )

PROJECT = "floodgate"
_pluggy_spec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

F = TypeVar("F", bound=Callable[..., Any])


class Mode(enum.Enum):
    FIRST = "first non-None result"
    ALL = "all run, failures propagate"
    OBSERVE = "all run, failures logged"


@dataclass(frozen=True, slots=True)
class HookMode:
    """How a hook is called: its :class:`Mode`, and whether implementations may be async."""

    mode: Mode
    may_be_async: bool


#: Every hook's declared mode, by hook name (filled by :func:`spec`).
MODES: dict[str, HookMode] = {}


def spec(mode: Mode, *, may_be_async: bool) -> Callable[[F], F]:
    """Declare a hook: register it with pluggy and record how it is called."""

    def declare(fn: F) -> F:
        MODES[fn.__name__] = HookMode(mode, may_be_async)
        return _pluggy_spec(fn)

    return declare


# --- lifecycle -------------------------------------------------------------

@spec(Mode.ALL, may_be_async=False)
def proxy_configure(config: Config, registry: CollectorRegistry, state: SharedState) -> None:
    """Read and validate this plugin's settings; create its metrics; build its stores.

    Called once per configuration, synchronously, before it serves: at start-up
    and again for each configuration a reload builds (on new plugin objects).
    Validate your block with ``config.plugin_settings(name, Model)``, which
    raises :class:`proxy.ConfigError` naming the key path (``plugins.<name>.x``)
    and line; raise ``ConfigError`` yourself for other problems. A raised error
    stops start-up: a bad config never starts a half-working server.

    :param config: the validated core configuration.
    :param registry: the application's Prometheus registry; register the
        plugin's metrics here (never in the global default registry). A reload
        registers them again: same name, labels and help continue the series.
    :param state: the application's :class:`proxy.SharedState` (it outlives
        reloads): the Redis client and key names when ``state.backend`` is
        ``redis``, the worker count, ``state.keep(name, factory)`` for in-memory
        state a reload must not lose, and degraded-mode reporting. Like every
        argument, it may be left out of the implementation's signature.
    """


@spec(Mode.ALL, may_be_async=False)
def proxy_add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add subcommands to the ``floodgate`` command line (e.g. ``floodgate usage``).

    Called once when the CLI starts, before any config is read, on every
    plugin found (built-ins and the ``floodgate`` entry-point group). Use
    ``subparsers.add_parser(name, help=...)`` and ``parser.set_defaults(func=f)``
    where ``f(args) -> int`` returns the exit status. ``args.config`` holds the
    config path when the command declares ``--config``.
    """


@spec(Mode.ALL, may_be_async=False)
def proxy_route_names(config: Config) -> list[str]:
    """Names of routes this plugin can serve (e.g. the router's tiers).

    Called once at start-up after ``proxy_configure``; all results are collected.
    ``aliases`` in the config may point at these names as well as at catalogue
    models, and any other alias target is a configuration error.
    """


@spec(Mode.ALL, may_be_async=False)
def proxy_add_routes(app: web.Application) -> None:
    """Add HTTP endpoints to the application (e.g. ``/-/usage``).

    Called once per configuration (at start-up, and for each reload) while its
    application is built, after ``proxy_configure``; a reload's routes replace the
    previous ones. Plugin endpoints should live under ``/-/``.
    """


@spec(Mode.FIRST, may_be_async=True)
def proxy_builtin_upstream(name: str, settings: UpstreamSettings) -> str | None:
    """Start an in-process upstream for ``base_url: builtin:<kind>``; return its base URL.

    Called once per ``builtin:`` upstream while the application starts, before
    ``proxy_startup``; stops at the first non-``None`` result. Return ``None`` for
    a kind this plugin does not serve. May be async. Stop what you started in
    ``proxy_shutdown``. No plugin answering is a start-up error.

    :param name: the upstream's name in the config.
    :param settings: its settings (``settings.base_url`` names the kind).
    """


@spec(Mode.ALL, may_be_async=True)
def proxy_startup(app: web.Application) -> None:
    """The application is starting (may be async): open files, start tasks.

    All implementations run, in order; an exception aborts start-up. A reload
    starts the new configuration's plugins here while the previous ones still
    serve their in-flight requests (share files and connections accordingly).
    """


@spec(Mode.OBSERVE, may_be_async=True)
def proxy_shutdown(app: web.Application) -> None:
    """The application is stopping (may be async), after in-flight requests ended.

    Also called on a configuration a reload replaced, once its last request is
    done. All implementations run; flush buffers and close resources here.
    Exceptions are logged and do not stop the other implementations.
    """


# --- per request, in order -------------------------------------------------

@spec(Mode.FIRST, may_be_async=True)
def proxy_authenticate(ctx: RequestContext) -> Principal | None:
    """Identify the caller from the request's headers. Stops at the first non-``None`` result.

    Runs for every request — model calls, passthrough, the model list and admin
    endpoints (``ctx.kind``) — *before the body is read*: a caller without a valid
    key costs the gateway no body. Return a :class:`proxy.Principal` (its
    ``policy`` says what the caller may do), ``None`` to let the next
    implementation decide, or raise :class:`proxy.Rejection` (401) to refuse. The
    core's ``trylast`` default returns the anonymous principal. May be async.
    """


@spec(Mode.ALL, may_be_async=True)
def proxy_authorize(ctx: RequestContext) -> None:
    """Decide whether the authenticated caller may make this request. All implementations run.

    Runs for model calls and passthrough requests once the body is parsed
    (``ctx.model`` is known; for a passthrough body that is not JSON it is
    ``None``), before any short-circuit, routing or admission. Raise
    :class:`proxy.Rejection` (403) to refuse. May be async.
    """


@spec(Mode.FIRST, may_be_async=True)
def proxy_short_circuit(ctx: RequestContext) -> Reply | None:
    """Answer without any upstream call. Stops at the first non-``None`` result.

    Runs for chat and completion requests after authentication. Return a
    :class:`proxy.Reply`; the core renders it as JSON or as an SSE stream
    (whatever the client asked for) and skips routing, admission and attempts.
    May be async.
    """


@spec(Mode.FIRST, may_be_async=True)
def proxy_route(ctx: RequestContext) -> Route | None:
    """Choose the ordered targets for the request. Stops at the first non-``None``.

    Return a :class:`proxy.Route`, or ``None`` to let the next implementation
    decide; raise :class:`proxy.Rejection` to refuse. The core's ``trylast``
    default resolves ``ctx.model`` through ``aliases`` to a catalogue model and
    its catalogue fallbacks, and rejects unknown models with 404
    ``model_not_found``. May be async.
    """


@spec(Mode.ALL, may_be_async=True)
def proxy_admit(ctx: RequestContext) -> None:
    """Decide whether the routed request may go ahead now. All implementations run.

    Raise :class:`proxy.Rejection` (usually 429 with ``retry-after``) to refuse;
    an async implementation may wait a bounded time (a queue). Runs once per
    request, after routing, before the first attempt. Every admitted request
    reaches ``proxy_finished``, where reservations are settled.

    An implementation may replace ``ctx.route`` with another route for the same
    request: put a model's deployments in the order it placed the request on them
    (the rate limiter, after taking a deployment's capacity), or move the request to
    another route under overload (the degrade plugin, ``tryfirst``, before the
    limits are taken). Implementations after it see the new route.
    """


@spec(Mode.ALL, may_be_async=True)
def proxy_predicted_wait(ctx: RequestContext, route: Route) -> float | None:
    """How long a request like ``ctx`` would wait for capacity on ``route`` now. All implementations run.

    Return seconds (``0``: it would be admitted at once), or ``None`` when this plugin
    holds nothing back on that route; the caller takes the largest answer. A forecast,
    never an admission: take nothing, change nothing. It describes the route's
    capacity (its models, deployments and upstreams, and the gateway's global limits),
    not the caller's own quota. Asked by overload policies before admission (the
    degrade plugin's ladder), and by status reports. May be async (a shared store).
    """


@spec(Mode.FIRST, may_be_async=False)
def proxy_unavailable(ctx: RequestContext, target: Target) -> str | None:
    """Whether some plugin knows ``target`` cannot take ``ctx`` now. Stops at the first non-``None``.

    Return a short reason while ``target`` should be passed over — ``"circuit open"``
    (the retry plugin's breakers), ``"full"`` or ``"throttled by its provider"`` (the
    rate limiter, for a deployment with no room for this request, or told by a 429 to
    wait) — ``None`` otherwise. Asked by plugins choosing among targets: the rate
    limiter placing a request on one of a model's deployments, the retry plugin
    choosing where to fail over or fall back. Read-only and synchronous: answering
    must change nothing (a half-open breaker's probe slot is not taken by a question)
    and should be a field read.
    """


@spec(Mode.FIRST, may_be_async=True)
def proxy_next_attempt(ctx: RequestContext) -> Attempt | Stop | None:
    """What to try next. Stops at the first non-``None`` result.

    Called before each upstream try; ``ctx.attempts`` holds the outcomes so far
    (empty on the first call). Return :class:`proxy.Attempt` (a target and a
    delay in seconds), :data:`proxy.STOP` to end with the last outcome, or
    ``None`` to defer. The core's ``trylast`` default tries the route's first
    target once. For streams it is only asked before the response is committed
    (before its first meaningful event was sent to the client). Set the
    attempt's ``hedge_after`` to have a slow attempt raced (``proxy_hedge``).
    May be async.
    """


@spec(Mode.FIRST, may_be_async=True)
def proxy_hedge(ctx: RequestContext, attempt: AttemptRecord) -> Attempt | None:
    """An attempt is slow to answer: what to race alongside it. Stops at the first non-``None``.

    Called at most once per attempt returned by ``proxy_next_attempt`` with a
    ``hedge_after``, when it has had no meaningful answer (a stream event carrying
    content, a tool call, a refusal or a finish; a whole non-streaming answer)
    ``hedge_after`` seconds after it was sent — and only while no plugin says it is
    overloaded (``proxy_overloaded``). ``attempt`` is its record, still in flight
    (the last of ``ctx.attempts``).

    Return an :class:`proxy.Attempt` to send now alongside it (its ``delay`` is
    ignored, its ``timeout`` applies), or ``None`` to keep waiting for the first
    alone. The first of the two to answer is committed to the client; the other is
    cancelled and stays in ``ctx.attempts`` with ``error="cancelled"`` and an
    estimated ``usage``. Both records are marked ``hedged``, the extra one also
    ``hedge``. If both fail, ``proxy_next_attempt`` is asked as after any failure.
    May be async.
    """


@spec(Mode.FIRST, may_be_async=False)
def proxy_overloaded(ctx: RequestContext) -> str | None:
    """Whether this plugin is holding load back right now. Stops at the first non-``None``.

    Return a short reason (e.g. ``"ratelimit queue"``) while admission is queueing
    or shedding requests, ``None`` otherwise. While any plugin answers, the core
    adds no optional load: a slow attempt is not hedged (``proxy_hedge`` is not
    asked). Called only when optional load is considered, synchronously: keep it
    a field read.
    """


@spec(Mode.OBSERVE, may_be_async=False)
def proxy_attempt_started(ctx: RequestContext, attempt: AttemptRecord) -> None:
    """An upstream attempt is about to be sent. All implementations run; failures are logged.

    Called once per attempt, synchronously, right after its record was appended to
    ``ctx.attempts`` (``attempt.target`` and ``attempt.started`` set) and before the
    request goes out — for every attempt: the first, retries, fallbacks, a hedge.
    With ``proxy_attempt_result`` (its outcome) and ``proxy_finished`` (a hedge race's
    loser, a client that left) a plugin can count what is in flight at each upstream
    or deployment, attempt by attempt. Keep it cheap.
    """


@spec(Mode.OBSERVE, may_be_async=False)
def proxy_attempt_result(ctx: RequestContext, attempt: AttemptRecord) -> None:
    """An upstream attempt's outcome is known. All implementations run; failures are logged.

    Called once per attempt, synchronously, as soon as it failed (``attempt.error``
    set, before ``proxy_next_attempt`` is asked again) or its first meaningful answer
    came (``attempt.first_event`` set: a stream's first event carrying content, a tool
    call, a refusal or a finish; a whole non-streaming answer), before that answer is
    sent. ``attempt.status`` and ``attempt.upstream_headers`` — the provider's
    ``x-ratelimit-*`` and ``retry-after`` among them — are filled in when a response
    came. Not called for an attempt cancelled before either (a hedge race's loser, a
    client that left). For plugins that learn from upstreams as they answer: the
    limits a provider states, its latency, its errors. Keep it cheap.
    """


@spec(Mode.ALL, may_be_async=True)
def proxy_response(ctx: RequestContext, response: UpstreamResponse) -> None:
    """A non-streaming upstream success, before it is sent. All implementations run.

    Set headers in ``ctx.response_headers``; change the body with
    ``response.replace(data)`` (the bytes are passed through untouched otherwise).
    ``ctx.usage`` is already filled from the body. May be async.
    """


@spec(Mode.ALL, may_be_async=False)
def proxy_stream_chunk(ctx: RequestContext, chunk: StreamChunk) -> None:
    """One SSE event of a relayed stream, before it is sent. All implementations run.

    Only dispatched if some plugin implements it (otherwise events are relayed
    without being parsed). Set ``chunk.drop = True`` to withhold it. Keep it
    cheap and synchronous: it runs for every token.
    """


@spec(Mode.ALL, may_be_async=True)
def proxy_status() -> dict[str, Any] | None:
    """A part of the gateway's live status (``GET /-/status``, ``floodgate status``). All implementations run.

    Return a JSON-able mapping, or ``None``. The core merges every plugin's part key
    by key (mappings merged recursively), so several plugins fill in fields of the same
    row: ``{"routes": {"<route>": {...}}, "deployments": {"<model@deployment>": {...}}}``
    plus any section of the plugin's own (fields: README, "floodgate status"). Called
    once per status request, never per model request. May be async.
    """


@spec(Mode.OBSERVE, may_be_async=True)
def proxy_finished(ctx: RequestContext) -> None:
    """The request is over and its response sent. All implementations run.

    Runs exactly once per request whatever happened: success, short-circuit,
    rejection, upstream failure or client disconnect (``ctx.client_disconnected``).
    ``ctx.status``, ``ctx.usage`` (``ctx.usage_estimated`` when it had to be
    estimated), ``ctx.attempts`` and ``ctx.timings`` are final. ``ctx.attempts``
    holds every try, a hedge race's loser included (``hedged``,
    ``error="cancelled"``, its own estimated ``usage``); ``ctx.target`` is the
    model that answered. Observers live
    here (cost, metrics, logs). An exception is logged and changes nothing.
    May be async.
    """
