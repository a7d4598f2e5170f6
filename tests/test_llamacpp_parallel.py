"""llama.cpp parallel decoding on the embedded model (slow tier): generations decoded together in one batch
give exactly what each gives alone, each with its own seed, stop strings and grammar, and a cancel ends one
stream only. Kept short: a few tokens per stream."""

from __future__ import annotations

import threading

import pytest
from conftest import collect, greedy

from backends.base import CancelToken, SamplingParams
from backends.llamacpp import LlamaCppLoader, LlamaCppSettings, parallel_slots

pytestmark = pytest.mark.slow

PROMPTS = [
    "The history of the city of Rome begins",
    "Once upon a time, a small dragon",
    "def fibonacci(n):",
    "The three primary colours are",
]


@pytest.fixture(scope="module")
def batched(gemma_path):
    model = LlamaCppLoader().load(gemma_path, LlamaCppSettings(n_ctx=512, parallel=4))
    yield model
    model.close()


@pytest.fixture(scope="module")
def lone(gemma_path):
    """The same model decoding one generation at a time, with the kernels parallel decoding uses."""
    model = LlamaCppLoader().load(gemma_path, LlamaCppSettings(n_ctx=512, extra_buffer_types="off"))
    yield model
    model.close()


def together(model, jobs: list[tuple[str, SamplingParams, CancelToken]]) -> list[tuple[str, object]]:
    """Run ``jobs`` at once on ``model``; (text, last chunk) each, in order."""
    results: list = [None] * len(jobs)

    def run(i: int) -> None:
        prompt, params, cancel = jobs[i]
        results[i] = collect(model.generate(prompt, params, cancel))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def test_parallel_auto_and_limits():
    assert parallel_slots(1, 4096, 2) == 1
    assert parallel_slots(0, 4096, 2) == 4
    assert parallel_slots(0, 16384, 8) == 2  # the unified budget of KV cells
    assert parallel_slots(0, 4096, 1) == 1  # one core: nothing to win
    assert parallel_slots(64, 4096, 2) == 8
    with pytest.raises(Exception, match="parallel"):
        parallel_slots(-1, 4096, 2)


def test_four_greedy_streams_together_give_exactly_what_each_gives_alone(batched, lone):
    assert batched.parallel == 4 and batched.info.context_length == 512
    assert batched.info.metadata["inglenook.extra_buffer_types"].startswith("off")
    alone = [collect(lone.generate(p, greedy(12), CancelToken()))[0] for p in PROMPTS]
    joint = together(batched, [(p, greedy(12), CancelToken()) for p in PROMPTS])
    assert [text for text, _ in joint] == alone
    assert all(last.finish_reason == "length" and last.usage.completion_tokens == 12 for _, last in joint)
    # the next turn of a conversation finds its slot: the prompt it extends is not read again
    follow = PROMPTS[0] + alone[0] + " Then"
    text, last = collect(batched.generate(follow, greedy(8), CancelToken()))
    assert last.usage.cached_tokens >= len(batched.tokenize(PROMPTS[0])) + 11
    assert text and last.usage.prompt_tokens == len(batched.tokenize(follow))


def test_a_repeated_prompt_keeps_all_but_its_last_token_and_gives_what_a_lone_repeat_gives(batched, lone):
    """Regenerate, or a client sending the same prompt again: each prompt finds the slot holding it and reads
    only its last token (in the decode the other streams share), as llama-cpp-python keeps the longest common
    prefix for a lone sequence; the replies are exactly the lone model's for the same repeat."""
    batched._batch.forget()
    lone_again = []
    for p in PROMPTS:
        collect(lone.generate(p, greedy(12), CancelToken()))
        lone_again.append(collect(lone.generate(p, greedy(12), CancelToken())))
    together(batched, [(p, greedy(12), CancelToken()) for p in PROMPTS])
    joint = together(batched, [(p, greedy(12), CancelToken()) for p in PROMPTS])
    kept = [len(batched.tokenize(p)) - 1 for p in PROMPTS]
    assert [last.usage.cached_tokens for _, last in joint] == kept
    assert [last.usage.cached_tokens for _, last in lone_again] == kept
    assert [text for text, _ in joint] == [text for text, _ in lone_again]


