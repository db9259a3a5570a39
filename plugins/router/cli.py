"""``floodgate route``: the router's decision for a message, from the command line."""

from __future__ import annotations

import argparse
import sys

from prometheus_client import CollectorRegistry

import proxy

from .plugin import RouterPlugin

__all__ = ["add_route_command", "route_command"]


def add_route_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "route", help="show which tier the router picks for a message",
        description="Classify MESSAGE as a single user message, as the router would for a request to "
                    "the selector (or to --model), and print the tier, the matched rule, the model "
                    "chain and the token estimate.")
    proxy.add_config_option(parser)
    parser.add_argument("--model", help="the model name the client sends (default: the selector)")
    parser.add_argument("message", nargs="+", help="the user message (several words are joined)")
    parser.set_defaults(func=route_command)


def route_command(args: argparse.Namespace) -> int:
    """``floodgate route [--config PATH] [--model NAME] MESSAGE``."""
    router = RouterPlugin()
    try:
        config = proxy.load_config(args.config)
        router.proxy_configure(config, CollectorRegistry())
    except proxy.ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return 1
    if not router.tiers:
        print(f"{args.config}: no routes under plugins.router.routes", file=sys.stderr)
        return 1
    message = " ".join(args.message)
    model = args.model or router.selector
    body = {"model": model, "messages": [{"role": "user", "content": message}]}
    decision = router.decide(model, body)
    if decision is None:
        resolved = config.resolve(model)
        where = f"the catalogue model {resolved!r}" if resolved else "nothing (404 model_not_found)"
        print(f"{model!r} is not a route: the router leaves it alone; the core sends it to {where}")
        return 0
    tokens = decision.prompt_tokens
    if tokens is None:
        tokens = proxy.estimate_prompt_tokens(body)
    lines = {"message": message}
    if args.model:
        lines["model"] = args.model
    lines["prompt"] = f"~{tokens} tokens (estimated)"
    lines.update(router.explain(decision))
    width = max(map(len, lines))
    for key, value in lines.items():
        print(f"{key:<{width}}  {value}")
    return 0
