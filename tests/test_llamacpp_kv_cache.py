"""The per-conversation KV cache on the embedded model (slow tier): going back to a conversation after another
one ran restores its state instead of reading its history again, with the same greedy text as a cold run.
The store's own logic (LRU, files) is tested fast in tests/test_fast_kv_cache.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import generate, greedy

from backends.llamacpp import LlamaCppLoader, LlamaCppSettings
from backends.llamacpp_cache import SUFFIX, PrefixCache

pytestmark = pytest.mark.slow  # real models

TURN = "<start_of_turn>{role}\n{text}<end_of_turn>\n"


def _conversation(topic: str, facts: int = 25) -> str:
    """A chat prompt of a few hundred tokens about ``topic``, ready for the model's reply."""
    history = " ".join(f"Note {i}: the {topic} number {i} is {i * 7 % 13} metres long." for i in range(facts))
    return TURN.format(role="user", text=history + " Which is the longest?") + "<start_of_turn>model\n"


def _next_turn(prompt: str, reply: str) -> str:
    return prompt + reply + "<end_of_turn>\n" + TURN.format(role="user", text="And the shortest?") + (
        "<start_of_turn>model\n")  # fmt: skip


@pytest.fixture(scope="module")
def model(gemma_path: Path):
    loaded = LlamaCppLoader().load(gemma_path, LlamaCppSettings(n_ctx=2048, kv_cache_ram_mb=64))
    yield loaded
    loaded.close()


def _cold(model, prompt: str, n: int = 16) -> str:
    """The greedy text of ``prompt`` read in full (nothing cached, nothing kept)."""
    kept, model.kv_cache = model.kv_cache, None
    try:
        model.forget_kv()
        text, last = generate(model, prompt, greedy(n))
    finally:
        model.kv_cache = kept
    assert last.usage.cached_tokens == 0
    return text


def test_the_next_turn_after_another_conversation_is_restored_and_gives_the_cold_text(model):
    model.forget_kv()
    boats = _conversation("boat")
    reply, _ = generate(model, boats, greedy(16))
    generate(model, _conversation("tree"), greedy(16))  # another conversation takes the KV cache meanwhile
    follow = _next_turn(boats, reply)
    text, last = generate(model, follow, greedy(16))
    boats_tokens = len(model.tokenize(boats))
    assert last.usage.cached_tokens >= boats_tokens  # at least the first turn was not read again
    assert last.usage.cached_tokens < last.usage.prompt_tokens
    assert text == _cold(model, follow)  # restoring changes nothing in what greedy decoding picks
    fresh = _conversation("cloud")
    _, missed = generate(model, fresh, greedy(4))
    assert missed.usage.cached_tokens == 0  # a miss: nothing cached starts this prompt


def test_the_ram_budget_evicts_the_least_recently_used_state(model):
    model.forget_kv()
    prompts = {t: _conversation(t) for t in ("boat", "tree", "cloud")}
    replies = {"boat": generate(model, prompts["boat"], greedy(8))[0]}
    size = len(model._kv_state())
    model.kv_cache = PrefixCache(ram_bytes=int(size * 1.5))  # room for about one conversation's state
    for topic in ("tree", "cloud"):  # each start keeps the state before it: boat, then tree (boat evicted)
        replies[topic] = generate(model, prompts[topic], greedy(8))[0]
    try:
        _, tree = generate(model, _next_turn(prompts["tree"], replies["tree"]), greedy(4))  # still kept
        assert tree.usage.cached_tokens >= len(model.tokenize(prompts["tree"]))
        _, boat = generate(model, _next_turn(prompts["boat"], replies["boat"]), greedy(4))  # evicted: read again
        assert boat.usage.cached_tokens == 0
        assert model.kv_cache.ram_used <= model.kv_cache.ram_bytes
    finally:
        model.kv_cache = PrefixCache(ram_bytes=64 * 1024 * 1024)


def test_states_on_disk_are_restored_and_a_corrupt_file_is_a_miss(gemma_path: Path, tmp_path: Path):
    folder = tmp_path / "cache" / "kv"
    settings = LlamaCppSettings(n_ctx=2048, kv_cache_ram_mb=0, kv_cache_disk_mb=64)  # every state goes to disk
    model = LlamaCppLoader(cache_dir=folder).load(gemma_path, settings)
    try:
        boats, trees = _conversation("boat"), _conversation("tree")
        reply, _ = generate(model, boats, greedy(8))
        generate(model, trees, greedy(8))
        assert len(list(folder.glob("*" + SUFFIX))) == 1  # the boats' state, kept when the trees came
        follow = _next_turn(boats, reply)
        text, hit = generate(model, follow, greedy(8))
        assert hit.usage.cached_tokens >= len(model.tokenize(boats))
        assert text == _cold(model, follow, 8)
        generate(model, trees, greedy(8))  # the KV cache goes to the trees again (and the follow-up is kept)
        damaged = list(folder.glob("*" + SUFFIX))
        for path in damaged:  # every file damaged: the last bytes of the state cut off
            path.write_bytes(path.read_bytes()[:-100])
        text, missed = generate(model, follow, greedy(8))
        assert missed.usage.cached_tokens == 0 and text == _cold(model, follow, 8)  # a miss, read in full
        assert sum(p.exists() for p in damaged) < len(damaged)  # the damaged file it tried was removed
    finally:
        model.close()
