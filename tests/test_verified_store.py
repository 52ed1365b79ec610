"""The verified content-addressed store under both caches: files named by sha, manifest last, hashes checked."""

from __future__ import annotations

import hashlib
import json

import pytest

from berg_ray.fsio import FileRoot
from berg_ray.verified_store import CORRUPT, MANIFEST, MISSING, VerifiedStore


class Bad(Exception):
    pass


def fail(problem: str, role: str, name: str, path: str) -> Bad:
    return Bad(problem, role, name, path)


def test_an_entry_roundtrips_and_a_bad_file_is_reported_by_the_entry_kind(tmp_path):
    files = FileRoot(tmp_path)
    store = VerifiedStore(files, size_field="size")
    folder = files.path("kind", "entry")
    store.write_entry(folder, {"a": (b"alpha", "bin")}, lambda listed: {"key": "k", "files": listed})
    manifest = json.loads((tmp_path / "kind" / "entry" / MANIFEST).read_text())
    digest = hashlib.sha256(b"alpha").hexdigest()
    assert manifest == {"key": "k", "files": {"a": {"name": f"a-{digest[:16]}.bin", "sha256": digest, "size": 5}}}
    info = manifest["files"]["a"]
    assert store.read_file(folder, "a", info, fail) == b"alpha"
    (tmp_path / "kind" / "entry" / info["name"]).write_bytes(b"alphA")
    with pytest.raises(Bad) as raised:
        store.read_file(folder, "a", info, fail)
    assert raised.value.args[:3] == (CORRUPT, "a", info["name"])
    (tmp_path / "kind" / "entry" / info["name"]).unlink()
    with pytest.raises(Bad) as raised:
        store.read_file(folder, "a", info, fail)
    assert raised.value.args[:3] == (MISSING, "a", info["name"])
