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
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import errno
import itertools
import math
import os
import random
import re
import signal
import sys
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson

from proxy.config import Price
from proxy.hookspecs import hookimpl
from proxy.types import Usage

from .prompts import builtin_prompts

__all__ = [
    "LoadTestCommands", "LoadTestOptions", "LoadTestResult", "Prompt", "PromptFileError", "Sample", "UsageError",
    "add_arguments", "format_report", "histogram", "load_prompts", "options_from_args",
    "parse_prompts", "percentile", "run", "run_loadtest", "summarize",
]

DEFAULT_URL = "http://127.0.0.1:8080/v1"
DEFAULT_KEY = "sk-loadtest"
DEFAULT_DURATION_S = 10.0
MAX_DURATION_S = 3600.0
MAX_REQUESTS = 1_000_000
MAX_RATE = 10_000.0
MAX_CONCURRENCY = 4096
MAX_IN_FLIGHT = 10_000
PERCENTILE_METHOD = "linear interpolation between closest ranks (numpy default, type 7)"
# How long an open-loop generator may run past the end of its schedule catching up before it
# gives up on the remaining (overdue) requests; they are reported as "unsent".
_CATCH_UP_GRACE_S = 1.0
_PROGRESS_INTERVAL_S = 0.25
# Schedule lag above this (ms) is reported as the generator falling behind; below it is the
# normal jitter of an event loop on a busy machine.
_BEHIND_MS = 20.0
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_PROMPT_KEYS = ("messages", "prompt", "weight", "category")
_MAX_REPORTED_ERRORS = 20
_TAG_RE = re.compile(r"<[^>]*>")


class UsageError(ValueError):
    """Bad options or input files; ``run`` prints it and exits with status 2."""


