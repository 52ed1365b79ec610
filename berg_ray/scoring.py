"""Scores of encoding models: BrainScore's ``linear_pearsonr`` and ``ridge_pearsonr`` protocols and per-voxel
summaries. Pure numpy/sklearn.

:func:`brainscore_linear_score` reproduces the raw score of brainscore-language's
``Pereira2018.384sentences-linear-shuffle`` benchmark (``load_metric('linear_pearsonr', crossvalidation_kwargs=
dict(splits=10, train_size=0.9, kfold=False, random_state=1))``) without xarray. What brainscore does, step by step
(``brainscore_language/utils/transformations.py`` and ``metrics/linear_predictivity/metric.py``, 2.3.0):

1. splits: ``ShuffleSplit(n_splits=10, train_size=0.9, test_size=None, random_state=1)`` over the presentations of
   the *neural* assembly in its own order (split coord ``stimulus_id``, no stratification, no grouping);
2. each split: the model features and the responses of the training stimuli, both sorted by ``stimulus_id`` (string
   order), fit ``sklearn.linear_model.LinearRegression()``; predict the test stimuli;
3. per-voxel Pearson r between prediction and responses of the test stimuli, sorted by ``stimulus_id``, computed as
   ``sum(xm / (|xm| + 1e-8) * ym / (|ym| + 1e-8))`` (brainscore's batched ``pearsonr``, with its epsilon);
4. aggregation: per split, the **median over all neuroids** (the nine subjects' voxels pooled, no per-subject step);
   then the **mean over splits**. That number is the benchmark's ``score.attrs['raw']`` (before ceiling
   normalisation).

The arithmetic runs in the dtype of the inputs, as brainscore's does (model features are float32), so the same
arrays give the same numbers. Features must come from the benchmark's passage context (each passage digested
separately, context within the passage): ``extract_features(..., context='passage', passages=passage_label)``.

:func:`brainscore_ridge_score` reproduces the raw score of ``Pereira2018.384sentences-ridge`` (``ridge_pearsonr``
with ``crossvalidation_kwargs=dict(split_coord='story', kfold='group', random_state=1234)``), step by step:

1. splits: ``GroupKFold(n_splits=10, shuffle=True, random_state=1234)`` over the neural assembly's presentations in
   its own order, grouped by ``story`` (a story's sentences are never split between train and test);
2. each split: ``RidgeGCVTorch(alphas=np.logspace(-3, 3, 7))`` on the training stimuli sorted by ``stimulus_id``:
   sklearn's efficient leave-one-out ridge (``_RidgeGCV``) ported to torch, in float64, with an intercept and **one
   alpha for all targets** (the alpha of least mean squared leave-one-out error over every voxel of every subject).
   Here it is ``sklearn.linear_model.RidgeCV`` with the same alphas on float64 arrays, the code that port copies
   (equal predictions to ~1e-14);
3. and 4. as for the linear metric: brainscore's ``pearsonr`` per voxel on the test stimuli, median over the pooled
   neuroids per split, mean over splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_ray.errors import InvalidInputError

#: the ``crossvalidation_kwargs`` of brainscore's Pereira2018 ``-linear-shuffle`` benchmarks
BRAINSCORE_CV: dict[str, Any] = {"splits": 10, "train_size": 0.9, "kfold": False, "random_state": 1}
#: the epsilon brainscore's batched ``pearsonr`` adds to each norm
PEARSON_EPSILON = 1e-8
#: the ``crossvalidation_kwargs`` of brainscore's Pereira2018 ``-ridge`` benchmarks (10 folds: brainscore's default)
BRAINSCORE_RIDGE_CV: dict[str, Any] = {"splits": 10, "split_coord": "story", "kfold": "group", "random_state": 1234}
#: the alphas of ``ridge_pearsonr``'s ``RidgeGCVTorch(alphas=np.logspace(-3, 3, 7))``
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(alpha) for alpha in np.logspace(-3, 3, 7))


def shuffle_splits(n_samples: int, n_splits: int = 10, train_size: float = 0.9, random_state: int = 1
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """brainscore's splits: ``ShuffleSplit(n_splits, train_size=train_size, test_size=None, random_state)``.

    Returns:
        list of ``(train, test)`` index arrays into the ``n_samples`` presentations of the neural assembly.
    """
    from sklearn.model_selection import ShuffleSplit

    splitter = ShuffleSplit(n_splits=n_splits, train_size=train_size, test_size=None, random_state=random_state)
    return list(splitter.split(np.zeros(n_samples)))


def brainscore_pearsonr(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-column Pearson r exactly as brainscore's batched ``pearsonr`` (norms + 1e-8; 0, not NaN, if constant).

    Args:
        prediction: array of shape (n_samples, n_targets).
        target: array of shape (n_samples, n_targets).

    Returns:
        array of shape (n_targets,).
    """
    import scipy.linalg

    xm = prediction - prediction.mean(axis=0, keepdims=True)
    ym = target - target.mean(axis=0, keepdims=True)
    norm_x = scipy.linalg.norm(xm, axis=0, keepdims=True) + PEARSON_EPSILON
    norm_y = scipy.linalg.norm(ym, axis=0, keepdims=True) + PEARSON_EPSILON
    return ((xm / norm_x) * (ym / norm_y)).sum(axis=0)