def test_each_stream_keeps_its_own_seed_stop_strings_and_grammar(batched):
    sampled = SamplingParams(temperature=1.0, top_k=40, seed=7, max_new_tokens=10)
    stop = greedy(24, stop=["\n"])
    grammar = greedy(8, grammar='root ::= "yes" | "no"')
    jobs = [
        (PROMPTS[1], sampled, CancelToken()),
        (PROMPTS[2], stop, CancelToken()),
        ("Is the sky blue? Answer:", grammar, CancelToken()),
        (PROMPTS[1], SamplingParams(temperature=1.0, top_k=40, seed=8, max_new_tokens=10), CancelToken()),
    ]
    batched._batch.forget()  # every prompt read cold, as the lone run below (a kept start may move a near tie)
    joint = together(batched, jobs)
    batched._batch.forget()
    alone_seeded = collect(batched.generate(PROMPTS[1], sampled, CancelToken()))[0]
    assert joint[0][0] == alone_seeded  # the seed decides, not the neighbours
    assert joint[3][0] != joint[0][0]  # another seed, another sample
    assert "\n" not in joint[1][0] and joint[1][1].finish_reason == "stop"
    assert joint[2][0] in ("yes", "no")


def test_cancelling_one_stream_leaves_the_others_running(batched):
    cancel = CancelToken()
    seen = threading.Event()
    results: dict = {}

    def victim() -> None:
        text = ""
        for chunk in batched.generate(PROMPTS[0], greedy(200), cancel):
            text += chunk.text
            seen.set()
            if chunk.finish_reason:
                results["victim"] = (text, chunk)

    thread = threading.Thread(target=victim)
    thread.start()
    assert seen.wait(120)
    others = threading.Thread(target=lambda: results.update(others=together(
        batched, [(p, greedy(10), CancelToken()) for p in PROMPTS[1:]])))  # fmt: skip
    others.start()
    cancel.cancel()
    thread.join(120)
    others.join(300)
    assert results["victim"][1].finish_reason == "cancelled"
    assert results["victim"][1].usage.completion_tokens < 200
    assert [last.finish_reason for _, last in results["others"]] == ["length"] * 3


def test_slots_keep_conversations_and_the_least_recently_used_is_evicted(batched):
    batched._batch.forget()  # empty caches (what inglenook bench's reset does)
    starts = [f"Conversation {name}: the weather today is" for name in ("one", "two", "three", "four", "five")]

    def cached(prompt: str) -> int:
        return collect(batched.generate(prompt, greedy(1), CancelToken()))[1].usage.cached_tokens

    assert [cached(p) for p in starts[:4]] == [0, 0, 0, 0]  # four misses fill the four slots
    assert cached(starts[0] + " sunny and warm") == len(batched.tokenize(starts[0]))  # a hit: only the new words
    assert cached(starts[4]) == 0  # a fifth conversation evicts the least recently used slot: "two"
    assert cached(starts[2] + " sunny and warm") == len(batched.tokenize(starts[2]))  # "three" stayed
    assert cached(starts[1] + " sunny and warm") == 0  # "two" is gone


LONG = [
    f"Conversation {name}. The travellers reached the old stone bridge at dusk, counted their coins, argued about "
    f"the map, and finally agreed to spend the night at the inn beside the river, where the {thing}"
    for name, thing in (("one", "innkeeper"), ("two", "ferryman"), ("three", "blacksmith"))
]


def test_a_conversation_whose_slot_went_to_another_comes_back_from_the_kv_cache(gemma_path):
    """Two slots, three conversations: the third takes the first one's slot, and the first one's state goes to
    the per-conversation KV cache; its next turn gets it back into a slot and reads only the new words, and
    says so; the reply is the one it gets with the cache off (0 MB), where the whole prompt is read again."""
    replies = {}
    for ram_mb in (512, 0):
        model = LlamaCppLoader().load(gemma_path, LlamaCppSettings(n_ctx=512, parallel=2, kv_cache_ram_mb=ram_mb))
        try:
            assert (model.kv_cache is not None) == bool(ram_mb)
            first = [collect(model.generate(p, greedy(4), CancelToken())) for p in LONG]
            assert [last.usage.cached_tokens for _, last in first] == [0, 0, 0]
            start = model.tokenize(LONG[0])
            follow = LONG[0] + first[0][0] + " Then"
            replies[ram_mb] = collect(model.generate(follow, greedy(16), CancelToken()))
            if ram_mb:
                assert any(list(key[: len(start)]) == start for key in model.kv_cache.keys())
        finally:
            model.close()
    (cached_text, cached), (plain_text, plain) = replies[512], replies[0]
    assert len(start) >= 40 and cached.usage.cached_tokens >= len(start), "it came back from the cache"
    assert plain.usage.cached_tokens == 0, "without the cache its slot had gone to the third conversation"
    assert cached_text == plain_text and cached.finish_reason == plain.finish_reason == "length"
