"""`floodgate demo` (proxy/demo/) on the shipped config: every plugin visibly at work."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.demo import DemoCommands, run

pytestmark = pytest.mark.e2e  # the whole demo: a gateway, a mock and scripted SDK calls

SHIPPED = Path(__file__).resolve().parents[2] / "config.yaml"


def test_demo_shows_every_plugin(capsys):
    assert main(["demo", "--config", str(SHIPPED), "--no-colour"]) == 0
    out = capsys.readouterr().out
    assert "answered by=faq/free-shipping  upstream calls=0" in out
    assert "route=simple (default)  model=deepseek-v3.2" in out
    assert "route=standard (compare)  model=gemini-2.5-flash" in out
    assert "route=complex (reasoning)  model=gpt-4.1" in out
    assert "deepseek-v3.2 failed 3×; answered by gemini-2.5-flash" in out
    burst = out.split("4. A burst meets the rate limiter")[1].split("5. Keys")[0]
    assert "429 retry-after=" in burst and "200 after" in burst
    assert "401 invalid_api_key" in out and "403 model_not_allowed" in out
    assert "system prompt sent=true" in out
    bill = out.split("7. The bill")[1]
    assert "gpt-4.1" in bill and "shop-bot" in bill and "trial" in bill


def test_demo_command_comes_from_its_plugin(capsys):
    """``floodgate demo`` is added by DemoCommands (an entry point), not by the core CLI."""
    top = argparse.ArgumentParser(prog="floodgate")
    DemoCommands().proxy_add_commands(top.add_subparsers())
    args = top.parse_args(["demo", "--no-color"])
    assert args.func is run and args.colour is False
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0 and "--no-colour" in capsys.readouterr().out
