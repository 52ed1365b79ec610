"""The per-part outputs of a corpus (besides its bad rows): what a PartEncoder actor writes, how the driver accounts
for them, and how to read them back in input order.

Output folder (``encode_corpus(..., write=...)``)::

    predictions/subject-<s>/part-<id>.parquet   sentence_id, subject, responses     write "voxels" (the default)
                                                (fixed_size_list<float32|float16>: predictions_dtype)
    rois/part-<id>.parquet                      sentence_id, subject, network, <ROI>...   write "rois"
                                                (float32; one row per (sentence, subject), subjects in order)
    sentences/part-<id>.parquet                 sentence_id, sentence                   always (ranking lists them)

Every file is written whole (``FileRoot.write``) before the part's marker, which records each file's size and row
count; the driver checks both against the disk before it counts anything (:func:`expected_rows`,
:func:`tally_outputs`). Which outputs a folder holds is part of its request identity (``corpus_request``'s
``outputs`` and ``output_dtype``), so a rerun with another ``write`` or ``predictions_dtype`` is refused.

The sentences are stored rather than re-read from the input at ranking time: the input may have changed or moved
since (a resumed run re-plans changed files, but a finished output is read long after), reading it back would
re-parse whole files to find a few rows, and they cost less than the ROI output (tens of bytes per sentence).
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from berg_ray.dataset_layouts import DEFAULT_DATASET, get_layout
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.reductions import (
    DEFAULT_OUTPUTS,
    DEFAULT_PREDICTION_DTYPE,
    FLOAT16_SUBNORMAL_HALF_STEP,
    FLOAT16_UNIT_ROUNDOFF,
    RoiReduction,
    check_output_options,
    round_to_float16,
)

logger = logging.getLogger(__name__)

SENTENCES = "sentences"
#: output kind -> its folder in the output
FOLDERS = {"voxels": "predictions", "rois": "rois", SENTENCES: "sentences"}


def request_outputs(write: Sequence[str]) -> list[str]:
    """The ``outputs`` field of a corpus request: the requested outputs, then the ones always written."""
    return [*write, SENTENCES, "bad_rows"]


def written_kinds(outputs: Iterable[str]) -> list[str]:
    """The per-part output kinds among a request's ``outputs`` (voxels, rois, sentences), in that order."""
    outputs = set(outputs)
    return [kind for kind in FOLDERS if kind in outputs]


def output_folders(subjects: Sequence[str], outputs: Iterable[str]) -> list[str]:
    """Folders (relative to the output) holding per-part output files of ``outputs``."""
    folders = []
    for kind in written_kinds(outputs):
        if kind == "voxels":
            folders += [f"predictions/subject-{s}" for s in subjects]
        else:
            folders.append(FOLDERS[kind])
    return folders


def expected_rows(part_id: str, subjects: Sequence[str], outputs: Iterable[str], n_written: int) -> dict[str, int]:
    """File name (relative to the output) -> rows, of every output file of a part that wrote ``n_written``
    sentences (no files when it wrote none)."""
    if not n_written:
        return {}
    rows = {}
    for kind in written_kinds(outputs):
        if kind == "voxels":
            rows.update({f"predictions/subject-{s}/part-{part_id}.parquet": n_written for s in subjects})
        elif kind == "rois":
            rows[f"rois/part-{part_id}.parquet"] = n_written * len(subjects)
        else:
            rows[f"sentences/part-{part_id}.parquet"] = n_written
    return rows


def kind_of(name: str) -> str:
    """The output kind of a file name relative to the output (``bad_rows`` for ``_bad_rows/...``)."""
    folder = name.split("/", 1)[0]
    return {"predictions": "voxels", "rois": "rois", "sentences": SENTENCES}.get(folder, "bad_rows")


def models_dataset(models: Mapping[str, Any]) -> str:
    """The dataset identifier (``EncodingModel.dataset``) shared by fitted models of one output.

    Raises:
        InvalidInputError: no models, or models trained on different datasets.
    """
    found = {subject: str(getattr(model, "dataset", DEFAULT_DATASET)) for subject, model in models.items()}
    if len(set(found.values())) != 1:
        raise InvalidInputError(f"the encoding models of one output must share a dataset, got {found or 'none'}")
    return next(iter(found.values()))


