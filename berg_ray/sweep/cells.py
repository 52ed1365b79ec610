"""Finished cells of a sweep: one row of the per-cell table each, stored so that a rerun can read instead of redo.

Layout under the output root (a local folder or ``s3://…``; every write through :class:`berg_ray.fsio.FileRoot`,
so atomic): ``cells/<cell-id>.json`` (the row) and ``voxel_r/<cell-id>.npz`` (per-voxel r, neuroid ids, ROIs and,
for per-split protocols, the per-split r; plain arrays, loaded with ``allow_pickle=False``). The arrays are written
first and the row last, so a row exists only once everything it points to does.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import logging
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from berg_ray.fsio import FileRoot
from berg_ray.neural import PereiraAssembly
from berg_ray.scoring import summarize_voxel_r
from berg_ray.sweep.grid import Cell, SkippedRow
from berg_ray.sweep.protocols import VoxelScores

logger = logging.getLogger(__name__)

#: the per-cell table's columns, in order (per-ROI columns ``roi_<ROI>`` follow ``mean_r``)
COLUMNS: tuple[str, ...] = (
    "dataset", "model", "hub_id", "layer", "layer_index", "n_layers", "mapped_layer", "context", "subject", "protocol",
    "cv", "status", "reason", "n_voxels", "median_r", "mean_r", "fit_seconds", "features_seconds", "from_cache",
    "dataset_sha256", "synthetic", "cell_id", "voxel_r_file", "cache_key", "computed_at",
)
_NAN = float("nan")


@dataclass
class CellRow:
    """One row of the per-cell table (the columns of :data:`COLUMNS`; ``roi_median_r`` becomes ``roi_<ROI>``)."""

    model: str
    hub_id: str
    layer: str | None
    context: str | None
    subject: str | None
    protocol: str
    status: str  # "ok", "failed" or "skipped"
    dataset_sha256: str
    synthetic: bool
    reason: str = ""
    dataset: str | None = None  # the dataset's label in the sweep (None: a row for every dataset)
    cv: str | None = None  # the held-out splits the cell was scored with (e.g. "GroupKFold(10) by story")
    layer_index: int | None = None
    n_layers: int | None = None
    mapped_layer: bool | None = None
    n_voxels: int | None = None
    median_r: float | None = _NAN
    mean_r: float | None = _NAN
    roi_median_r: dict[str, float | None] = field(default_factory=dict)
    fit_seconds: float | None = _NAN
    features_seconds: float | None = _NAN
    from_cache: bool = False
    cell_id: str | None = None
    voxel_r_file: str | None = None
    cache_key: str | None = None
    computed_at: str | None = None

    @classmethod
    def for_cell(cls, cell: Cell, protocol: str, assembly: PereiraAssembly, status: str, reason: str = "",
                 cv: str | None = None) -> CellRow:
        """The row of a grid cell on ``assembly`` (its dataset), scored with the splits ``cv`` describes."""
        return cls(model=cell.spec.model_id, hub_id=cell.spec.source, layer=cell.layer.name, context=cell.context,
                   subject=cell.subject, protocol=protocol, status=status, reason=reason,
                   dataset_sha256=assembly.sha256, synthetic=assembly.synthetic, layer_index=cell.layer.index,
                   n_layers=cell.layer.n_layers, mapped_layer=cell.mapped_layer, cell_id=cell.cell_id,
                   dataset=cell.dataset, cv=cv)

    @classmethod
    def skipped(cls, row: SkippedRow, protocol: str, assembly: PereiraAssembly | None, dataset: str | None = None
                ) -> CellRow:
        """The row of a skipped model, layer or context: ``assembly`` and ``dataset`` (its label) are the dataset it
        is skipped for (``None``: a row for every dataset of the sweep)."""
        return cls(model=row.model, hub_id=row.hub_id, layer=row.layer, context=row.context, subject=None,
                   protocol=protocol, status=row.status, reason=row.reason,
                   dataset_sha256=assembly.sha256 if assembly is not None else "",
                   synthetic=bool(assembly is not None and assembly.synthetic), dataset=dataset)

    def record(self) -> dict[str, Any]:
        """The row as one flat record (``roi_<ROI>`` keys for the ROI medians)."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "roi_median_r"}
        record.update({f"roi_{roi}": value for roi, value in self.roi_median_r.items()})
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CellRow:
        names = {f.name for f in dataclasses.fields(cls)} - {"roi_median_r"}
        rois = {key.removeprefix("roi_"): value for key, value in record.items() if key.startswith("roi_")}
        return cls(**{key: value for key, value in record.items() if key in names}, roi_median_r=rois)


