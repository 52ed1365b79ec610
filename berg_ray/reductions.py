"""Fixed linear reductions of voxel predictions — per-subject network and ROI means — and the float16 rounding of
the voxel output (pure numerics: no I/O, no Ray).

The ROI output of a corpus is one row per (sentence, subject): ``network`` (the mean over all that subject's voxels)
and one column per ROI (the mean over that ROI's voxels). It is a fixed linear map of the predictions: a block-
diagonal (total_voxels × n_subjects·(1 + n_rois)) averaging matrix ``W`` (:meth:`RoiReduction.matrix`). Folded into
the :class:`~berg_ray.encoding_model.StackedPredictor`'s factored map — the mean over voxels of ``S Q_s + b_s`` is
``S (Q_s W_s) + b_s W_s`` — it costs a (sum of ranks × outputs) product per sentence instead of predicting every voxel
(:meth:`RoiReduction.fold`), so ``write=("rois",)`` never computes the voxels at all.

"Voxel" here means any neuroid of the dataset, and the ROI labels come from the neuroid coordinate its layout names
(:attr:`~berg_ray.dataset_layouts.DatasetLayout.roi_coord`):

- Pereira2018: ``network`` = mean over a subject's voxels; ROIs = the ``roi`` column (voxel means per ROI).
- Tuckute2024.language: one neuroid, the left-hemisphere language network's response (``roi`` ``lang_LH_netw``):
  ``network`` is that neuroid, and so is the one ROI ``lang_LH_netw`` (the same numbers).
- Blank2014.fROI: ``network`` = mean over a subject's 12 language fROIs; ROIs = ``fROI_area`` (each fROI is one
  neuroid, so an ROI column is that fROI's own prediction).
- Fedorenko2016.language: ``network`` = mean over a subject's electrodes; no ROIs (electrodes carry no grouping:
  :meth:`RoiReduction.network_only`), so the ROI output has the ``network`` column alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_ray.errors import InvalidInputError

#: what ``encode_corpus(write=...)`` can write (besides the sentences and bad rows, always written)
OUTPUT_KINDS: tuple[str, ...] = ("voxels", "rois")
DEFAULT_OUTPUTS: tuple[str, ...] = ("voxels",)
#: element types of the voxel output (``predictions_dtype``)
PREDICTION_DTYPES: tuple[str, ...] = ("float32", "float16")
DEFAULT_PREDICTION_DTYPE = "float32"
#: the column of the whole-network mean in the ROI output (no ROI may carry this name, nor the key columns')
NETWORK = "network"
RESERVED_COLUMNS: tuple[str, ...] = ("sentence_id", "subject", NETWORK)
#: float16 rounding to nearest: |error| ≤ 2^-11·|value| in the normal range (|value| ≥ 2^-14), ≤ 2^-25 below it
FLOAT16_UNIT_ROUNDOFF = 2.0 ** -11
FLOAT16_SUBNORMAL_HALF_STEP = 2.0 ** -25
FLOAT16_MAX = float(np.finfo(np.float16).max)


def check_output_options(write: Any, predictions_dtype: Any, cli: bool = False) -> tuple[str, ...]:
    """``write`` in canonical order (:data:`OUTPUT_KINDS` order, no repeats) after checking both options.

    Args:
        write: one output name or an iterable of them (``"voxels"``, ``"rois"``); at least one.
        predictions_dtype: ``"float32"`` or ``"float16"``; float16 only with the voxel output (it is the voxel
            output's element type).
        cli: name the options as the command line spells them (``--write``, ``--predictions-dtype``).

    Raises:
        InvalidInputError: an unknown or missing output, or an unknown dtype, or float16 without voxels.
    """
    write_name, dtype_name = ("--write", "--predictions-dtype") if cli else ("write", "predictions_dtype")
    items = [write] if isinstance(write, str) else write
    try:
        items = list(items)
    except TypeError:
        raise InvalidInputError(f"{write_name} must be one of {', '.join(OUTPUT_KINDS)} or a list of them, got "
                                f"{write!r}") from None
    unknown = [item for item in items if item not in OUTPUT_KINDS]
    if unknown or not items:
        raise InvalidInputError(f"{write_name} must name at least one output among {', '.join(OUTPUT_KINDS)}, got "
                                f"{write!r}" + (f" (unknown: {', '.join(map(repr, unknown))})" if unknown else ""))
    if predictions_dtype not in PREDICTION_DTYPES:
        raise InvalidInputError(f"{dtype_name} must be one of {', '.join(PREDICTION_DTYPES)}, got "
                                f"{predictions_dtype!r}")
    if predictions_dtype != DEFAULT_PREDICTION_DTYPE and "voxels" not in items:
        raise InvalidInputError(f"{dtype_name}={predictions_dtype} sets the element type of the voxel output, but "
                                f"{write_name} {write!r} does not write it (the ROI output is always float32); add "
                                "'voxels' or drop the option")
    return tuple(kind for kind in OUTPUT_KINDS if kind in items)


@dataclass(frozen=True)
class RoiReduction:
    """Per-subject averaging weights: voxel predictions -> (network, ROI 1, ..., ROI R) means.

    Attributes:
        rois: the ROI names (sorted union over subjects, as in the ``roi`` column of ``voxels.parquet``).
        weights: subject -> (n_voxels_s, 1 + n_rois) float64; column 0 averages every voxel, column 1 + r the
            voxels of ``rois[r]`` (a column of zeros when the subject has none there).
        present: subject -> (1 + n_rois,) bool, False where the subject has no voxels in that ROI (its value is NaN).
    """

    rois: tuple[str, ...]
    weights: dict[str, np.ndarray]
    present: dict[str, np.ndarray]

    @property
    def subjects(self) -> list[str]:
        return list(self.weights)

    @property
    def columns(self) -> tuple[str, ...]:
        """The value columns of the ROI output: ``("network", *rois)``."""
        return (NETWORK, *self.rois)

    @classmethod
    def from_voxels(cls, voxel_rois: Mapping[str, Iterable[Any]]) -> RoiReduction:
        """From subject -> the ROI label of each voxel, in prediction column order (``EncodingModel.voxels["roi"]``
        or a subject's rows of ``voxels.parquet``). Labels are compared as strings (as ``voxels.parquet`` stores
        them).

        Raises:
            InvalidInputError: a subject without voxels, or an ROI named like a column of the ROI output.
        """
        labels = {subject: np.asarray([str(label) for label in rois], dtype=object)
                  for subject, rois in voxel_rois.items()}
        names = tuple(sorted({label for values in labels.values() for label in values}))
        clashes = sorted(set(names) & set(RESERVED_COLUMNS))
        if clashes:
            raise InvalidInputError(f"ROI name(s) {', '.join(map(repr, clashes))} clash with the ROI output's columns "
                                    f"{', '.join(RESERVED_COLUMNS)}; rename them in the dataset")
        weights, present = {}, {}
        for subject, values in labels.items():
            if values.size == 0:
                raise InvalidInputError(f"subject {subject!r} has no voxels: it has no network or ROI mean")
            member = np.column_stack([np.ones(values.size, dtype=bool), *(values == name for name in names)])
            counts = member.sum(axis=0)
            weights[subject] = member / np.maximum(counts, 1)
            present[subject] = counts > 0
        return cls(names, weights, present)

    @classmethod
    def network_only(cls, n_voxels: Mapping[str, int]) -> RoiReduction:
        """No ROIs: the network mean alone, from subject -> number of voxels (neuroids) in prediction column order
        (a dataset whose layout has no ROI coordinate, as Fedorenko2016's electrodes).

        Raises:
            InvalidInputError: a subject without voxels.
        """
        weights, present = {}, {}
        for subject, count in n_voxels.items():
            if int(count) < 1:
                raise InvalidInputError(f"subject {subject!r} has no voxels: it has no network mean")
            weights[subject] = np.full((int(count), 1), 1.0 / int(count))
            present[subject] = np.ones(1, dtype=bool)
        return cls((), weights, present)

    def matrix(self) -> np.ndarray:
        """The whole reduction as one block-diagonal (total_voxels × n_subjects·(1 + n_rois)) float64 matrix:
        ``predictions @ matrix()`` gives every subject's columns side by side (subjects in order; absent ROIs 0)."""
        n_columns = len(self.columns)
        total = sum(w.shape[0] for w in self.weights.values())
        out = np.zeros((total, n_columns * len(self.weights)))
        row = 0
        for k, w in enumerate(self.weights.values()):
            out[row: row + w.shape[0], k * n_columns: (k + 1) * n_columns] = w
            row += w.shape[0]
        return out

    def reduce(self, subject: str, responses: np.ndarray) -> np.ndarray:
        """One subject's (n_sentences, n_voxels) predictions -> (n_sentences, 1 + n_rois) float64 means (NaN where
        the subject has no voxels in an ROI)."""
        weights = self.weights[subject]
        responses = np.asarray(responses)
        if responses.ndim != 2 or responses.shape[1] != weights.shape[0]:
            raise InvalidInputError(f"predictions of subject {subject!r} must have shape (n_sentences, "
                                    f"{weights.shape[0]}), got {responses.shape}")
        reduced = responses.astype(np.float64, copy=False) @ weights
        reduced[:, ~self.present[subject]] = np.nan
        return reduced

    def fold(self, predictor: Any) -> FoldedReduction:
        """The reduction folded into ``predictor`` (a :class:`~berg_ray.encoding_model.StackedPredictor` of the same
        subjects in the same order): features -> means without predicting any voxel."""
        if list(predictor.slices) != self.subjects:
            raise InvalidInputError(f"the predictor's subjects {list(predictor.slices)} differ from the reduction's "
                                    f"{self.subjects}")
        n_columns = len(self.columns)
        ranks = [loading.shape[0] for loading in predictor.loadings]
        maps = np.zeros((sum(ranks), n_columns * len(ranks)))
        offset = np.zeros(n_columns * len(ranks))
        start = 0
        for k, ((subject, (lo, hi)), loading) in enumerate(zip(predictor.slices.items(), predictor.loadings)):
            weights = self.weights[subject]
            if weights.shape[0] != hi - lo:
                raise InvalidInputError(f"subject {subject!r}: the predictor has {hi - lo} voxels, the reduction "
                                        f"{weights.shape[0]}")
            # the float32 loadings and bias the voxel predictions use, in float64: the means of exactly that map
            maps[start: start + ranks[k], k * n_columns: (k + 1) * n_columns] = loading.astype(np.float64) @ weights
            offset[k * n_columns: (k + 1) * n_columns] = predictor.bias[lo:hi].astype(np.float64) @ weights
            start += ranks[k]
        absent = ~np.concatenate([self.present[s] for s in predictor.slices])
        return FoldedReduction(predictor.reducer, maps, offset, absent, self.subjects, self.columns)


@dataclass(frozen=True)
class FoldedReduction:
    """Network and ROI means straight from features: ``((X R) M + c)`` with the predictor's float32 ``R`` and the
    folded float64 ``M = blockdiag(Q_s W_s)``, ``c = [b_s W_s]``.

    Attributes:
        reducer: (n_units, sum of ranks) float32, the predictor's ``R``.
        maps: (sum of ranks, n_subjects·n_columns) float64.
        offset: (n_subjects·n_columns,) float64.
        absent: (n_subjects·n_columns,) bool: ROIs a subject has no voxels in (NaN).
        subjects, columns: the output's subjects and value columns (``network``, ROIs).
    """

    reducer: np.ndarray
    maps: np.ndarray
    offset: np.ndarray
    absent: np.ndarray
    subjects: Sequence[str]
    columns: Sequence[str]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n_sentences, n_units) features -> (n_sentences, n_subjects, n_columns) float32 means (NaN: absent ROI).

        The scores ``X R`` are computed as :meth:`StackedPredictor.predict` computes them (float32), the rest in
        float64, so the result equals the mean of the voxel predictions to their float32 rounding.
        """
        scores = np.asarray(features).astype(np.float32, copy=False) @ self.reducer
        reduced = scores.astype(np.float64) @ self.maps + self.offset
        reduced[:, self.absent] = np.nan
        return reduced.astype(np.float32).reshape(len(scores), len(self.subjects), len(self.columns))


def round_to_float16(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``values`` (float32, any shape) rounded to float16, with the measured largest absolute rounding error and the
    largest magnitude (the stated bound is ``max(2^-11·|value|, 2^-25)`` per value).

    Raises:
        InvalidInputError: a finite value beyond float16's range (±65504): it would become ±inf.
    """
    values = np.asarray(values, dtype=np.float32)
    if values.size == 0:
        return values.astype(np.float16), 0.0, 0.0
    largest = float(np.nanmax(np.abs(values)))
    if largest > FLOAT16_MAX:
        raise InvalidInputError(f"a prediction of magnitude {largest:.6g} exceeds float16's range (±{FLOAT16_MAX:g}); "
                                "write the voxel output as predictions_dtype='float32'")
    rounded = values.astype(np.float16)
    error = float(np.nanmax(np.abs(rounded.astype(np.float32) - values)))  # exact: both are float32 numbers
    return rounded, error, largest
