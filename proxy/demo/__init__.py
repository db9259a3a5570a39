"""``floodgate demo``: every plugin at work, in one minute, on this machine.

Starts the built-in mock upstream and the gateway on free loopback ports with the
shipped config (upstreams pointed at the mock, the usage ledger in a temporary
directory), then sends a scripted set of requests through the official ``openai``
SDK and tells what happened to each: a FAQ answer, the router's three tiers, a
fallback after injected failures, a burst meeting the rate limiter, the key
checks, a streamed answer, and the bill.

The parts: :mod:`.script` (the config and the scripted requests), :mod:`.printer` (the output)
and :mod:`.cli` (the command's options, ``run``, and ``DemoCommands``, the plugin that adds
``floodgate demo``: the ``floodgate`` entry point ``demo``; the core never imports this package).
"""

from .cli import DemoCommands, add_arguments, run
from .printer import Printer
from .script import ADMIN_KEY, DEMO_KEY, TRIAL_KEY

__all__ = ["ADMIN_KEY", "DEMO_KEY", "TRIAL_KEY", "DemoCommands", "Printer", "add_arguments", "run"]
