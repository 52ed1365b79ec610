"""Content-addressed cache of encoding models on any fsspec filesystem (local folder or ``s3://``).

Layout (BERG's folder convention, one folder per entry)::

    {root}/encoding_models/modality-fmri/train_dataset-{brainscore|synthetic}/model-{name}/encoding_models_weights/
        {name}_{subject}_pereira384_{key[:16]}/
            arrays-{sha[:16]}.safetensors   coef (n_voxels, n_units), intercept, x_mean, cv_r — float64
            voxels-{sha[:16]}.json          the voxel table
            manifest.json                   key, key fields, metadata, and each file's name, size and sha256

Entries are :class:`~berg_ray.verified_store.VerifiedStore` entries (shared with the localizer mask cache).
Writes are atomic: data files are named by their content hash and written first; ``manifest.json`` is written last
in one operation (``os.replace`` locally, a single PUT on S3), so an entry is visible only when complete. Two writers
of the same key each write complete files and then one manifest wins: the entry is always consistent. Nothing is
pickled.

Reads check bytes and meaning; any failure raises :class:`CacheIntegrityError` naming the entry and the field:

* data files: each file's sha256 against the manifest (catches edits of ``arrays-*`` and ``voxels-*``);
* ``manifest.json`` (not hashed — it holds the hashes): its ``key_fields`` must hash to the key the entry is stored
  under (the folder name), so an edited context, layer, subject, model, dataset or PLS setting is refused; each
  metadata field that restates a key field and is used when predicting (context, layer, subject, dataset, PLS
  settings, hub source) must equal it, and ``synthetic`` must match the ``train_dataset-*`` folder; every field
  must be present and of its JSON type, and the arrays' shapes must agree with each other and with the voxel table.

Only informational metadata (CV summary, fit time, model id — which the caller replaces with its own) is unchecked.
The checks catch edits and corruption, not a forger who recomputes every hash: there is no secret.
"""

from __future__ import annotations

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

from berg_ray.dataset_layouts import DEFAULT_DATASET, get_layout
from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import CacheIntegrityError, InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.regression import PLSFit, PLSSettings
from berg_ray.request import CACHE_FORMAT_VERSION, ModelRequest, cache_key  # noqa: F401  (re-exports the version)
from berg_ray.validation import check_path_component
from berg_ray.verified_store import FOLDER, MISSING, VerifiedStore

logger = logging.getLogger(__name__)


