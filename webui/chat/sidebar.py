"""The conversations sidebar as plain data: newest first, grouped by day (Today, Yesterday, Earlier), filtered by
a search, each with its title and message count. The Gradio layer (webui/ui/app.py) only shows the groups."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from datetime import datetime, timedelta

from webui.chat.history import Summary

GROUPS = ("Today", "Yesterday", "Earlier")


def entry_label(summary: Summary) -> str:
    """What the sidebar shows for one conversation: its title and how many messages it holds."""
    n = summary.messages
    return f"{summary.title or '(empty)'} · {n} message{'' if n == 1 else 's'}"


def day_group(updated: str, now: datetime) -> str:
    """Today, Yesterday or Earlier for an ISO time stamp, in the server's local time zone (unreadable: Earlier)."""
    try:
        when = datetime.fromisoformat(updated).astimezone()
    except (TypeError, ValueError):
        return GROUPS[2]
    today = now.astimezone().date()
    if when.date() >= today:
        return GROUPS[0]
    return GROUPS[1] if when.date() == today - timedelta(days=1) else GROUPS[2]


def sidebar_groups(summaries: Iterable[Summary], now: datetime, query: str = "") -> dict[str, list[tuple[str, str]]]:
    """Group -> [(label, id)], newest first in each; ``query`` keeps the titles containing it (any case)."""
    wanted = query.strip().casefold()
    groups: dict[str, list[tuple[str, str]]] = {g: [] for g in GROUPS}
    for s in sorted(summaries, key=lambda s: (s.updated, s.id), reverse=True):
        if wanted and wanted not in (s.title or "").casefold():
            continue
        groups[day_group(s.updated, now)].append((entry_label(s), s.id))
    return groups


AVATAR_PX = 24  # the character's picture beside each conversation of the list


def avatar_style(png: bytes | None, selector: str = "#sidebar .conversation-group label") -> str:
    """A style block that puts the character's small picture (PNG bytes, a thumbnail) before every row of the
    list ("" for none: instruct conversations have no character). The list shows one character's
    conversations at a time, so one picture serves every row; it travels inline (no file path to serve)."""
    if not png:
        return ""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return (
        f"<style>{selector}::before {{ content: ''; flex: 0 0 {AVATAR_PX}px; width: {AVATAR_PX}px; "
        f"height: {AVATAR_PX}px; border-radius: 50%; background: url('{uri}') center / cover; }}</style>"
    )
