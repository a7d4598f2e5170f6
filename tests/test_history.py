"""Chat histories are never lost: atomic saves, recovery from damaged files, versions, import/export.

Everything here uses real files under a temporary user_data folder; the crash tests kill a real process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO

from webui.chat.conversation import SCHEMA_VERSION, Conversation, ConversationNotFound, HistoryError
from webui.chat.history import TEMP_MAX_AGE_S, HistoryStore, Listing
from webui.chat.transfer import from_json, to_json
from webui.paths import UnsafeName

OWNER = "Aria"


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "user_data")


def chat(store: HistoryStore, *pairs: tuple[str, str], owner: str = OWNER) -> Conversation:
    """A saved conversation of (user, reply) pairs."""
    conversation = store.new(owner)
    for user, reply in pairs:
        conversation.append("user", user)
        conversation.append("assistant", reply, stats="12 tokens")
    store.save(conversation)
    return conversation


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# --------------------------------------------------------------------------- the file on disk


def test_a_conversation_is_one_json_file_per_owner_with_a_schema_version(store):
    conversation = chat(store, ("Hello", "Hi there!"))
    path = store.root / OWNER / f"{conversation.id}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["schema_version"] == 1  # a file without tool messages keeps version 1 (older versions read it)
    assert data["title"] == "Hello"  # the first user message until the user renames it
    assert data["mode"] == "chat"
    assert data["created"] and data["updated"]
    assert data["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there!", "stats": "12 tokens"},
    ]
    assert store.load(OWNER, conversation.id) == conversation


def test_instruct_mode_has_its_own_folder(store):
    conversation = store.new("instruct")
    conversation.append("user", "Summarise this")
    store.save(conversation)
    assert conversation.mode == "instruct"
    assert (store.root / "instruct" / f"{conversation.id}.json").is_file()
    assert store.list(OWNER).conversations == []
    assert store.owners() == ["instruct"]


def test_list_is_newest_first_with_titles(store):
    first = chat(store, ("First chat", "ok"))
    second = chat(store, ("Second chat", "ok"))
    first.append("user", "back to the first one")
    store.save(first)  # saving again makes it the newest
    listing = store.list(OWNER)
    assert [(s.id, s.title, s.messages) for s in listing.conversations] == [
        (first.id, "First chat", 3),
        (second.id, "Second chat", 2),
    ]
    assert listing.problems == []
    assert store.latest(OWNER) == first


def test_a_new_conversation_is_not_on_disk_until_saved(store):
    conversation = store.new(OWNER)
    assert store.list(OWNER).conversations == []
    assert not store.exists(OWNER, conversation.id)
    with pytest.raises(ConversationNotFound):
        store.load(OWNER, conversation.id)


def test_rename_changes_the_title_not_the_file_name(store):
    conversation = chat(store, ("Hello", "Hi"))
    store.rename(OWNER, conversation.id, "  ../../etc/passwd\nis just a title  ")
    assert store.load(OWNER, conversation.id).title == "../../etc/passwd is just a title"
    assert files(store.root / OWNER) == [f"{conversation.id}.json"]
    with pytest.raises(HistoryError, match="empty"):
        store.rename(OWNER, conversation.id, "   ")


def test_delete_moves_the_file_to_the_trash(store):
    kept, deleted = chat(store, ("keep me", "ok")), chat(store, ("delete me", "ok"))
    moved_to = store.delete(OWNER, deleted.id)
    assert [s.id for s in store.list(OWNER).conversations] == [kept.id]
    assert moved_to.parent == store.trash / OWNER
    assert from_json(moved_to.read_bytes()) == deleted  # still whole, one move away from restoring
    with pytest.raises(ConversationNotFound):
        store.delete(OWNER, deleted.id)


def test_undo_after_delete_gives_back_the_same_bytes(store):
    """Issue 13: a delete asks nothing and offers Undo, which must restore the file exactly."""
    conv = chat(store, ("a hand-edited é file", "ok"))
    path = store.path(OWNER, conv.id)
    path.write_bytes(path.read_bytes() + b"\n")  # whatever the bytes are, they come back as they were
    before = path.read_bytes()
    store.delete(OWNER, conv.id)
    assert not path.exists()
    assert store.undelete(OWNER, conv.id) == path
    assert path.read_bytes() == before
    assert files(store.trash / OWNER) == []  # moved back, not copied
    with pytest.raises(ConversationNotFound):  # nothing left to restore
        store.undelete(OWNER, conv.id)
    store.delete(OWNER, conv.id)
    store.save(Conversation(id=conv.id, owner=OWNER, mode="instruct"))  # the id in use again: never overwritten
    with pytest.raises(HistoryError, match="exists again"):
        store.undelete(OWNER, conv.id)
    with pytest.raises(UnsafeName):
        store.undelete(OWNER, "../../etc")


# --------------------------------------------------------------------------- message operations


def test_regenerate_keeps_older_versions_and_they_can_be_paged(store):
    conversation = chat(store, ("Tell me a joke", "Joke one"))
    conversation.regenerate("Joke two", stats="8 tokens")
    conversation.regenerate("Joke three")
    reply = conversation.messages[-1]
    assert [v.content for v in reply.versions] == ["Joke one", "Joke two", "Joke three"]
    assert reply.content == "Joke three"

    conversation.page_version(-1, -1)
    assert (reply.content, reply.stats) == ("Joke two", "8 tokens")
    conversation.page_version(-1, -5)  # stops at the first one
    assert reply.content == "Joke one"
    conversation.select_version(-1, 2)
    assert conversation.chat_messages()[-1] == {"role": "assistant", "content": "Joke three"}
    with pytest.raises(HistoryError):
        conversation.select_version(-1, 3)

    conversation.select_version(-1, 1)
    store.save(conversation)
    loaded = store.load(OWNER, conversation.id)
    assert loaded == conversation  # every version and the shown one survive a save
    assert loaded.ui_history()[-1] == {
        "role": "assistant",
        "content": "Joke two",
        "stats": "8 tokens",
        "versions": 3,
        "shown": 1,
    }


def test_a_hand_edited_file_shows_the_edit(store):
    """The file is meant to be read and edited: ``content`` is the shown version and wins over its copy."""
    conversation = chat(store, ("Tell me a joke", "Joke one"))
    conversation.regenerate("Joke two")
    store.save(conversation)
    path = store.path(OWNER, conversation.id)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["messages"][-1]["content"] == "Joke two" and data["messages"][-1]["shown"] == 1
    data["messages"][-1]["content"] = "Joke two, fixed by hand"
    path.write_text(json.dumps(data), encoding="utf-8")
    reply = store.load(OWNER, conversation.id).messages[-1]
    assert [v.content for v in reply.versions] == ["Joke one", "Joke two, fixed by hand"]


def test_regenerate_needs_a_reply_to_replace(store):
    conversation = store.new(OWNER)
    conversation.append("user", "Hello")
    with pytest.raises(HistoryError, match="not a reply"):
        conversation.regenerate("Hi")


def test_update_reply_replaces_the_shown_version_for_continue(store):
    conversation = chat(store, ("Count to three", "One, two"))
    conversation.update_reply("One, two, three", stats="3 tokens")
    assert conversation.messages[-1].versions[0].content == "One, two, three"
    assert len(conversation.messages[-1].versions) == 1


def test_a_reply_an_extension_decorated_keeps_the_models_own_text(store):
    """People read the decorated reply; later prompts give the model its own words (TGW's internal/visible)."""
    conversation = chat(store, ("Hi", "plain one"))
    conversation.regenerate("**Hello!** (translated)", raw="Hello!")
    conversation.append("user", "And?")
    conversation.append("assistant", "Same text", raw="Same text")  # nothing changed: nothing extra kept
    store.save(conversation)
    data = json.loads(store.path(OWNER, conversation.id).read_text(encoding="utf-8"))
    assert data["messages"][1]["content"] == "**Hello!** (translated)" and data["messages"][1]["raw"] == "Hello!"
    assert "raw" not in data["messages"][1]["versions"][0] and data["messages"][1]["versions"][1]["raw"] == "Hello!"
    assert "raw" not in data["messages"][3]
    loaded = store.load(OWNER, conversation.id)
    assert loaded == conversation
    assert [m["content"] for m in loaded.chat_messages()] == ["Hi", "Hello!", "And?", "Same text"]
    assert loaded.ui_history()[1]["content"] == "**Hello!** (translated)"
    loaded.edit(1, "my own fix")  # an edit is the user's text, for the model too
    assert loaded.chat_messages()[-1] == {"role": "assistant", "content": "my own fix"}


def test_remove_last_removes_the_last_exchange(store):
    conversation = chat(store, ("one", "reply one"), ("two", "reply two"))
    removed = conversation.remove_last()
    assert [m.content for m in removed] == ["two", "reply two"]
    assert [m.content for m in conversation.messages] == ["one", "reply one"]
    conversation.append("user", "a message that got no reply")
    assert [m.content for m in conversation.remove_last()] == ["a message that got no reply"]
    conversation.remove_last()
    with pytest.raises(HistoryError, match="empty"):
        conversation.remove_last()


def test_edit_a_user_message_truncates_after_it(store):
    conversation = chat(store, ("one", "reply one"), ("two", "reply two"), ("three", "reply three"))
    conversation.edit(2, "two, edited")
    assert [m.content for m in conversation.messages] == ["one", "reply one", "two, edited"]
    assert len(conversation.messages[2].versions) == 1  # changed in place


def test_edit_a_reply_keeps_the_models_version(store):
    conversation = chat(store, ("one", "reply one"), ("two", "reply two"))
    conversation.edit(1, "reply one, corrected")
    assert [m.content for m in conversation.messages] == ["one", "reply one, corrected"]
    assert [v.content for v in conversation.messages[1].versions] == ["reply one", "reply one, corrected"]
    with pytest.raises(HistoryError, match="no message 5"):
        conversation.edit(5, "x")


def test_branch_copies_up_to_a_message_and_leaves_the_original(store):
    original = chat(store, ("one", "reply one"), ("two", "reply two"))
    original.regenerate("reply two, again")
    store.save(original)
    branch = store.branch(original, 1)
    assert branch.id != original.id
    assert [m.content for m in branch.messages] == ["one", "reply one"]
    assert branch.title == "one (branch)"
    branch.append("user", "a different two")
    store.save(branch)
    assert store.load(OWNER, original.id) == original
    assert len(store.list(OWNER).conversations) == 2
    whole = store.branch(original, -1, title="Everything")
    assert store.load(OWNER, whole.id).messages == original.messages
    with pytest.raises(HistoryError):
        store.branch(original, 4)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a\x00b", "CON", "nul.json", ".hidden", "a/b", ""])
def test_owner_and_id_names_go_through_the_one_validator(store, tmp_path, name):
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UnsafeName):
        store.new(name)
    with pytest.raises(UnsafeName):
        store.load(name, "20250101-000000-abcdef")
    with pytest.raises(UnsafeName):
        store.load(OWNER, name)
    with pytest.raises(UnsafeName):
        store.list(name)
    with pytest.raises(UnsafeName):
        store.import_text('{"internal": [["hi", "hello"]]}', name)
    conversation = store.new(OWNER)
    conversation.id = name
    conversation.append("user", "hi")
    with pytest.raises(UnsafeName):
        store.save(conversation)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("content", ["", "   ", "\n\t"])
