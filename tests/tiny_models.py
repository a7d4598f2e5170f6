"""Tiny real models built on this machine for loader tests: nothing is downloaded.

A random-weight 2-layer Llama (hidden 128) with the embedded Gemma GGUF's
tokenizer, saved as a Hugging Face folder (config.json + safetensors), and a
4-bit GPTQ checkpoint quantized from it on the CPU with GPTQModel. Random
weights make nonsense text, but real nonsense: every loader code path runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CALIBRATION = [
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Once upon a time there was a small house with a large fireplace.",
    "A language model predicts the next token from the tokens before it.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "In 1969 the first people walked on the Moon and came home safely.",
    "Bread is made from flour, water, salt and yeast, then baked in an oven.",
    "Trains leave the station every fifteen minutes during the morning.",
] * 4


def build_tiny_llama(dest: Path, gguf_path: Path) -> Path:
    """Save a random-weight LlamaForCausalLM with the GGUF's tokenizer into ``dest``; return ``dest``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Larger-than-default weights make sharper (less uniform) next-token distributions: greedy is stable.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.08)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def quantize_gptq(source: Path, dest: Path) -> Path:
    """Quantize the HF folder ``source`` to 4-bit GPTQ (group 32) on the CPU into ``dest``; return ``dest``."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, os.cpu_count() or 1)))
    from gptqmodel import GPTQModel, QuantizeConfig

    model = GPTQModel.load(str(source), QuantizeConfig(bits=4, group_size=32), device="cpu")
    here = os.getcwd()
    os.chdir(dest)  # GPTQModel writes its quantization logs to ./logs: keep them out of the repository
    try:
        model.quantize(CALIBRATION, batch_size=1)
        model.save(str(dest))
    finally:
        os.chdir(here)
    shutil.rmtree(dest / "logs", ignore_errors=True)
    return dest
