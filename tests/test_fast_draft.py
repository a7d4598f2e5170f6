"""Prompt-lookup drafting's guess (fast tier): the tokens after the latest earlier occurrence of the last n-gram.
The greedy exactness of drafting on the real model is tested in tests/test_llamacpp_draft.py."""

from __future__ import annotations

from backends.llamacpp_draft import lookup_draft


def test_the_draft_is_what_followed_the_latest_earlier_occurrence_of_the_last_ngram():
    history = [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 0, 2, 3]
    assert lookup_draft(history, 3) == [7, 8, 0]  # "2 3" last came before "7 8 0", not "4 5 9"
    assert lookup_draft(history, 1) == [7]
    assert lookup_draft([5, 6, 7, 6, 7], 4) == [6, 7]  # the longest n-gram first ("6 7" after "5")


def test_the_longest_ngram_wins_over_a_later_shorter_match():
    history = [1, 2, 3, 40, 9, 3, 50, 1, 2, 3]
    assert lookup_draft(history, 2) == [40, 9]  # "1 2 3" matches at the start; "3" alone would give 50


def test_no_earlier_occurrence_or_no_room_gives_no_draft():
    assert lookup_draft([1, 2, 3, 4], 5) == []
    assert lookup_draft([], 5) == [] and lookup_draft([7], 5) == []
    assert lookup_draft([1, 2, 1, 2], 0) == []
