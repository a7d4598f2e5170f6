"""The conversations sidebar's grouping without a browser: by day, newest first, searchable, with counts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from webui.chat.history import Summary
from webui.chat.sidebar import day_group, entry_label, sidebar_groups

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def summary(cid: str, title: str, ago: timedelta, messages: int = 2) -> Summary:
    stamp = (NOW - ago).isoformat()
    return Summary(cid, "instruct", title, "instruct", stamp, stamp, messages)


def test_conversations_are_grouped_by_day_newest_first_with_their_counts():
    found = sidebar_groups(
        [
            summary("a", "Old tea", timedelta(days=9)),
            summary("b", "Morning tea", timedelta(minutes=5), 1),
            summary("c", "Late tea", timedelta(minutes=1), 4),
            summary("d", "Yesterday's tea", timedelta(days=1)),
        ],
        NOW,
    )
    assert [cid for _, cid in found["Today"]] == ["c", "b"]
    assert [cid for _, cid in found["Yesterday"]] == ["d"]
    assert [cid for _, cid in found["Earlier"]] == ["a"]
    assert found["Today"][1][0] == "Morning tea · 1 message"
    assert found["Today"][0][0] == "Late tea · 4 messages"


def test_search_keeps_matching_titles_in_any_case_and_bad_stamps_go_to_earlier():
    items = [summary("a", "Teal chat", timedelta(0)), summary("b", "Moon", timedelta(0))]
    assert sidebar_groups(items, NOW, "  TEAL ")["Today"] == [("Teal chat · 2 messages", "a")]
    assert sidebar_groups(items, NOW, "nothing like it") == {"Today": [], "Yesterday": [], "Earlier": []}
    assert day_group("not a time", NOW) == "Earlier"
    assert entry_label(Summary("x", "o", "", "instruct", "", "", 0)) == "(empty) · 0 messages"
