"""llama-cpp-python's own OpenAI server, started the way the bench and the remote tests need it.

``python -m webui.bench.llama_cpp_server ARGS...`` is ``python -m llama_cpp.server ARGS...`` after loading
ggml's CPU backend the way Inglenook's loader does: a portable llama-cpp-python build loads none by itself,
and the server then fails to load any model ("no backends are loaded").
"""

from __future__ import annotations

import runpy
import sys

from backends.llamacpp import ensure_backends

if __name__ == "__main__":
    ensure_backends()
    sys.argv[0] = "llama_cpp.server"
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
