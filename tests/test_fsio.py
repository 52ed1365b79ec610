"""Local atomic writes (:mod:`berg_ray.fsio`): all or nothing, no temporary file left behind."""

from __future__ import annotations

import pytest

from berg_ray.fsio import FileRoot, atomic_path, atomic_write_bytes


def test_atomic_write_bytes_creates_folders_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "file.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two", durable=False)
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_a_failed_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.nc"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target, suffix=".nc") as temporary:
        assert temporary.parent == tmp_path and temporary.name.endswith(".nc") and ".tmp-" in temporary.name
        temporary.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.nc"]


def test_file_root_writes_locally_through_the_same_helper(tmp_path):
    root = FileRoot(tmp_path)
    root.write(root.path("x", "y.bin"), b"data")
    assert root.read(root.path("x", "y.bin")) == b"data" and root.listdir(root.path("x")) == ["y.bin"]