class PromptFileError(UsageError):
    """A prompts file with invalid lines; ``errors`` holds one ``FILE:LINE: message`` each."""

    def __init__(self, errors: list[str]) -> None:
        shown = errors[:_MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        super().__init__("\n".join(shown + ([f"... and {more} more"] if more else [])))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Prompt:
    """One conversation to send; picked with probability proportional to ``weight``."""

    messages: list[dict[str, Any]]
    weight: float = 1.0
    category: str = "default"


@dataclass(frozen=True)
class LoadTestOptions:
    """Everything a run needs; build it with :func:`options_from_args` or directly."""

    url: str = DEFAULT_URL
    rate: float | None = None  # open loop: requests per second
    concurrency: int | None = None  # closed loop: workers
    duration: float = DEFAULT_DURATION_S
    requests: int | None = None
    model: str = "auto"
    key: str = DEFAULT_KEY
    stream: bool = False
    max_tokens: int | None = None
    timeout: float = 60.0
    prompts: Sequence[Prompt] = ()  # empty: the built-in mix
    prompts_source: str = "built-in e-commerce mix"
    seed: int | None = 1
    headers: Mapping[str, str] = field(default_factory=dict)
    max_in_flight: int = 1000  # open loop: connection pool size
    prices: Mapping[str, Price] | None = None  # model -> price, for the cost estimate
    prices_source: str | None = None

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise UsageError("give exactly one of --rate (open loop) or --concurrency "
                             "(closed loop)")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise UsageError(f"--rate must be within (0, {MAX_RATE:g}]")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise UsageError(f"--concurrency must be within 1..{MAX_CONCURRENCY}")
        if not 0 < self.duration <= MAX_DURATION_S:
            raise UsageError(f"--duration must be within (0, {MAX_DURATION_S:g}] seconds")
        if self.requests is not None and not 1 <= self.requests <= MAX_REQUESTS:
            raise UsageError(f"--requests must be within 1..{MAX_REQUESTS}")
        if not self.url.startswith(("http://", "https://")):
            raise UsageError(f"--url must be an http(s):// URL, got {self.url!r}")

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/chat/completions"

    @property
    def mode(self) -> str:
        return "open" if self.rate is not None else "closed"


@dataclass(slots=True)
class Sample:
    """One finished request. Times are seconds since the start of the run."""

    scheduled: float  # when it was due (closed loop: when it was sent)
    sent: float  # when the generator actually issued it
    end: float  # response fully read, or failure
    outcome: str  # HTTP status ("200", "503") or a client-side category ("timeout", ...)
    ok: bool
    first_token: float | None = None  # streams: first non-empty content delta
    last_token: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0  # part of prompt_tokens
    header_cost: float | None = None  # x-floodgate-cost-usd
    route: str | None = None  # x-floodgate-short-circuit, else x-floodgate-route
    model: str | None = None  # x-floodgate-model
    error: str | None = None


@dataclass
class LoadTestResult:
    options: LoadTestOptions
    samples: list[Sample]
    elapsed: float
    sent: int
    unsent: int = 0  # open loop: overdue requests given up when the generator fell too far behind
    abandoned: int = 0  # in flight when the run was interrupted
    interrupted: bool = False
    peak_in_flight: int = 0


# --------------------------------------------------------------------------- statistics

def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ascending ``sorted_values``.

    Linear interpolation between the closest ranks: rank ``h = (n - 1) * q / 100``, result
    ``x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h])`` (numpy's default).
    """
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    h = (len(sorted_values) - 1) * q / 100
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _stats_ms(values: Sequence[float]) -> dict[str, float | int] | None:
    """count/min/avg/p50/p90/p99/max in milliseconds of values in seconds."""
    if not values:
        return None
    xs = sorted(v * 1000.0 for v in values)
    return {"count": len(xs), "min": xs[0], "avg": sum(xs) / len(xs), "p50": percentile(xs, 50),
            "p90": percentile(xs, 90), "p99": percentile(xs, 99), "max": xs[-1]}


# Preferred numbers (ISO 3): log-spaced but readable bucket edges, finest first.
_SERIES = ((1, 1.25, 1.6, 2, 2.5, 3.15, 4, 5, 6.3, 8), (1, 1.6, 2.5, 4, 6.3), (1, 2, 5), (1,))


def histogram(values_ms: Sequence[float], max_rows: int = 16) -> list[tuple[float, float, int]]:
    """Log-scale buckets ``(low, high, count)`` covering ``values_ms`` (``low <= v < high``),
    using the finest preferred-number series that fits in ``max_rows`` rows."""
    if not values_ms:
        return []
    lo, hi = max(min(values_ms), 1e-3), max(max(values_ms), 1e-3)
    first, last = math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1
    for series in _SERIES:
        edges = [round(v * 10.0 ** d, 6) for d in range(first, last + 1) for v in series]
        start = bisect.bisect_right(edges, lo) - 1
        stop = bisect.bisect_right(edges, hi) + 1  # first edge > hi, inclusive
        edges = edges[start:stop]
        if len(edges) - 1 <= max_rows or series == _SERIES[-1]:
            break
    counts = [0] * (len(edges) - 1)
    for v in values_ms:
        counts[min(max(bisect.bisect_right(edges, v) - 1, 0), len(counts) - 1)] += 1
    return [(edges[i], edges[i + 1], c) for i, c in enumerate(counts)]


# --------------------------------------------------------------------------- prompts

def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list of {"role": ..., "content": ...} objects'
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object"
        if m.get("role") not in _ROLES:
            return f"messages[{i}].role must be one of {', '.join(sorted(_ROLES))}"
        content = m.get("content")
        if not isinstance(content, (str, list)):
            return f"messages[{i}].content must be a string or a list of content parts"
    return None


def _parse_prompt(obj: Any) -> Prompt | str:
    """A Prompt, or an error message."""
    if not isinstance(obj, dict):
        return 'expected a JSON object with "messages" or "prompt"'
    unknown = [k for k in obj if k not in _PROMPT_KEYS]
    if unknown:
        return f"unknown key {unknown[0]!r} (allowed: {', '.join(_PROMPT_KEYS)})"
    if ("messages" in obj) == ("prompt" in obj):
        return 'give exactly one of "messages" (a chat) or "prompt" (one user message)'
    if "prompt" in obj:
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            return '"prompt" must be a non-empty string'
        messages = [{"role": "user", "content": obj["prompt"]}]
    else:
        if (problem := _check_messages(obj["messages"])) is not None:
            return problem
        messages = obj["messages"]
    weight = obj.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 \
            or not math.isfinite(weight):
        return '"weight" must be a positive number'
    category = obj.get("category", "default")
    if not isinstance(category, str) or not category:
        return '"category" must be a non-empty string'
    return Prompt(messages, float(weight), category)


def parse_prompts(lines: Sequence[str], source: str = "<prompts>") -> list[Prompt]:
    """Parse JSONL prompt lines (``{"messages": [...]}`` or ``{"prompt": "..."}``, optional
    ``weight`` and ``category``; blank lines skipped). Raises :class:`PromptFileError`
    listing every bad line as ``source:line: message``."""
    prompts: list[Prompt] = []
    errors: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed = _parse_prompt(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            parsed = f"not valid JSON ({exc})"
        if isinstance(parsed, str):
            errors.append(f"{source}:{number}: {parsed}")
        else:
            prompts.append(parsed)
    if not prompts and not errors:
        errors.append(f"{source}: no prompts (expected one JSON object per line)")
    if errors:
        raise PromptFileError(errors)
    return prompts


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read and validate a JSONL prompts file (see :func:`parse_prompts`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError([f"{path}: cannot read prompts: {exc}"]) from None
    return parse_prompts(text.splitlines(), str(path))


def _builtin() -> list[Prompt]:
    return [Prompt(messages, weight, category) for category, weight, messages in builtin_prompts()]


# --------------------------------------------------------------------------- the generator

def _outcome_of(exc: BaseException) -> str:
    """A named category for a client-side failure."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = exc.os_error.errno == errno.ECONNREFUSED if exc.os_error else False
        return "connection_refused" if refused else "connection_error"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server_disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated_response"
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError)):
        return "connection_error"
    return "client_error"