@dataclass
class CellScore:
    """What a scoring task sends back: the row's score fields and the per-voxel arrays to store."""

    n_voxels: int
    median_r: float
    mean_r: float
    roi_median_r: dict[str, float]
    fit_seconds: float
    cache_key: str | None
    arrays: dict[str, np.ndarray]

    @classmethod
    def from_scores(cls, scores: VoxelScores, voxels: pd.DataFrame, fit_seconds: float) -> CellScore:
        """Summaries (median, mean, per-ROI median) and the arrays of one subject's voxel scores.

        Args:
            voxels: the subject's voxel table (``neuroid_id``, ``roi``), one row per entry of ``scores.voxel_r``.
        """
        summary = summarize_voxel_r(scores.voxel_r, voxels.get("roi"), scores.split_r)
        arrays = {"r": np.asarray(scores.voxel_r, dtype=np.float64),
                  "neuroid_id": np.asarray(voxels["neuroid_id"].astype(str).to_numpy(), dtype=str)}
        if "roi" in voxels:
            arrays["roi"] = np.asarray(voxels["roi"].astype(str).to_numpy(), dtype=str)
        if scores.split_r is not None:
            arrays["split_r"] = np.asarray(scores.split_r, dtype=np.float64)
        return cls(n_voxels=len(scores.voxel_r), median_r=summary["median_r"], mean_r=summary["mean_r"],
                   roi_median_r=summary["roi_median_r"], fit_seconds=fit_seconds, cache_key=scores.cache_key,
                   arrays=arrays)

    def fill(self, row: CellRow, **extra: Any) -> CellRow:
        """``row`` with this score's fields (and ``extra`` fields) set."""
        return dataclasses.replace(row, n_voxels=self.n_voxels, median_r=self.median_r, mean_r=self.mean_r,
                                   roi_median_r=dict(self.roi_median_r), fit_seconds=self.fit_seconds,
                                   cache_key=self.cache_key, **extra)


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    clean = {}
    for key, value in record.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            value = None
        clean[key] = value
    return clean


class CellStore:
    """The finished cells (and the other outputs) of a sweep under one root, local or ``s3://``."""

    CELLS = "cells"
    VOXEL_R = "voxel_r"

    def __init__(self, out: str | os.PathLike):
        self.root = FileRoot(out)

    def __repr__(self) -> str:
        return f"CellStore({self.root.url!r})"

    def url(self, relative: str) -> str:
        """Where ``relative`` lives, as a path or URL a user can open."""
        return f"{self.root.url.rstrip('/')}/{relative}"

    def write_file(self, relative: str, data: bytes) -> str:
        """Write one output file atomically; returns its :meth:`url`."""
        self.root.write(self.root.path(relative), data)
        return self.url(relative)

    def read_file(self, relative: str) -> bytes:
        return self.root.read(self.root.path(relative))

    def write(self, row: CellRow, arrays: dict[str, np.ndarray] | None) -> None:
        """Store a finished (or failed) cell: its arrays first, its row last (sets ``voxel_r_file`` and
        ``computed_at`` on ``row``)."""
        if arrays is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            row.voxel_r_file = f"{self.VOXEL_R}/{row.cell_id}.npz"
            self.write_file(row.voxel_r_file, buffer.getvalue())
        row.computed_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.write_file(f"{self.CELLS}/{row.cell_id}.json", json.dumps(_jsonable(row.record()), indent=1).encode())

    def finished(self, cell_ids: Iterable[str]) -> dict[str, CellRow]:
        """The rows of the given cells that finished (status ``ok``, voxel file present); missing, unreadable and
        failed cells are left out (they are to be redone). One listing of each folder, then one read per cell."""
        written = set(self.root.listdir(self.root.path(self.CELLS)))
        voxel_files = set(self.root.listdir(self.root.path(self.VOXEL_R)))
        rows: dict[str, CellRow] = {}
        for cell_id in cell_ids:
            if f"{cell_id}.json" not in written:
                continue
            relative = f"{self.CELLS}/{cell_id}.json"
            try:
                row = CellRow.from_record(json.loads(self.read_file(relative)))
            except (OSError, ValueError, TypeError):
                logger.warning("ignoring unreadable cell file %s (it will be recomputed)", self.url(relative))
                continue
            if row.status != "ok" or row.cell_id != cell_id:
                continue
            if row.voxel_r_file and posixpath.basename(row.voxel_r_file) not in voxel_files:
                continue
            rows[cell_id] = row
        return rows

    def voxel_arrays(self, relative: str) -> dict[str, np.ndarray]:
        """The per-voxel arrays a row's ``voxel_r_file`` points to."""
        with np.load(io.BytesIO(self.read_file(relative)), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
