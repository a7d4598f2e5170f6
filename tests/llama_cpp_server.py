"""Start llama-cpp-python's own OpenAI server (``python -m llama_cpp.server``) for the remote tests.

Run as ``python tests/llama_cpp_server.py ARGS...``: the same as ``python -m llama_cpp.server ARGS...``, after
loading ggml's CPU backend the way Inglenook's loader does (a portable llama-cpp-python build loads none by
itself, and the server then fails to load any model).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from backends.llamacpp import ensure_backends

    ensure_backends()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
