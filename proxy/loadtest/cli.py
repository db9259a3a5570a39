"""``floodgate loadtest``: the options, the run with its report and ``--json``, and the command's plugin."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.config import Price
from proxy.hookspecs import hookimpl

from .options import (
    DEFAULT_DURATION_S,
    DEFAULT_KEY,
    DEFAULT_URL,
    MAX_CONCURRENCY,
    MAX_DURATION_S,
    MAX_IN_FLIGHT,
    MAX_RATE,
    MAX_REQUESTS,
    LoadTestOptions,
    UsageError,
)
from .prompts import load_prompts
from .report import format_report
from .runner import LoadTestResult, run_loadtest
from .stats import summarize


def _number(kind: type, low: float, high: float, *, low_open: bool = True) -> Any:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (low < value if low_open else low <= value) or value > high or value != value:
            interval = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be within {interval}, got {text}")
        return value
    return convert


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``floodgate loadtest`` options to ``parser``."""
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=_number(float, 0, MAX_RATE), metavar="R",
                      help="open loop: launch R requests/s on a fixed schedule, however slow the "
                           "answers; latency counts from the scheduled send time")
    mode.add_argument("--concurrency", type=_number(int, 1, MAX_CONCURRENCY, low_open=False),
                      metavar="N", help="closed loop: N workers, each sending back-to-back")
    parser.add_argument("--duration", type=_number(float, 0, MAX_DURATION_S), metavar="S",
                        help=f"stop sending after S seconds (max {MAX_DURATION_S:g}; default "
                             f"{DEFAULT_DURATION_S:g}, or the max when --requests is given)")
    parser.add_argument("--requests", type=_number(int, 1, MAX_REQUESTS, low_open=False),
                        metavar="N", help="stop after N requests (with --duration: whichever "
                                          f"comes first; max {MAX_REQUESTS})")
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="base URL of the OpenAI-compatible API; requests go to "
                             "URL/chat/completions and nowhere else (default: %(default)s)")
    parser.add_argument("--model", default="auto", help="the model to ask for (default: auto)")
    parser.add_argument("--key", default=None,
                        help="API key, sent as 'Authorization: Bearer KEY' (default: "
                             f"$FLOODGATE_API_KEY, else {DEFAULT_KEY})")
    parser.add_argument("--stream", action="store_true",
                        help="stream the answers; also measures the time to the first and last "
                             "content token")
    parser.add_argument("--max-tokens", type=_number(int, 1, 10**7, low_open=False), metavar="N",
                        help="max_tokens of each request (default: not sent)")
    parser.add_argument("--prompts", metavar="FILE",
                        help='JSONL file, one {"messages": [...]} or {"prompt": "..."} per line '
                             '(optional "weight", "category"); default: a built-in Chinese '
                             "e-commerce customer-service mix")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the prompt picker, for repeatable mixes (default: 1)")
    parser.add_argument("--timeout", type=_number(float, 0, MAX_DURATION_S), default=60.0,
                        metavar="S", help="per-request timeout in seconds (default: 60)")
    parser.add_argument("--max-in-flight", type=_number(int, 1, MAX_IN_FLIGHT, low_open=False),
                        default=1000, metavar="N",
                        help="open loop: connection pool size; requests beyond it wait for a "
                             "connection, and that wait counts as latency (default: 1000)")
    parser.add_argument("--header", action="append", type=_header, default=[],
                        metavar="'NAME: VALUE'", help="extra request header, repeatable "
                                                      "(e.g. 'x-floodgate-tier: cheap')")
    parser.add_argument("--config", metavar="PATH",
                        help="a floodgate config whose catalogue prices estimate the cost when "
                             "the responses carry no x-floodgate-cost-usd header")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--progress", action="store_true",
                        help="draw the live progress line even when stderr is not a terminal")


def _prices(path: str) -> dict[str, Price]:
    from proxy.config import load_config
    from proxy.errors import ConfigErrors

    try:
        config = load_config(path)
    except ConfigErrors as exc:
        raise UsageError("\n".join(str(e) for e in exc.errors)) from None
    # Exact names and aliases (unpriced entries have no estimate); the load test's own requests
    # name no model a pattern would have to price.
    names = [*config.models, *config.aliases]
    return {name: price for name in names if (model := config.resolve(name)) and (price := config.price(model))}


def options_from_args(args: argparse.Namespace) -> LoadTestOptions:
    """Validate parsed :func:`add_arguments` options and read the files they name."""
    duration = args.duration
    if duration is None:
        duration = MAX_DURATION_S if args.requests is not None else DEFAULT_DURATION_S
    prompts = load_prompts(args.prompts) if args.prompts else []
    return LoadTestOptions(
        url=args.url, rate=args.rate, concurrency=args.concurrency, duration=duration,
        requests=args.requests, model=args.model,
        key=args.key or os.environ.get("FLOODGATE_API_KEY") or DEFAULT_KEY,
        stream=args.stream, max_tokens=args.max_tokens, timeout=args.timeout,
        prompts=prompts, prompts_source=args.prompts or LoadTestOptions.prompts_source,
        seed=args.seed, headers=dict(args.header), max_in_flight=args.max_in_flight,
        prices=_prices(args.config) if args.config else None, prices_source=args.config)


async def _main(options: LoadTestOptions, progress: IO[str] | None) -> LoadTestResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C: stop and report
    except (NotImplementedError, RuntimeError):  # Windows / not the main thread
        return await run_loadtest(options, progress=progress)
    try:
        return await run_loadtest(options, progress=progress, stop=stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def run(args: argparse.Namespace) -> int:
    """``floodgate loadtest``: 0 when it ran and something succeeded, 1 when nothing did,
    2 for bad options or files, 130 when interrupted (after the partial report)."""
    try:
        options = options_from_args(args)
    except UsageError as exc:
        print(f"floodgate loadtest: error: {exc}", file=sys.stderr)
        return 2
    draw = args.progress or sys.stderr.isatty()
    result = asyncio.run(_main(options, sys.stderr if draw else None))
    summary = summarize(result)
    sys.stdout.write(format_report(summary))
    if args.json:
        try:
            Path(args.json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            print(f"floodgate loadtest: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    if result.interrupted:
        return 130
    return 0 if summary["ok"] else 1


class LoadTestCommands:
    """Adds ``floodgate loadtest``; registered through the ``floodgate`` entry-point group
    (no per-request hooks, so a gateway that loads it pays nothing for it)."""

    name = "loadtest"

    @hookimpl
    def proxy_add_commands(self, subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(
            "loadtest", help="load-test a gateway (open or closed loop)",
            description="Open-loop (--rate) or closed-loop (--concurrency) load test of an OpenAI-compatible "
                        "/chat/completions endpoint, with a latency report. It only sends to the --url it is given.")
        add_arguments(parser)
        parser.set_defaults(func=run)
