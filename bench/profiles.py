"""py-spy's collapsed stacks (``--format raw``) summarised per file and function."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import REPO

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def summarize_profile(raw: str, top: int = 25) -> dict[str, Any]:
    """py-spy ``--format raw`` (collapsed stacks) -> self and inclusive time per file:function."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    innermost: dict[str, int] = {}  # the deepest proxy/ or plugins/ frame: our code + what it calls
    by_plugin: dict[str, int] = {}  # samples with a frame of plugins/<file> anywhere on the stack
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = []
        for frame in stack.split(";"):
            m = _FRAME.match(frame.strip())
            name = f"{_short(m.group('file'))}:{m.group('func')}" if m else frame.strip()
            frames.append(name)
        if frames:
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + count
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + count
        mine = next((f for f in reversed(frames) if _ours(f)), "(outside proxy/ and plugins/: aiohttp, asyncio)")
        innermost[mine] = innermost.get(mine, 0) + count
        for module in {f.split(":", 1)[0] for f in frames if f.startswith("plugins/")}:
            by_plugin[module] = by_plugin.get(module, 0) + count

    def table(data: dict[str, int], keep: Callable[[str], bool]) -> list[tuple[str, float]]:
        rows = sorted(((k, v) for k, v in data.items() if keep(k)), key=lambda kv: -kv[1])[:top]
        return [(k, round(100.0 * v / total, 1)) for k, v in rows] if total else []

    entry = {"proxy/__main__.py:<module>", "proxy/cli.py:main", "proxy/cli.py:_cmd_serve", "proxy/server.py:serve"}
    return {"samples": total, "self": table(self_time, lambda _: True),
            "inclusive_project": table(inclusive, lambda n: _ours(n) and n not in entry),
            "innermost_project": table(innermost, lambda n: n not in entry),
            "plugins_inclusive": table(by_plugin, lambda _: True)}


def _ours(name: str) -> bool:
    return name.startswith(("proxy/", "plugins/")) and not name.startswith(("proxy/__main__", "proxy/cli.py",
                                                                            "proxy/server.py"))


def _short(path: str) -> str:
    """``proxy/pipeline.py``, ``aiohttp/web_protocol.py``, ``asyncio/events.py``: paths as people say them."""
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except (ValueError, OSError):
        pass
    if "/site-packages/" in path:
        return path.rsplit("/site-packages/", 1)[1]
    m = re.search(r"/lib/python3[.\d]*/(.+)$", path) or re.search(r"/((?:proxy|plugins|bench)/[^/]+)$", path)
    return m.group(1) if m else path
