"""The files written around the parts: ``voxels.parquet`` (before them), then, once every planned part is checked
against its marker and the files on disk, ``bad_rows.parquet``, ``parts.parquet`` and (last) ``_manifest.json``; and
:func:`read_predictions`, which reads a finished output back through them."""

from __future__ import annotations

import io
import json
import logging
import posixpath
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.corpus.output_folder import remove_path, to_parquet_bytes, unplanned_files
from berg_ray.corpus.plan import Part
from berg_ray.corpus.read import BAD_ROWS_SCHEMA
from berg_ray.corpus.request_identity import request_sha256
from berg_ray.corpus_outputs import (
    expected_rows,
    manifest_outputs,
    model_reduction,
    output_folders,
    read_manifest,
    roi_column,
)
from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.provenance import package_versions
from berg_ray.registry import ModelSpec

logger = logging.getLogger(__name__)


def _sizes(out: FileRoot, folder: str) -> dict[str, int]:
    """File name -> size in bytes of the files in ``folder`` (relative to ``out``), from one listing."""
    path = out.path(folder)
    try:
        out.fs.invalidate_cache(path)
        return {posixpath.basename(entry["name"].rstrip("/")): int(entry["size"])
                for entry in out.fs.ls(path, detail=True) if entry.get("type") == "file"}
    except FileNotFoundError:
        return {}


def write_voxels(out: FileRoot, models: dict[str, EncodingModel]) -> None:
    """Write ``voxels.parquet``: one row per subject and voxel (subject, voxel_index and each model's voxel table)."""
    frames = []
    for subject, model in models.items():
        table = model.voxels.copy()
        table.insert(0, "voxel_index", np.arange(len(table)))
        table["subject"] = subject
        frames.append(table)
    voxels = pd.concat(frames, ignore_index=True)
    for column in voxels.columns:
        if voxels[column].dtype == object:
            voxels[column] = voxels[column].astype(str)
    out.write(out.path("voxels.parquet"), to_parquet_bytes(pa.Table.from_pandas(voxels, preserve_index=False)))


def finish_output(out: FileRoot, spec: ModelSpec, models: dict[str, EncodingModel], parts: list[Part],
                  assembly: Any, context: str, files: list[str], input: str, request: dict[str, Any],
                  started: float) -> dict[str, Any]:
    """Check every planned part against what is on disk, then write bad_rows.parquet, parts.parquet and (last)
    the manifest, counted from the planned parts' markers and files only."""
    outputs = request["outputs"]
    for path in unplanned_files(out, {p.part_id for p in parts}, list(models), outputs):
        remove_path(out, path)  # nothing but the planned parts may remain (a reader of the folder sees only them)
    digest = request_sha256(request)
    sizes = {folder: _sizes(out, folder) for folder in [*output_folders(list(models), outputs), "_bad_rows"]}
    summaries, bad_tables = [], []
    for part in parts:
        where = f"part {part.part_id} ({part.path} rows {part.row_start}–{part.row_start + part.n_rows - 1})"
        marker_path = out.path("_parts", f"part-{part.part_id}.json")
        if not out.exists(marker_path):
            raise RuntimeError(f"{where} did not finish; rerun to resume")
        marker = json.loads(out.read(marker_path))
        if marker.get("request") != digest or marker.get("input") != part.identity():
            raise RuntimeError(f"the marker of {where} records another request or input; rerun with overwrite=True")
        rows = expected_rows(part.part_id, list(models), outputs, marker["n_written"])  # every output's rows
        expected = set(rows)
        if marker["n_bad"]:
            expected.add(f"_bad_rows/part-{part.part_id}.parquet")
        files_ok = set(marker["files"]) == expected and marker.get("rows") == rows and all(
            sizes[posixpath.dirname(name)].get(posixpath.basename(name)) == size
            for name, size in marker["files"].items())
        if not files_ok or marker["n_rows"] != part.n_rows or marker["n_written"] + marker["n_bad"] != part.n_rows:
            out.remove(marker_path)  # so that a rerun encodes the part again
            raise RuntimeError(f"the files of {where} are missing or not as its marker recorded; its marker was "
                               "removed: rerun to encode it again")
        if marker["n_bad"]:
            table = pq.read_table(io.BytesIO(out.read(out.path("_bad_rows", f"part-{part.part_id}.parquet"))))
            if table.num_rows != marker["n_bad"]:
                raise RuntimeError(f"{where}: {table.num_rows} bad rows on disk, {marker['n_bad']} in its marker")
            bad_tables.append(table)
        summaries.append(marker)
    bad = pa.concat_tables(bad_tables) if bad_tables else BAD_ROWS_SCHEMA.empty_table()
    out.write(out.path("bad_rows.parquet"), to_parquet_bytes(bad))
    plan = pa.table({
        "part_id": pa.array([p.part_id for p in parts], type=pa.string()),
        "source": pa.array([p.source for p in parts], type=pa.string()),
        "path": pa.array([p.path for p in parts], type=pa.string()),
        "row_start": pa.array([p.row_start for p in parts], type=pa.int64()),
        "n_rows": pa.array([p.n_rows for p in parts], type=pa.int64()),
        "n_written": pa.array([s["n_written"] for s in summaries], type=pa.int64()),
        "n_bad": pa.array([s["n_bad"] for s in summaries], type=pa.int64()),
    })
    out.write(out.path("parts.parquet"), to_parquet_bytes(plan))
    n_rows = sum(s["n_rows"] for s in summaries)
    n_written = sum(s["n_written"] for s in summaries)
    manifest = {
        "model_id": spec.model_id, "source": spec.source, "layer": spec.layer, "context": context,
        "dtype": request["dtype"], "subjects": list(models), "n_voxels": {s: m.n_voxels for s, m in models.items()},
        "cache_keys": {s: m.cache_key for s, m in models.items()},
        # the dataset (brainscore's id), what its neuroids are and which of their coordinates groups them into ROIs
        # (None: network mean only); ranking reads the ROI labels of voxels.parquet from that column
        "dataset": assembly.identifier, "neuroid_unit": assembly.layout.neuroid_unit,
        "roi_column": roi_column(assembly.identifier),
        "dataset_sha256": assembly.sha256, "synthetic": assembly.synthetic, "input": input, "files": files,
        "rows_per_part": request["rows_per_part"], "request_sha256": digest, "parts": "parts.parquet",
        "n_parts": len(parts), "rows_read": n_rows, "sentences_encoded": n_written, "bad_rows": bad.num_rows,
        "prediction_rows": n_written * len(models) if "voxels" in outputs else 0,
        "seconds_this_run": round(time.perf_counter() - started, 2), "versions": package_versions(),
        # per output: files and bytes from the folder listings, rows from the markers checked against them above
        **manifest_outputs(outputs, request["output_dtype"], summaries, sizes,
                           model_reduction(models) if "rois" in outputs else None),
    }
    if n_written + bad.num_rows != n_rows:
        raise RuntimeError(f"row accounting mismatch: {n_rows} read, {n_written} encoded, {bad.num_rows} bad")
    out.write(out.path("_manifest.json"), json.dumps(manifest, indent=2).encode())
    logger.info("encoded %d sentences × %d subjects (%d bad rows) into %s", n_written, len(models), bad.num_rows,
                out.url)
    return manifest


