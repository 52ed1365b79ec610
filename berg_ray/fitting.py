"""Fit (or load from the cache) the per-subject encoding models of one language model: the one fit entry point.

:func:`fit_subjects` takes a :class:`~berg_ray.request.ModelRequest` (built once at the front door), loads the
subjects already in the cache and hands the rest to an executor: :class:`InProcessExecutor` here, or the Ray
executor of ``berg_ray.distributed`` (an extractor actor + fit tasks). Both run the same functions
(:func:`training_features`, :func:`fit_encoding_models`), so results are identical either way.

:func:`fit_encoding_models` fits every requested subject of one feature set, full fit and CV folds, in one pass of
the batched NIPALS engine (:mod:`berg_ray.pls_batched`): the numbers of ``fit_pls`` + ``cross_validated_r`` (i.e.
sklearn's), several times faster than subject by subject.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from berg_ray.dataset_layouts import check_context_for
from berg_ray.encoding_model import EncodingModel, convergence_summary
from berg_ray.errors import InvalidInputError
from berg_ray.features import extract_request
from berg_ray.neural import PereiraAssembly, check_subject
from berg_ray.pls_batched import fit_and_cross_validate
from berg_ray.regression import SHUFFLE, PLSFit, PLSSettings
from berg_ray.ridge_fit import ridge_fit_and_cross_validate
from berg_ray.request import CACHE_FORMAT_VERSION, FEATURES_VERSION, ModelRequest  # noqa: F401  (re-exported)
from berg_ray.store import EncodingModelStore
from berg_ray.validation import check_subjects

logger = logging.getLogger(__name__)


def resolve_subjects(assembly: PereiraAssembly, subjects: str | Iterable[str] = "all") -> list[str]:
    """``"all"`` (or ``["all"]``) -> every subject of the dataset; otherwise each id checked and normalised
    ("18" -> "018"). ``None``, an empty list or a non-id raise :class:`InvalidInputError` naming the value."""
    subjects = check_subjects(subjects)
    if subjects == "all":
        return list(assembly.subjects)
    chosen = [check_subject(assembly, s) for s in subjects]
    if not chosen:
        raise InvalidInputError(f"no subjects given; allowed: 'all' or any of {', '.join(assembly.subjects)}")
    return list(dict.fromkeys(chosen))


def training_features(request: ModelRequest, assembly: PereiraAssembly, show_progress: bool = False) -> np.ndarray:
    """Features of the training presentations under the request's context: array (n_presentations, n_units) float32.

    ``passage`` reads each presentation with the earlier ones of its group, as the dataset's BrainScore benchmark
    feeds it (Pereira: passage; Blank2014: story; Fedorenko2016: sentence); ``running`` runs one context over all
    presentations in file order (as BERG); ``sentence`` reads each alone (Pereira, Tuckute2024).
    """
    return extract_request(request, list(assembly.sentences), list(assembly.passages),
                           show_progress=show_progress)[request.layer]


def cv_groups(assembly: PereiraAssembly, settings: PLSSettings) -> Sequence[str] | None:
    """The held-out group of each presentation for ``settings.cv_group`` (None for shuffled splits)."""
    if settings.cv_group == SHUFFLE:
        return None
    if settings.cv_group == "passage":
        return assembly.passages
    if settings.cv_group in ("story", assembly.layout.cv_coord):
        return assembly.stories
    stimuli = assembly.stimuli()
    if settings.cv_group not in stimuli:
        raise InvalidInputError(f"cv_group {settings.cv_group!r} is not a presentation coordinate of "
                                f"{assembly.identifier} (coordinates: {', '.join(stimuli.columns)})")
    return [str(v) for v in stimuli[settings.cv_group]]


def capped_settings(settings: PLSSettings, n_features: int, n_train: int) -> tuple[PLSSettings, list[str]]:
    """PLS settings with ``n_components`` capped at what the data can hold (the features' width and the smallest
    training fold), and the note that says so; the settings unchanged (and no note) when no cap is needed."""
    limit = min(n_features, n_train)
    if settings.regression != "pls" or settings.n_components <= limit:
        return settings, []
    note = (f"PLS n_components capped at {limit} (asked {settings.n_components}): the data hold {n_features} "
            f"feature(s) and {n_train} rows in the smallest training fold")
    logger.warning(note)
    return dataclasses.replace(settings, n_components=limit), [note]


def settings_for(assembly: PereiraAssembly, n_components: int = 25, regression: str = "pls") -> PLSSettings:
    """The encoding-model settings of a dataset: its own held-out splits (GroupKFold by story for Pereira, as BERG's
    CV, and by story for Blank2014 with brainscore's seed; by sentence for Fedorenko2016; shuffled splits for
    Tuckute2024), with ``n_components`` and ``regression`` as asked."""
    layout = assembly.layout
    return PLSSettings(n_components=n_components, cv_folds=layout.cv_folds, cv_group=layout.cv_coord or SHUFFLE,
                       cv_seed=layout.cv_seed, regression=regression)


def fit_encoding_models(request: ModelRequest, features: np.ndarray, assembly: PereiraAssembly,
                        subjects: Sequence[str], settings: PLSSettings, warn: bool = True
                        ) -> dict[str, EncodingModel]:
    """Fit PLS on all 384 sentences and score it with GroupKFold CV, for every subject in one batched pass (pure
    computation, no cache).

    Args:
        features: (384, n_units) training features of ``request``, rows in ``assembly`` order.
        subjects: checked subject ids (see :func:`resolve_subjects`).
        warn: a ConvergenceWarning per subject whose fit or CV stopped at ``max_iter``, as sklearn warns
            (:func:`fit_subjects` passes False to its executors and warns once, for all subjects, on the driver).

    Returns:
        ``{subject: EncodingModel}``; each model's ``fit_seconds`` is its share of the joint fit (total / subjects),
        its ``convergence`` says where NIPALS stopped at ``max_iter``.
    """
    started = time.perf_counter()
    responses = [assembly.responses(subject) for subject in subjects]
    for subject, Y in zip(subjects, responses, strict=True):
        if features.shape[0] != Y.shape[0]:
            raise InvalidInputError(f"features have {features.shape[0]} rows, the dataset {Y.shape[0]} "
                                    f"(subject {subject})")
    groups = cv_groups(assembly, settings)
    smallest_train = min(len(train) for train, _ in settings.cv_splits(groups, features.shape[0]))
    fit_settings, notes = capped_settings(settings, features.shape[1], smallest_train)
    if settings.regression == "ridge":
        fits = ridge_fit_and_cross_validate(features, responses, groups, fit_settings)
    else:
        fits = fit_and_cross_validate(features, responses, groups, fit_settings, warn=warn)
    seconds = (time.perf_counter() - started) / max(len(subjects), 1)
    models = {}
    for subject, result in zip(subjects, fits, strict=True):
        model = _encoding_model(request, assembly, subject, settings, result.fit, result.cv_r, seconds)
        model.notes = list(notes)
        if result.unconverged_components or result.unconverged_folds:
            model.convergence = {"full_fit_components": list(result.unconverged_components),
                                 "cv_folds": int(result.unconverged_folds)}
        models[subject] = model
    return models


def fit_encoding_model(request: ModelRequest, features: np.ndarray, assembly: PereiraAssembly, subject: str,
                       settings: PLSSettings) -> EncodingModel:
    """:func:`fit_encoding_models` for one subject."""
    return fit_encoding_models(request, features, assembly, [subject], settings)[subject]


def subject_groups(subjects: Sequence[str], cpus: float) -> list[list[str]]:
    """Subjects split into one group per fit task: as many tasks as the cluster has CPUs (each task holds one and
    runs the batched engine on one BLAS thread), at most one per subject. The engine's cost grows linearly with the
    subjects it fits together, so on 2 CPUs two tasks of 5 + 4 subjects finish in ~5/9 of one task's time, while
    one task per subject would repeat the per-task start and transfer costs nine times."""
    n_tasks = max(1, min(len(subjects), int(cpus)))
    return [list(group) for group in np.array_split(np.asarray(subjects, dtype=object), n_tasks) if len(group)]


def _encoding_model(request: ModelRequest, assembly: PereiraAssembly, subject: str, settings: PLSSettings,
                    fit: PLSFit, cv_r: np.ndarray, seconds: float) -> EncodingModel:
    return EncodingModel(
        model_id=request.model_id, source=request.spec.source,
        subject=subject, fit=fit, cv_r=cv_r, settings=settings, dataset_sha256=assembly.sha256,
        synthetic=assembly.synthetic, voxels=assembly.voxels(subject).reset_index(drop=True),
        cache_key=request.cache_key(subject, assembly.sha256, settings),
        key_fields=request.key_fields(subject, assembly.sha256, settings), fit_seconds=seconds, request=request,
        dataset=assembly.identifier,
    )


def load_cached(store: EncodingModelStore | None, request: ModelRequest, assembly: PereiraAssembly, subject: str,
                settings: PLSSettings) -> EncodingModel | None:
    """The cached encoding model of ``subject`` for ``request``, or None (also when ``store`` is None)."""
    if store is None:
        return None
    fields = request.key_fields(subject, assembly.sha256, settings)
    model = store.load(request.spec.name, subject, request.cache_key(subject, assembly.sha256, settings),
                       assembly.synthetic, expected_fields=fields, dataset=assembly.identifier)
    if model is not None:
        # the key covers the weights (hub id + revision, or a folder's content hash), not the id or path they
        # were registered under: report the ones this caller uses, and carry the caller's request
        model = model.replace(model_id=request.model_id, source=request.spec.source, request=request)
    return model


class FitExecutor(Protocol):
    """Where the features of the training sentences are extracted and the missing subjects fitted."""

    def fit_missing(self, request: ModelRequest, assembly: PereiraAssembly, subjects: list[str],
                    settings: PLSSettings, store: EncodingModelStore | None,
                    show_progress: bool) -> dict[str, EncodingModel]:
        """Fit ``subjects`` (none of them cached), save each to ``store`` (if any); ``{subject: model}``."""
        ...


class InProcessExecutor:
    """Extract and fit in this process, all subjects in one batched pass."""

    def fit_missing(self, request: ModelRequest, assembly: PereiraAssembly, subjects: list[str],
                    settings: PLSSettings, store: EncodingModelStore | None,
                    show_progress: bool) -> dict[str, EncodingModel]:
        features = training_features(request, assembly, show_progress)
        logger.info("%s: fitting %d subject(s) together (full fit + %d CV folds each)", request.model_id,
                    len(subjects), settings.cv_folds)
        fitted = fit_encoding_models(request, features, assembly, subjects, settings, warn=False)
        iterator: Any = subjects
        if show_progress:
            from tqdm.auto import tqdm

            iterator = tqdm(subjects, desc=f"save PLS {request.model_id}", unit="subject")
        models = {}
        for subject in iterator:
            model = fitted[subject]
            if store is not None:
                store.save(model, request.spec.name)
            logger.info("%s subject %s: fitted (share %.1f s), median CV r %.3f", request.model_id, subject,
                        model.fit_seconds, np.nanmedian(model.cv_r))
            models[subject] = model
        return models


def fit_subjects(request: ModelRequest, assembly: PereiraAssembly, subjects: str | Iterable[str] = "all", *,
                 settings: PLSSettings | None = None, store: EncodingModelStore | None = None,
                 executor: FitExecutor | None = None, show_progress: bool = False) -> dict[str, EncodingModel]:
    """Cached-or-fitted encoding models of ``request`` for ``subjects``: the one fit entry point.

    Cached subjects are loaded (their entries verified); the others go to ``executor`` (default: in this process),
    which extracts the training features once and fits each subject.

    Returns:
        ``{subject: EncodingModel}`` in the order of ``subjects``; each carries ``request``.
    """
    settings = settings or settings_for(assembly)
    check_context_for(assembly.layout, request.context)
    chosen = resolve_subjects(assembly, subjects)
    models: dict[str, EncodingModel] = {}
    for subject in chosen:
        cached = load_cached(store, request, assembly, subject, settings)
        if cached is not None:
            logger.info("%s subject %s: loaded from cache", request.model_id, subject)
            models[subject] = cached
    missing = [s for s in chosen if s not in models]
    if missing:
        fitted = (executor or InProcessExecutor()).fit_missing(request, assembly, missing, settings, store,
                                                               show_progress)
        models.update(fitted)
        summary = convergence_summary(fitted)
        if summary is not None:  # one warning for all subjects (the executors' fits do not warn one by one)
            from sklearn.exceptions import ConvergenceWarning

            warnings.warn(f"{request.model_id}: {summary}", ConvergenceWarning, stacklevel=2)
    return {s: models[s] for s in chosen}