def test_an_empty_message_is_refused_and_nothing_changes(store, content):
    conversation = chat(store, ("hi", "hello"))
    before = to_json(conversation)
    for action in (
        lambda: conversation.append("user", content),
        lambda: conversation.regenerate(content),
        lambda: conversation.update_reply(content),
        lambda: conversation.edit(0, content),
    ):
        with pytest.raises(HistoryError, match="empty"):
            action()
    assert to_json(conversation) == before


def test_an_unknown_role_is_refused(store):
    with pytest.raises(HistoryError, match="role"):
        store.new(OWNER).append("narrator", "Once upon a time")


def test_a_one_megabyte_message_is_stored_whole(store):
    big = "".join(random.choice("abcdé🙂\n") for _ in range(1_000_000))
    conversation = store.new(OWNER)
    conversation.append("user", big)
    store.save(conversation)
    assert len(store.path(OWNER, conversation.id).read_bytes()) > 1_000_000
    assert store.load(OWNER, conversation.id).messages[0].content == big


def test_unicode_round_trips_exactly(store):
    texts = [
        "naïve café",
        "日本語のテキスト",
        "مرحبا بالعالم",
        "👩‍👩‍👧 🏳️‍🌈",
        "e\u0301",
        "nul \x00 tab \t",
        "lone \ud800 surrogate",
    ]
    conversation = store.new("Zoë 🌸")
    for text in texts:
        conversation.append("user", text)
        conversation.append("assistant", text[::-1])
    store.save(conversation)
    assert store.load("Zoë 🌸", conversation.id) == conversation
    assert from_json(to_json(conversation)) == conversation


