"""Prompt-lookup drafting (issue 17 §5): guess the next tokens by finding the last few tokens earlier in the text.

When a reply repeats its prompt (rewriting a paragraph, editing code), the tokens after the latest earlier
occurrence of the text's last n-gram are a good guess at what comes next. The loader decodes the guesses in
one batch beside the token just sampled and keeps the ones the model would have picked itself (see
``LlamaCppModel._drafted_tokens``). Pure list work, no llama.cpp here.
"""

from __future__ import annotations

MAX_NGRAM = 3  # the longest n-gram looked for (longer ones first: a longer match is a better guess)


def lookup_draft(history: list[int], n: int, max_ngram: int = MAX_NGRAM) -> list[int]:
    """Up to ``n`` tokens that followed the latest earlier occurrence of ``history``'s last n-gram (the
    longest n-gram, up to ``max_ngram`` tokens, that occurs earlier); [] when none does."""
    if n <= 0:
        return []
    size = len(history)
    for ngram in range(min(max_ngram, size - 1), 0, -1):
        tail = history[size - ngram :]
        first = tail[0]
        # the latest start before the tail itself, whose following tokens are known
        for start in range(size - ngram - 1, -1, -1):
            if history[start] == first and history[start : start + ngram] == tail:
                found = history[start + ngram : start + ngram + n]
                if found:
                    return found
    return []