class EncodingModelStore:
    """Reads and writes encoding models under ``root`` (a local path or an fsspec URL such as ``s3://bucket/dir``).

    S3 endpoints and credentials come from the standard AWS environment variables (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ...); ``storage_options`` are passed to fsspec.
    """

    def __init__(self, root: str | os.PathLike, storage_options: dict[str, Any] | None = None):
        self.files = FileRoot(root, storage_options)
        self.entries = VerifiedStore(self.files, size_field="bytes")
        self.url = self.files.url
        self.root = self.files.root

    def __repr__(self) -> str:
        return f"EncodingModelStore({self.url!r})"

    # -- paths --------------------------------------------------------------------------------------------------
    def entry_dir(self, name: str, subject: str, key: str, synthetic: bool,
                  dataset: str = DEFAULT_DATASET) -> str:
        """BERG's folder for Pereira2018.language
        (``modality-fmri/train_dataset-{brainscore|synthetic}/…_pereira384_…``); for another dataset
        ``modality-{fmri|ecog}/train_dataset-[synthetic-]{dataset}/…_{dataset}_…`` (e.g. ``tuckute2024-language``)."""
        check_path_component(subject, "subject id")  # part of the folder name: never '../x'
        layout = get_layout(dataset)
        if layout.identifier == DEFAULT_DATASET:
            folder, tag = ("synthetic" if synthetic else "brainscore"), "pereira384"
        else:
            folder, tag = ("synthetic-" if synthetic else "") + layout.short_name, layout.short_name
        return posixpath.join(self.root, "encoding_models", f"modality-{layout.modality.lower()}",
                              f"train_dataset-{folder}", f"model-{name}", "encoding_models_weights",
                              f"{name}_{subject}_{tag}_{key[:16]}")

    # -- entries ------------------------------------------------------------------------------------------------
    def save(self, model: EncodingModel, name: str) -> str:
        """Write ``model`` under its ``cache_key``; returns the entry folder."""
        if model.cache_key != cache_key(model.key_fields):
            raise InvalidInputError(f"{model.model_id} subject {model.subject}: cache_key {model.cache_key!r} is not "
                                    "the sha256 of its key_fields; such an entry would be refused on load")
        folder = self.entry_dir(name, model.subject, model.cache_key, model.synthetic, model.dataset)
        arrays = safetensors_save({
            "coef": np.ascontiguousarray(model.fit.coef, dtype=np.float64),
            "intercept": np.ascontiguousarray(model.fit.intercept, dtype=np.float64),
            "x_mean": np.ascontiguousarray(model.fit.x_mean, dtype=np.float64),
            "cv_r": np.ascontiguousarray(model.cv_r, dtype=np.float64),
        })
        voxels = model.voxels.to_json(orient="split", index=False).encode()

        def manifest(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
            return {
                "format_version": CACHE_FORMAT_VERSION,
                "key": model.cache_key,
                "key_fields": model.key_fields,
                "files": files,
                "metadata": {**model.describe(), "n_iter": list(map(int, model.fit.n_iter))},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }

        self.entries.write_entry(folder, {"arrays": (arrays, "safetensors"), "voxels": (voxels, "json")}, manifest)
        logger.info("cached %s subject %s in %s", model.model_id, model.subject, folder)
        return folder

    def load(self, name: str, subject: str, key: str, synthetic: bool,
             expected_fields: dict[str, Any] | None = None, dataset: str = DEFAULT_DATASET) -> EncodingModel | None:
        """The cached model for ``key``, or ``None`` if there is no complete entry.

        The bytes are checked (each file's sha256 against the manifest) and so is the meaning: the manifest's
        ``key_fields`` must hash (:func:`cache_key`) to ``key``, the key the entry is stored under (its folder name),
        and every metadata field that a prediction uses (context, layer, subject, PLS settings, dataset, source,
        synthetic) must equal the key field it restates. The returned model takes those values from the verified
        key fields.

        Args:
            expected_fields: the fields the caller computed ``key`` from (``fitting.key_fields``); when given, a
                manifest whose recorded fields hash to another key is reported field by field.

        Raises:
            CacheIntegrityError: a file is missing or its sha256 differs from the manifest, or the manifest is
                malformed or contradicts the key; ``.path`` and ``.field`` name the entry and the field.
        """
        folder = self.entry_dir(name, subject, key, synthetic, dataset)
        manifest_path = posixpath.join(folder, "manifest.json")
        if not self.files.exists(manifest_path):
            return None
        try:
            manifest = json.loads(self.files.read(manifest_path))
        except IsADirectoryError:
            raise CacheIntegrityError(f"cache manifest {manifest_path} is a folder, not a file; delete the entry "
                                      "folder to refit", path=manifest_path, field="manifest") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CacheIntegrityError(f"cache manifest {manifest_path} is not valid JSON: {error}",
                                      path=manifest_path, field="manifest") from error
        check = _ManifestCheck(manifest_path)
        fields = check.key_fields(manifest, key, subject, expected_fields)
        meta = check.metadata(manifest, fields, key, synthetic)

        def fail(problem: str, role: str, name: str, path: str) -> CacheIntegrityError:
            if problem == MISSING:
                return CacheIntegrityError(f"cache entry {folder} lists {name} but it is missing", path=path,
                                           field=f"files.{role}")
            if problem == FOLDER:
                return CacheIntegrityError(f"cache entry {folder} lists {name} but it is a folder, not a file; delete "
                                           "the entry folder to refit", path=path, field=f"files.{role}")
            return CacheIntegrityError(f"cache file {path} does not match the sha256 in its manifest (modified or "
                                       "corrupted); delete the entry folder to refit", path=path, field=f"files.{role}")

        blobs = {role: self.entries.read_file(folder, role, info, fail) for role, info in check.files(manifest).items()}
        arrays = check.arrays(blobs["arrays"], meta)
        voxels = check.voxels(blobs["voxels"], arrays["coef"].shape[0])
        fit = PLSFit(x_mean=arrays["x_mean"], coef=arrays["coef"], intercept=arrays["intercept"],
                     n_iter=meta["n_iter"])
        return EncodingModel(
            model_id=meta["model_id"], source=meta["source"],
            subject=fields["subject"], fit=fit, cv_r=arrays["cv_r"], settings=PLSSettings(**fields["pls"]),
            dataset_sha256=fields["dataset_sha256"], synthetic=meta["synthetic"], voxels=voxels,
            cache_key=key, key_fields=fields, fit_seconds=meta["fit_seconds"],
            request=ModelRequest.recorded(meta["model_id"], meta["source"], fields),
            dataset=get_layout(dataset).identifier, notes=[str(n) for n in meta.get("notes", [])],
        )


_ARRAY_NAMES = ("coef", "intercept", "x_mean", "cv_r")
#: metadata fields that restate a key field (and are used when predicting): they must be equal
_RESTATED = ("context", "layer", "subject", "dataset_sha256", "pls")


class _ManifestCheck:
    """Reads one entry's manifest and files; anything missing, mistyped or contradicting the key raises
    :class:`CacheIntegrityError` naming the entry and the dotted field (``metadata.context``, ``files.voxels``)."""

    def __init__(self, manifest_path: str):
        self.path = manifest_path

    def fail(self, field: str, problem: str) -> CacheIntegrityError:
        return CacheIntegrityError(f"cache entry {self.path}: {field} {problem}; delete the entry folder to refit",
                                   path=self.path, field=field)

    def get(self, container: Any, field: str, kind: type | tuple[type, ...]) -> Any:
        """``container[leaf]`` for the dotted ``field``, checked to be an instance of ``kind`` (bool is no int)."""
        parent, _, leaf = field.rpartition(".")
        if not isinstance(container, dict):
            raise self.fail(parent or "manifest", f"is a JSON {type(container).__name__}, expected an object")
        if leaf not in container:
            raise self.fail(field, "is missing")
        value = container[leaf]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(field, f"is {value!r} ({type(value).__name__}), expected {names}")
        return value

    def key_fields(self, manifest: Any, key: str, subject: str,
                   expected: dict[str, Any] | None) -> dict[str, Any]:
        if expected is not None and cache_key(expected) != key:
            raise ValueError(f"expected_fields hash to {cache_key(expected)!r}, not to the key {key!r}")
        version = self.get(manifest, "format_version", int)
        if version != CACHE_FORMAT_VERSION:
            raise self.fail("format_version", f"is {version}; this berg-ray reads format {CACHE_FORMAT_VERSION}")
        stored = self.get(manifest, "key", str)
        if stored != key:
            raise self.fail("key", f"is {stored!r} but the entry is stored under key {key!r}")
        fields = self.get(manifest, "key_fields", dict)
        recomputed = cache_key(fields)
        if recomputed != key:
            differing = sorted(k for k in {*fields, *(expected or {})}
                               if expected is not None and fields.get(k, _MISSING) != expected.get(k, _MISSING))
            detail = "; ".join(f"{k}: recorded {fields.get(k, '(missing)')!r}, expected "
                               f"{expected.get(k, '(missing)')!r}" for k in differing) if expected else ""
            field = f"key_fields.{differing[0]}" if differing else "key_fields"
            raise self.fail(field, f"was edited: the recorded key fields hash to {recomputed!r}, not to the key "
                                   f"{key!r} the entry is stored under" + (f" ({detail})" if detail else ""))
        for name, kind in (("context", str), ("layer", str), ("subject", str), ("dataset_sha256", str),
                           ("model", str), ("pls", dict)):
            self.get(fields, f"key_fields.{name}", kind)
        if fields["subject"] != subject:
            raise self.fail("key_fields.subject", f"is {fields['subject']!r} but the entry is for subject {subject!r}")
        try:
            PLSSettings(**fields["pls"])
        except (TypeError, ValueError) as error:
            raise self.fail("key_fields.pls", f"are not valid PLS settings: {error}") from error
        return fields

    def metadata(self, manifest: dict[str, Any], fields: dict[str, Any], key: str,
                 synthetic: bool) -> dict[str, Any]:
        meta = self.get(manifest, "metadata", dict)
        for name in _RESTATED:
            value = meta.get(name, _MISSING)
            if value is _MISSING:
                raise self.fail(f"metadata.{name}", "is missing")
            if value != fields[name] or type(value) is not type(fields[name]):
                raise self.fail(f"metadata.{name}", f"is {value!r} but the entry's key fields record "
                                                    f"{fields[name]!r}")
        if "dtype" in meta and meta["dtype"] != fields["dtype"]:  # absent in entries written before 0.2
            raise self.fail("metadata.dtype", f"is {meta['dtype']!r} but the entry's key fields record "
                                              f"{fields['dtype']!r}")
        if self.get(meta, "metadata.synthetic", bool) != synthetic:
            raise self.fail("metadata.synthetic", f"is {meta['synthetic']} but the entry is stored under "
                                                  f"train_dataset-{'synthetic' if synthetic else 'brainscore'}")
        source = self.get(meta, "metadata.source", str)
        if fields["model"].startswith("hub:") and not fields["model"].startswith(f"hub:{source}@"):
            raise self.fail("metadata.source", f"is {source!r} but the entry's key fields record {fields['model']!r}")
        self.get(meta, "metadata.model_id", str)
        if meta.get("cache_key", key) != key:
            raise self.fail("metadata.cache_key", f"is {meta['cache_key']!r}, not the entry's key {key!r}")
        n_iter = self.get(meta, "metadata.n_iter", list)
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in n_iter):
            raise self.fail("metadata.n_iter", f"is {n_iter!r}, expected a list of integers")
        fit_seconds = float(self.get(meta, "metadata.fit_seconds", (int, float))) if "fit_seconds" in meta \
            else float("nan")
        return {**meta, "fit_seconds": fit_seconds}

    def files(self, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
        files = self.get(manifest, "files", dict)
        unknown = sorted(set(files) - {"arrays", "voxels"})
        if unknown:
            raise self.fail(f"files.{unknown[0]}", "is not a file of this entry format (arrays, voxels)")
        checked = {}
        for role in ("arrays", "voxels"):
            info = self.get(files, f"files.{role}", dict)
            name = self.get(info, f"files.{role}.name", str)
            if not name or name != posixpath.basename(name) or name in (".", ".."):
                raise self.fail(f"files.{role}.name", f"is {name!r}, expected a file name inside the entry folder")
            self.get(info, f"files.{role}.sha256", str)
            checked[role] = info
        return checked

    def arrays(self, data: bytes, meta: dict[str, Any]) -> dict[str, np.ndarray]:
        try:
            arrays = safetensors_load(data)
        except Exception as error:  # safetensors raises its own SafetensorError (or others) on a bad header
            raise self.fail("files.arrays", f"is not a readable safetensors file: {error}") from error
        for name in _ARRAY_NAMES:
            if name not in arrays:
                raise self.fail(f"arrays.{name}", "is missing from the safetensors file")
            if arrays[name].dtype != np.float64:
                raise self.fail(f"arrays.{name}", f"has dtype {arrays[name].dtype}, expected float64")
        coef = arrays["coef"]
        if coef.ndim != 2:
            raise self.fail("arrays.coef", f"has shape {coef.shape}, expected (n_voxels, n_units)")
        n_voxels, n_units = coef.shape
        for name, shape in (("intercept", (n_voxels,)), ("x_mean", (n_units,)), ("cv_r", (n_voxels,))):
            if arrays[name].shape != shape:
                raise self.fail(f"arrays.{name}", f"has shape {arrays[name].shape}, expected {shape} "
                                                  f"(coef is {coef.shape})")
        for name, size in (("n_voxels", n_voxels), ("n_units", n_units)):
            if name in meta and meta[name] != size:
                raise self.fail(f"metadata.{name}", f"is {meta[name]!r} but the arrays have {size}")
        return arrays

    def voxels(self, data: bytes, n_voxels: int) -> pd.DataFrame:
        try:
            table = pd.read_json(io.StringIO(data.decode()), orient="split", dtype=False)
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
            raise self.fail("files.voxels", f"is not a voxel table (pandas 'split' JSON): {error}") from error
        if not isinstance(table, pd.DataFrame) or len(table) != n_voxels:
            rows = len(table) if isinstance(table, pd.DataFrame) else type(table).__name__
            raise self.fail("files.voxels", f"has {rows} rows, but coef has {n_voxels} voxels")
        return table


_MISSING = object()