def linear_shuffle_split_r(features: np.ndarray, responses: np.ndarray, stimulus_ids: Sequence[Any] | None = None,
                           *, n_splits: int = 10, train_size: float = 0.9, random_state: int = 1) -> np.ndarray:
    """Per-split, per-voxel r of brainscore's ``linear_pearsonr`` metric.

    Args:
        features: array of shape (n_stimuli, n_units), rows aligned with ``responses``.
        responses: array of shape (n_stimuli, n_voxels), rows in the neural assembly's order (the order that
            ShuffleSplit indexes).
        stimulus_ids: the ``stimulus_id`` of each row (brainscore sorts rows by it before fitting and
            correlating); ``None`` keeps the given order.

    Returns:
        array of shape (n_splits, n_voxels): Pearson r of held-out predictions, per split and voxel.
    """
    from sklearn.linear_model import LinearRegression

    features, responses, rank = _checked(features, responses, stimulus_ids)
    n = features.shape[0]
    split_r = np.empty((n_splits, responses.shape[1]), dtype=np.float64)
    for k, (train, test) in enumerate(shuffle_splits(n, n_splits, train_size, random_state)):
        # subset() keeps assembly order, then XarrayRegression / XarrayCorrelation sort by stimulus_id
        train, test = train[np.argsort(rank[train])], test[np.argsort(rank[test])]
        regression = LinearRegression().fit(features[train], responses[train])
        prediction = regression.predict(features[test])
        split_r[k] = brainscore_pearsonr(prediction, responses[test])
    return split_r


