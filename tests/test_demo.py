"""`floodgate demo` on the shipped config: every plugin visibly at work."""

from __future__ import annotations

from pathlib import Path

from proxy.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "config.yaml"


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