def read_predictions(output: str, subject: str) -> pd.DataFrame:
    """One subject's predictions from a finished output folder, in input order: a frame of n_sentences rows with
    columns sentence_id, subject, responses (arrays of n_voxels, float32 or float16 as ``predictions_dtype``).
    Reads only the planned parts (``parts.parquet``).

    Raises:
        InvalidInputError: ``output`` has no manifest (the run has not finished: rerun encode_corpus, it resumes),
            no voxel output (encoded with ``write=("rois",)``), or ``subject`` is not one of its subjects.
    """
    if "voxels" not in read_manifest(FileRoot(output))["outputs"]:
        raise InvalidInputError(f"{output!r} holds no voxel predictions (encoded without write='voxels'); its ROI "
                                "means: berg_ray.corpus_outputs.read_rois")
    out = FileRoot(output)
    try:
        manifest = json.loads(out.read(out.path("_manifest.json")))
    except FileNotFoundError:
        raise InvalidInputError(f"{output!r} holds no finished corpus output (no _manifest.json); run encode_corpus "
                                "into it (it resumes) before reading") from None
    if subject not in manifest["subjects"]:
        raise InvalidInputError(f"no predictions for subject {subject!r} in {output!r}; it holds "
                                f"{', '.join(manifest['subjects'])}")
    if "parts" not in manifest:
        raise InvalidInputError(f"{output!r} was written by an older berg-ray (its manifest lists no parts); encode "
                                "it again with overwrite=True")
    plan = pq.read_table(io.BytesIO(out.read(out.path(manifest["parts"])))).to_pydict()
    tables = [pq.read_table(io.BytesIO(out.read(out.path("predictions", f"subject-{subject}", f"part-{pid}.parquet"))))
              for pid, n_written in zip(plan["part_id"], plan["n_written"]) if n_written]
    if not tables:
        return pd.DataFrame({"sentence_id": pd.Series(dtype=object), "subject": pd.Series(dtype=object),
                             "responses": pd.Series(dtype=object)})
    return pa.concat_tables(tables).to_pandas()
