"""helpers.storage on real files: what is stored for a path, what a stored path resolves
to, ranges, put/exists/delete."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.storage import LocalStorage, Storage, resolve_stored


def test_relative_under_the_root_absolute_outside(tmp_path: Path) -> None:
    files = LocalStorage(tmp_path / "shared")
    assert files.relative(tmp_path / "shared" / "recordings" / "a.wav") == "recordings/a.wav"
    assert files.relative(tmp_path / "elsewhere" / "a.wav") == str(tmp_path / "elsewhere/a.wav")
    assert files.relative("archive/a.m4a") == "archive/a.m4a"
    # The root named through a symlink still gives a relative path.
    (tmp_path / "shared").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "shared")
    assert files.relative(tmp_path / "link" / "peaks" / "a.json") == "peaks/a.json"


def test_resolve_relative_absolute_and_refuse_climbing(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    assert resolve_stored(root, "recordings/a.wav") == root / "recordings" / "a.wav"
    assert resolve_stored(root, "/old/data/recordings/a.wav") == Path(
        "/old/data/recordings/a.wav")
    with pytest.raises(ValueError):
        resolve_stored(root, "../calls.db")
    with pytest.raises(ValueError):
        resolve_stored(root, "recordings/../../etc/passwd")


def test_ranges_put_exists_delete(tmp_path: Path) -> None:
    files: Storage = LocalStorage(tmp_path / "shared")
    src = tmp_path / "incoming.wav"
    src.write_bytes(bytes(range(256)) * 4)
    assert files.put("recordings/x.wav", src) == "recordings/x.wav"
    assert not src.exists() and files.exists("recordings/x.wav")
    reader = files.open_range("recordings/x.wav", 10, 20)
    try:
        assert reader.read(4) + reader.read() == bytes(range(10, 20))
        assert reader.read() == b""
    finally:
        reader.close()
    reader = files.open_range("recordings/x.wav", 1000, 5000)  # past the end: what there is
    try:
        assert reader.read() == (bytes(range(256)) * 4)[1000:]
    finally:
        reader.close()
    assert files.delete("recordings/x.wav") is True
    assert files.delete("recordings/x.wav") is False
    assert not files.exists("recordings/x.wav")


def test_a_relative_root_and_paths_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `make run`'s default: data_dir ./var, so the recorder's path is var/recordings/x.wav.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var" / "recordings").mkdir(parents=True)
    (tmp_path / "var" / "recordings" / "x.wav").write_bytes(b"RIFF")
    files = LocalStorage("./var")
    stored = files.relative("var/recordings/x.wav")
    assert stored == "recordings/x.wav"
    assert files.path(stored).read_bytes() == b"RIFF"
    assert files.relative("recordings/x.wav") == "recordings/x.wav"  # already under the root


def test_rows_from_before_relative_storage_still_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Earlier versions stored the path as opened: var/recordings/x.wav under ./var.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var" / "recordings").mkdir(parents=True)
    (tmp_path / "var" / "recordings" / "x.wav").write_bytes(b"RIFF")
    files = LocalStorage("./var")
    assert files.path("var/recordings/x.wav").read_bytes() == b"RIFF"
    assert files.path("recordings/x.wav").read_bytes() == b"RIFF"
    assert resolve_stored(tmp_path / "var", str(tmp_path / "var/recordings/x.wav")).exists()
