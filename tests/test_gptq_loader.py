"""The GPTQ loader (GPTQModel) on a real 4-bit checkpoint quantized on the CPU in a fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import generate, greedy, rss_mb

from backends.base import CancelToken, GenerationError, ModelLoadError, SamplingParams
from backends.gptq import CPU_WORKERS_ENV, GptqLoader, GptqSettings, cpu_workers_default
from backends.registry import LoaderRegistry

pytestmark = pytest.mark.slow  # real models, servers or browsers

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def quantized(tiny_gptq: Path):
    model = GptqLoader().load(tiny_gptq, GptqSettings(n_ctx=512))
    yield model
    model.close()


def test_the_checkpoint_is_gptq_and_the_registry_picks_the_gptq_loader(tiny_gptq, tiny_llama):
    config = json.loads((tiny_gptq / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq"
    registry = LoaderRegistry(load_entry_points=False)
    assert registry.pick(tiny_gptq).name == "gptq"
    assert registry.pick(tiny_llama).name == "transformers"  # an unquantized folder is not GPTQ's


def test_model_info_names_the_quantization_and_kernel(quantized):
    info = quantized.info
    assert info.loader == "gptq"
    assert info.architecture == "llama"
    assert info.quantization == "GPTQ 4-bit g32"
    assert info.metadata["gptq_kernel"]  # the quantized linear class GPTQModel chose for this device


def test_greedy_is_deterministic_and_counted(quantized):
    first, last = generate(quantized, PROMPT, greedy(16))
    assert first and last.finish_reason == "length"
    assert last.usage.completion_tokens == 16
    assert generate(quantized, PROMPT, greedy(16))[0] == first


def test_stop_string_is_not_emitted(quantized):
    full, _ = generate(quantized, PROMPT, greedy(16))
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    text, last = generate(quantized, PROMPT, greedy(16, stop=[stop]))
    assert text == full[: full.index(stop)]
    assert last.finish_reason == "stop"


def test_cancel_mid_stream(quantized):
    cancel = CancelToken()
    received = []
    for chunk in quantized.generate(PROMPT, greedy(400, ban_eos_token=True), cancel):
        received.append(chunk)
        if len(received) == 2:
            cancel.cancel()
    assert received[-1].finish_reason == "cancelled"
    assert received[-1].usage.completion_tokens <= 3


def test_a_seed_reproduces_a_sampled_reply(quantized):
    params = SamplingParams(temperature=1.0, top_k=50, seed=99, max_new_tokens=8)
    assert generate(quantized, PROMPT, params)[0] == generate(quantized, PROMPT, params)[0]


def test_quantization_keeps_the_model_close_to_the_original(quantized, tiny_llama):
    """4-bit weights are not the float weights, but the next-token scores stay nearly the same (measured r=0.99)."""
    import torch

    from backends.transformers import TransformersLoader, TransformersSettings

    full = TransformersLoader().load(tiny_llama, TransformersSettings(n_ctx=256))
    ids = torch.tensor([full.tokenize(PROMPT)])
    try:
        with torch.inference_mode():
            original = full._model(input_ids=ids).logits[0, -1].float()
            quantized_scores = quantized._model(input_ids=ids).logits[0, -1].float()
    finally:
        full.close()
    assert torch.corrcoef(torch.stack([original, quantized_scores]))[0, 1] > 0.95
    assert not torch.equal(original, quantized_scores)  # it really is another (quantized) model


def test_close_frees_the_model(tiny_gptq):
    model = GptqLoader().load(tiny_gptq, GptqSettings(n_ctx=256))
    generate(model, PROMPT, greedy(2))
    loaded = rss_mb()
    model.close()
    assert loaded - rss_mb() > 30  # the 67 MB bfloat16 embedding and the packed layers came back
    with pytest.raises(GenerationError, match="unloaded"):
        generate(model, PROMPT, greedy(2))


def test_a_folder_without_quantization_config_is_a_clear_error(tiny_gptq, tmp_path):
    folder = tmp_path / "not-really-gptq"
    shutil.copytree(tiny_gptq, folder)
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "quantize_config.json").unlink()
    with pytest.raises(ModelLoadError, match="not a GPTQ checkpoint: config.json has no quantization_config"):
        GptqLoader().check(folder)
    assert LoaderRegistry(load_entry_points=False).pick(folder).name == "transformers"


def test_a_gptq_folder_named_explicitly_fails_cleanly_through_the_app(make_app, tiny_llama):
    app = make_app()
    app.load_model("default")
    with pytest.raises(ModelLoadError, match="not a GPTQ checkpoint"):
        app.load_model(str(tiny_llama), loader="gptq")
    assert app.engine.info.loader == "llama.cpp"  # the previous model still loaded


def test_cpu_workers_default_follows_the_cores_and_the_user_wins(monkeypatch):
    monkeypatch.delenv(CPU_WORKERS_ENV, raising=False)
    cpu_workers_default()
    import os

    assert os.environ[CPU_WORKERS_ENV] == str(os.cpu_count())
    monkeypatch.setenv(CPU_WORKERS_ENV, "1")
    cpu_workers_default()
    assert os.environ[CPU_WORKERS_ENV] == "1"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
def test_cuda_kernels_generate(tiny_gptq):
    import torch

    model = GptqLoader().load(tiny_gptq, GptqSettings(n_ctx=512, device="cuda"))
    try:
        assert "cuda" in str(next(model._model.parameters()).device)
        first, last = generate(model, PROMPT, greedy(32))
        assert generate(model, PROMPT, greedy(32))[0] == first
        print(
            f"gptq cuda: kernel {model.info.metadata['gptq_kernel']}, {last.usage.tokens_per_s:.1f} tok/s, "
            f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB peak"
        )
    finally:
        model.close()
