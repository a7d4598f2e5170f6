"""The single validator for user-supplied names that reach the disk.

Every name a user, a file or a request gives us (a model, a chat, a preset, a
character) goes through :func:`safe_name` before it becomes part of a path,
and :func:`inside` checks the joined path is still under its folder.
"""

from __future__ import annotations

import re
from pathlib import Path

_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')
# bidirectional controls make a name display as something else ("evil\u202egpj.exe" shows as "evilexe.jpg")
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_NAME = 200
MAX_PATH_TEXT = 4096  # PATH_MAX: longer text is no path on this machine


class UnsafeName(ValueError):
    """A name that would escape its folder or is not a portable file name."""


def safe_name(name: str, what: str = "name") -> str:
    """Return ``name`` unchanged if it is a plain, portable file name; raise UnsafeName otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafeName(f"{what} is empty")
    if len(name) > MAX_NAME:
        raise UnsafeName(f"{what} is longer than {MAX_NAME} characters")
    if name in (".", "..") or ".." in name.split("/") or _BAD_CHARS.search(name) or _BIDI_CONTROLS.search(name):
        raise UnsafeName(f"{what} {name!r} may not contain path separators, '..' or control characters")
    if name.startswith(".") or name != name.strip() or name.endswith("."):
        raise UnsafeName(f"{what} {name!r} may not start with '.', end with '.' or have outer spaces")
    if name.split(".")[0].lower() in _RESERVED:
        raise UnsafeName(f"{what} {name!r} is a reserved device name")
    return name


def exists_quietly(path: Path) -> bool:
    """``path.exists()``, but False (not OSError) for text no file system takes: too long, NUL bytes."""
    try:
        return len(str(path)) <= MAX_PATH_TEXT and path.exists()
    except (OSError, ValueError):
        return False


def is_link_out(path: Path, folder: Path) -> bool:
    """Whether ``path`` is a symbolic link, or resolves outside ``folder`` (user data we read must be ours)."""
    try:
        return path.is_symlink() or not path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return True


def inside(folder: Path, name: str, what: str = "name", follow_links: bool = False) -> Path:
    """``folder / name`` after validating ``name``; guaranteed to stay inside ``folder``.

    By default a symlink that leads out of ``folder`` is refused too (for files we write). The models
    folder passes ``follow_links=True``: linking a big model file in from another disk is the user's choice.
    """
    path = folder / safe_name(name, what)
    if not follow_links and not path.resolve().is_relative_to(folder.resolve()):
        raise UnsafeName(f"{what} {name!r} points outside {folder}")
    return path
