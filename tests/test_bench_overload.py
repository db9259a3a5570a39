"""The festival-overload phase's harness (bench/overload.py, bench/ramp.py, bench/overload_plot.py):
its configs load, its ramp offers what it says, its figures and table add up, its plot is written."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from bench import overload
from bench.ramp import load_at, schedule
from proxy.config import config_from_dict
from proxy.mock.cli import add_arguments, settings_from_args


def test_the_ramp_goes_from_half_to_three_times_capacity_and_back() -> None:
    assert [load_at(t, 90, 0.5, 3.0) for t in (0, 45, 90)] == [0.5, 3.0, 0.5]
    times = schedule(10.0, 60.0, 0.5, 3.0)
    assert len(times) == pytest.approx(10.0 * 60 * 1.75, rel=0.01)  # the triangle's mean load: 1.75x
    assert times == sorted(times) and 0 <= times[0] < times[-1] < 60


def test_the_configs_and_the_mock_arguments_are_valid(tmp_path: Path) -> None:
    for ladder in (False, True):
        config = config_from_dict(overload.config("http://127.0.0.1:9/v1", tmp_path / "usage.db", ladder=ladder))
        assert [t.deployment for t in config.targets_with_fallbacks(overload.MAIN)] == ["key-a", "key-b"]
        assert ("degrade" in config.settings.plugins.model_extra) is ladder
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    mock = settings_from_args(parser.parse_args(overload.mock_args()))
    assert set(mock.quotas) == {key for key, _ in overload.PROVIDER.values()}
    assert mock.quotas["sk-provider-a"].capacity == 12


@pytest.mark.e2e
def test_figures_table_and_plot(tmp_path: Path) -> None:
    requests = [  # sent, load, key, status, ttft, total, degraded, deployment, model, faq
        [1.0, 0.5, "bulk", 200, 0.5, 1.0, "", "key-a", overload.MAIN, False],
        [2.0, 1.5, "bulk", 200, 0.6, 1.0, "cheaper", "flash", overload.CHEAP, False],
        [6.0, 3.0, "vip", 200, 0.1, 0.2, "faq", "", overload.MAIN, True],
        [7.0, 3.0, "bulk", 429, None, 0.0, "short, shed", "", "", False],
    ]
    status = [[1.0, {"gateway": {"cost_per_min_usd": 0.5},
                     "deployments": {"deepseek-v3.2@key-a": {"adaptive": True, "limits": {"concurrency": 9}}}}],
              [2.0, {"gateway": {"cost_per_min_usd": 1.5}, "deployments": {}}]]
    data = {"requests": requests, "status": status}
    figures = overload.summarize(data)
    assert figures["success"] == 0.75 and figures["refused"] == {"shed": 1}
    assert figures["steps"] == {"none": 1, "cheaper": 1, "faq": 1}
    assert figures["deployments"] == {"deepseek-v3.2@key-a": 1, "gemini-2.5-flash@flash": 1, "faq": 1}
    assert figures["cost_per_min_mean"] == 1.0 and figures["cost_per_min_peak"] == 1.5
    series = overload.series(data)
    assert series["t"] == [2.5, 7.5] and series["success"] == [1.0, 0.5]
    assert series["steps"]["refused"] == [0.0, 0.5] and series["status"][0][2] == {"deepseek-v3.2@key-a": 9}
    run = {"capacity": 11.0, "seconds": 10, "low": 0.5, "high": 3.0, "plot": "x.png",
           "ladder-off": {**figures, "series": series}, "ladder-on": {**figures, "series": series}}
    table = overload.render(run)
    assert "| on | 4 | 75.0% |" in table and "shed 25%" in table
    pytest.importorskip("matplotlib")
    from bench.overload_plot import plot

    plot(run, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
