"""The per-conversation KV cache's store (fast tier): longest-prefix lookup, LRU eviction by bytes in RAM and on
disk, the disk round-trip, and a corrupt or truncated file read as a miss. It stores bytes for token tuples,
so plain bytes stand in for llama.cpp's states here; tests/test_llamacpp_kv_cache.py runs it with gemma's."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.llamacpp_cache import SUFFIX, PrefixCache


def _tokens(tag: int, n: int = 40) -> tuple[int, ...]:
    return tuple([tag] * n)


def test_the_cached_state_sharing_the_longest_start_with_a_prompt_is_found_and_a_short_match_is_not():
    cache = PrefixCache(ram_bytes=10_000)
    short, long = tuple(range(40)), tuple(range(80))
    replied = tuple(range(60)) + (999,) * 10  # a conversation whose reply the next prompt renders otherwise
    cache.put(short, b"s" * 10)
    cache.put(long, b"l" * 10)
    cache.put(replied, b"r" * 10)
    cache.put(tuple(range(10)), b"x")  # shares too little with anything to be worth a restore
    assert cache.best_match(list(range(100))) == (long, 80)
    assert cache.best_match(list(range(60)) + [5] * 40) == (replied, 60)  # the shorter of two sharing 60
    assert cache.best_match(list(range(50))) == (replied, 50)
    assert cache.best_match(list(range(20))) is None  # below MIN_PREFIX
    assert cache.best_match([7] + list(range(99))) is None  # differs at the first token
    assert cache.get(long) == b"l" * 10 and cache.get(_tokens(9)) is None


def test_ram_evicts_the_least_recently_used_by_bytes():
    cache = PrefixCache(ram_bytes=250)
    a, b, c = _tokens(1), _tokens(2), _tokens(3)
    cache.put(a, b"a" * 100)
    cache.put(b, b"b" * 100)
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(c, b"c" * 100)  # 300 > 250 bytes: the least recently used (b) goes
    assert a in cache and c in cache and b not in cache
    assert cache.ram_used == 200
    cache.put(_tokens(4), b"d" * 300)  # bigger than the whole budget, and no disk: not kept, nothing evicted
    assert _tokens(4) not in cache and cache.ram_used == 200


def test_budgets_are_checked():
    with pytest.raises(ValueError, match="budgets"):
        PrefixCache(ram_bytes=-1)
    assert not PrefixCache(ram_bytes=0).enabled


def test_ram_evictions_go_to_disk_and_come_back_after_a_restart(tmp_path: Path):
    folder = tmp_path / "cache" / "kv"
    cache = PrefixCache(ram_bytes=150, disk_bytes=10_000, folder=folder, fingerprint="gemma|1")
    a, b = _tokens(1), _tokens(2)
    cache.put(a, b"a" * 100)
    cache.put(b, b"b" * 100)  # a is spilled to disk
    files = list(folder.glob("*" + SUFFIX))
    assert len(files) == 1 and len(files[0].stem) == 64 and int(files[0].stem, 16) >= 0  # named by a hash only
    assert not list(folder.glob(".tmp-*"))  # written atomically: no temp file left
    assert cache.best_match(list(a) + [5]) == (a, len(a)) and cache.get(a) == b"a" * 100  # read back from disk
    again = PrefixCache(ram_bytes=150, disk_bytes=10_000, folder=folder, fingerprint="gemma|1")  # a restart
    assert again.get(a) == b"a" * 100
    other = PrefixCache(ram_bytes=150, disk_bytes=10_000, folder=folder, fingerprint="another model")
    assert other.best_match(list(a) + [5]) is None  # a state of another model is never used


def test_disk_evicts_the_least_recently_used_files_by_bytes(tmp_path: Path):
    cache = PrefixCache(ram_bytes=1, disk_bytes=1_500, folder=tmp_path, fingerprint="m")
    for tag in range(1, 4):  # each over the RAM budget: straight to disk, ~600 bytes a file with its header
        cache.put(_tokens(tag), bytes([tag]) * 400)
    assert _tokens(1) not in cache and _tokens(2) in cache and _tokens(3) in cache
    assert cache.disk_used <= 1_500 and len(list(tmp_path.glob("*" + SUFFIX))) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupt_or_truncated_file_is_a_miss_and_is_removed(tmp_path: Path, damage: str):
    cache = PrefixCache(ram_bytes=1, disk_bytes=10_000, folder=tmp_path, fingerprint="m")
    a = _tokens(1)
    cache.put(a, b"state" * 100)
    (path,) = tmp_path.glob("*" + SUFFIX)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-7])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        path.write_bytes(b"not a cache file")
    fresh = PrefixCache(ram_bytes=1, disk_bytes=10_000, folder=tmp_path, fingerprint="m")  # scanned after it
    assert fresh.get(a) is None and cache.get(a) is None  # and indexed before it
    assert not path.exists()
