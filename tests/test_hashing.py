"""Identities computed by :mod:`berg_ray.hashing` equal those of the formulas each call site wrote by hand before.

Every old formula is written out here again, independently of the package, so that moving the hashing into one
module can be seen not to change any cache key, cell id, part id, mask key or content fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import fsspec
import numpy as np

from berg_ray import code_models, hashing, model_status
from berg_ray.corpus.inputs import file_fingerprint
from berg_ray.corpus.plan import PART_ID_CHARS, part_id
from berg_ray.corpus.request_identity import request_sha256
from berg_ray.localizer import mask_key, mask_key_fields
from berg_ray.registry import ModelSpec
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest, cache_key
from berg_ray.sweep.grid import SWEEP_FORMAT_VERSION, cell_id
from berg_ray.sweep.protocols import SCORERS
from berg_ray.synthetic import features_sha256

FIELDS = {"b": [1, 2.5, None], "a": {"z": "ü", "y": True}, "dataset_sha256": "0" * 64}
SPEC = ModelSpec("hashing-test-model", "some-org/some-model", "transformer.h.1", origin="custom")


def old_json_sha256(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_canonical_json_and_its_sha256():
    assert hashing.canonical_json(FIELDS) == json.dumps(FIELDS, sort_keys=True, separators=(",", ":"))
    assert hashing.json_sha256(FIELDS) == old_json_sha256(FIELDS)
    assert hashing.bytes_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_request_cache_key_is_unchanged():
    request = ModelRequest.build(SPEC)
    fields = request.key_fields("018", "ab" * 32, PLSSettings())
    assert cache_key(fields) == old_json_sha256(fields)
    assert request.cache_key("018", "ab" * 32, PLSSettings()) == old_json_sha256(fields)


def test_corpus_request_sha256_and_part_id_are_unchanged():
    assert request_sha256(FIELDS) == old_json_sha256(FIELDS)
    identity = {"path": "a.txt", "row_start": 0, "n_rows": 4, "byte_start": 0, "byte_end": 20,
                "fingerprint": "sha256:" + "1" * 64, "duplicates": []}
    assert part_id(identity) == old_json_sha256(identity)[:PART_ID_CHARS]


def test_mask_key_is_unchanged():
    fields = mask_key_fields("dir:abc", ["transformer.h.0", "transformer.h.1"], 0.1, "float32", {"a": 1})
    assert mask_key(fields) == old_json_sha256(fields)


def test_sweep_cell_id_is_unchanged():
    request = ModelRequest.build(SPEC)
    settings = PLSSettings()
    for scorer in SCORERS.values():
        fields = request.key_fields("018", "cd" * 32, settings)
        fields.pop("pls")
        fields.update(scorer.identity(settings))
        fields.update(protocol=scorer.name, sweep_format=SWEEP_FORMAT_VERSION)
        assert cell_id(request, "018", "cd" * 32, scorer, settings).endswith("__" + old_json_sha256(fields)[:12])


def test_features_sha256_is_unchanged():
    features = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    array = np.ascontiguousarray(np.asarray(features, dtype="<f4"))
    digest = hashlib.sha256(f"{array.shape}".encode())
    digest.update(array.tobytes())
    assert features_sha256(features) == digest.hexdigest()


def test_file_sha256_local_and_on_fsspec(tmp_path):
    data = os.urandom(3 * hashing.BLOCK_SIZE // 2)
    (tmp_path / "f.bin").write_bytes(data)
    assert hashing.file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    sha1, sha256 = hashing.file_digests(tmp_path / "f.bin", "sha1", "sha256")
    assert (sha1, sha256) == (hashlib.sha1(data).hexdigest(), hashlib.sha256(data).hexdigest())
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/hashing-test/f.bin", data)
    try:
        assert hashing.file_sha256("/hashing-test/f.bin", fs=fs) == hashlib.sha256(data).hexdigest()
        # the memory filesystem reports no ETag nor mtime: the corpus fingerprint falls back to the content
        assert file_fingerprint("memory://hashing-test/f.bin") == (f"size={len(data)};"
                                                                   f"sha256={hashlib.sha256(data).hexdigest()}")
    finally:
        fs.rm("/hashing-test", recursive=True)


def _folder(root: Path) -> Path:
    for name, data in (("config.json", b"{}"), ("weights/model.safetensors", os.urandom(5000)), (".hidden", b"h"),
                       ("code/__pycache__/x.cpython-311.pyc", b"pyc"), ("code/x.py", b"print(1)")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_registry_folder_fingerprint_is_unchanged(tmp_path):
    """registry.ModelSpec.source_fingerprint of a local folder: every file (hidden and __pycache__ too), path then
    bytes, as before."""
    root = _folder(tmp_path / "model")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.resolve().rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root.resolve())).encode())
        digest.update(file.read_bytes())
    spec = ModelSpec("hashing-folder", str(root), "transformer.h.0", origin="custom")
    assert spec.source_fingerprint() == f"dir:{digest.hexdigest()}"
    (root / "config.json").write_bytes(b'{"changed": 1}')  # the process cache sees the change
    assert spec.source_fingerprint() != f"dir:{digest.hexdigest()}"


def test_delegated_tree_fingerprint_is_unchanged(tmp_path):
    """model_status's plugin hash: matching files without __pycache__, path then the file's sha256 hex, as before."""
    root = _folder(tmp_path / "plugin")
    for pattern in ("*", "*.py"):
        digest = hashlib.sha256()
        for file in sorted(p for p in root.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(file.relative_to(root)).encode())
            digest.update(hashlib.sha256(file.read_bytes()).hexdigest().encode())
        assert model_status._tree_sha256(root, pattern) == digest.hexdigest()
    assert hashing.folder_files(root, "*.py", ("__pycache__",)) == [root / "code" / "x.py"]


def test_code_model_fingerprint_is_unchanged():
    builder = {"module": "brainscore_language", "model_class": "SUMAModel", "config_class": "SUMAConfig",
               "config": {"hidden": 8}, "seed": 0}
    origin = Path(importlib.util.find_spec("brainscore_language").origin)
    described = json.dumps(builder, sort_keys=True, separators=(",", ":"))
    code = hashlib.sha256(origin.read_bytes()).hexdigest()[:16]
    fingerprint = code_models.builder_fingerprint(builder)
    assert fingerprint.startswith(f"code:{described}@brainscore-language==")
    assert fingerprint.endswith(f":module={code}")
