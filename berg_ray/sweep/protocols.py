"""Scoring protocols of a sweep: a registry of scorers, one per protocol name, with one common interface.

A scorer turns one cell's features (one model layer under one context) into per-voxel r for one subject, and says
what, besides the features, identifies its numbers (for the cell id), whether its fits live in the encoding-model
cache, and how its scores read in the report. Adding a protocol is adding a :class:`Scorer` to :data:`SCORERS` and
its name to :data:`berg_ray.options.PROTOCOLS` (a test checks
that the two agree).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from berg_ray.errors import InvalidInputError
from berg_ray.hashing import bytes_sha256
from berg_ray.neural import PereiraAssembly
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest
from berg_ray.scoring import (BRAINSCORE_CV, BRAINSCORE_RIDGE_CV, RIDGE_ALPHAS, linear_shuffle_split_r,
                              ridge_group_split_r)
from berg_ray.store import EncodingModelStore


@dataclass
class VoxelScores:
    """A scored cell.

    Attributes:
        voxel_r: array of shape (n_voxels,): per-voxel r (held-out).
        split_r: array of shape (n_splits, n_voxels) when the protocol scores per split (then summaries follow
            brainscore's aggregation: median within each split, mean over splits); else ``None``.
        cache_key: the encoding-model cache key of the fit, for protocols that cache their fits.
        fit_seconds: how long the original fit took, for scores read from the cache (``None``: just computed).
    """

    voxel_r: np.ndarray
    split_r: np.ndarray | None = None
    cache_key: str | None = None
    fit_seconds: float | None = None


class Scorer(ABC):
    """One scoring protocol."""

    name: ClassVar[str]
    #: whether fits are read from and written to the encoding-model cache (shared with the API and the CLI)
    caches_fits: ClassVar[bool] = False
    #: the context under which the pooled score reproduces a published benchmark number (None: none does)
    comparable_context: ClassVar[str | None] = None
    #: what the summary's ``pooled_score`` (BrainScore's aggregation over the pooled voxels) is, for the report
    pooled_meaning: ClassVar[str]
    #: whether :meth:`score_many` shares work between the subjects of one feature set (then the sweep scores all the
    #: cells of one model × layer × context in one task, one :meth:`score_many` call; otherwise one task per cell)
    batches_subjects: ClassVar[bool] = False

    def refusal(self, assembly: PereiraAssembly) -> str:
        """Why this protocol cannot score ``assembly`` (``""``: it can); the sweep turns a refused dataset's cells
        into skipped rows with this reason."""
        return ""

    @abstractmethod
    def identity(self, settings: PLSSettings) -> dict[str, Any]:
        """The settings that change this protocol's numbers (hashed into every cell id)."""

    @abstractmethod
    def describe(self, settings: PLSSettings) -> dict[str, Any]:
        """``{"cv": text, "pls": settings or None}`` for ``last_run.json`` and the report."""

    @abstractmethod
    def score(self, request: ModelRequest, subject: str, features: np.ndarray, assembly: PereiraAssembly,
              settings: PLSSettings, cache: EncodingModelStore | None = None) -> VoxelScores:
        """Score one cell: ``subject``'s responses from the features of ``request`` (one layer, one context).

        Args:
            features: array of shape (n_presentations, n_units), rows in ``assembly`` order.
            cache: where to save the fit (protocols with :attr:`caches_fits`); ignored otherwise.
        """

    def score_many(self, request: ModelRequest, subjects: Sequence[str], features: np.ndarray,
                   assembly: PereiraAssembly, settings: PLSSettings, cache: EncodingModelStore | None = None
                   ) -> dict[str, VoxelScores]:
        """Score the cells of ``subjects`` on the same features (one layer, one context): ``{subject: scores}``,
        each equal to :meth:`score`'s for that subject. The default scores them one by one."""
        return {subject: self.score(request, subject, features, assembly, settings, cache) for subject in subjects}

    def cached(self, request: ModelRequest, subject: str, assembly: PereiraAssembly, settings: PLSSettings,
               cache: EncodingModelStore) -> VoxelScores | None:
        """The cell's scores from the encoding-model cache, or ``None`` (always, for protocols that do not cache)."""
        return None


#: the datasets brainscore's Pereira2018 metrics can be computed on (their presentations, stories and stimulus ids)
PEREIRA_DATASETS: tuple[str, ...] = ("Pereira2018.language", "Pereira2018.auditory")


def pereira_only(name: str, assembly: PereiraAssembly) -> str:
    """The refusal of a Pereira2018 benchmark metric for a dataset of another layout (``""`` for Pereira's)."""
    if assembly.identifier in PEREIRA_DATASETS:
        return ""
    return (f"protocol {name!r} is brainscore's Pereira2018.384sentences metric (its splits, seeds and alphas) and "
            f"scores only {' / '.join(PEREIRA_DATASETS)}, not {assembly.identifier}; use protocol 'pls-groupkfold' "
            "(the dataset's own splits), or --benchmarks for the dataset's own brainscore benchmarks")


class PLSGroupKFold(Scorer):
    """BERG's encoding model: PLS (or ridge, ``settings.regression``) on every presentation of the dataset, scored by
    the dataset's own held-out splits (``settings``: Pereira's GroupKFold by story, Tuckute2024's ShuffleSplit, ...;
    :func:`berg_ray.fitting.settings_for`); the fit is cached. Any dataset."""

    name = "pls-groupkfold"
    caches_fits = True
    batches_subjects = True
    pooled_meaning = "median CV r"

    def identity(self, settings: PLSSettings) -> dict[str, Any]:
        return {"pls": settings.to_dict()}

    def describe(self, settings: PLSSettings) -> dict[str, Any]:
        return {"cv": settings.describe_cv(), "pls": settings.to_dict()}

    def score(self, request: ModelRequest, subject: str, features: np.ndarray, assembly: PereiraAssembly,
              settings: PLSSettings, cache: EncodingModelStore | None = None) -> VoxelScores:
        from berg_ray.fitting import fit_encoding_model

        model = fit_encoding_model(request, features, assembly, subject, settings)
        if cache is not None:
            cache.save(model, request.spec.name)
        return VoxelScores(model.cv_r, cache_key=model.cache_key)

    def score_many(self, request: ModelRequest, subjects: Sequence[str], features: np.ndarray,
                   assembly: PereiraAssembly, settings: PLSSettings, cache: EncodingModelStore | None = None
                   ) -> dict[str, VoxelScores]:
        """All ``subjects`` in one pass of the batched engine (:func:`berg_ray.fitting.fit_encoding_models`): each
        subject's fit and CV r are :meth:`score`'s (the engine's problems are independent; BLAS rounding apart)."""
        from berg_ray.fitting import fit_encoding_models

        models = fit_encoding_models(request, features, assembly, list(subjects), settings)
        scores = {}
        for subject in subjects:
            model = models[subject]
            if cache is not None:
                cache.save(model, request.spec.name)
            scores[subject] = VoxelScores(model.cv_r, cache_key=model.cache_key)
        return scores

    def cached(self, request: ModelRequest, subject: str, assembly: PereiraAssembly, settings: PLSSettings,
               cache: EncodingModelStore) -> VoxelScores | None:
        from berg_ray.fitting import load_cached

        model = load_cached(cache, request, assembly, subject, settings)
        if model is None:
            return None
        return VoxelScores(model.cv_r, cache_key=model.cache_key, fit_seconds=model.fit_seconds)


class BrainscoreLinear(Scorer):
    """brainscore-language's ``Pereira2018.384sentences-linear-shuffle`` metric (:mod:`berg_ray.scoring`)."""

    name = "brainscore-linear"
    comparable_context = "passage"
    pooled_meaning = "the benchmark's raw score where `brainscore_comparable`"

    def refusal(self, assembly: PereiraAssembly) -> str:
        return pereira_only(self.name, assembly)

    def identity(self, settings: PLSSettings) -> dict[str, Any]:
        return {"cv": BRAINSCORE_CV}

    def describe(self, settings: PLSSettings) -> dict[str, Any]:
        return {"cv": "ShuffleSplit(10, train_size=0.9, random_state=1) on stimulus_id", "pls": None}

    def score(self, request: ModelRequest, subject: str, features: np.ndarray, assembly: PereiraAssembly,
              settings: PLSSettings, cache: EncodingModelStore | None = None) -> VoxelScores:
        split_r = linear_shuffle_split_r(features, assembly.responses(subject), assembly.stimulus_ids,
                                         n_splits=BRAINSCORE_CV["splits"], train_size=BRAINSCORE_CV["train_size"],
                                         random_state=BRAINSCORE_CV["random_state"])
        return VoxelScores(np.nanmean(split_r, axis=0), split_r=split_r)


class BrainscoreRidge(Scorer):
    """brainscore-language's ``Pereira2018.384sentences-ridge`` metric (``ridge_pearsonr``, :mod:`berg_ray.scoring`).

    The ridge picks one alpha per split for every voxel of every subject of the dataset together, as the benchmark
    does; so each cell (one subject) is scored from the fit to all subjects' voxels, and its per-voxel r are exactly
    the benchmark's for those voxels whatever subjects the grid holds. The all-subject fit of a cell's features is
    computed once per process and shared by the cells of the other subjects that land there.
    """

    name = "brainscore-ridge"
    comparable_context = "passage"
    pooled_meaning = "the benchmark's raw score where `brainscore_comparable`"
    _pooled: ClassVar[OrderedDict[tuple[str, str], np.ndarray]] = OrderedDict()
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def refusal(self, assembly: PereiraAssembly) -> str:
        return pereira_only(self.name, assembly)

    def identity(self, settings: PLSSettings) -> dict[str, Any]:
        return {"cv": BRAINSCORE_RIDGE_CV, "alphas": list(RIDGE_ALPHAS), "alpha_for": "all voxels of all subjects"}

    def describe(self, settings: PLSSettings) -> dict[str, Any]:
        return {"cv": "GroupKFold(10, shuffle=True, random_state=1234) by story; RidgeCV(alphas=logspace(-3, 3, 7)), "
                      "one alpha per split for all subjects' voxels", "pls": None}

    def all_subjects_split_r(self, features: np.ndarray, assembly: PereiraAssembly) -> np.ndarray:
        """Per-split r of every voxel of ``assembly`` (all subjects, one alpha per split): (n_splits, n_voxels)."""
        features = np.ascontiguousarray(features)
        key = (bytes_sha256(features.tobytes() + str((features.shape, features.dtype)).encode()),
               assembly.sha256)
        with self._lock:
            if key in self._pooled:
                return self._pooled[key]
        split_r = ridge_group_split_r(features, assembly.all_responses(), assembly.stories, assembly.stimulus_ids,
                                      n_splits=BRAINSCORE_RIDGE_CV["splits"],
                                      random_state=BRAINSCORE_RIDGE_CV["random_state"])
        with self._lock:
            self._pooled[key] = split_r
            while len(self._pooled) > 2:
                self._pooled.popitem(last=False)
        return split_r

    def score(self, request: ModelRequest, subject: str, features: np.ndarray, assembly: PereiraAssembly,
              settings: PLSSettings, cache: EncodingModelStore | None = None) -> VoxelScores:
        split_r = self.all_subjects_split_r(features, assembly)[:, assembly.subject_columns(subject)]
        return VoxelScores(np.nanmean(split_r, axis=0), split_r=split_r)


#: protocol name -> scorer
SCORERS: dict[str, Scorer] = {scorer.name: scorer for scorer in (PLSGroupKFold(), BrainscoreLinear(),
                                                                 BrainscoreRidge())}


def get_scorer(protocol: str) -> Scorer:
    """The scorer of ``protocol``, or :class:`InvalidInputError` naming the protocols there are."""
    if protocol not in SCORERS:
        raise InvalidInputError(f"unknown protocol {protocol!r}; allowed: {', '.join(SCORERS)}")
    return SCORERS[protocol]