def roi_column(dataset: str) -> str | None:
    """The neuroid coordinate whose groups are the ROIs of ``dataset``'s outputs (``None``: no ROIs, only the
    network mean); see :mod:`berg_ray.reductions`."""
    return get_layout(dataset).roi_coord


def model_reduction(models: Mapping[str, Any]) -> RoiReduction:
    """The network/ROI reduction of fitted :class:`~berg_ray.encoding_model.EncodingModel` s (their voxel tables,
    in prediction column order; ROI labels from their dataset's :func:`roi_column`, as strings as
    ``voxels.parquet`` stores them; a dataset without one gets the network mean alone).

    Raises:
        InvalidInputError: models of different datasets, or a voxel table without the dataset's ROI column.
    """
    dataset = models_dataset(models)
    column = roi_column(dataset)
    if column is None:
        return RoiReduction.network_only({subject: len(model.voxels) for subject, model in models.items()})
    for subject, model in models.items():
        if column not in model.voxels:
            raise InvalidInputError(f"the voxel table of subject {subject!r} has no {column!r} column (the ROI "
                                    f"labels of {dataset}; it has {', '.join(map(str, model.voxels.columns))}), so "
                                    "there is no ROI output to write; use write=('voxels',)")
    return RoiReduction.from_voxels({subject: model.voxels[column].astype(str).to_numpy()
                                     for subject, model in models.items()})


