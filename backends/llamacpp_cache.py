"""The per-conversation KV cache (issue 17 §2): llama.cpp sequence states kept by the exact token prefix.

Switching between two long conversations would read each whole history again. Before the KV cache is given
to another prompt, the state of the sequence it holds (``llama_state_seq_get_data``: its K/V cells) is kept
here, keyed by the tokens it holds; a later prompt that starts with those tokens gets the state back
(``llama_state_seq_set_data``) and only the rest of the prompt is read.

Two tiers, each least-recently-used by bytes: RAM (``kv_cache_ram_mb``) and, optionally, disk
(``kv_cache_disk_mb``, under ``user_data/cache/kv/``). What RAM evicts goes to disk when there is one. A disk
file is named by a hash of the model's fingerprint and the tokens (never by request text), written atomically
(temp file, fsync, rename) and checked when read (magic, header, length, SHA-256): a corrupt or truncated file
is a miss and is deleted. This module knows nothing of llama.cpp: it stores bytes for token tuples.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MAGIC = b"INGLENOOK-KV1\n"
SUFFIX = ".kvstate"
MIN_PREFIX = 32  # a shorter cached prefix saves nothing worth a restore
MB = 1024 * 1024


@dataclass
class _DiskEntry:
    tokens: tuple[int, ...]
    path: Path
    size: int  # the file's bytes
    used: float  # last use (the file's mtime)


class PrefixCache:
    """States of token prefixes, least recently used evicted first by bytes; RAM then (optionally) disk.

    ``fingerprint`` names the model and context the states belong to: a disk file of another one is never used.
    """

    def __init__(self, ram_bytes: int, disk_bytes: int = 0, folder: Path | None = None, fingerprint: str = "") -> None:
        if ram_bytes < 0 or disk_bytes < 0:
            raise ValueError("the KV cache budgets must be 0 (off) or a number of megabytes")
        self.ram_bytes = ram_bytes
        self.disk_bytes = disk_bytes if folder is not None else 0
        self.folder = folder
        self.fingerprint = fingerprint
        self._ram: OrderedDict[tuple[int, ...], bytes] = OrderedDict()  # oldest first
        self._disk: dict[tuple[int, ...], _DiskEntry] = {}
        if self.disk_bytes:
            self._scan()

    @property
    def enabled(self) -> bool:
        return bool(self.ram_bytes or self.disk_bytes)

    @property
    def ram_used(self) -> int:
        return sum(len(s) for s in self._ram.values())

    @property
    def disk_used(self) -> int:
        return sum(e.size for e in self._disk.values())

    def __contains__(self, tokens: tuple[int, ...]) -> bool:
        return tokens in self._ram or tokens in self._disk

    def keys(self) -> list[tuple[int, ...]]:
        """The cached prefixes, RAM's (oldest first) then disk's."""
        return list(self._ram) + [t for t in self._disk if t not in self._ram]

    def best_match(self, prompt: list[int], at_least: int = MIN_PREFIX) -> tuple[tuple[int, ...], int] | None:
        """(the cached token sequence sharing the longest start with ``prompt``, how many tokens they share), when
        that is ``at_least`` tokens; else None. The sequence need not be a prefix of the prompt: a conversation's
        state holds the reply as generated, and the next prompt may render it otherwise (or edit it); its
        cells past the shared start are dropped after the restore."""
        best: tuple[tuple[int, ...], int] | None = None
        for tokens in self.keys():
            shared = common_prefix(tokens, prompt)
            if shared >= at_least and (
                best is None or shared > best[1] or (shared == best[1] and len(tokens) < len(best[0]))
            ):
                best = (tokens, shared)
        return best

    def get(self, tokens: tuple[int, ...]) -> bytes | None:
        """The state kept for exactly ``tokens`` (now the most recently used), or None; a bad disk file is a miss."""
        state = self._ram.get(tokens)
        if state is not None:
            self._ram.move_to_end(tokens)
            return state
        entry = self._disk.get(tokens)
        if entry is None:
            return None
        state = self._read(entry)
        if state is None:
            self._drop_file(tokens)
            return None
        entry.used = time.time()
        with contextlib.suppress(OSError):
            os.utime(entry.path, (entry.used, entry.used))  # the LRU order survives a restart
        self._put_ram(tokens, state)
        return state

    def put(self, tokens: tuple[int, ...], state: bytes) -> None:
        """Keep ``state`` for ``tokens`` (the most recently used now); evicts the least recently used to fit."""
        if not tokens or not state or not self.enabled:
            return
        self._put_ram(tuple(tokens), state)

    def clear(self) -> None:
        """Forget what RAM holds (disk files stay: they belong to the user's cache folder)."""
        self._ram.clear()

    # -- RAM ------------------------------------------------------------------------------------------
    def _put_ram(self, tokens: tuple[int, ...], state: bytes) -> None:
        self._ram.pop(tokens, None)
        if len(state) > self.ram_bytes:  # never fits in RAM: straight to disk, if any
            self._spill(tokens, state)
            return
        self._ram[tokens] = state
        used = self.ram_used
        while used > self.ram_bytes:
            old, old_state = self._ram.popitem(last=False)
            used -= len(old_state)
            self._spill(old, old_state)

    # -- disk -----------------------------------------------------------------------------------------
    def _name(self, tokens: tuple[int, ...]) -> str:
        digest = hashlib.sha256(self.fingerprint.encode("utf-8") + b"\0")
        digest.update(struct.pack(f"<{len(tokens)}i", *tokens))
        return digest.hexdigest() + SUFFIX

    def _spill(self, tokens: tuple[int, ...], state: bytes) -> None:
        """Write ``state`` to disk (when there is a disk tier it fits in), then evict old files to the budget."""
        if not self.disk_bytes or self.folder is None or tokens in self._disk:
            return
        header = json.dumps({"model": self.fingerprint, "tokens": list(tokens), "size": len(state),
                             "sha256": hashlib.sha256(state).hexdigest()}).encode("utf-8")  # fmt: skip
        size = len(MAGIC) + 4 + len(header) + len(state)
        if size > self.disk_bytes:
            return
        path = self.folder / self._name(tokens)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(MAGIC + struct.pack("<I", len(header)) + header)
                    f.write(state)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("could not write a KV cache file in %s: %s", self.folder, exc)
            return
        self._disk[tokens] = _DiskEntry(tokens, path, size, path.stat().st_mtime)
        used = self.disk_used
        for old in sorted(self._disk.values(), key=lambda e: e.used):
            if used <= self.disk_bytes:
                break
            if old.tokens == tokens:
                continue
            used -= old.size
            self._drop_file(old.tokens)

    def _drop_file(self, tokens: tuple[int, ...]) -> None:
        entry = self._disk.pop(tokens, None)
        if entry is not None:
            with contextlib.suppress(OSError):
                entry.path.unlink()

    def _scan(self) -> None:
        """Index the folder's files of this model (their headers only); unreadable ones are skipped."""
        if self.folder is None or not self.folder.is_dir():
            return
        for path in self.folder.glob("*" + SUFFIX):
            if path.name.startswith("."):
                continue
            found = _read_header(path)
            if found is None:  # not a cache file (any more): a truncated write of an old version, a damaged disk
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            meta, _ = found
            if meta.get("model") != self.fingerprint:
                continue
            tokens = tuple(int(t) for t in meta.get("tokens", []))
            if tokens and path.name == self._name(tokens):
                stat = path.stat()
                self._disk[tokens] = _DiskEntry(tokens, path, stat.st_size, stat.st_mtime)

    def _read(self, entry: _DiskEntry) -> bytes | None:
        """The file's state if its header names this model and these tokens and the data is whole, else None."""
        found = _read_header(entry.path)
        if found is None:
            return None
        meta, offset = found
        try:
            with entry.path.open("rb") as f:
                f.seek(offset)
                state = f.read()
        except OSError:
            return None
        ok = (
            meta.get("model") == self.fingerprint
            and tuple(meta.get("tokens", [])) == entry.tokens
            and meta.get("size") == len(state)
            and meta.get("sha256") == hashlib.sha256(state).hexdigest()
        )
        if not ok:
            log.warning("KV cache file %s is corrupt or truncated: ignored and removed", entry.path.name)
            return None
        return state


def read_seq_state(lib, ctx, seq: int) -> bytes:
    """The state of sequence ``seq`` of the llama.cpp context ``ctx`` (its K/V cells), as llama.cpp serialises it."""
    size = lib.llama_state_seq_get_size(ctx, seq)
    buf = (ctypes.c_uint8 * size)()
    written = lib.llama_state_seq_get_data(ctx, buf, size, seq)
    return ctypes.string_at(buf, written)


def write_seq_state(lib, ctx, state: bytes, seq: int) -> bool:
    """Load ``state`` (from :func:`read_seq_state`) into sequence ``seq``; False if llama.cpp refuses it."""
    buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
    return bool(lib.llama_state_seq_set_data(ctx, buf, len(state), seq))


def common_prefix(a: tuple[int, ...] | list[int], b: tuple[int, ...] | list[int]) -> int:
    """How many tokens ``a`` and ``b`` share from the start."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _read_header(path: Path) -> tuple[dict, int] | None:
    """(the header, where the state starts) of a cache file, or None when it is not one."""
    try:
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            (length,) = struct.unpack("<I", f.read(4))
            if length > 64 * MB:
                return None
            raw = f.read(length)
            if len(raw) != length:
                return None
            meta = json.loads(raw.decode("utf-8"))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None
    return (meta, len(MAGIC) + 4 + length) if isinstance(meta, dict) else None
