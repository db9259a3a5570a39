"""The festival-overload phase's figure (matplotlib, the ``bench`` extra): one PNG, five panels
sharing the time axis, ladder off and on side by side where they compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]

STEP_COLOURS = {"none": "#4c72b0", "faq": "#55a868", "cheaper": "#8172b3", "short": "#ccb974", "refused": "#c44e52"}


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    off, on = data["ladder-off"]["series"], data["ladder-on"]["series"]
    fig, axes = plt.subplots(5, 1, figsize=(11, 15), sharex=True)
    fig.suptitle(f"Festival overload: {data['low']:g}x → {data['high']:g}x → {data['low']:g}x the upstream's capacity "
                 f"({data['capacity']:g} req/s), ladder off and on")

    ax = axes[0]
    ax.plot(on["t"], [s * 100 for s in on["success"]], label="client success, ladder on", color="#2a9d8f", lw=2)
    ax.plot(off["t"], [s * 100 for s in off["success"]], label="client success, ladder off", color="#e76f51", lw=2)
    ax.set_ylabel("success %")
    ax.set_ylim(0, 105)
    load = ax.twinx()
    load.plot(on["t"], on["load"], color="grey", ls="--", label="offered load")
    load.set_ylabel("offered load (× capacity)")
    ax.legend(loc="lower left")

    ax = axes[1]
    for series, label, colour in ((on, "ladder on", "#2a9d8f"), (off, "ladder off", "#e76f51")):
        ax.plot(series["t"], [v if v is not None else float("nan") for v in series["ttft_p99_ms"]], label=label,
                color=colour, lw=2)
    ax.set_ylabel("TTFT p99 (ms)")
    ax.set_yscale("log")
    ax.legend(loc="upper left")

    ax = axes[2]
    names = [n for n in ("none", "faq", "cheaper", "short", "refused") if n in on["steps"]]
    names += sorted(n for n in on["steps"] if n not in names)
    ax.stackplot(on["t"], *[[v * 100 for v in on["steps"][n]] for n in names], labels=names,
                 colors=[STEP_COLOURS.get(n, "#999999") for n in names])
    ax.set_ylabel("answers by step %\n(ladder on)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", ncol=len(names), fontsize="small")

    ax = axes[3]
    places = sorted(on["deployments"], key=lambda n: (n == "refused", n))
    ax.stackplot(on["t"], *[[v * 100 for v in on["deployments"][n]] for n in places], labels=places)
    ax.set_ylabel("answers by deployment %\n(ladder on)")
    ax.set_ylim(0, 100)
    ax.legend(loc="upper left", ncol=len(places), fontsize="small")

    ax = axes[4]
    for series, label, colour in ((on, "ladder on", "#2a9d8f"), (off, "ladder off", "#e76f51")):
        points = [(t, c) for t, c, _ in series["status"] if c is not None]
        ax.plot([t for t, _ in points], [c for _, c in points], label=f"cost/min, {label}", color=colour, lw=2)
    ax.set_ylabel("USD per minute")
    ax.set_xlabel("seconds")
    limits = ax.twinx()
    keys = sorted({k for _, _, learned in on["status"] for k in learned})
    for key in keys:
        points = [(t, learned[key]) for t, _, learned in on["status"] if learned.get(key) is not None]
        limits.plot([t for t, _ in points], [v for _, v in points], ls=":", label=f"learned concurrency {key}")
    limits.set_ylabel("learned concurrency (ladder on)")
    ax.legend(loc="upper left", fontsize="small")
    limits.legend(loc="upper right", fontsize="small")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
