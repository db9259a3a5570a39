"""The demo's script: the shipped config pointed at a mock, then one scripted request after another."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.app import create_app
from proxy.config import config_from_dict
from proxy.config.source import load_yaml
from proxy.errors import ConfigErrors
from proxy.mock import MockSettings, MockUpstream

from .printer import Printer, _print_table

DEMO_KEY = "fg-demo-key"
TRIAL_KEY = "fg-trial-key"
ADMIN_KEY = "fg-admin-key"


def _demo_config(path: Path, mock_url: str, ledger: Path) -> Any:
    """The shipped config with every upstream pointed at the demo's mock."""
    data = load_yaml(path.read_text(encoding="utf-8"), source=path.name).data
    for upstream in data.get("upstreams", {}).values():
        upstream["base_url"] = mock_url
        upstream.pop("mock", None)
        upstream.pop("api_key", None)
    data.setdefault("server", {}).update(access_log=False, port=0)
    cost = data.setdefault("plugins", {}).setdefault("cost", {}) or {}
    cost.setdefault("ledger", {})["path"] = str(ledger)
    data["plugins"]["cost"] = cost
    return config_from_dict(data, source=path.name)


async def _run(config_path: Path, printer: Printer) -> int:
    import openai

    p = printer
    mock = MockUpstream(MockSettings(tokens_per_second=60, completion_tokens=20, seed=7))
    await mock.start()
    tmp = tempfile.TemporaryDirectory(prefix="floodgate-demo-")
    runner: web.AppRunner | None = None
    clients: list[Any] = []
    try:
        try:
            config = _demo_config(config_path, mock.url, Path(tmp.name) / "usage.db")
            app = create_app(config)
        except ConfigErrors as exc:
            for error in exc.errors:
                print(f"error: {error}", file=sys.stderr)
            return 1
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}/v1"

        def client(key: str, **kw: Any) -> Any:
            c = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, **kw)
            clients.append(c)
            return c

        shop, trial = client(DEMO_KEY), client(TRIAL_KEY)
        print(p.bold("Floodgate demo") + p.dim(f"  gateway {base}   mock upstream {mock.url}   config {config_path}"))
        print(p.dim("   An online shop's customer-service bot talks to Floodgate with the official openai SDK;"
                    " answers come from the mock."))

        async def ask(c: Any, text: str, model: str = "auto") -> tuple[Any, Any, float]:
            started = time.perf_counter()
            raw = await c.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": text}])
            return raw, raw.parse(), time.perf_counter() - started

        def show(raw: Any, reply: Any, elapsed: float, *, upstream_before: int) -> None:
            h = raw.headers
            p.said("bot:", reply.choices[0].message.content[:60])
            facts: dict[str, Any] = {}
            if h.get("x-floodgate-short-circuit"):
                facts["answered_by"] = h["x-floodgate-short-circuit"]
            if h.get("x-floodgate-route"):
                facts["route"] = f"{h['x-floodgate-route']} ({h.get('x-floodgate-route-rule', '-')})"
                facts["model"] = h.get("x-floodgate-model")
                facts["attempts"] = h.get("x-floodgate-attempts")
            facts["upstream_calls"] = mock.stats.total - upstream_before
            facts["cost"] = f"${float(h.get('x-floodgate-cost-usd', 0)):.6f}"
            facts["time"] = f"{elapsed * 1000:.0f}ms"
            p.facts(**facts)

        # Warm the SDK up (its first call builds its types) against the mock directly, and open the
        # connection to the gateway: the timings below then show the gateway, not start-up costs.
        warm = client("unused")
        warm.base_url = mock.url
        (await warm.chat.completions.with_raw_response.create(
            model="deepseek-v3.2", messages=[{"role": "user", "content": "hi"}])).parse()
        await shop.models.list()
        mock.reset()

        # 1. FAQ
        p.step(1, "FAQ short-circuit", "plugins.faq answers common questions itself: no model call, no cost.")
        before = mock.stats.total
        p.said("customer:", "包邮吗?")
        show(*await ask(shop, "包邮吗?"), upstream_before=before)

        # 2. Router tiers
        p.step(2, "Complexity router", "plugins.router sends easy questions to the cheap model and hard ones"
                                       " to the strong one.")
        questions = ("我的订单什么时候发货?", "这款手机和那款有什么区别?",
                     "为什么我的优惠券没用上?帮我计算一下怎么凑单最划算")
        for text in questions:
            before = mock.stats.total
            p.said("customer:", text)
            show(*await ask(shop, text), upstream_before=before)

        # 3. Fallback
        p.step(3, "Retry and fallback", "deepseek-v3.2 now answers 503 three times in a row: plugins.retry retries"
                                         " with backoff, then falls back to the route's next model.")
        mock.set_behaviour("deepseek-v3.2", fail_first=3, error_status=503, tokens_per_second=60)
        before = mock.stats.total
        p.said("customer:", "我的快递到哪了?")
        raw, reply, elapsed = await ask(shop, "我的快递到哪了?")
        show(raw, reply, elapsed, upstream_before=before)
        failures = int(raw.headers.get("x-floodgate-attempts", "1")) - 1
        print("   " + p.yellow(f"deepseek-v3.2 failed {failures}×; answered by {raw.headers.get('x-floodgate-model')}"
                             " — the customer saw no error"))
        mock.set_behaviour("deepseek-v3.2", tokens_per_second=60)

        # 4. Rate limit burst
        p.step(4, "A burst meets the rate limiter", "The trial key may send 2 requests/s (burst 3); 10 arrive at"
                                                    " once. plugins.ratelimit queues what it can within 1.5 s"
                                                    " and refuses the rest with 429 + retry-after.")

        async def one(i: int) -> tuple[int, int, float, str]:
            started = time.perf_counter()
            try:
                await trial.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": f"订单{i}发货了吗"}])
                return i, 200, time.perf_counter() - started, ""
            except openai.RateLimitError as exc:
                return i, 429, time.perf_counter() - started, exc.response.headers.get("retry-after", "")

        results = await asyncio.gather(*(one(i) for i in range(10)))
        line = []
        for _i, status, elapsed, retry_after in sorted(results, key=lambda r: r[2]):
            if status == 200:
                line.append(p.green(f"200 after {elapsed * 1000:.0f}ms"))
            else:
                line.append(p.red(f"429 retry-after={retry_after}s"))
        for k in range(0, len(line), 5):
            print("   " + "  ".join(line[k:k + 5]))
        ok = sum(1 for r in results if r[1] == 200)
        fastest = min((r[2] for r in results if r[1] == 200), default=0.0)
        queued = sum(1 for r in results if r[1] == 200 and r[2] > fastest + 0.25)
        p.facts(admitted=ok, of_which_waited_in_queue=queued, refused=len(results) - ok)

        # 5. Keys
        p.step(5, "Keys", "plugins.auth: unknown keys get 401, a key asking for a model it may not use gets 403;"
                          " neither is retried by the SDK.")
        attempts = (("unknown key", client("sk-stolen"), "auto"), ("trial key → gpt-4.1", trial, "gpt-4.1"))
        for label, c, model in attempts:
            try:
                await c.chat.completions.create(model=model, messages=[{"role": "user", "content": "你好"}])
                p.said(f"{label}:", p.red("unexpectedly allowed"))
            except openai.APIStatusError as exc:
                message = exc.body.get("message", "") if isinstance(exc.body, dict) else str(exc.message)
                p.said(f"{label}:", f"{exc.status_code} {exc.code} — {message}")

        # 6. Streaming
        p.step(6, "A streamed answer", "Relayed chunk by chunk as the model produces it, through the 物流追踪"
                                       " agent (a route with its own system prompt).")
        started = time.perf_counter()
        first = None
        stream = await shop.chat.completions.create(
            model="物流追踪", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "我的包裹三天没更新了"}])
        print("   " + p.cyan("bot:") + " ", end="", flush=True)
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter()
                print(chunk.choices[0].delta.content, end="", flush=True)
            if chunk.usage:
                usage = chunk.usage
        print()
        p.facts(first_token=f"{((first or started) - started) * 1000:.0f}ms",
                total=f"{(time.perf_counter() - started) * 1000:.0f}ms",
                tokens=f"{usage.prompt_tokens}+{usage.completion_tokens}" if usage else "-",
                system_prompt_sent=str(mock.stats.requests[-1].body["messages"][0]["role"] == "system").lower())

        # 7. The bill
        p.step(7, "The bill", "plugins.cost priced every request from the catalogue and wrote it to the usage"
                              " ledger (GET /-/usage with the admin key; `floodgate usage` on the command line).")
        import aiohttp
        async with aiohttp.ClientSession() as session:
            for by in ("model", "key"):
                async with session.get(f"http://127.0.0.1:{port}/-/usage", params={"by": by},
                                       headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
                    report = await resp.json()
                _print_table(p, report)
        print()
        print(p.dim("   Metrics: GET /metrics.  Run it yourself: `floodgate serve`, then point an OpenAI SDK at"
                    " http://127.0.0.1:8080/v1 with the key fg-demo-key."))
        return 0
    finally:
        for c in clients:
            await c.close()
        if runner is not None:
            await runner.cleanup()
        await mock.stop()
        tmp.cleanup()

