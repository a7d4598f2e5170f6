#!/usr/bin/env bash
# The whole test suite on a fresh machine, in one command: `bash tests/run.sh` (extra args go to pytest).
# Creates .venv if needed, installs Inglenook with its test and torch extras (install.sh: llama-cpp-python is
# built portable once into ~/.cache/inglenook/wheels; cache that folder in CI), installs Debian's Chromium for
# the browser tests, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! [ -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q && apt-get install -y -q --no-install-recommends chromium
    elif command -v sudo >/dev/null; then
        sudo apt-get update -q && sudo apt-get install -y -q --no-install-recommends chromium
    else
        echo "note: /usr/bin/chromium is missing and cannot be installed; browser tests will be skipped" >&2
    fi
fi

# Everything: the portable llama.cpp build (built once into a wheel folder, see install.sh), the torch loaders
# (CI tests all three loaders) and the test tools.
bash install.sh test,torch
# The test loader plugin (tests/plugins/fake_loader) is installed like any third-party loader: an entry point.
.venv/bin/python -m pip install -q -e tests/plugins/fake_loader
# JavaScript API clients (the official openai npm package, the Vercel AI SDK) for tests/test_api_clients.py; skipped without npm.
if command -v npm >/dev/null; then
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error) || echo "note: npm install in tests/js failed; the Node client tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
