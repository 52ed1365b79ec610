"""SHA-256 identities, in one place: canonical JSON, bytes, files (local or any fsspec filesystem) and folders.

Every cache key, cell id, part id, content fingerprint and manifest checksum of berg-ray is computed here, so the
formula of each identity is written once. The formulas are those the package used before they were gathered here:
a key computed by an older version is the same hex today (``tests/test_hashing.py`` pins each one).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

#: bytes read at a time when a file is streamed through a digest
BLOCK_SIZE = 1 << 20


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON: keys sorted, no whitespace (the text that every JSON identity hashes)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def json_sha256(obj: Any) -> str:
    """sha256 (hex) of :func:`canonical_json` of ``obj`` (cache keys, mask keys, sweep cell ids, corpus part ids)."""
    return bytes_sha256(canonical_json(obj).encode())


def bytes_sha256(data: bytes) -> str:
    """sha256 (hex) of ``data``."""
    return hashlib.sha256(data).hexdigest()


def running_sha256() -> Any:
    """A fresh ``hashlib`` sha256 object to ``update`` piece by piece (e.g. a byte range read line by line)."""
    return hashlib.sha256()


def file_digests(path: str | os.PathLike, *algorithms: str, fs: Any = None) -> tuple[str, ...]:
    """Hex digests of a file's bytes with each of ``algorithms`` (``hashlib`` names), in one streamed pass.

    ``fs``: an fsspec filesystem that ``path`` lives on (default: the local disk).
    """
    digests = [hashlib.new(name) for name in algorithms]
    with (fs.open(path, "rb") if fs is not None else open(path, "rb")) as handle:
        for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
            for digest in digests:
                digest.update(block)
    return tuple(digest.hexdigest() for digest in digests)


def file_sha256(path: str | os.PathLike, fs: Any = None) -> str:
    """sha256 (hex) of a file's bytes, streamed; ``fs``: an fsspec filesystem (default: the local disk)."""
    (digest,) = file_digests(path, "sha256", fs=fs)
    return digest


#: what follows each file's relative path in a folder digest (see :func:`folder_sha256`)
FolderEntry = Literal["bytes", "sha256"]


def folder_files(root: str | os.PathLike, pattern: str = "*", exclude: Sequence[str] = ()) -> list[Path]:
    """The files a folder digest covers: under ``root`` matching ``pattern`` (recursive glob), sorted, skipping any
    file with a path component (relative to ``root``) named in ``exclude``."""
    root = Path(root)
    skipped = set(exclude)
    return sorted(p for p in root.rglob(pattern)
                  if p.is_file() and not skipped.intersection(p.relative_to(root).parts))


def folder_sha256(root: str | os.PathLike, *, pattern: str = "*", exclude: Sequence[str] = (),
                  entry: FolderEntry = "bytes") -> str:
    """sha256 (hex) of a folder: for each file of :func:`folder_files` in order, its path relative to ``root``, then
    its content — the raw bytes (``entry="bytes"``) or its sha256 hex (``entry="sha256"``).

    The two entry kinds are two identities in use, kept so that no existing fingerprint changes: a local model
    folder (``registry``: every file, bytes) and a delegated brainscore plugin's code and weights (``model_status``:
    ``*.py`` or every file, ``__pycache__`` excluded, per-file sha256). The result is cached in the process by the
    (size, mtime) of every covered file, so an unchanged folder is hashed once.
    """
    files = folder_files(root, pattern, exclude)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _folder_sha256(str(root), pattern, tuple(exclude), entry, stamp)


@functools.lru_cache(maxsize=64)
def _folder_sha256(root: str, pattern: str, exclude: tuple[str, ...], entry: FolderEntry, stamp: tuple) -> str:
    digest = hashlib.sha256()
    base = Path(root)
    for name, _size, _mtime in stamp:
        file = Path(name)
        digest.update(str(file.relative_to(base)).encode())
        if entry == "sha256":
            digest.update(file_sha256(file).encode())
        else:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
                    digest.update(block)
    return digest.hexdigest()