# --------------------------------------------------------------------------- export / import


def test_export_then_import_round_trips_exactly(store, tmp_path):
    conversation = chat(store, ("Hello", "Hi"), ("How are you?", "Fine"))
    conversation.regenerate("Very well, thanks")
    conversation.append("system", "a note")
    store.rename(OWNER, conversation.id, "Greetings")
    conversation = store.load(OWNER, conversation.id)
    exported = store.export(OWNER, conversation.id)

    elsewhere = HistoryStore(tmp_path / "another_user_data")
    imported = elsewhere.import_text(exported, OWNER)
    assert imported == conversation  # id, title, timestamps, versions: all of it
    assert elsewhere.export(OWNER, imported.id) == exported


def test_importing_twice_never_overwrites(store):
    conversation = chat(store, ("Hello", "Hi"))
    again = store.import_text(store.export(OWNER, conversation.id), OWNER)
    assert again.id != conversation.id
    assert again.messages == conversation.messages
    assert len(store.list(OWNER).conversations) == 2


def test_import_of_a_text_generation_webui_history(store, tmp_path):
    tgw = {
        "internal": [
            ["<|BEGIN-VISIBLE-CHAT|>", "Welcome, traveller."],
            ["What is <b>2 & 2</b>?", "It is 4 & always will be."],
            ["Thanks", "You're welcome"],
        ],
        "visible": [
            ["", "Welcome, traveller."],
            ["What is &lt;b&gt;2 &amp; 2&lt;/b&gt;?", "It is 4 &amp; always will be."],
            ["Thanks", "You&#x27;re welcome"],
        ],
    }
    path = tmp_path / "20240101-12-00-00.json"
    path.write_text(json.dumps(tgw), encoding="utf-8")
    conversation = store.import_file(path, OWNER)
    assert conversation.chat_messages() == [
        {"role": "assistant", "content": "Welcome, traveller."},
        {"role": "user", "content": "What is <b>2 & 2</b>?"},
        {"role": "assistant", "content": "It is 4 & always will be."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome"},
    ]
    assert conversation.title == "What is <b>2 & 2</b>?"
    assert store.load(OWNER, conversation.id) == conversation


def test_import_of_text_generation_webui_regenerated_versions(store):
    tgw = {
        "internal": [["Name a colour", "Blue"]],
        "visible": [["Name a colour", "Blue"]],
        "metadata": {
            "assistant_0": {
                "versions": [{"content": "Red"}, {"content": "Green"}, {"content": "Blue"}],
                "current_version_index": 2,
            }
        },
    }
    conversation = store.import_text(json.dumps(tgw), "instruct")
    reply = conversation.messages[-1]
    assert [v.content for v in reply.versions] == ["Red", "Green", "Blue"]
    assert (reply.shown, conversation.mode) == (2, "instruct")


@pytest.mark.parametrize(
    "text",
    ["not json {", "[]", '{"internal": "nope"}', '{"internal": [["only one"]]}', '{"schema_version": 1}', "{}"],
)
def test_a_bad_import_is_a_clear_error_and_writes_nothing(store, text):
    with pytest.raises(HistoryError):
        store.import_text(text, OWNER)
    assert files(store.root / OWNER) == []


# --------------------------------------------------------------------------- recovery


def test_a_truncated_file_is_moved_aside_and_the_others_still_list(store):
    good = [chat(store, (f"chat {i}", "ok")) for i in range(3)]
    damaged = good.pop(1)
    path = store.path(OWNER, damaged.id)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])

    listing = store.list(OWNER)
    assert sorted(s.id for s in listing.conversations) == sorted(c.id for c in good)
    assert len(listing.problems) == 1
    problem = listing.problems[0]
    assert problem.path == path and "JSON" in problem.reason
    assert problem.moved_to.name.startswith(f"{damaged.id}.json.corrupt-")
    assert problem.moved_to.read_bytes() == original[: len(original) // 2]  # kept for the user to rescue
    assert not path.exists()
    assert store.list(OWNER).problems == []  # reported once, then out of the way


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"[1, 2, 3]",
        b'{"messages": []}',
        b'{"schema_version": 1, "messages": "not a list"}',
        b'{"schema_version": 1, "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"schema_version": 1, "messages": [{"role": "assistant", "content": "x", "versions": [], "shown": 0}]}',
        b'{"schema_version": 1, "messages": [{"role": "user", "content": 42}]}',
        b"\xff\xfe not utf-8",
    ],
    ids=["empty", "list", "no-schema", "messages-not-list", "bad-role", "no-versions", "content-not-text", "binary"],
)
def test_damaged_files_of_every_kind_are_moved_aside(store, content):
    good = chat(store, ("fine", "ok"))
    (store.root / OWNER / "20250101-000000-bad000.json").write_bytes(content)
    listing = store.list(OWNER)
    assert [s.id for s in listing.conversations] == [good.id]
    assert [p.path.name for p in listing.problems] == ["20250101-000000-bad000.json"]
    assert listing.problems[0].moved_to is not None


