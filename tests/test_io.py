"""deepmetric.io: the one atomic-write helper (temporary file beside the target, rename, mode 0644)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from deepmetric.io import FILE_MODE, atomic_path, atomic_write, write_json, write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_create_parents_replace_and_are_readable_by_all(tmp_path):
    target = tmp_path / "new" / "folder" / "data.bin"
    atomic_write(target, lambda handle: handle.write(b"first"))
    atomic_write(target, lambda handle: handle.write(b"second"))
    assert target.read_bytes() == b"second" and mode(target) == FILE_MODE == 0o644
    write_json(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo" and mode(tmp_path / "t.txt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "new", "t.txt"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old")

    def crash(handle):
        handle.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, crash)
    with pytest.raises(KeyError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise KeyError("stop")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["data.bin"]


def test_atomic_path_hands_writers_a_file_name_beside_the_target(tmp_path):
    target = tmp_path / "index.faiss"
    with atomic_path(target, suffix=".faiss") as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".faiss") and not target.exists()
        temporary.write_bytes(b"index")
    assert target.read_bytes() == b"index" and mode(target) == 0o644 and os.listdir(tmp_path) == [target.name]
