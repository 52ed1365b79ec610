"""Content-addressed cache of encoding models on any fsspec filesystem (local folder or ``s3://``).

Layout (BERG's folder convention, one folder per entry)::

    {root}/encoding_models/modality-fmri/train_dataset-{brainscore|synthetic}/model-{name}/encoding_models_weights/
        {name}_{subject}_pereira384_{key[:16]}/
            arrays-{sha[:16]}.safetensors   coef (n_voxels, n_units), intercept, x_mean, cv_r — float64
            voxels-{sha[:16]}.json          the voxel table
            manifest.json                   key, key fields, metadata, and each file's name, size and sha256

Writes are atomic: data files are named by their content hash and written first; ``manifest.json`` is written last
in one operation (``os.replace`` locally, a single PUT on S3), so an entry is visible only when complete. Two writers
of the same key each write complete files and then one manifest wins: the entry is always consistent. Reads verify
every file's sha256 against the manifest; a mismatch raises :class:`CacheIntegrityError`. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import CacheIntegrityError
from berg_ray.fsio import FileRoot
from berg_ray.regression import PLSFit, PLSSettings

logger = logging.getLogger(__name__)

#: bump when the entry layout or anything that changes fitted numbers changes
CACHE_FORMAT_VERSION = 1


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``fields``."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EncodingModelStore:
    """Reads and writes encoding models under ``root`` (a local path or an fsspec URL such as ``s3://bucket/dir``).

    S3 endpoints and credentials come from the standard AWS environment variables (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ...); ``storage_options`` are passed to fsspec.
    """

    def __init__(self, root: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.files = FileRoot(root, storage_options)
        self.url = self.files.url
        self.root = self.files.root

    def __repr__(self) -> str:
        return f"EncodingModelStore({self.url!r})"

    # -- paths --------------------------------------------------------------------------------------------------
    def entry_dir(self, name: str, subject: str, key: str, synthetic: bool) -> str:
        dataset = "synthetic" if synthetic else "brainscore"
        return posixpath.join(self.root, "encoding_models", "modality-fmri", f"train_dataset-{dataset}",
                              f"model-{name}", "encoding_models_weights", f"{name}_{subject}_pereira384_{key[:16]}")

    # -- entries ------------------------------------------------------------------------------------------------
    def save(self, model: EncodingModel, name: str) -> str:
        """Write ``model`` under its ``cache_key``; returns the entry folder."""
        folder = self.entry_dir(name, model.subject, model.cache_key, model.synthetic)
        arrays = safetensors_save({
            "coef": np.ascontiguousarray(model.fit.coef, dtype=np.float64),
            "intercept": np.ascontiguousarray(model.fit.intercept, dtype=np.float64),
            "x_mean": np.ascontiguousarray(model.fit.x_mean, dtype=np.float64),
            "cv_r": np.ascontiguousarray(model.cv_r, dtype=np.float64),
        })
        voxels = model.voxels.to_json(orient="split", index=False).encode()
        files = {}
        for role, data, suffix in (("arrays", arrays, "safetensors"), ("voxels", voxels, "json")):
            digest = _sha256(data)
            filename = f"{role}-{digest[:16]}.{suffix}"
            self.files.write(posixpath.join(folder, filename), data)
            files[role] = {"name": filename, "sha256": digest, "bytes": len(data)}
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": model.cache_key,
            "key_fields": model.key_fields,
            "files": files,
            "metadata": {**model.describe(), "n_iter": list(map(int, model.fit.n_iter))},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self.files.write(posixpath.join(folder, "manifest.json"), json.dumps(manifest, indent=2).encode())
        logger.info("cached %s subject %s in %s", model.model_id, model.subject, folder)
        return folder

    def load(self, name: str, subject: str, key: str, synthetic: bool) -> EncodingModel | None:
        """The cached model for ``key``, or ``None`` if there is no complete entry.

        Raises:
            CacheIntegrityError: a file is missing or its sha256 differs from the manifest.
        """
        folder = self.entry_dir(name, subject, key, synthetic)
        manifest_path = posixpath.join(folder, "manifest.json")
        if not self.files.exists(manifest_path):
            return None
        try:
            manifest = json.loads(self.files.read(manifest_path))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CacheIntegrityError(f"cache manifest {manifest_path} is not valid JSON: {error}") from error
        if manifest.get("key") != key or manifest.get("format_version") != CACHE_FORMAT_VERSION:
            raise CacheIntegrityError(f"cache manifest {manifest_path} is for key {manifest.get('key')!r} "
                                      f"(format {manifest.get('format_version')}), expected {key!r}")
        blobs = {}
        for role, info in manifest["files"].items():
            path = posixpath.join(folder, info["name"])
            try:
                data = self.files.read(path)
            except FileNotFoundError as error:
                raise CacheIntegrityError(f"cache entry {folder} lists {info['name']} but it is missing") from error
            if _sha256(data) != info["sha256"]:
                raise CacheIntegrityError(f"cache file {path} does not match the sha256 in its manifest "
                                          "(modified or corrupted); delete the entry folder to refit")
            blobs[role] = data
        arrays = safetensors_load(blobs["arrays"])
        voxels = pd.read_json(io.StringIO(blobs["voxels"].decode()), orient="split", dtype=False)
        meta = manifest["metadata"]
        fit = PLSFit(x_mean=arrays["x_mean"], coef=arrays["coef"], intercept=arrays["intercept"],
                     n_iter=meta.get("n_iter", []))
        return EncodingModel(
            model_id=meta["model_id"], source=meta["source"], layer=meta["layer"], context=meta["context"],
            subject=meta["subject"], fit=fit, cv_r=arrays["cv_r"], settings=PLSSettings(**meta["pls"]),
            dataset_sha256=meta["dataset_sha256"], synthetic=meta["synthetic"], voxels=voxels,
            cache_key=key, key_fields=manifest["key_fields"], fit_seconds=meta.get("fit_seconds", float("nan")),
        )
