"""Fixtures shared by the load tester's tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def prompt_file(tmp_path: Path) -> Callable[..., str]:
    """``prompt_file(*lines)`` writes a JSONL prompts file (objects as JSON, strings as they are); returns its path."""

    def write(*lines: Any) -> str:
        path = tmp_path / "prompts.jsonl"
        path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
                                  for x in lines) + "\n", encoding="utf-8")
        return str(path)

    return write