def _error_text(raw: bytes) -> str:
    """The error message of an OpenAI error body, else the start of the body as text."""
    try:
        body = orjson.loads(raw)
        message = body["error"]["message"]
        if isinstance(message, str):
            return message[:200]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    text = raw[:2000].decode("utf-8", "replace")
    return " ".join(_TAG_RE.sub(" ", text).split())[:200]  # HTML error pages: just the words


def _float_or_none(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _usage(sample: Sample, usage: Any) -> None:
    counted = Usage.from_openai(usage) if usage else None
    if counted is not None:
        sample.prompt_tokens, sample.completion_tokens = counted.prompt_tokens, \
            counted.completion_tokens
        sample.cached_tokens = counted.cached_tokens


class _Runner:
    """One run's state: counters, samples, the body picker."""

    def __init__(self, options: LoadTestOptions, session: aiohttp.ClientSession) -> None:
        self.options = options
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        prompts = list(options.prompts) or _builtin()
        # Bodies are serialised once: the generator must stay cheap at high rates.
        extra: dict[str, Any] = {"stream": True, "stream_options": {"include_usage": True}} \
            if options.stream else {}
        if options.max_tokens is not None:
            extra["max_tokens"] = options.max_tokens
        self.bodies = [orjson.dumps({"model": options.model, "messages": p.messages, **extra})
                       for p in prompts]
        self.cum_weights = list(itertools.accumulate(p.weight for p in prompts))
        self.rng = random.Random(options.seed)
        self.samples: list[Sample] = []
        self.sent = self.ok = self.errors = self.in_flight = self.peak_in_flight = 0
        self.unsent = self.abandoned = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return self.loop.time() - self.t0

    def _body(self) -> bytes:
        index = bisect.bisect_right(self.cum_weights, self.rng.random() * self.cum_weights[-1])
        return self.bodies[min(index, len(self.bodies) - 1)]

    async def one(self, scheduled: float) -> None:
        body = self._body()
        self.sent += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            sample = await self._request(scheduled, body)
        except asyncio.CancelledError:
            self.abandoned += 1
            raise
        finally:
            self.in_flight -= 1
        self.samples.append(sample)
        if sample.ok:
            self.ok += 1
        else:
            self.errors += 1

    async def _request(self, scheduled: float, body: bytes) -> Sample:
        sample = Sample(scheduled, self.now(), 0.0, "client_error", False)
        try:
            async with self.session.post(self.options.endpoint, data=body) as resp:
                headers = resp.headers
                sample.route = headers.get("x-floodgate-short-circuit") or \
                    headers.get("x-floodgate-route")
                sample.model = headers.get("x-floodgate-model")
                sample.header_cost = _float_or_none(headers.get("x-floodgate-cost-usd"))
                sample.outcome = str(resp.status)
                if resp.status != 200:
                    sample.error = _error_text(await resp.read())
                elif self.options.stream:
                    await self._read_stream(resp, sample)
                else:
                    self._read_json(await resp.read(), sample)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every client-side failure is a named outcome, never a crash
            sample.outcome, sample.ok = _outcome_of(exc), False
            sample.error = f"{type(exc).__name__}: {exc}"[:200]
        sample.end = self.now()
        return sample

    @staticmethod
    def _read_json(raw: bytes, sample: Sample) -> None:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            sample.outcome, sample.error = "invalid_response", _error_text(raw)
            return
        _usage(sample, data.get("usage"))
        sample.ok = True

    async def _read_stream(self, resp: aiohttp.ClientResponse, sample: Sample) -> None:
        """Parse SSE ``data:`` lines as the bytes arrive (no line-length limit)."""
        buffer = b""
        async for chunk in resp.content.iter_any():
            now = self.now()
            lines = (buffer + chunk).split(b"\n")
            buffer = lines.pop()
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    sample.ok = True
                    return
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    event = None
                if not isinstance(event, dict):
                    sample.outcome, sample.error = "invalid_response", payload[:200].decode(
                        "utf-8", "replace")
                    return
                if event.get("error"):
                    sample.outcome = "stream_error"
                    sample.error = _error_text(orjson.dumps(event))
                    return
                for choice in event.get("choices") or ():
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    if isinstance(delta, dict) and (delta.get("content") or delta.get(
                            "reasoning_content") or delta.get("tool_calls")):
                        if sample.first_token is None:
                            sample.first_token = now
                        sample.last_token = now
                _usage(sample, event.get("usage"))
        sample.outcome, sample.error = "incomplete_stream", "the stream ended without [DONE]"

    # -- loops ------------------------------------------------------------------
    def _limit(self) -> int:
        o = self.options
        return min(o.requests or MAX_REQUESTS,
                   math.ceil(o.rate * o.duration - 1e-9) if o.rate else MAX_REQUESTS)

    async def open_loop(self) -> None:
        rate = self.options.rate
        assert rate is not None
        limit, end = self._limit(), self.options.duration + _CATCH_UP_GRACE_S
        for i in range(limit):
            due = i / rate
            now = self.now()
            if due > now:
                await asyncio.sleep(due - now)
            elif now > end:  # hopelessly behind: say so rather than run on forever
                self.unsent = limit - i
                break
            task = asyncio.create_task(self.one(due))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if self.tasks:
            await asyncio.gather(*self.tasks)

    async def closed_loop(self) -> None:
        limit, duration = self._limit(), self.options.duration
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < limit and (now := self.now()) < duration:
                issued += 1
                await self.one(now)

        assert self.options.concurrency is not None
        await asyncio.gather(*(worker() for _ in range(self.options.concurrency)))


async def _progress(runner: _Runner, out: IO[str]) -> None:
    """``elapsed sent ok errors in-flight rate`` on one rewritten line, ~4x/s."""
    window: deque[tuple[float, int]] = deque(maxlen=5)  # ~1 s of (time, finished)
    while True:
        now, finished = runner.now(), runner.ok + runner.errors
        window.append((now, finished))
        span = now - window[0][0]
        rate = (finished - window[0][1]) / span if span > 0 else 0.0
        out.write(f"\r\x1b[K{now:7.1f}s  sent {runner.sent}  ok {runner.ok}  "
                  f"errors {runner.errors}  in flight {runner.in_flight}  {rate:.1f} resp/s")
        out.flush()
        await asyncio.sleep(_PROGRESS_INTERVAL_S)


async def run_loadtest(options: LoadTestOptions, *, progress: IO[str] | None = None,
                       stop: asyncio.Event | None = None) -> LoadTestResult:
    """Run one load test. ``progress``: where to draw the live line (None: nowhere).
    Setting ``stop`` ends the run early: nothing more is sent, in-flight requests are
    abandoned and the result is marked interrupted."""
    pool = options.concurrency if options.concurrency is not None else options.max_in_flight
    connector = aiohttp.TCPConnector(limit=pool, limit_per_host=pool)
    timeout = aiohttp.ClientTimeout(total=options.timeout, sock_connect=min(10.0, options.timeout))
    headers = {**options.headers, "Authorization": f"Bearer {options.key}",
               "Content-Type": "application/json", "User-Agent": "floodgate-loadtest"}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers=headers) as session:
        runner = _Runner(options, session)
        generate = asyncio.create_task(
            runner.open_loop() if options.mode == "open" else runner.closed_loop())
        waiters: set[asyncio.Task[Any]] = {generate}
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        if stopper is not None:
            waiters.add(stopper)
        drawer = asyncio.create_task(_progress(runner, progress)) if progress else None
        interrupted = False
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not generate.done():
                interrupted = True
                for task in (generate, *runner.tasks):
                    task.cancel()
                await asyncio.gather(generate, *runner.tasks, return_exceptions=True)
            else:
                generate.result()  # re-raise a bug in the generator itself
        finally:  # also when run_loadtest itself is cancelled: leave nothing running
            for task in (generate, stopper, drawer, *runner.tasks):
                if task is not None and not task.done():
                    task.cancel()
            if progress is not None:
                progress.write("\r\x1b[K")
                progress.flush()
        elapsed = runner.now()
    return LoadTestResult(options, runner.samples, elapsed, runner.sent, runner.unsent,
                          runner.abandoned, interrupted, runner.peak_in_flight)