def parquet_bytes(table: pa.Table) -> bytes:
    """``table`` as Parquet, dictionary-encoding only the ``subject`` column: dictionaries of float (or unique-id)
    columns only grow until Parquet gives up on them, so they cost time and space (a 2048-row part of 1,358 float32
    voxels: 2.4× faster to write, 2× faster to read and 5% smaller without; at 32 rows, 33% smaller)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, use_dictionary=["subject"] if "subject" in table.column_names else False)
    return sink.getvalue()


class PartWriter:
    """Writes one part's outputs from its features (in a PartEncoder actor).

    ``write`` decides what is computed: the voxel predictions only with ``"voxels"``; the ROI means through the
    reduction folded into the predictor (never through the voxels), so they are the same numbers with or without
    the voxel output.
    """

    def __init__(self, predictor: Any, write: Sequence[str] = DEFAULT_OUTPUTS,
                 predictions_dtype: str = DEFAULT_PREDICTION_DTYPE,
                 voxel_rois: RoiReduction | Mapping[str, Iterable[Any]] | None = None):
        """
        Args:
            predictor: the :class:`~berg_ray.encoding_model.StackedPredictor` of the output's subjects.
            write: outputs to write (:data:`~berg_ray.reductions.OUTPUT_KINDS`).
            predictions_dtype: element type of the voxel output.
            voxel_rois: the reduction (:func:`model_reduction`), or subject -> ROI label of each voxel (prediction
                column order); needed for ``"rois"``.
        """
        self.write = check_output_options(write, predictions_dtype)
        self.predictions_dtype = predictions_dtype
        self.predictor = predictor
        self.subjects = list(predictor.slices)
        self.folded = None
        if "rois" in self.write:
            if voxel_rois is None:
                raise InvalidInputError("the ROI output needs each subject's voxel ROI labels (voxel_rois)")
            self.reduction = (voxel_rois if isinstance(voxel_rois, RoiReduction)
                              else RoiReduction.from_voxels(voxel_rois))
            self.folded = self.reduction.fold(predictor)

    def write_part(self, out: FileRoot, part_id: str, rows: Sequence[Mapping[str, Any]],
                   features: np.ndarray) -> dict[str, Any]:
        """Write the outputs of one part's good ``rows`` (``sentence_id``, ``sentence``) from their (n, n_units)
        ``features``.

        Returns:
            ``{"files": {name: bytes}, "rows": {name: rows}}``, plus ``"rounding": {"max_abs_error",
            "max_abs_value"}`` (measured) when the voxel output is float16.
        """
        n = len(rows)
        ids = pa.array([r["sentence_id"] for r in rows], type=pa.string())
        tables: dict[str, pa.Table] = {}
        result: dict[str, Any] = {}
        if "voxels" in self.write:
            predicted = self.predictor.predict(features)
            if self.predictions_dtype == "float16":
                predicted, error, largest = round_to_float16(predicted)
                result["rounding"] = {"max_abs_error": error, "max_abs_value": largest}
            value_type = pa.float16() if self.predictions_dtype == "float16" else pa.float32()
            for subject, (lo, hi) in self.predictor.slices.items():
                block = np.ascontiguousarray(predicted[:, lo:hi]).reshape(-1)
                tables[f"predictions/subject-{subject}/part-{part_id}.parquet"] = pa.table({
                    "sentence_id": ids,
                    "subject": pa.array([subject] * n, type=pa.string()),
                    "responses": pa.FixedSizeListArray.from_arrays(pa.array(block, type=value_type), hi - lo),
                })
        if self.folded is not None:
            means = self.folded.predict(features)  # (n, subjects, columns)
            columns = {"sentence_id": pa.array([r["sentence_id"] for r in rows] * len(self.subjects),
                                               type=pa.string()),
                       "subject": pa.array(np.repeat(self.subjects, n).tolist(), type=pa.string())}
            by_subject = means.transpose(1, 0, 2).reshape(len(self.subjects) * n, -1)  # subject-major rows
            for k, name in enumerate(self.folded.columns):
                columns[name] = pa.array(np.ascontiguousarray(by_subject[:, k]), type=pa.float32())
            tables[f"rois/part-{part_id}.parquet"] = pa.table(columns)
        tables[f"sentences/part-{part_id}.parquet"] = pa.table({
            "sentence_id": ids, "sentence": pa.array([r["sentence"] for r in rows], type=pa.string())})
        files, counts = {}, {}
        for name, table in tables.items():
            data = parquet_bytes(table)
            out.write(out.path(name), data, durable=False)  # sizes go into the part's marker (fsynced) and are checked
            files[name], counts[name] = len(data), table.num_rows
        return {**result, "files": files, "rows": counts}


def tally_outputs(markers: Sequence[Mapping[str, Any]], sizes: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """Per output kind: files, bytes (from the folder listings ``sizes``: folder -> file name -> size) and rows
    (from the markers, whose sizes were checked against those listings), over the planned parts' ``markers``."""
    tally: dict[str, dict[str, int]] = {}
    for marker in markers:
        for name in marker["files"]:
            folder, _, base = name.rpartition("/")
            kind = kind_of(name)
            entry = tally.setdefault(kind, {"files": 0, "bytes": 0, "rows": 0})
            entry["files"] += 1
            entry["bytes"] += int(sizes[folder][base])
            entry["rows"] += int(marker["n_bad"]) if kind == "bad_rows" else int(marker["rows"][name])
    return tally


def manifest_outputs(outputs: Sequence[str], output_dtype: str | None, markers: Sequence[Mapping[str, Any]],
                     sizes: Mapping[str, Mapping[str, int]], reduction: RoiReduction | None) -> dict[str, Any]:
    """The manifest's record of the outputs: ``outputs`` (kind -> files, bytes, rows; every requested kind, zeros
    when nothing was written), ``predictions_dtype``, ``rounding`` (float16: the measured largest absolute rounding
    error, the largest magnitude and the stated bound) and ``rois`` (the ROI output's value columns)."""
    tally = tally_outputs(markers, sizes)
    record: dict[str, Any] = {
        "outputs": {kind: tally.get(kind, {"files": 0, "bytes": 0, "rows": 0}) for kind in outputs},
        "predictions_dtype": output_dtype,
    }
    if output_dtype == "float16":
        rounding = [m["rounding"] for m in markers if m.get("rounding")]
        record["rounding"] = {
            "max_abs_error": max((r["max_abs_error"] for r in rounding), default=0.0),
            "max_abs_value": max((r["max_abs_value"] for r in rounding), default=0.0),
            "bound": f"|float16 - float32| <= max({FLOAT16_UNIT_ROUNDOFF:g} * |value|, "
                     f"{FLOAT16_SUBNORMAL_HALF_STEP:g}) per value (round to nearest, 11-bit significand)",
        }
    if reduction is not None and "rois" in outputs:
        record["rois"] = list(reduction.columns)
    return record


