"""The transformers loader against real models built here: a tiny random-weight Llama folder and the embedded GGUF.

Random weights generate nonsense, but deterministic nonsense: greedy output,
seeds, stop strings, cancel and token counts are checked on it exactly. The
embedded Gemma GGUF, dequantized by transformers, must agree with llama.cpp.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import generate, greedy, rss_mb

from backends.base import CancelToken, ModelLoadError, SamplingParams
from backends.registry import LoaderRegistry
from backends.transformers import TransformersLoader, TransformersSettings

pytestmark = pytest.mark.slow  # real models, servers or browsers

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny(tiny_llama: Path):
    model = TransformersLoader().load(tiny_llama, TransformersSettings(n_ctx=512))
    yield model
    model.close()


def test_model_info_describes_the_folder(tiny, tiny_llama):
    info = tiny.info
    assert info.loader == "transformers"
    assert info.architecture == "llama"
    assert info.quantization == "float32"
    assert info.context_length == 512
    assert 30_000_000 < info.parameter_count < 40_000_000  # 262k-token embedding x 128 + two small layers
    assert info.file_size == (tiny_llama / "model.safetensors").stat().st_size
    assert info.bos_token == "<bos>" and info.eos_token == "<eos>"


def test_greedy_is_deterministic(tiny):
    first, last = generate(tiny, PROMPT, greedy(24))
    assert first and last.finish_reason == "length"
    assert generate(tiny, PROMPT, greedy(24))[0] == first


def test_max_new_tokens_is_honoured_and_counted(tiny):
    _, last = generate(tiny, PROMPT, greedy(5))
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == len(tiny.tokenize(PROMPT))
    assert 0 < last.usage.ttft_s <= last.usage.total_s


def test_stop_string_ends_the_reply_and_is_not_emitted(tiny):
    full, _ = generate(tiny, PROMPT, greedy(24))
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # somewhere in the middle, whatever the tokens are
    pieces = [c.text for c in tiny.generate(PROMPT, greedy(24, stop=[stop]), CancelToken())]
    assert "".join(pieces) == full[: full.index(stop)]
    last = list(tiny.generate(PROMPT, greedy(24, stop=[stop]), CancelToken()))[-1]
    assert last.finish_reason == "stop"


def test_cancel_mid_stream_stops_at_once(tiny):
    cancel = CancelToken()
    received = []
    for chunk in tiny.generate(PROMPT, greedy(400, ban_eos_token=True), cancel):
        received.append(chunk)
        if len(received) == 3:
            cancel.cancel()
    assert received[-1].finish_reason == "cancelled"
    assert received[-1].usage.completion_tokens <= 4


def test_a_seed_reproduces_a_sampled_reply_and_another_seed_differs(tiny):
    def sample(seed: int) -> str:
        return generate(
            tiny, "Once upon a time", SamplingParams(temperature=1.0, top_k=50, seed=seed, max_new_tokens=12)
        )[0]

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_samplers_change_the_distribution_they_are_asked_to(tiny):
    # top_k=1 keeps only the most likely token: sampling at any temperature is then greedy.
    sampled, _ = generate(tiny, PROMPT, SamplingParams(temperature=1.5, top_k=1, seed=7, max_new_tokens=10))
    assert sampled == generate(tiny, PROMPT, greedy(10))[0]
    # Greedy repeats itself on these weights; a huge repetition penalty forbids every token already seen.
    plain = tiny.tokenize(generate(tiny, PROMPT, greedy(32))[0], add_special=False)
    assert len(set(plain)) < len(plain)
    penalised = tiny.tokenize(generate(tiny, PROMPT, greedy(32, repetition_penalty=1e9))[0], add_special=False)
    assert len(set(penalised)) == len(penalised)


def test_unsupported_params_are_reported_not_dropped():
    loader = TransformersLoader()
    assert loader.ignored_params(SamplingParams(temperature=0.5, top_k=5, min_p=0.1, typical_p=0.9)) == []
    assert loader.ignored_params(SamplingParams(mirostat_mode=2, grammar="root ::= 'a'")) == [
        "grammar",
        "mirostat_mode",
    ]


def test_close_frees_the_weights(tiny_llama):
    model = TransformersLoader().load(tiny_llama, TransformersSettings(n_ctx=256))
    assert generate(model, PROMPT, greedy(2))[1].usage.completion_tokens == 2
    loaded = rss_mb()
    model.close()
    assert loaded - rss_mb() > 60  # ~135 MB of float32 weights came back
    from backends.base import GenerationError

    with pytest.raises(GenerationError, match="unloaded"):
        generate(model, PROMPT, greedy(2))


# -- what it recognises, and bad input -------------------------------------------------------------------


def test_registry_picks_the_natural_loader(gemma_path, tiny_llama, tmp_path):
    registry = LoaderRegistry(load_entry_points=False)
    assert registry.pick(gemma_path).name == "llama.cpp"  # .gguf: llama.cpp first, transformers is the override
    assert [loader.name for loader in registry.candidates(gemma_path)] == ["llama.cpp", "transformers"]
    assert registry.pick(tiny_llama).name == "transformers"
    assert registry.pick(gemma_path, "transformers").name == "transformers"


def _folder_with(tmp_path: Path, source: Path, keep: tuple[str, ...]) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name in keep:
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture
def pickle_folder(tiny_llama: Path, tmp_path: Path) -> Path:
    """The tiny model with its weights as a pickle (pytorch_model.bin) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    folder = _folder_with(tmp_path, tiny_llama, ("config.json", "tokenizer.json", "tokenizer_config.json"))
    torch.save(load_file(tiny_llama / "model.safetensors"), folder / "pytorch_model.bin")
    return folder