# --------------------------------------------------------------------------- summary

def _outcome_order(outcome: str) -> tuple[int, str]:
    return (0, outcome.zfill(3)) if outcome.isdigit() else (1, outcome)


def _group(samples: list[Sample], prices: Mapping[str, Price] | None,
           requested: str) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    costs = [c for s in samples if (c := _cost(s, prices, requested)) is not None]
    latency = _stats_ms([s.end - s.scheduled for s in ok])
    return {"requests": len(samples), "ok": len(ok),
            "success_rate": len(ok) / len(samples) if samples else 0.0,
            "latency_ms": latency,
            "prompt_tokens": sum(s.prompt_tokens or 0 for s in samples),
            "completion_tokens": sum(s.completion_tokens or 0 for s in samples),
            "cost_usd": sum(costs) if costs else None}


def _cost(sample: Sample, prices: Mapping[str, Price] | None, requested: str) -> float | None:
    """The gateway's figure when it sent one, else usage x catalogue price when known."""
    if sample.header_cost is not None:
        return sample.header_cost
    if prices is None or sample.prompt_tokens is None or sample.completion_tokens is None:
        return None
    price = prices.get(sample.model or requested)
    if price is None:
        return None
    return price.cost(Usage(sample.prompt_tokens, sample.completion_tokens, sample.cached_tokens))


