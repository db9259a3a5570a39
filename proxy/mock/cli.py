"""``floodgate mock-upstream``: the mock on a port of its own, with faults from ``--fault``."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from .quota import Quota
from .server import MockUpstream
from .settings import _BEHAVIOUR_FIELDS, DEFAULT_MODELS, MockSettings, ModelBehaviour, _coerce


def parse_fault(spec: str) -> tuple[str, dict[str, Any]]:
    """Parse ``MODEL:key=value[,key=value...]`` (argparse ``type=`` for ``--fault``)."""
    model, sep, pairs = spec.rpartition(":")  # rpartition: model ids may contain ':'
    if not sep or not model or not pairs:
        raise argparse.ArgumentTypeError(f"expected MODEL:key=value[,key=value...], got {spec!r}")
    values: dict[str, Any] = {}
    try:
        for pair in pairs.split(","):
            key, eq, raw = pair.partition("=")
            key = key.strip()
            if not eq:
                raise ValueError(f"expected key=value, got {pair!r}")
            if key not in _BEHAVIOUR_FIELDS:
                raise ValueError(f"unknown fault key {key!r} (valid: "
                                 f"{', '.join(sorted(_BEHAVIOUR_FIELDS))})")
            values[key] = _coerce(key, raw.strip())
        ModelBehaviour(**values)  # range checks
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}") from None
    return model, values


def parse_quota(spec: str) -> tuple[str, Quota]:
    """Parse ``[KEY:]key=value[,key=value...]`` (argparse ``type=`` for ``--quota``; no KEY: every key)."""
    key, sep, pairs = spec.rpartition(":")
    key = key if sep else "*"
    values: dict[str, float] = {}
    try:
        for pair in pairs.split(","):
            name, eq, raw = pair.partition("=")
            name = name.strip()
            if not eq or name not in Quota.__dataclass_fields__:
                raise ValueError(f"expected key=value with a key of {', '.join(Quota.__dataclass_fields__)}, "
                                 f"got {pair!r}")
            values[name] = float(raw)
        quota = Quota(**values)  # type: ignore[arg-type]
        if quota.capacity is not None:
            quota.capacity = int(quota.capacity)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}") from None
    return key or "*", quota


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``floodgate mock-upstream`` options to ``parser``."""
    d = MockSettings()
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument("--port", type=int, default=9000, help="port, 0 = any (default: 9000)")
    parser.add_argument("--tps", type=float, default=d.tokens_per_second, metavar="N",
                        help="tokens per second for streaming pacing, 0 = unthrottled")
    parser.add_argument("--completion-tokens", type=int, default=d.completion_tokens,
                        metavar="N", help="answer length in tokens (default: %(default)s)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' (default: no auth)")
    parser.add_argument("--seed", type=int, default=None,
                        help="RNG seed for error_rate/jitter, for reproducible runs")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS),
                        help="comma-separated model ids to serve (default: %(default)s)")
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="base latency before headers, all models")
    parser.add_argument("--jitter-ms", type=float, default=0.0,
                        help="extra uniform random latency 0..N ms, all models")
    parser.add_argument(
        "--fault", action="append", type=parse_fault, default=[], metavar="MODEL:K=V[,K=V]",
        help="per-model behaviour, repeatable; keys: " + ", ".join(sorted(_BEHAVIOUR_FIELDS))
        + " (e.g. deepseek-v3.2:error_rate=0.3,error_status=503 or gpt-4.1:hang=true)")
    parser.add_argument(
        "--quota", action="append", type=parse_quota, default=[], metavar="[KEY:]K=V[,K=V]",
        help="behave like a provider under quota for API key KEY (default: every key), repeatable; keys: "
        + ", ".join(Quota.__dataclass_fields__) + " (e.g. requests_per_minute=600,tokens_per_minute=200000,"
        "capacity=20,load_latency_ms=5)")


def settings_from_args(args: argparse.Namespace) -> MockSettings:
    """Build MockSettings from parsed ``add_arguments`` options (--fault may add models)."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    settings = MockSettings(models=models, tokens_per_second=args.tps,
                            completion_tokens=args.completion_tokens, api_key=args.api_key,
                            seed=args.seed, quotas=dict(getattr(args, "quota", [])))
    timing = {"latency_ms": args.latency_ms, "jitter_ms": args.jitter_ms}
    if args.latency_ms or args.jitter_ms:
        settings.behaviours = {m: ModelBehaviour(**timing) for m in models}
    for model, values in args.fault:
        merged = {**timing, **values}
        if model in settings.behaviours:
            merged = {**settings.behaviours[model].to_dict(), **values}
        settings.behaviours[model] = ModelBehaviour(**merged)
        if model not in settings.models:
            settings.models.append(model)
    return settings


async def serve_forever(args: argparse.Namespace) -> None:
    """Run the mock until cancelled or SIGINT/SIGTERM; prints the URL it listens on."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows / not the main thread
            pass
    try:
        async with MockUpstream(settings_from_args(args), host=args.host, port=args.port) as m:
            print(f"floodgate mock upstream listening on {m.url} "
                  f"(models: {', '.join(m.settings.models)})", flush=True)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    """``floodgate mock-upstream``: serve until Ctrl-C or SIGTERM."""
    try:
        asyncio.run(serve_forever(args))
    except KeyboardInterrupt:
        pass
    return 0
