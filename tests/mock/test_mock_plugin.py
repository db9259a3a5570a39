"""Tests of the mock's gateway plugin (proxy/mock/plugin.py) and of the tools' place beside the core."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.mock import MockPlugin, run

REPO = Path(__file__).resolve().parents[2]


def test_mock_upstream_command_comes_from_the_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    """``floodgate mock-upstream`` is added by MockPlugin (an entry point), not by the core CLI."""
    parser = argparse.ArgumentParser(prog="floodgate")
    MockPlugin().proxy_add_commands(parser.add_subparsers())
    args = parser.parse_args(["mock-upstream", "--port", "0", "--fault", "a:hang=true"])
    assert args.func is run and args.port == 0 and args.fault == [("a", {"hang": True})]
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "mock-upstream" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["mock-upstream", "--help"])
    assert exc.value.code == 0 and "fault injection per model" in capsys.readouterr().out


@pytest.mark.e2e
def test_the_core_imports_no_tool() -> None:
    """Every core module imports without loading a tool: tools reach the core only as plugins."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import proxy
        TOOLS = {"mock", "loadtest", "demo", "testing", "top"}
        for info in pkgutil.iter_modules(proxy.__path__):
            if info.name not in TOOLS and info.name != "__main__":
                importlib.import_module(f"proxy.{info.name}")
        print(sorted(name for name in sys.modules if name.split(".")[0] == "proxy"
                     and name.count(".") and name.split(".")[1] in TOOLS))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