def summarize(result: LoadTestResult) -> dict[str, Any]:
    """All the figures of a run as a JSON-able dict (what ``--json`` writes and the report shows).
    Latency figures are milliseconds over successful requests, measured from the scheduled send."""
    o, samples = result.options, result.samples
    ok = [s for s in samples if s.ok]
    outcomes = Counter(s.outcome for s in samples)
    examples: dict[str, str] = {}
    for s in samples:
        if not s.ok and s.error and s.outcome not in examples:
            examples[s.outcome] = s.error
    lags = [s.sent - s.scheduled for s in samples] if o.mode == "open" else []
    with_usage = [s for s in samples if s.prompt_tokens is not None]
    header_costs = sum(1 for s in samples if s.header_cost is not None)
    costs = [c for s in samples if (c := _cost(s, o.prices, o.model)) is not None]
    elapsed = max(result.elapsed, 1e-9)
    completion_tokens = sum(s.completion_tokens or 0 for s in with_usage)
    by: dict[str, dict[str, list[Sample]]] = {"route": {}, "model": {}}
    for s in samples:
        by["route"].setdefault(s.route or "(none)", []).append(s)
        by["model"].setdefault(s.model or "(none)", []).append(s)
    source = ("x-floodgate-cost-usd" if header_costs == len(costs) else
              f"catalogue prices ({o.prices_source})" if header_costs == 0 else
              f"x-floodgate-cost-usd, else catalogue prices ({o.prices_source})")
    latencies_ms = [(s.end - s.scheduled) * 1000.0 for s in ok]
    return {
        "target": o.endpoint, "mode": o.mode, "rate": o.rate, "concurrency": o.concurrency,
        "duration_s": o.duration, "max_requests": o.requests, "model": o.model,
        "stream": o.stream, "max_tokens": o.max_tokens, "prompts": o.prompts_source,
        "percentile_method": PERCENTILE_METHOD,
        "elapsed_s": result.elapsed, "interrupted": result.interrupted,
        "sent": result.sent, "completed": len(samples), "ok": len(ok),
        "errors": len(samples) - len(ok), "unsent": result.unsent, "abandoned": result.abandoned,
        "success_rate": len(ok) / len(samples) if samples else 0.0,
        "throughput_rps": len(samples) / elapsed, "ok_throughput_rps": len(ok) / elapsed,
        "peak_in_flight": result.peak_in_flight, "max_in_flight": o.max_in_flight,
        "schedule_lag_ms": _stats_ms(lags) if lags else None,
        "status_counts": {k: outcomes[k] for k in sorted(outcomes, key=_outcome_order)},
        "error_examples": {k: examples[k] for k in sorted(examples, key=_outcome_order)},
        "latency_ms": _stats_ms([s.end - s.scheduled for s in ok]),
        "service_time_ms": _stats_ms([s.end - s.sent for s in ok]),
        "ttft_ms": _stats_ms([s.first_token - s.scheduled for s in ok
                              if s.first_token is not None]),
        "ttlt_ms": _stats_ms([s.last_token - s.scheduled for s in ok
                              if s.last_token is not None]),
        "tokens": {"responses_with_usage": len(with_usage),
                   "prompt": sum(s.prompt_tokens or 0 for s in with_usage),
                   "completion": completion_tokens,
                   "completion_per_s": completion_tokens / elapsed},
        "cost_usd": {"total": sum(costs), "responses": len(costs), "source": source}
        if costs else None,
        "by_route": {k: _group(v, o.prices, o.model) for k, v in sorted(by["route"].items())},
        "by_model": {k: _group(v, o.prices, o.model) for k, v in sorted(by["model"].items())},
        "histogram_ms": [{"low": lo, "high": hi, "count": c}
                         for lo, hi, c in histogram(latencies_ms)],
    }