def test_pickle_weights_are_refused_by_default_with_the_way_out(pickle_folder):
    with pytest.raises(ModelLoadError, match="only pickle weights.*--allow-pickle"):
        TransformersLoader().check(pickle_folder)
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        TransformersLoader().load(pickle_folder, TransformersSettings(n_ctx=256))


def test_pickle_weights_load_when_allowed(pickle_folder, tiny):
    model = TransformersLoader().load(pickle_folder, TransformersSettings(n_ctx=256, allow_pickle=True))
    try:
        assert generate(model, PROMPT, greedy(8))[0] == generate(tiny, PROMPT, greedy(8))[0]  # the same weights
    finally:
        model.close()


def test_unknown_architecture_is_a_clear_error(tiny_llama, tmp_path):
    folder = _folder_with(tmp_path, tiny_llama, ("model.safetensors", "tokenizer.json"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llamazilla", "architectures": ["LlamazillaLM"]}))
    with pytest.raises(ModelLoadError, match="unknown architecture.*llamazilla"):
        TransformersLoader().check(folder)


def test_remote_code_does_not_run_unless_trusted(tiny_llama, tmp_path):
    folder = _folder_with(tmp_path, tiny_llama, ("model.safetensors", "tokenizer.json"))
    config = {"model_type": "my-own-llm", "auto_map": {"AutoModelForCausalLM": "modeling_mine.MyLM"}}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="--trust-remote-code"):
        TransformersLoader().check(folder)


def test_a_folder_without_weights_is_a_clear_error(tiny_llama, tmp_path):
    folder = _folder_with(tmp_path, tiny_llama, ("config.json", "tokenizer.json"))
    with pytest.raises(ModelLoadError, match="no weights"):
        TransformersLoader().check(folder)


def test_the_command_line_flag_reaches_the_loader(make_app, pickle_folder):
    refused = make_app()
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        refused.load_model(str(pickle_folder))
    allowed = make_app(allow_pickle=True)
    info = allowed.load_model(str(pickle_folder))
    assert info.loader == "transformers"
    assert allowed.load_settings_for("transformers").allow_pickle is True
    assert allowed.load_settings_for("llama.cpp").n_ctx == 2048  # every loader still gets --n-ctx


def test_a_bad_model_leaves_the_previous_one_working(make_app, pickle_folder):
    app = make_app()
    app.load_model("default")
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        app.load_model(str(pickle_folder))
    assert app.engine.info.loader == "llama.cpp"
    text = "".join(c.text for c in app.engine.generate(PROMPT, greedy(8)))
    assert text.startswith(" the capital of the country")


# -- the embedded GGUF through transformers (dequantized) --------------------------------------------------


@pytest.fixture(scope="module")
def gemma_hf(gemma_path):
    model = TransformersLoader().load(gemma_path, TransformersSettings(n_ctx=512))
    yield model
    model.close()


def test_gguf_through_transformers_agrees_with_llamacpp(gemma_hf, gemma):
    assert gemma_hf.info.architecture.startswith("gemma3")
    assert gemma_hf.info.quantization == "dequantized GGUF"
    via_transformers, _ = generate(gemma_hf, PROMPT, greedy(8))
    via_llamacpp, _ = generate(gemma, PROMPT, greedy(8))
    assert via_transformers.startswith(" the capital of the country of France")
    assert via_llamacpp.startswith(" the capital of the country of France")


def test_gguf_through_transformers_stops_on_a_stop_string(gemma_hf):
    text, last = generate(gemma_hf, PROMPT, greedy(16, stop=[" country"]))
    assert text == " the capital of the"
    assert last.finish_reason == "stop"


# -- CUDA (skipped without a GPU) --------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
def test_cuda_generates_and_close_returns_the_memory(tiny_llama, gemma_path):
    import torch

    model = TransformersLoader().load(tiny_llama, TransformersSettings(n_ctx=512, device="cuda"))
    assert model.info.metadata["torch_dtype"] == "bfloat16"
    assert generate(model, PROMPT, greedy(16))[0] == generate(model, PROMPT, greedy(16))[0]
    assert torch.cuda.memory_allocated() > 30_000_000
    model.close()
    assert torch.cuda.memory_allocated() < 5_000_000
    gemma_cuda = TransformersLoader().load(gemma_path, TransformersSettings(n_ctx=512, device="cuda", dtype="float32"))
    try:
        assert generate(gemma_cuda, PROMPT, greedy(8))[0].startswith(" the capital of the country of France")
    finally:
        gemma_cuda.close()


def test_a_load_reports_the_weights_loaded_rising_to_one(tiny_llama):
    """Issue 13: the page's load bar shows a transformers load as it goes (weights counted), not just a timer."""
    seen: list[float] = []
    model = TransformersLoader().load_reporting(tiny_llama, TransformersSettings(), seen.append)
    model.close()
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len([f for f in seen if 0 < f < 1]) >= 3, seen  # each weight of the tiny model on the way
