"""The built-in and example plugins are written against the public ``proxy`` API only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for d in ("plugins", "examples") for p in (ROOT / d).rglob("*.py"))


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("proxy."):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}"
                      for a in node.names if a.name.startswith("proxy.")]
    return found


def test_only_the_public_proxy_api() -> None:
    assert SOURCES
    assert [line for path in SOURCES for line in _private_imports(path)] == []
