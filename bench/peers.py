"""Other gateways measured in the same run (``--peers litellm``): installed on demand, each in
a virtual environment of its own (never in Floodgate's), at a pinned version.

LiteLLM's proxy runs as one worker (``--num_workers 1``), with no database (no
``DATABASE_URL``: no keys, spend logs or UI) and no master key (so no authentication,
which it must be told to allow), in front of the same
static mock upstream as the other targets, on the same CPU. The load and the body are
the same; its model list maps the benchmark's model to the mock as an OpenAI upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench import configs

#: The version measured. 1.82.7 and 1.82.8 were a compromised release: never installed.
LITELLM_VERSION = "1.108.7"
COMPROMISED = frozenset({"1.82.7", "1.82.8"})
#: ``lean``: the floor with a lean httptools upstream client (``bench/lean_forwarder.py``, a measurement).
PEERS = ("litellm", "lean")
LABELS = {"litellm": f"LiteLLM proxy {LITELLM_VERSION}", "lean": "forwarder, httptools client"}
#: Where peer environments live between runs (outside the repository and its own venv).
CACHE = Path(os.environ.get("FLOODGATE_BENCH_CACHE", Path.home() / ".cache" / "floodgate-bench"))


def litellm_python(version: str = LITELLM_VERSION) -> Path:
    """The interpreter of a virtual environment holding ``litellm[proxy]==version`` (created once)."""
    if version in COMPROMISED:
        raise SystemExit(f"litellm {version} was a compromised release: refusing to install it")
    venv = CACHE / f"litellm-{version}"
    python = venv / "bin" / "python"
    if not _installed(python, version):
        venv.parent.mkdir(parents=True, exist_ok=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"litellm[proxy]=={version}"], check=True)
        if not _installed(python, version):
            raise SystemExit(f"litellm {version} did not install into {venv}")
    return python


def _installed(python: Path, version: str) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                           capture_output=True, text=True)
    return probe.returncode == 0 and probe.stdout.strip() == version


def litellm_config(upstream_url: str) -> dict[str, Any]:
    """Every mock model as an OpenAI model at the mock; nothing logged, no callbacks, no retries."""
    return {
        "model_list": [{"model_name": name, "litellm_params": {"model": f"openai/{name}",
                                                               "api_base": upstream_url.rstrip("/"),
                                                               "api_key": "sk-bench"}}
                       for name in configs.MOCK_MODELS],
        "litellm_settings": {"telemetry": False, "num_retries": 0, "request_timeout": 30,
                             "set_verbose": False, "json_logs": False},
        # No master key (nothing to check keys against without a database): LiteLLM then does less
        # work per request than Floodgate's full chain, which authenticates every request.
        "general_settings": {"disable_spend_logs": True, "dangerously_permit_weak_or_unset_master_key": True},
    }


def litellm_argv(workdir: Path, name: str, upstream_url: str, port: int,
                 base_env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Command line and environment of one LiteLLM proxy (config written into ``workdir``)."""
    path = workdir / f"{name}-litellm.yaml"
    path.write_text(yaml.safe_dump(litellm_config(upstream_url), sort_keys=False))
    python = litellm_python()
    argv = [str(python), "-m", "litellm.proxy.proxy_cli", "--config", str(path), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1"]
    # No database, no master key, not Floodgate's import path: whatever the caller's environment says.
    env = {k: v for k, v in base_env.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY", "PYTHONPATH")}
    env.update(LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", NO_DOCS="True", DISABLE_ADMIN_UI="True")
    return argv, env
