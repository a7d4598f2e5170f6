#!/usr/bin/env bash
# Install Inglenook into .venv:
#   bash install.sh             the default, lean install: the GGUF path (llama.cpp), no torch
#   bash install.sh torch       also the transformers and GPTQ loaders (torch, transformers, GPTQModel)
#   bash install.sh test,torch  everything, with the test tools (what tests/run.sh uses)
#
# llama-cpp-python builds from source. It is built portable: no -march=native, and one ggml CPU backend per
# CPU generation (x86-64: SSE4.2 … AVX2 … AVX-512 … AMX; arm64: armv8.0 … armv9.2), the best one for the host
# picked when the library loads, so the build runs on any x86-64 or arm64 host, not only the one that compiled
# it, and loses no speed there. It is built once into a wheel folder keyed by version, CMake arguments and
# architecture: pip's own wheel cache keys on the source archive alone, so it would hand back a wheel built
# earlier with other flags (e.g. a native one) whatever CMAKE_ARGS say.
# Environment: INGLENOOK_VENV (default .venv), INGLENOOK_WHEELS (default ~/.cache/inglenook/wheels),
# INGLENOOK_CMAKE_ARGS (replaces the portable arguments, e.g. to add -DGGML_CUDA=ON).
set -euo pipefail
cd "$(dirname "$0")"

EXTRAS="${1:-}"
LLAMA_VERSION=0.3.36
PORTABLE="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DCMAKE_INSTALL_BINDIR=llama_cpp/lib"
CMAKE_ARGS="${INGLENOOK_CMAKE_ARGS:-$PORTABLE}"
VENV="${INGLENOOK_VENV:-.venv}"
key=$(printf '%s|%s|%s' "$LLAMA_VERSION" "$CMAKE_ARGS" "$(uname -m)" | sha256sum | cut -c1-12)
WHEELS="${INGLENOOK_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/inglenook/wheels}/llama-cpp-python-$LLAMA_VERSION-$key"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"

wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
    echo "Building llama-cpp-python $LLAMA_VERSION once, portable (several minutes), into $WHEELS" >&2
    mkdir -p "$WHEELS"
    tmp=$(mktemp -d "$WHEELS/.build.XXXXXX")
    CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        "$PY" -m pip wheel -q --no-cache-dir --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_VERSION" -w "$tmp"
    mv "$tmp"/llama_cpp_python-*.whl "$WHEELS"/ && rmdir "$tmp"
    wheel=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n1)
fi

# Install that wheel unless it is the one installed already (pip records the file it came from).
if ! "$PY" - "$wheel" <<'PYEOF'
import importlib.metadata, sys
from pathlib import Path
try:
    origin = importlib.metadata.distribution("llama-cpp-python").read_text("direct_url.json") or ""
except importlib.metadata.PackageNotFoundError:
    origin = ""
sys.exit(0 if Path(sys.argv[1]).resolve().as_uri() in origin else 1)
PYEOF
then
    "$PY" -m pip install -q --force-reinstall --no-deps "$wheel"
fi
"$PY" -m pip install -q --find-links "$WHEELS" -e ".${EXTRAS:+[$EXTRAS]}"
echo "Installed into $VENV (llama-cpp-python from $wheel). Start it with: $VENV/bin/inglenook" >&2
