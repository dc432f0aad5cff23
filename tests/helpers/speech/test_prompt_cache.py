"""PromptCache: keys, round trip, LRU eviction by bytes, RAM layer, crash safety, threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from helpers.speech.prompt_cache import PromptCache


def _key(n: int | str) -> str:
    return PromptCache.key_for("voice", f"prompt {n}", 8000, "settings")


def _disk_keys(d: Path) -> set[str]:
    return {p.name[:-4] for p in d.iterdir() if p.name.endswith(".pcm")}


def test_key_normalises_text_and_separates_everything_else() -> None:
    k = PromptCache.key_for("v", "Press one  for\n sales. ", 8000, "s")
    assert k == PromptCache.key_for("v", " Press one for sales.", 8000, "s")
    assert len(k) == 64 and int(k, 16) >= 0
    others = {
        PromptCache.key_for("w", "Press one for sales.", 8000, "s"),
        PromptCache.key_for("v", "Press two for sales.", 8000, "s"),
        PromptCache.key_for("v", "Press one for sales.", 16000, "s"),
        PromptCache.key_for("v", "Press one for sales.", 8000, "t"),
    }
    assert k not in others and len(others) == 4


def test_round_trip_and_sizes(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    pcm = bytes(range(256)) * 10
    assert cache.get(_key(1)) is None
    assert cache.put(_key(1), pcm)
    assert cache.get(_key(1)) == pcm
    assert _key(1) in cache and len(cache) == 1 and cache.size_bytes == len(pcm)
    assert (tmp_path / f"{_key(1)}.pcm").read_bytes() == pcm
    # Overwriting the same key replaces it rather than double-counting.
    assert cache.put(_key(1), pcm[:100])
    assert cache.size_bytes == 100 and cache.get(_key(1)) == pcm[:100]
    # A fresh instance (a restart) sees the entry.
    assert PromptCache(tmp_path).get(_key(1)) == pcm[:100]
    assert cache.hits == 2 and cache.misses == 1


def test_refuses_empty_oversized_and_bad_keys(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, max_bytes=100)
    assert not cache.put(_key(1), b"")
    assert not cache.put(_key(2), bytes(102))
    assert len(cache) == 0 and not list(tmp_path.iterdir())
    with pytest.raises(ValueError):
        cache.put("../escape", b"\0\0")


def test_lru_eviction_respects_max_bytes(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, max_bytes=1000)
    cache.put(_key("a"), bytes(400))
    cache.put(_key("b"), bytes(400))
    assert cache.get(_key("a")) is not None  # a is now more recent than b
    cache.put(_key("c"), bytes(400))  # 1200 > 1000: the least recently used (b) goes
    assert cache.size_bytes <= 1000
    assert _key("b") not in cache and cache.get(_key("b")) is None
    assert cache.keys_lru() == [_key("a"), _key("c")]
    assert _disk_keys(tmp_path) == {_key("a"), _key("c")}
    # A hot hit also counts as use.
    assert cache.get_hot(_key("a")) is not None
    cache.put(_key("d"), bytes(400))
    assert _disk_keys(tmp_path) == {_key("a"), _key("d")}


def test_restart_rebuilds_lru_order_from_mtimes(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    for i in range(4):
        cache.put(_key(i), bytes(100))
    # Give the files a known age order: 2 oldest, then 0, 3, 1.
    for age, i in enumerate([1, 3, 0, 2]):
        os.utime(tmp_path / f"{_key(i)}.pcm", ns=(10**18 - age * 10**9,) * 2)
    reopened = PromptCache(tmp_path, max_bytes=250)  # room for two: keeps the newest two
    assert reopened.keys_lru() == [_key(3), _key(1)]
    assert _disk_keys(tmp_path) == {_key(3), _key(1)}


def test_hit_touches_mtime(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path)
    cache.put(_key(1), bytes(10))
    path = tmp_path / f"{_key(1)}.pcm"
    os.utime(path, ns=(10**9, 10**9))
    cache.get(_key(1))
    assert path.stat().st_mtime_ns > 10**9
    # A RAM-layer hit defers its touch to the next blocking call.
    os.utime(path, ns=(10**9, 10**9))
    assert cache.get_hot(_key(1)) is not None
    assert path.stat().st_mtime_ns == 10**9
    cache.put(_key(3), bytes(10))
    assert path.stat().st_mtime_ns > 10**9


def test_memory_layer_serves_without_disk(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, memory_bytes=1000, memory_entry_max=500)
    cache.put(_key("small"), bytes(400))
    cache.put(_key("big"), bytes(600))  # above memory_entry_max: disk only
    (tmp_path / f"{_key('small')}.pcm").unlink()  # prove no disk read happens
    assert cache.get_hot(_key("small")) == bytes(400)
    assert cache.get(_key("small")) == bytes(400)
    assert cache.get_hot(_key("big")) is None
    assert cache.get(_key("big")) == bytes(600)
    assert cache.memory_size_bytes == 400
    # The RAM layer is itself capped, LRU.
    cache.put(_key("s2"), bytes(400))
    cache.put(_key("s3"), bytes(400))
    assert cache.memory_size_bytes <= 1000
    assert cache.get_hot(_key("small")) is None
    assert cache.get_hot(_key("s3")) == bytes(400)


def test_missing_file_is_forgotten(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, memory_bytes=0)
    cache.put(_key(1), bytes(10))
    (tmp_path / f"{_key(1)}.pcm").unlink()
    assert cache.get(_key(1)) is None
    assert len(cache) == 0 and cache.size_bytes == 0


def test_crash_leftovers_are_cleaned_at_startup(tmp_path: Path) -> None:
    good = _key("good")
    (tmp_path / f"{good}.pcm").write_bytes(bytes(20))
    # A write killed before os.replace, a zero-length and an odd-length (torn) entry.
    tmp = tmp_path / f".{_key('torn')}.1234.deadbeef.tmp"
    tmp.write_bytes(bytes(7))
    (tmp_path / f"{_key('empty')}.pcm").write_bytes(b"")
    (tmp_path / f"{_key('odd')}.pcm").write_bytes(bytes(5))
    foreign = tmp_path / "README.txt"
    foreign.write_text("not ours")
    cache = PromptCache(tmp_path)
    assert cache.keys_lru() == [good] and cache.size_bytes == 20
    assert not tmp.exists()
    assert cache.get(_key("torn")) is None and cache.get(_key("empty")) is None
    assert _disk_keys(tmp_path) == {good}
    assert foreign.exists()


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = PromptCache(tmp_path)

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        cache.put(_key(1), bytes(10))
    assert list(tmp_path.iterdir()) == []
    assert _key(1) not in cache


def test_thread_safety_under_concurrent_use(tmp_path: Path) -> None:
    cache = PromptCache(tmp_path, max_bytes=20_000, memory_bytes=5_000)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(150):
                k = _key(f"{t}-{i % 40}")
                data = bytes([t]) * (2 * (50 + i % 40))
                if cache.get(k) is None:
                    cache.put(k, data)
                got = cache.get_hot(k)
                assert got is None or got[0] == t
        except BaseException as exc:  # collected: assertion errors in threads are silent
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert cache.size_bytes <= 20_000
    on_disk = {p.name[:-4]: p.stat().st_size for p in tmp_path.iterdir()}
    assert set(on_disk) == set(cache.keys_lru())
    assert sum(on_disk.values()) == cache.size_bytes
