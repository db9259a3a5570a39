"""The official `openai` Node SDK (from the npm registry, pinned in tests/node/package-lock.json)
against the gateway: chat, a stream with usage, embeddings, responses and an error.

Skipped only where `node` is absent; where it is, missing modules are installed
(`tests/node/setup.sh`, which `.ci/run` also runs) and a failed install fails the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from proxy.testing import mock_config

NODE_DIR = Path(__file__).resolve().parent / "node"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the openai Node SDK check needs Node.js 20+ and npm")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        setup = subprocess.run(["bash", str(NODE_DIR / "setup.sh")], capture_output=True, text=True, timeout=300)
        if setup.returncode != 0:
            pytest.fail(f"tests/node/setup.sh could not install the openai Node SDK:\n{setup.stderr[-2000:]}")
    return node


async def test_node_sdk(node, floodgate, mock_upstream):
    gw = await floodgate(mock_config(mock_upstream.url, plugin_settings={
        "auth": {"keys": [{"name": "node", "key": "sk-node-key-1"}]}}), builtins=("plugins.auth",))
    process = await asyncio.create_subprocess_exec(
        node, str(NODE_DIR / "sdk_check.mjs"), cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "FLOODGATE_URL": gw.url, "FLOODGATE_KEY": "sk-node-key-1"})
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()[-2000:]
    out = orjson.loads(stdout.splitlines()[-1])

    assert out["chat"]["content"] and out["chat"]["finish"] == "stop"
    assert out["chat"]["usage"]["completion_tokens"] > 0
    stream = out["stream"]
    assert stream["text"] == out["chat"]["content"] and stream["chunks"] > 3
    assert stream["usage"]["completion_tokens"] == out["chat"]["usage"]["completion_tokens"]
    assert out["embeddings"] == {"count": 2, "dimensions": mock_upstream.settings.embedding_dimensions}
    assert out["responses"]["status"] == "completed" and out["responses"]["text"]
    assert out["responses"]["usage"]["output_tokens"] > 0
    error = out["error"]
    assert error["raised"] and error["class"] == "NotFoundError" and error["status"] == 404
    assert error["code"] == "model_not_found" and error["requestId"]