# --------------------------------------------------------------------------- the report

_EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(count: int, peak: int, width: int = 40) -> str:
    units = round(count / peak * width * 8) if peak else 0
    units = max(units, 1) if count else 0
    full, rest = divmod(units, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _ms(value: float) -> str:
    return f"{value:.1f}" if value < 10_000 else f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:.6f}" if value < 1 else f"${value:,.4f}"


def _group_table(title: str, groups: dict[str, Any]) -> list[str]:
    width = max([len(title), *(len(k) for k in groups)]) + 2
    lines = [f"by {title}", f"  {title:<{width}}{'requests':>9}{'ok %':>8}{'p50 ms':>10}"
             f"{'p99 ms':>10}{'tokens in/out':>17}{'cost':>13}"]
    for name, g in groups.items():
        lat = g["latency_ms"]
        p50, p99 = (_ms(lat["p50"]), _ms(lat["p99"])) if lat else ("-", "-")
        cost = _usd(g["cost_usd"]) if g["cost_usd"] is not None else "-"
        tokens = f"{g['prompt_tokens']}/{g['completion_tokens']}"
        lines.append(f"  {name:<{width}}{g['requests']:>9}{100 * g['success_rate']:>8.1f}"
                     f"{p50:>10}{p99:>10}{tokens:>17}{cost:>13}")
    return lines


