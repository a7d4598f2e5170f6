"""Prompt-lookup speculative decoding on the embedded model (slow tier): greedy text with drafting is the text
without it, the drafts are counted and accepted where the reply repeats the prompt, and the stats line shows
the acceptance rate. The lookup itself is tested fast in tests/test_fast_draft.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import generate, greedy

from backends.base import SamplingParams
from backends.llamacpp import LlamaCppLoader, LlamaCppSettings
from webui.chat.reply import format_stats

pytestmark = pytest.mark.slow  # real models

CODE = (
    "def total(items):\n    result = 0\n    for item in items:\n        if item.price > 0:\n"
    "            result += item.price * item.count\n    return result\n"
)
REWRITE = f"Copy this code exactly:\n\n{CODE}\nCopy:\n\n"


@pytest.fixture(scope="module")
def drafting(gemma_path: Path):
    model = LlamaCppLoader().load(
        gemma_path, LlamaCppSettings(n_ctx=1024, draft="prompt-lookup", draft_tokens=6, kv_cache_ram_mb=0)
    )
    yield model
    model.close()


def test_greedy_text_is_the_same_with_and_without_drafting_and_drafts_are_accepted(gemma, drafting):
    gemma.forget_kv()
    plain, plain_last = generate(gemma, REWRITE, greedy(40))
    drafted, last = generate(drafting, REWRITE, greedy(40))
    assert drafted == plain and drafted.startswith("def total(items):")
    usage = last.usage
    assert usage.completion_tokens == plain_last.usage.completion_tokens
    assert usage.draft_tokens > 0 and 0 < usage.draft_accepted <= usage.draft_tokens
    rate = round(100 * usage.draft_accepted / usage.draft_tokens)
    assert f"draft accepted {rate} %" in format_stats(usage, last.finish_reason)
    assert plain_last.usage.draft_tokens == 0 and "draft" not in format_stats(plain_last.usage)


def test_sampling_and_logprobs_decode_without_drafts(drafting):
    _, sampled = generate(drafting, REWRITE, SamplingParams(temperature=0.7, seed=3, max_new_tokens=8))
    assert sampled.usage.draft_tokens == 0  # drafting is for plain greedy decoding only
    _, scored = generate(drafting, REWRITE, greedy(8, logprobs=2))
    assert scored.usage.draft_tokens == 0