def test_loading_a_damaged_file_moves_it_aside_with_a_clear_error(store):
    conversation = chat(store, ("hi", "hello"))
    store.path(OWNER, conversation.id).write_text('{"schema_version": 1, "mess', encoding="utf-8")
    with pytest.raises(HistoryError, match="corrupt-"):
        store.load(OWNER, conversation.id)
    assert store.list(OWNER) == Listing([], [])


def test_a_file_from_a_newer_version_is_reported_but_left_alone(store):
    path = store.root / OWNER / "20990101-000000-future.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1, "messages": []}), encoding="utf-8")
    listing = store.list(OWNER)
    assert listing.conversations == []
    assert "newer" in listing.problems[0].reason and listing.problems[0].moved_to is None
    assert path.exists()


def test_leftover_temp_files_are_ignored_and_old_ones_cleaned(store):
    conversation = chat(store, ("hi", "hello"))
    folder = store.root / OWNER
    fresh = folder / f".{conversation.id}.json.abc123.tmp"  # maybe a save in progress in another thread
    stale = folder / f".{conversation.id}.json.def456.tmp"  # a crash leftover
    fresh.write_text('{"schema_version": 1, "messages": [{"ro', encoding="utf-8")
    stale.write_text("half a file", encoding="utf-8")
    old = time.time() - TEMP_MAX_AGE_S - 60
    os.utime(stale, (old, old))
    listing = store.list(OWNER)
    assert [s.id for s in listing.conversations] == [conversation.id] and listing.problems == []
    assert fresh.exists() and not stale.exists()