def group_kfold_splits(groups: Sequence[Any], n_splits: int = 10, random_state: int = 1234
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """brainscore's ``kfold='group'`` splits: ``GroupKFold(n_splits, shuffle=True, random_state)`` over ``groups``.

    Returns:
        list of ``(train, test)`` index arrays into the presentations (in the neural assembly's order).
    """
    from sklearn.model_selection import GroupKFold

    groups = np.asarray([str(g) for g in groups])
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def _checked(features: np.ndarray, responses: np.ndarray, stimulus_ids: Sequence[Any] | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2-D features and responses with one row per stimulus, and each row's rank in ``stimulus_id`` string order."""
    features = np.asarray(features)
    responses = np.asarray(responses)
    if responses.ndim == 1:
        responses = responses[:, None]
    if features.ndim != 2 or responses.ndim != 2 or features.shape[0] != responses.shape[0]:
        raise InvalidInputError(f"features {features.shape} and responses {responses.shape} must be 2-D with one "
                                "row per stimulus")
    n = features.shape[0]
    if stimulus_ids is None:
        return features, responses, np.arange(n)
    ids = np.asarray([str(s) for s in stimulus_ids])
    if len(ids) != n:
        raise InvalidInputError(f"stimulus_ids has {len(ids)} entries for {n} stimuli")
    if len(np.unique(ids)) != n:
        raise InvalidInputError("stimulus_ids must be unique (brainscore aligns rows by them)")
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(n)
    return features, responses, rank


def ridge_group_split_r(features: np.ndarray, responses: np.ndarray, groups: Sequence[Any],
                        stimulus_ids: Sequence[Any] | None = None, *, n_splits: int = 10, random_state: int = 1234,
                        alphas: Sequence[float] = RIDGE_ALPHAS) -> np.ndarray:
    """Per-split, per-voxel r of brainscore's ``ridge_pearsonr`` metric with GroupKFold-by-story splits.

    The ridge's alpha is chosen once per split for all columns of ``responses`` together (as brainscore's
    ``RidgeGCVTorch``): scoring a subset of voxels is not the same as scoring them with the others.

    Args:
        features: array of shape (n_stimuli, n_units), rows aligned with ``responses``.
        responses: array of shape (n_stimuli, n_voxels), rows in the neural assembly's order (the order GroupKFold
            indexes); for the benchmark's number, every subject's voxels.
        groups: the ``story`` of each row.
        stimulus_ids: the ``stimulus_id`` of each row (training rows are fitted in its order); ``None`` keeps the
            given order.

    Returns:
        array of shape (n_splits, n_voxels): Pearson r of held-out predictions, per split and voxel.
    """
    from sklearn.linear_model import RidgeCV

    features, responses, rank = _checked(features, responses, stimulus_ids)
    if len(groups) != features.shape[0]:
        raise InvalidInputError(f"groups has {len(groups)} entries for {features.shape[0]} stimuli")
    x = features.astype(np.float64)  # RidgeGCVTorch computes in float64
    y = responses.astype(np.float64)
    split_r = np.empty((n_splits, responses.shape[1]), dtype=np.float64)
    for k, (train, test) in enumerate(group_kfold_splits(groups, n_splits, random_state)):
        train, test = train[np.argsort(rank[train])], test[np.argsort(rank[test])]
        regression = RidgeCV(alphas=np.asarray(alphas, dtype=np.float64)).fit(x[train], y[train])
        # r in the responses' own dtype, as brainscore's pearsonr (float32 responses: float32 centring and norms)
        split_r[k] = brainscore_pearsonr(regression.predict(x[test]), responses[test])
    return split_r


def aggregate_split_r(split_r: np.ndarray) -> float:
    """brainscore's aggregation: median over voxels within each split, then mean over splits (NaN ignored).

    Args:
        split_r: array of shape (n_splits, n_voxels); for the benchmark's number, every subject's voxels.
    """
    split_r = np.asarray(split_r, dtype=np.float64)
    return float(np.nanmean(np.nanmedian(split_r, axis=1)))


@dataclass
class LinearShuffleScore:
    """Result of :func:`brainscore_linear_score` and :func:`brainscore_ridge_score`.

    Attributes:
        raw: the benchmark's raw score: mean over splits of the median r over all voxels.
        split_r: array of shape (n_splits, n_voxels), per-split per-voxel r.
        per_split: array of shape (n_splits,), median r over voxels in each split.
        voxel_r: array of shape (n_voxels,), per-voxel r averaged over splits.
        subjects: subject of each voxel (``None`` when scored on a bare response matrix).
    """

    raw: float
    split_r: np.ndarray
    per_split: np.ndarray
    voxel_r: np.ndarray
    subjects: np.ndarray | None = None

    def __float__(self) -> float:
        return self.raw

    def subject_scores(self) -> dict[str, float]:
        """The same aggregation restricted to each subject's voxels: ``{subject: score}``."""
        if self.subjects is None:
            raise InvalidInputError("this score was computed without subject labels")
        return {str(s): aggregate_split_r(self.split_r[:, self.subjects == s]) for s in dict.fromkeys(self.subjects)}


def pooled_responses(assembly_or_responses: Any, subjects: str | Sequence[str] = "all"
                     ) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(assembly or None, responses of shape (n_stimuli, n_pooled_voxels), subject of each column or None).

    An assembly (anything with ``responses(subject)`` and ``n_voxels``) has the chosen subjects' voxels pooled side
    by side; an array is used as it is.
    """
    if hasattr(assembly_or_responses, "responses") and hasattr(assembly_or_responses, "n_voxels"):
        assembly = assembly_or_responses
        chosen = list(assembly.subjects) if isinstance(subjects, str) and subjects == "all" else list(subjects)
        responses = np.concatenate([assembly.responses(s) for s in chosen], axis=1)
        voxel_subjects = np.concatenate([np.full(assembly.n_voxels[s], s, dtype=object) for s in chosen])
        return assembly, responses, voxel_subjects
    return None, np.asarray(assembly_or_responses), None


def brainscore_linear_score(features: np.ndarray, assembly_or_responses: Any, *,
                            stimulus_ids: Sequence[Any] | None = None, subjects: str | Sequence[str] = "all",
                            n_splits: int = 10, train_size: float = 0.9, random_state: int = 1
                            ) -> LinearShuffleScore:
    """Raw score of brainscore's Pereira2018 ``-linear-shuffle`` benchmark for given model features.

    Args:
        features: array of shape (384, n_units): the layer's features of the assembly's sentences **in assembly
            order**, from the passage context (``context='passage'``) to match the benchmark.
        assembly_or_responses: a :class:`berg_ray.neural.PereiraAssembly` (its responses, subjects and stimulus ids
            are used) or an array of shape (384, n_voxels) (then pass ``stimulus_ids``).
        stimulus_ids: one per row; defaults to the assembly's; needed for brainscore's row order.
        subjects: ``"all"`` (the benchmark) or a list of subject ids to pool (assembly input only).

    Returns:
        :class:`LinearShuffleScore`; ``float(score)`` is the raw score.
    """
    assembly, responses, voxel_subjects = pooled_responses(assembly_or_responses, subjects)
    if assembly is not None and stimulus_ids is None:
        stimulus_ids = assembly.stimulus_ids
    split_r = linear_shuffle_split_r(features, responses, stimulus_ids, n_splits=n_splits, train_size=train_size,
                                     random_state=random_state)
    per_split = np.nanmedian(split_r, axis=1)
    return LinearShuffleScore(raw=float(np.nanmean(per_split)), split_r=split_r, per_split=per_split,
                              voxel_r=np.nanmean(split_r, axis=0), subjects=voxel_subjects)


def brainscore_ridge_score(features: np.ndarray, assembly_or_responses: Any, *,
                           stimulus_ids: Sequence[Any] | None = None, stories: Sequence[Any] | None = None,
                           subjects: str | Sequence[str] = "all", n_splits: int = 10, random_state: int = 1234
                           ) -> LinearShuffleScore:
    """Raw score of brainscore's Pereira2018 ``-ridge`` benchmark (``ridge_pearsonr``) for given model features.

    Args:
        features: array of shape (384, n_units): the features of the assembly's sentences **in assembly order**,
            from the passage context (``context='passage'``) to match the benchmark.
        assembly_or_responses: a :class:`berg_ray.neural.PereiraAssembly` (its responses, subjects, stimulus ids and
            stories are used) or an array of shape (384, n_voxels) (then pass ``stimulus_ids`` and ``stories``).
        subjects: ``"all"`` (the benchmark: one alpha per split for all 12,155 voxels) or subject ids whose voxels
            are pooled (assembly input only; the alpha is then chosen for those voxels alone).

    Returns:
        :class:`LinearShuffleScore` (per-split r, per-voxel r, per-subject scores); ``float(score)`` is the raw score.
    """
    assembly, responses, voxel_subjects = pooled_responses(assembly_or_responses, subjects)
    if assembly is not None:
        stimulus_ids = assembly.stimulus_ids if stimulus_ids is None else stimulus_ids
        stories = assembly.stories if stories is None else stories
    if stories is None:
        raise InvalidInputError("brainscore's ridge protocol splits by story: pass stories=[one per row]")
    split_r = ridge_group_split_r(features, responses, stories, stimulus_ids, n_splits=n_splits,
                                  random_state=random_state)
    per_split = np.nanmedian(split_r, axis=1)
    return LinearShuffleScore(raw=float(np.nanmean(per_split)), split_r=split_r, per_split=per_split,
                              voxel_r=np.nanmean(split_r, axis=0), subjects=voxel_subjects)


def summarize_voxel_r(voxel_r: np.ndarray, rois: Sequence[Any] | None = None, split_r: np.ndarray | None = None
                      ) -> dict[str, Any]:
    """Median and mean r over one subject's voxels, and the median within each ROI.

    Args:
        voxel_r: array of shape (n_voxels,): per-voxel r (CV r for PLS; mean over splits for brainscore).
        rois: ROI label of each voxel.
        split_r: array of shape (n_splits, n_voxels): if given, medians follow brainscore's aggregation (median
            within each split, mean over splits) instead of the median of ``voxel_r``.

    Returns:
        ``{"median_r": float, "mean_r": float, "roi_median_r": {roi: float}}``.
    """
    def median(columns: np.ndarray | slice) -> float:
        if split_r is not None:
            return aggregate_split_r(split_r[:, columns])
        values = voxel_r[columns]
        return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")

    voxel_r = np.asarray(voxel_r, dtype=np.float64)
    every = slice(None)
    mean = float(np.nanmean(split_r if split_r is not None else voxel_r)) if voxel_r.size else float("nan")
    roi_medians: dict[str, float] = {}
    if rois is not None:
        labels = np.asarray([str(r) for r in rois])
        for roi in sorted(set(labels)):
            roi_medians[roi] = median(np.flatnonzero(labels == roi))
    return {"median_r": median(every) if voxel_r.size else float("nan"), "mean_r": mean,
            "roi_median_r": roi_medians}
