"""Files under one root on any fsspec filesystem (local folder or ``s3://``), with atomic writes.

Every write and delete stays under the root: :meth:`FileRoot.inside` refuses a path that leaves it (a ``..``
segment, a name that is absolute, or locally a symlink that points out), whatever the parts came from.

A write is all-or-nothing: locally the bytes go to a temporary file that is then renamed into place; on object
stores one PUT of the whole object (readers never see a partial object). Every berg-ray cache entry and corpus
output goes through here.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from berg_ray.errors import UnsafePathError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside local ``path`` (hidden: ``.<name>.tmp-<uuid><suffix>``) for a writer to fill; when
    the block ends normally it is renamed onto ``path`` in one step, else removed. Folders are created as needed.

    For writers that want a path rather than bytes (a netCDF writer, a download); readers never see a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to local ``path`` atomically (see :func:`atomic_path`); ``durable``: fsync before the rename
    (see :meth:`FileRoot.write`)."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())


class FileRoot:
    """A folder on an fsspec filesystem: ``FileRoot("s3://bucket/prefix")`` or ``FileRoot("/data/out")``."""

    def __init__(self, url: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.url = os.fspath(url)
        self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = root.rstrip("/") or "/"
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocols or "local" in protocols

    def __repr__(self) -> str:
        return f"FileRoot({self.url!r})"

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def contains(self, path: str) -> bool:
        """Whether ``path`` lies strictly below the root.

        Locally the check is on the resolved path (symlinks followed, ``..`` collapsed) against the resolved root;
        on object stores, where keys are not normalised, any ``.`` or ``..`` segment is refused and the key must
        start with the root's.
        """
        if self.local:
            root = os.path.realpath(self.root)
            resolved = os.path.realpath(path)
            return resolved != root and os.path.commonpath([root, resolved]) == root
        segments = path.split("/")
        return (not any(s in (".", "..") for s in segments) and path.startswith(self.root.rstrip("/") + "/")
                and path.rstrip("/") != self.root.rstrip("/"))

    def inside(self, path: str) -> str:
        """``path`` if it lies strictly below the root (:meth:`contains`); else :class:`UnsafePathError` naming it
        and the root."""
        if self.contains(path):
            return path
        raise UnsafePathError(f"refusing to write or delete {path!r}: it is not inside the root folder "
                              f"{self.url!r} (every name in a berg-ray output or cache path must be a plain name)")

    def remove(self, path: str, recursive: bool = False) -> None:
        """Delete ``path`` (a file, or with ``recursive`` a folder), which must lie under the root."""
        self.fs.rm(self.inside(path), recursive=recursive)
        if not self.local:
            self.fs.invalidate_cache(posixpath.dirname(path))

    def write(self, path: str, data: bytes, durable: bool = True) -> None:
        """Write ``data`` to ``path`` atomically (creating folders as needed).

        ``durable``: locally, fsync the bytes before the rename, so that the file survives a power failure once this
        returns. Without it the write is still all-or-nothing for readers and for a killed process, but after a power
        failure the file may be missing or empty: for files whose size is recorded elsewhere and checked (corpus
        part outputs: their marker holds every size, and the manifest step compares them with the disk).
        """
        self.inside(path)
        if self.local:
            atomic_write_bytes(path, data, durable=durable)
        else:
            self.fs.pipe_file(path, data)

    def read(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def exists(self, path: str) -> bool:
        if not self.local:  # listings are cached by s3fs; another writer may have just finished
            self.fs.invalidate_cache(posixpath.dirname(path))
        return self.fs.exists(path)

    def listdir(self, path: str) -> list[str]:
        """Names (not paths) in folder ``path``; empty if it does not exist."""
        try:
            self.fs.invalidate_cache(path)
            return sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []
