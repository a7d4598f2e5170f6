"""The llama.cpp loader against the real embedded Gemma 3 270M GGUF."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import generate, greedy

from backends.base import CancelToken, ModelLoadError, SamplingParams
from backends.llamacpp import LlamaCppLoader, LlamaCppSettings

pytestmark = pytest.mark.slow  # real models, servers or browsers

PROMPT = "The capital of France is"


def test_model_info_describes_the_file(gemma, gemma_path):
    info = gemma.info
    assert info.loader == "llama.cpp"
    assert info.architecture == "gemma3"
    assert info.quantization == "Q4_K_M"
    assert info.chat_template is None  # the embedded base model carries none
    assert info.file_size == gemma_path.stat().st_size
    assert 200_000_000 < info.parameter_count < 300_000_000
    assert info.context_length == 2048
    assert info.metadata["general.license"] == "gemma"


def test_greedy_continues_a_known_sentence(gemma):
    text, last = generate(gemma, PROMPT, greedy(8))
    # Measured with both llama.cpp and transformers on this file.
    assert text.startswith(" the capital of the country of France")
    assert last.finish_reason == "length"


def test_greedy_is_deterministic(gemma):
    assert generate(gemma, PROMPT, greedy(24))[0] == generate(gemma, PROMPT, greedy(24))[0]


def test_a_seed_reproduces_a_sampled_reply_and_another_seed_differs(gemma):
    def sample(seed: int) -> str:
        return generate(gemma, "Once upon a time", SamplingParams(temperature=1.2, seed=seed, max_new_tokens=32))[0]

    first = sample(1234)
    assert sample(1234) == first
    assert any(sample(seed) != first for seed in (1, 2, 3))


def test_max_new_tokens_is_honoured_and_counted(gemma):
    text, last = generate(gemma, PROMPT, greedy(5))
    assert last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == len(gemma.tokenize(PROMPT))
    assert len(gemma.tokenize(text, add_special=False)) <= 6


def test_stop_string_ends_the_reply_and_is_not_emitted(gemma):
    full, _ = generate(gemma, PROMPT, greedy(24))
    assert " France" in full
    text, last = generate(gemma, PROMPT, greedy(24, stop=[" France"]))
    assert last.finish_reason == "stop"
    assert text == full[: full.index(" France")]
    assert "France" not in text


def test_stop_string_split_across_tokens_is_held_back(gemma):
    full, _ = generate(gemma, PROMPT, greedy(24))
    stop = "ital of the cou"  # starts and ends inside tokens
    assert stop in full
    pieces = [c.text for c in gemma.generate(PROMPT, greedy(24, stop=[stop]), CancelToken())]
    assert "".join(pieces) == full[: full.index(stop)]
    assert not any("ital" in p for p in pieces)


def test_cancel_mid_stream_stops_at_once(gemma):
    cancel = CancelToken()
    received = []
    for chunk in gemma.generate(PROMPT, greedy(400, ban_eos_token=True), cancel):
        received.append(chunk)
        if len(received) == 3:
            cancel.cancel()
    last = received[-1]
    assert last.finish_reason == "cancelled"
    assert last.usage.completion_tokens <= 4


def test_cancel_from_another_thread(gemma):
    cancel = CancelToken()
    timer = threading.Timer(0.3, cancel.cancel)
    timer.start()
    start = time.perf_counter()
    _, last = generate(gemma, PROMPT, greedy(2000, ban_eos_token=True), cancel)
    assert last.finish_reason == "cancelled"
    assert last.usage.completion_tokens < 2000
    assert time.perf_counter() - start < 10  # functional bound: it did not run to 2000 tokens


def test_usage_reports_timings(gemma):
    _, last = generate(gemma, PROMPT, greedy(16))
    usage = last.usage
    assert 0 < usage.ttft_s <= usage.total_s
    assert usage.tokens_per_s > 0


def test_prompt_longer_than_context_is_a_clear_error(gemma):
    from backends.base import GenerationError

    with pytest.raises(GenerationError, match="context holds 2048"):
        generate(gemma, "word " * 3000, greedy(4))
    assert generate(gemma, PROMPT, greedy(3))[1].usage.completion_tokens == 3  # still usable


def test_bad_grammar_is_a_clear_error(gemma):
    from backends.base import GenerationError

    with pytest.raises(GenerationError, match="grammar"):
        generate(gemma, PROMPT, greedy(4, grammar="root ::= ("))


def test_unsupported_params_are_reported_not_dropped():
    loader = LlamaCppLoader()
    assert loader.ignored_params(SamplingParams(temperature=0.5, top_k=5, dry_multiplier=0.8)) == []
    assert loader.ignored_params(SamplingParams(tfs=0.9, top_a=0.2, no_repeat_ngram_size=3)) == [
        "no_repeat_ngram_size",
        "tfs",
        "top_a",
    ]
    # every field of SamplingParams the loader does not honour is reported once the user changes it
    from dataclasses import fields

    for f in fields(SamplingParams):
        if f.name in loader.supported_params or f.name in ("max_new_tokens", "stop"):
            continue
        changed = SamplingParams(**{f.name: _not_neutral(getattr(SamplingParams(), f.name))})
        assert loader.ignored_params(changed) == [f.name]


def _not_neutral(value):
    return not value if isinstance(value, bool) else value + 1 if isinstance(value, int | float) else value + "x"


def test_close_releases_the_model(gemma_path):
    loader = LlamaCppLoader()
    model = loader.load(gemma_path, LlamaCppSettings(n_ctx=512, use_mmap=False))
    assert generate(model, PROMPT, greedy(2))[1].usage.completion_tokens == 2
    rss_loaded = _rss_mb()
    model.close()
    rss_closed = _rss_mb()
    assert rss_loaded - rss_closed > 100  # the ~240 MB of weights (read into memory without mmap) came back
    from backends.base import GenerationError

    with pytest.raises(GenerationError, match="unloaded"):
        generate(model, PROMPT, greedy(2))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_load_rejects_a_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not a file"):
        LlamaCppLoader().load(tmp_path / "missing.gguf", LlamaCppSettings())


def test_can_load_only_gguf_files(tmp_path, gemma_path):
    loader = LlamaCppLoader()
    assert loader.can_load(gemma_path)
    assert not loader.can_load(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    assert not loader.can_load(tmp_path / "notes.txt")


def test_a_gemma_load_reports_rising_fractions_ending_at_one(gemma_path):
    """Issue 13: the page's load bar shows llama.cpp's own progress (its progress_callback), through the worker."""
    from webui.worker import WorkerModel

    seen: list[float] = []
    model = LlamaCppLoader().load_reporting(gemma_path, LlamaCppSettings(n_ctx=512), seen.append)
    model.close()
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len({round(f, 2) for f in seen if 0 < f < 1}) >= 3, seen  # steps on the way, not just the end

    relayed: list[float] = []
    model = WorkerModel(LlamaCppLoader(), gemma_path, LlamaCppSettings(n_ctx=512), relayed.append)
    model.close()
    assert relayed == sorted(relayed) and relayed[-1] == 1.0 and any(0 < f < 1 for f in relayed)