# --------------------------------------------------------------------------------------------------------------
# Reading a finished output


def read_manifest(out: FileRoot) -> dict[str, Any]:
    """The manifest of a finished output.

    Raises:
        InvalidInputError: no ``_manifest.json`` (not finished: rerun encode_corpus, it resumes), or one written
            before the output recorded its outputs and sentences (encode it again with overwrite=True).
    """
    try:
        manifest = json.loads(out.read(out.path("_manifest.json")))
    except FileNotFoundError:
        raise InvalidInputError(f"{out.url!r} holds no finished corpus output (no _manifest.json); run encode_corpus "
                                "into it (it resumes) before reading") from None
    if "outputs" not in manifest or "parts" not in manifest:
        raise InvalidInputError(f"{out.url!r} was written by an older berg-ray (its manifest records no outputs); "
                                "encode it again with overwrite=True")
    return manifest


def read_plan(out: FileRoot, manifest: Mapping[str, Any]) -> pd.DataFrame:
    """``parts.parquet``: the planned parts in input order (part_id, source, path, row_start, n_rows, n_written,
    n_bad)."""
    return pq.read_table(io.BytesIO(out.read(out.path(manifest["parts"])))).to_pandas()


def read_part_table(out: FileRoot, name: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet file of the output (``name`` relative to it), optionally only some columns."""
    return pq.read_table(io.BytesIO(out.read(out.path(name))), columns=list(columns) if columns else None)


def manifest_roi_column(manifest: Mapping[str, Any]) -> str | None:
    """The neuroid column of ``voxels.parquet`` holding the output's ROI labels (``None``: no ROIs); manifests
    written before outputs recorded it are Pereira outputs: ``"roi"``."""
    return manifest["roi_column"] if "roi_column" in manifest else "roi"


def read_reduction(out: FileRoot, manifest: Mapping[str, Any], subjects: Sequence[str]) -> RoiReduction:
    """The network/ROI reduction of a finished output's ``subjects``, from ``voxels.parquet`` (prediction column
    order = ``voxel_index``) and the manifest's ROI column."""
    column = manifest_roi_column(manifest)
    voxels = read_part_table(out, "voxels.parquet").to_pandas()
    if column is not None and column not in voxels:
        raise InvalidInputError(f"{out.url!r}: voxels.parquet has no {column!r} column (the manifest's ROI column); "
                                "the output is damaged (encode it again)")
    rows = {subject: voxels[voxels["subject"] == subject].sort_values("voxel_index") for subject in subjects}
    if column is None:
        return RoiReduction.network_only({subject: len(table) for subject, table in rows.items()})
    return RoiReduction.from_voxels({subject: table[column].astype(str).to_numpy() for subject, table in rows.items()})


def read_rois(output: str, subject: str | None = None) -> pd.DataFrame:
    """The ROI output of a finished corpus output, in input order: one row per (sentence, subject) — sentence_id,
    subject, network, one float32 column per ROI — for every subject or only ``subject``.

    Raises:
        InvalidInputError: no finished output, no ROI output in it (encoded without ``write=("rois", ...)``), or a
            subject it does not hold.
    """
    out = FileRoot(output)
    manifest = read_manifest(out)
    if "rois" not in manifest["outputs"]:
        raise InvalidInputError(f"{output!r} holds no ROI output (encoded with write={list(manifest['outputs'])}); "
                                "encode it with write=('voxels', 'rois') or reduce read_predictions yourself")
    if subject is not None and subject not in manifest["subjects"]:
        raise InvalidInputError(f"no ROI output for subject {subject!r} in {output!r}; it holds "
                                f"{', '.join(manifest['subjects'])}")
    plan = read_plan(out, manifest)
    frames = []
    for part, n_written in zip(plan["part_id"], plan["n_written"]):
        if n_written:
            frame = read_part_table(out, f"rois/part-{part}.parquet").to_pandas()
            frames.append(frame if subject is None else frame[frame["subject"] == subject])
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object if name in ("sentence_id", "subject") else np.float32)
                             for name in ("sentence_id", "subject", *manifest["rois"])})
    return pd.concat(frames, ignore_index=True)