def format_report(summary: dict[str, Any]) -> str:
    """The human-readable report of a :func:`summarize` dict."""
    s = summary
    mode = (f"open loop, {s['rate']:g} req/s" if s["mode"] == "open"
            else f"closed loop, {s['concurrency']} concurrent")
    limits = f"for {s['duration_s']:g} s"
    if s["max_requests"]:
        limits = (f"for {s['max_requests']} requests (at most {MAX_DURATION_S:g} s)"
                  if s["duration_s"] >= MAX_DURATION_S else
                  f"{limits} or {s['max_requests']} requests, whichever comes first")
    out = [f"floodgate loadtest → {s['target']}",
           f"  {mode} {limits}; model {s['model']}; stream {'on' if s['stream'] else 'off'}; "
           f"prompts: {s['prompts']}",
           f"  elapsed {s['elapsed_s']:.2f} s; sent {s['sent']}, completed {s['completed']}, "
           f"ok {s['ok']} ({100 * s['success_rate']:.1f}%); "
           f"throughput {s['throughput_rps']:.1f} req/s (ok {s['ok_throughput_rps']:.1f}/s); "
           f"peak in flight {s['peak_in_flight']}"]
    if s["interrupted"]:
        out.append(f"  INTERRUPTED: {s['abandoned']} request(s) in flight were abandoned")
    lag = s["schedule_lag_ms"]
    if lag:
        behind = lag["max"] > _BEHIND_MS or s["unsent"]
        out.append(f"  schedule: {'generator fell BEHIND' if behind else 'kept'} — lag p99 "
                   f"{_ms(lag['p99'])} ms, max {_ms(lag['max'])} ms"
                   + (f"; {s['unsent']} overdue request(s) never sent" if s["unsent"] else "")
                   + ("; latencies include it (measured from the schedule)" if behind else ""))
    if s["mode"] == "open" and s["peak_in_flight"] > s["max_in_flight"]:
        out.append(f"  connection pool full: up to {s['peak_in_flight'] - s['max_in_flight']} "
                   f"request(s) waited for one of the {s['max_in_flight']} connections "
                   "(counted as latency; raise --max-in-flight to open more)")
    out += ["", "status"]
    for outcome, count in s["status_counts"].items():
        share = 100 * count / s["completed"] if s["completed"] else 0.0
        example = s["error_examples"].get(outcome)
        out.append(f"  {outcome:<20}{count:>8}{share:>7.1f}%" + (f"  e.g. {example[:90]}"
                                                                  if example else ""))
    if not s["status_counts"]:
        out.append("  (no response)")
    origin = "scheduled" if s["mode"] == "open" else "actual"
    out += ["", f"latency (ms, successful requests, from the {origin} send)"]
    if s["latency_ms"]:
        out.append(f"  {'':<12}{'avg':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}{'min':>9}")
    else:
        out.append("  (no successful request)")
    rows = [("total", s["latency_ms"]), ("ttft", s["ttft_ms"]), ("last token", s["ttlt_ms"])]
    if s["mode"] == "open":
        rows.insert(1, ("service", s["service_time_ms"]))
    for label, st in rows:
        if st:
            out.append(f"  {label:<12}" + "".join(f"{_ms(st[k]):>9}" for k in
                                                   ("avg", "p50", "p90", "p99", "max", "min")))
    t = s["tokens"]
    out += ["", "tokens"]
    if t["responses_with_usage"]:
        n = t["responses_with_usage"]
        out.append(f"  prompt {t['prompt']} (avg {t['prompt'] / n:.1f}), completion "
                   f"{t['completion']} (avg {t['completion'] / n:.1f}); "
                   f"{t['completion_per_s']:.1f} completion tokens/s; usage on {n}/"
                   f"{s['completed']} responses")
    else:
        out.append("  no usage reported")
    if s["cost_usd"]:
        c = s["cost_usd"]
        out += ["", "cost", f"  {_usd(c['total'])} over {c['responses']} response(s), "
                f"from {c['source']}"]
    for key, title in (("by_route", "route"), ("by_model", "model")):
        if any(name != "(none)" for name in s[key]):  # only against a Floodgate gateway
            out += ["", *_group_table(title, s[key])]
    if s["histogram_ms"]:
        buckets = s["histogram_ms"]
        peak = max(b["count"] for b in buckets)
        width = max(len(f"{b['high']:g}") for b in buckets)
        out += ["", "latency histogram (ms, log scale; count, cumulative %)"]
        cumulative = 0
        for b in buckets:
            cumulative += b["count"]
            out.append(f"  {b['low']:>{width}g} – {b['high']:<{width}g} │"
                       f"{_bar(b['count'], peak):<40} {b['count']:>7} "
                       f"{100 * cumulative / s['ok']:>6.1f}%")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- CLI

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
    prices = {name: entry.price for name, entry in config.models.items()}
    for alias, target in config.aliases.items():
        if target in config.models:
            prices.setdefault(alias, config.models[target].price)
    return prices


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
