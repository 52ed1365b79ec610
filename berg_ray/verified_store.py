"""A verified content-addressed store: the one way berg-ray's caches write and read their entries.

An entry is a folder holding data files named by their content (``{role}-{sha256[:16]}.{suffix}``) and a
``manifest.json`` that lists each file's name, size and sha256. The data files are written first and the manifest
last, each atomically (:class:`~berg_ray.fsio.FileRoot`), so an entry is visible only when complete, and two writers
of the same entry leave a consistent one (the last manifest wins). On load every data file is checked against the
sha256 in the manifest.

Two kinds of entry use it, each with its own folder layout, manifest fields and meaning checks: encoding models
(:class:`berg_ray.store.EncodingModelStore`) and localizer masks (:class:`berg_ray.localizer.MaskCache`).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from typing import Any

from berg_ray.fsio import FileRoot
from berg_ray.hashing import bytes_sha256

#: the name of every entry's manifest
MANIFEST = "manifest.json"
#: what can be wrong with a data file that a manifest lists (see :meth:`VerifiedStore.read_file`)
MISSING, FOLDER, CORRUPT = "missing", "folder", "corrupt"
#: ``(problem, role, file name, path) -> exception``: how an entry kind reports a bad data file
FileProblem = Callable[[str, str, str, str], Exception]


class VerifiedStore:
    """Entries of one kind under ``files``; ``size_field``: the key of a file's size in the manifest (``"bytes"``
    for encoding models, ``"size"`` for localizer masks — each kind keeps the manifests it has always written)."""

    def __init__(self, files: FileRoot, size_field: str = "bytes"):
        self.files = files
        self.size_field = size_field

    def write_entry(self, folder: str, blobs: Mapping[str, tuple[bytes, str]],
                    manifest: Callable[[dict[str, dict[str, Any]]], dict[str, Any]]) -> None:
        """Write ``blobs`` (``{role: (bytes, suffix)}``) named by their sha256, then ``manifest(files)`` last, where
        ``files`` is ``{role: {"name", "sha256", <size_field>}}``."""
        files: dict[str, dict[str, Any]] = {}
        for role, (data, suffix) in blobs.items():
            digest = bytes_sha256(data)
            name = f"{role}-{digest[:16]}.{suffix}"
            self.files.write(posixpath.join(folder, name), data)
            files[role] = {"name": name, "sha256": digest, self.size_field: len(data)}
        self.files.write(posixpath.join(folder, MANIFEST), json.dumps(manifest(files), indent=2).encode())

    def read_file(self, folder: str, role: str, info: Mapping[str, Any], fail: FileProblem) -> bytes:
        """The bytes of the data file that ``info`` (the manifest's ``files[role]``) names, checked against its sha256.

        Raises:
            ``fail(problem, role, name, path)``: the entry kind's own error, for ``problem`` :data:`MISSING` (the
            file is absent), :data:`FOLDER` (a folder stands where the file should)
            or :data:`CORRUPT` (its sha256 differs from the manifest's).
        """
        name = info["name"]
        path = posixpath.join(folder, name)
        try:
            data = self.files.read(path)
        except FileNotFoundError as error:
            raise fail(MISSING, role, name, path) from error
        except IsADirectoryError:
            raise fail(FOLDER, role, name, path) from None
        if bytes_sha256(data) != info.get("sha256"):
            raise fail(CORRUPT, role, name, path)
        return data
