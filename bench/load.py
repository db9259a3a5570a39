"""The benchmark's own load driver (aiohttp), for what wrk cannot do or when wrk is missing.

Modes (each prints one JSON object on stdout; times in milliseconds):

* ``closed``: ``--concurrency`` workers send back to back for ``--duration`` seconds
  (or ``--requests`` in total): requests/s and latency percentiles. The fallback
  when ``wrk`` is not installed (and much slower than wrk: it measures less).
* ``sequential``: ``--requests`` requests one after the other on one keep-alive
  connection per ``--url``, each timed: the latency a proxy adds at concurrency 1.
  Several URLs take turns every ``--block`` requests, so noise hits them alike.
* ``stream``: ``--requests`` sequential streams per ``--url`` (URLs take turns):
  time to first token (first event with non-empty content), time to last token,
  events and tokens per stream, and how the events arrived (one per network read,
  or batched).
* ``open``: open loop at ``--rate`` requests/s for ``--duration`` seconds
  (request *i* is due at ``t0 + i/rate`` however slow the answers; latency counts
  from the due time, so a slow server cannot hide behind a slow generator).

The closed and open loops and the statistics are the load tester's (``proxy.loadtest``);
the open loop sends through the lean raw HTTP/1.1 client below, whose per-request CPU cost
is far below aiohttp's. Only the URL given is contacted; every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from proxy.loadtest import stats as loadtest_stats
from proxy.loadtest.runner import closed_loop, open_schedule

MAX_REQUESTS = 2_000_000
MAX_DURATION_S = 3600.0
_CONTENT = b'"content":"'
_EMPTY_CONTENT = b'"content":""'


def stats_ms(values_s: Sequence[float]) -> dict[str, float | int | None]:
    """Count, p50, p90, p99, max and mean of durations given in seconds, in milliseconds (the load
    tester's statistics, under the keys of the benchmark's JSON; ``None`` figures for no values)."""
    figures = loadtest_stats.stats_ms(values_s)
    if figures is None:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {"n": figures["count"], "p50": figures["p50"], "p90": figures["p90"], "p99": figures["p99"],
            "max": figures["max"], "mean": figures["avg"]}


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timeout"
    return type(exc).__name__


class _StreamStats:
    """What the streams of one URL looked like."""

    def __init__(self) -> None:
        self.ttft: list[float] = []
        self.ttlt: list[float] = []
        self.gaps: list[float] = []
        self.events: Counter[int] = Counter()
        self.tokens: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.batched = self.total_tokens = 0

    def add(self, result: dict[str, Any]) -> None:
        if "error" in result:
            self.errors[result["error"]] += 1
            return
        times = result["times"]
        self.events[result["events"]] += 1
        self.tokens[result["tokens"]] += 1
        self.batched += result["batched"]
        self.total_tokens += result["tokens"]
        if times:
            self.ttft.append(times[0])
            self.ttlt.append(times[-1])
            self.gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))

    def summary(self) -> dict[str, Any]:
        gaps = self.gaps
        return {"ok": len(self.ttft), "errors": dict(self.errors), "ttft_ms": stats_ms(self.ttft),
                "ttlt_ms": stats_ms(self.ttlt), "gap_ms": stats_ms(gaps),
                "events_per_stream": {str(k): v for k, v in sorted(self.events.items())},
                "tokens_per_stream": {str(k): v for k, v in sorted(self.tokens.items())},
                "batched_token_share": self.batched / self.total_tokens if self.total_tokens else None,
                "tiny_gap_share": (sum(1 for g in gaps if g < 0.0001) / len(gaps)) if gaps else None}


class Driver:
    def __init__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
        self.url = url
        self.body = body
        self.headers = {"Content-Type": "application/json", **headers}
        self.timeout_s = timeout
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.errors: Counter[str] = Counter()

    def session(self, limit: int) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
                                     timeout=self.timeout, skip_auto_headers=("User-Agent",))

    async def one(self, session: aiohttp.ClientSession, url: str | None = None) -> bool:
        try:
            async with session.post(url or self.url, data=self.body, headers=self.headers) as resp:
                await resp.read()
                if resp.status != 200:
                    self.errors[f"http_{resp.status}"] += 1
                    return False
                return True
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.errors[_outcome(exc)] += 1
            return False

    async def closed(self, concurrency: int, duration: float, requests: int | None) -> dict[str, Any]:
        latencies: list[float] = []
        clock = time.perf_counter
        async with self.session(concurrency) as session:

            async def send(t0: float) -> None:
                if await self.one(session):
                    latencies.append(clock() - t0)

            start = clock()
            await closed_loop(send, concurrency=concurrency, limit=requests or MAX_REQUESTS,
                              deadline=start + duration, clock=clock)
            elapsed = clock() - start
        done = len(latencies) + sum(self.errors.values())
        return {"mode": "closed", "concurrency": concurrency, "seconds": elapsed, "requests": done,
                "ok": len(latencies), "errors": dict(self.errors), "rps": done / elapsed if elapsed else 0.0,
                "latency_ms": stats_ms(latencies)}

    async def sequential(self, urls: Sequence[str], requests: int, warmup: int, block: int) -> dict[str, Any]:
        """``requests`` timed requests per URL, one at a time, URLs taking turns every ``block`` requests
        (noise bursts then hit every target alike); one keep-alive connection per URL."""
        latencies: dict[str, list[float]] = {url: [] for url in urls}
        errors: dict[str, Counter[str]] = {}
        sessions = {url: self.session(1) for url in urls}
        try:
            for url in urls:
                for _ in range(warmup):
                    await self.one(sessions[url], url)
                self.errors.clear()
            clock = time.perf_counter
            done = 0
            while done < requests:
                n = min(block, requests - done)
                for url in urls:
                    self.errors = errors.setdefault(url, Counter())
                    session = sessions[url]
                    times = latencies[url]
                    for _ in range(n):
                        t0 = clock()
                        if await self.one(session, url):
                            times.append(clock() - t0)
                done += n
        finally:
            for session in sessions.values():
                await session.close()
        return {"mode": "sequential", "requests": requests, "block": block,
                "by_url": {url: {"requests": requests, "ok": len(latencies[url]),
                                 "errors": dict(errors.get(url, {})), "latency_ms": stats_ms(latencies[url])}
                           for url in urls}}

    async def _stream_once(self, session: aiohttp.ClientSession, t0: float, url: str | None = None) -> dict[str, Any]:
        """One streamed request; event arrival times are relative to ``t0``."""
        clock = time.perf_counter
        events = tokens = batched_tokens = 0
        token_times: list[float] = []
        done = False
        buffer = b""
        async with session.post(url or self.url, data=self.body, headers=self.headers) as resp:
            if resp.status != 200:
                await resp.read()
                return {"error": f"http_{resp.status}"}
            async for data in resp.content.iter_any():
                now = clock() - t0
                buffer += data
                end = buffer.rfind(b"\n\n")
                if end < 0:
                    continue
                complete, buffer = buffer[:end], buffer[end + 2:]
                in_read = 0
                for event in complete.split(b"\n\n"):
                    if not event.startswith(b"data:"):
                        continue
                    events += 1
                    if event.startswith(b"data: [DONE]"):
                        done = True
                    elif _CONTENT in event and _EMPTY_CONTENT not in event:
                        tokens += 1
                        in_read += 1
                        token_times.append(now)
                if in_read > 1:
                    batched_tokens += in_read
        if not done:
            return {"error": "no_done"}
        return {"events": events, "tokens": tokens, "batched": batched_tokens, "times": token_times}

    async def stream(self, urls: Sequence[str], requests: int, warmup: int) -> dict[str, Any]:
        """``requests`` sequential streams per URL, the URLs taking turns stream by stream."""
        acc = {url: _StreamStats() for url in urls}
        sessions = {url: self.session(1) for url in urls}
        clock = time.perf_counter
        try:
            for i in range(warmup + requests):
                for url in urls:
                    try:
                        result = await self._stream_once(sessions[url], clock(), url)
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        result = {"error": _outcome(exc)}
                    if i >= warmup:
                        acc[url].add(result)
        finally:
            for session in sessions.values():
                await session.close()
        return {"mode": "stream", "requests": requests,
                "by_url": {url: {"requests": requests, **stats.summary()} for url, stats in acc.items()}}

    async def open(self, rate: float, duration: float, stream: bool, max_in_flight: int) -> dict[str, Any]:
        """Open loop on the raw HTTP/1.1 client below (aiohttp's client costs too much CPU here)."""
        total = min(MAX_REQUESTS, int(rate * duration))
        first: list[float] = []
        last: list[float] = []
        in_flight = 0
        unsent = 0
        max_lag = 0.0
        tasks: set[asyncio.Task[None]] = set()
        pool = RawPool(self.url, self.body, self.headers)
        clock = time.perf_counter

        async def send(due: float) -> None:
            nonlocal in_flight
            try:
                async with asyncio.timeout(self.timeout_s):
                    status, ttft, ended, done = await pool.request()
                if status != 200:
                    self.errors[f"http_{status}"] += 1
                elif stream and not done:
                    self.errors["no_done"] += 1
                elif stream and ttft is None:
                    self.errors["no_tokens"] += 1
                else:
                    if ttft is not None:
                        first.append(ttft - due)
                    last.append(ended - due)
            except (TimeoutError, OSError, ConnectionError, ValueError) as exc:
                self.errors[_outcome(exc)] += 1
            finally:
                in_flight -= 1

        loop_start = clock()
        async for due, lag in open_schedule(rate, total, clock, start=loop_start):
            max_lag = max(max_lag, lag)
            if in_flight >= max_in_flight or lag > 1.0:
                unsent += 1  # the generator (or the server) fell too far behind: counted, not sent
                continue
            in_flight += 1
            task = asyncio.create_task(send(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        sent_for = clock() - loop_start
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout_s + 5)
        pool.close()
        ok = len(last)
        return {"mode": "open", "rate": rate, "duration": duration, "scheduled": total, "unsent": unsent,
                "sent_for_s": sent_for, "ok": ok, "errors": dict(self.errors),
                "achieved_rps": (ok + sum(self.errors.values())) / sent_for if sent_for else 0.0,
                "max_lag_ms": max_lag * 1000.0, "stream": stream, "connections": pool.opened,
                "ttft_ms": stats_ms(first) if stream else None, "latency_ms": stats_ms(last)}


# -- a minimal HTTP/1.1 keep-alive client for the open loop --------------------------------------

_TOKEN_RE = re.compile(rb'"content":"[^"]')
_CHUNKED_END = b"0\r\n\r\n"


class _RawConnection(asyncio.Protocol):
    """One keep-alive connection: one request at a time; just enough HTTP for the benchmark.

    Reports (status, first-token time, end time, saw ``[DONE]``). Bodies are not kept: a
    chunked (SSE) body ends at the last-chunk marker, others after Content-Length bytes.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, float | None, float, bool]] | None = None
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.head = b""
        self.status = 0
        self.chunked = False
        self.remaining = 0
        self.keep_alive = True
        self.in_body = False
        self.tail = b""
        self.ttft: float | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionResetError("connection closed mid-response"))

    def send(self, request: bytes) -> asyncio.Future[tuple[int, float | None, float, bool]]:
        self._reset()
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if not self.in_body:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].decode("latin-1"), self.head[end + 4:]
            lines = head.split("\r\n")
            self.status = int(lines[0].split(" ", 2)[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == "transfer-encoding" and "chunked" in value:
                    self.chunked = True
                elif name == "content-length":
                    self.remaining = int(value)
                elif name == "connection" and value == "close":
                    self.keep_alive = False
            self.in_body = True
        if self.chunked:
            if self.ttft is None and _TOKEN_RE.search(data):
                self.ttft = now
            window = self.tail + data
            if not self.done and b"data: [DONE]" in window:
                self.done = True
            if window.endswith(_CHUNKED_END):
                self._finish(now)
            else:
                self.tail = window[-32:]
        else:
            self.remaining -= len(data)
            if self.remaining <= 0:
                self._finish(now)

    def _finish(self, now: float) -> None:
        waiter, self.waiter = self.waiter, None
        if not self.keep_alive and self.transport is not None:
            self.transport.close()
            self.closed = True
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, self.ttft, now, self.done))


class RawPool:
    """Idle keep-alive connections to one origin; a new one whenever none is idle."""

    def __init__(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the open loop needs an http:// URL, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.request_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self.idle: list[_RawConnection] = []
        self.all: list[_RawConnection] = []
        self.opened = 0

    async def request(self) -> tuple[int, float | None, float, bool]:
        conn = None
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.closed:
                conn = candidate
                break
        if conn is None:
            _, conn = await asyncio.get_running_loop().create_connection(_RawConnection, self.host, self.port)
            self.opened += 1
            self.all.append(conn)
        result = await conn.send(self.request_bytes)
        if not conn.closed:
            self.idle.append(conn)
        return result

    def close(self) -> None:
        for conn in self.all:
            if conn.transport is not None:
                conn.transport.close()


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark load driver (JSON on stdout).")
    parser.add_argument("mode", choices=("closed", "sequential", "stream", "open"))
    parser.add_argument("--url", action="append", required=True,
                        help="target URL; sequential and stream take several and interleave them")
    parser.add_argument("--block", type=int, default=50, help="sequential: requests per URL per turn")
    parser.add_argument("--body", required=True, help="file with the request body")
    parser.add_argument("--header", action="append", type=_header, default=[])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--stream", action="store_true", help="open mode: the requests are streams")
    parser.add_argument("--max-in-flight", type=int, default=5000)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.requests is not None and not 0 < args.requests <= MAX_REQUESTS:
        parser.error(f"--requests must be within 1..{MAX_REQUESTS}")
    duration = min(max(args.duration, 0.1), MAX_DURATION_S)
    with open(args.body, "rb") as fh:
        body = fh.read()
    driver = Driver(args.url[0], body, dict(args.header), args.timeout)
    if args.mode == "closed":
        coro = driver.closed(max(1, args.concurrency), duration, args.requests)
    elif args.mode == "sequential":
        coro = driver.sequential(args.url, args.requests or 2000, args.warmup, max(1, args.block))
    elif args.mode == "stream":
        coro = driver.stream(args.url, args.requests or 50, args.warmup)
    else:
        coro = driver.open(args.rate, duration, args.stream, args.max_in_flight)
    result = asyncio.run(coro)
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
