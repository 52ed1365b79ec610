"""The files the corpus pipeline owns in an output folder: what ``overwrite`` removes, and the files of parts that
are no longer planned (removed before anything is written, and again before the manifest); and how a table
becomes Parquet bytes there."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.corpus_outputs import output_folders, request_outputs
from berg_ray.fsio import FileRoot
from berg_ray.reductions import DEFAULT_OUTPUTS

logger = logging.getLogger(__name__)

#: what the pipeline writes into an output folder; overwrite removes these and nothing else (claims first)
OUTPUT_NAMES = ("_request.json", "_manifest.json", "_parts", "parts.parquet", "predictions", "rois", "sentences",
                "_bad_rows", "bad_rows.parquet", "voxels.parquet")


def to_parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet bytes, with pyarrow's default encoding (for the files written around the parts)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def remove_path(out: FileRoot, path: str) -> None:
    """Remove ``path`` (relative to ``out``; a file or a folder) if it exists."""
    full = out.path(path)
    if out.exists(full):
        out.remove(full, recursive=True)


def remove_output(out: FileRoot) -> None:
    """Delete what :func:`encode_corpus` writes into ``out`` (:data:`OUTPUT_NAMES`, the request and manifest
    first, so that an interrupted removal leaves no claim behind); any other file in ``out`` is left alone."""
    present = [name for name in OUTPUT_NAMES if out.exists(out.path(name))]
    if present:
        logger.info("overwrite: removing %s from %s", ", ".join(present), out.url)
    for name in present:
        remove_path(out, name)


def unplanned_files(out: FileRoot, planned: set[str], subjects: list[str],
                    outputs: Sequence[str] = request_outputs(DEFAULT_OUTPUTS)) -> list[str]:
    """Paths (relative to ``out``) of markers, outputs (predictions, rois, sentences) and bad rows that belong to
    no planned part, to no requested subject or to no requested output (markers first: a marker never outlives its
    data)."""
    folders = ["_parts", *(f"predictions/{name}" for name in out.listdir(out.path("predictions"))), "rois",
               "sentences", "_bad_rows"]
    wanted = {"_parts", "_bad_rows", *output_folders(subjects, outputs)}
    stale = []
    for folder in folders:
        for name in out.listdir(out.path(folder)):
            match = re.fullmatch(r"part-([0-9a-f]+)\.(json|parquet)", name)
            keep = match is not None and match.group(1) in planned and folder in wanted
            if not keep:  # (also a temporary file left by a killed writer)
                stale.append(f"{folder}/{name}")
    return stale
