"""``floodgate loadtest``: a load generator for OpenAI-compatible chat APIs (Floodgate or other).

Two ways to drive the target:

* **open loop** (``--rate R``): request ``i`` is due at ``t0 + i/R`` and is launched then, however
  slow the answers are, so a struggling server cannot slow the generator down and hide its own
  latency. Latency is measured from the *scheduled* send time, not the actual one (no
  coordinated omission); if the generator itself fell behind schedule the report says by how much.
* **closed loop** (``--concurrency N``): ``N`` workers each send their next request as soon as
  the previous one finished. Latency is measured from the actual send.

A run stops after ``--duration`` seconds or ``--requests`` requests, whichever comes first
(both hard-capped); requests still in flight then are waited for (bounded by ``--timeout``) and
counted. Streams (``--stream``) also give the time to the first and the last content token.

Statistics: percentiles use linear interpolation between the closest ranks (numpy's default,
Hyndman & Fan type 7) over successful requests. The report and ``--json`` come from the same
:func:`summarize` dict. Only the URL given is contacted, and the API key never appears in output.

The parts:

* :mod:`.options` — ``LoadTestOptions``, its bounds and defaults, ``UsageError``;
* :mod:`.prompts` — ``Prompt``, JSONL prompt files, the built-in mix;
* :mod:`.client` — one request and its ``Sample``;
* :mod:`.runner` — the open and closed loops, the progress line, ``run_loadtest``;
* :mod:`.stats` — ``percentile``, ``histogram``, ``summarize``;
* :mod:`.report` — ``format_report``;
* :mod:`.cli` — the command's options and ``run``, and ``LoadTestCommands``, the plugin that adds
  ``floodgate loadtest`` (the ``floodgate`` entry point ``loadtest``; the core never imports this package).
"""

from .cli import LoadTestCommands, add_arguments, options_from_args, run
from .client import Sample
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
from .prompts import Prompt, PromptFileError, builtin_prompts, load_prompts, parse_prompts
from .report import format_report
from .runner import LoadTestResult, run_loadtest
from .stats import PERCENTILE_METHOD, histogram, percentile, summarize

__all__ = [
    "DEFAULT_DURATION_S", "DEFAULT_KEY", "DEFAULT_URL", "MAX_CONCURRENCY", "MAX_DURATION_S", "MAX_IN_FLIGHT",
    "MAX_RATE", "MAX_REQUESTS", "PERCENTILE_METHOD", "LoadTestCommands", "LoadTestOptions", "LoadTestResult",
    "Prompt", "PromptFileError", "Sample", "UsageError", "add_arguments", "builtin_prompts", "format_report",
    "histogram", "load_prompts", "options_from_args", "parse_prompts", "percentile", "run", "run_loadtest",
    "summarize",
]