def test_a_failed_save_is_an_error_and_leaves_no_temp_file(store):
    conversation = store.new(OWNER)
    conversation.append("user", "hi")
    store.path(OWNER, conversation.id).mkdir(parents=True)  # something in the way: the rename must fail
    with pytest.raises(OSError):
        store.save(conversation)
    assert files(store.root / OWNER) == [f"{conversation.id}.json"]  # just the obstacle, no temp left behind


def test_a_save_replaces_the_file_instead_of_writing_into_it(store):
    """What makes a crash harmless: the old file is never opened for writing, a whole new one takes its place."""
    conversation = chat(store, ("hi", "hello"))
    path = store.path(OWNER, conversation.id)
    with path.open("rb") as reader_of_the_old_file:
        old_inode = os.fstat(reader_of_the_old_file.fileno()).st_ino
        conversation.append("user", "more")
        store.save(conversation)
        assert from_json(reader_of_the_old_file.read()).messages == conversation.messages[:2]
    assert path.stat().st_ino != old_inode
    assert store.load(OWNER, conversation.id) == conversation


SAVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from webui.chat.history import HistoryStore

    store = HistoryStore(Path(sys.argv[1]))
    conversation = store.load(sys.argv[2], sys.argv[3])
    version = int(conversation.title)
    while True:
        version += 1
        conversation.title = str(version)
        for message in conversation.messages:  # every message carries the version: a mix would show
            message.versions[0].content = f"{version}:" + "x" * 400_000
        store.save(conversation)
        print(version, flush=True)
    """
)


@pytest.mark.parametrize("attempt", range(10))
def test_kill_9_during_saves_leaves_the_old_or_the_new_file_whole(store, attempt):
    conversation = store.new(OWNER, title="0")
    for _ in range(5):
        conversation.append("user", "0:" + "x" * 400_000)
        conversation.append("assistant", "0:" + "x" * 400_000)
    store.save(conversation)

    proc = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(store.user_data), OWNER, conversation.id],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "1", proc.stderr.read()  # saves are under way
        time.sleep(random.uniform(0, 0.25))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    last_reported = int((["1"] + out.split())[-1])  # "1" was read above

    listing = store.list(OWNER)
    assert listing.problems == [] and [s.id for s in listing.conversations] == [conversation.id]
    loaded = store.load(OWNER, conversation.id)
    version = int(loaded.title)
    assert version in (last_reported, last_reported + 1)  # the last finished save, or the one in flight
    assert len(loaded.messages) == 10
    assert all(m.content == f"{version}:" + "x" * 400_000 for m in loaded.messages)


def test_concurrent_saves_from_two_threads_never_corrupt_the_file(store):
    conversation = chat(store, ("start", "ok"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def saver(name: str, mine: Conversation) -> None:
        try:
            for i in range(40):
                mine.title = f"{name} {i}"
                mine.append("user", f"{name} says {i} " + "y" * 20_000)
                store.save(mine)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            try:
                listing = store.list(OWNER)
                assert listing.problems == [], listing.problems
                store.load(OWNER, conversation.id)
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=saver, args=(n, store.load(OWNER, conversation.id))) for n in ("left", "right")]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()

    assert errors == []
    final = store.load(OWNER, conversation.id)
    name = final.title.split()[0]
    assert final.title in ("left 39", "right 39")
    assert [m.content.split()[0] for m in final.messages[2:]] == [name] * 40  # one writer's whole version
    assert files(store.root / OWNER) == [f"{conversation.id}.json"]
