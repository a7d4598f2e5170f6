"""Every user-supplied name that reaches the disk goes through one validator."""

from __future__ import annotations

import pytest

from webui.paths import UnsafeName, inside, safe_name


@pytest.mark.parametrize("name", ["gemma.gguf", "My chat 2", "Llama-3.1 8B Q4_K_M", "naïve-é"])
def test_plain_names_pass_unchanged(name):
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "  ", "../../etc/passwd", "..", ".", "a/b", "a\\b", "/etc/passwd", "x\x00y", ".hidden", "CON", "nul.txt",
     "trailing.", " padded", "x" * 300, "a:b", "new\nline"],
)  # fmt: skip
def test_dangerous_names_are_rejected(name):
    with pytest.raises(UnsafeName):
        safe_name(name)


def test_inside_keeps_paths_under_their_folder(tmp_path):
    assert inside(tmp_path, "chat.json") == tmp_path / "chat.json"
    with pytest.raises(UnsafeName):
        inside(tmp_path, "../escape.json")


def test_inside_refuses_a_symlink_pointing_out(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafeName, match="outside"):
        inside(tmp_path / "folder", "link")
