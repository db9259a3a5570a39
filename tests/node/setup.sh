#!/usr/bin/env bash
# Install the openai Node SDK the Node test uses (tests/node/node_modules, from package-lock.json).
# Run by .ci/run, and by tests/test_node_sdk.py when the modules are missing. Needs node and npm.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
