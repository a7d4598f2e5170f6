"""The quantization lab: make quants of a GGUF model, measure them, and compare them side by side.

- :mod:`webui.lab.quantize` — ``llama_model_quantize`` in a child process (progress, cancel, disk check).
- :mod:`webui.lab.convert` — a Hugging Face safetensors folder to GGUF with llama.cpp's own converter.
- :mod:`webui.lab.perplexity` — llama.cpp's perplexity method (llama.cpp and transformers models).
- :mod:`webui.lab.compare` — several models, one at a time, on the same prompts; one table, saved.

Everything here sits below the faces: the CLI (``webui/cli/lab.py``) and the Compare tab call in.
"""
