"""Running a sweep's cells on Ray: extractor actors read the features, Ray tasks score the cells.

* **features once per model × dataset × context**: one :class:`LayerFeaturesActor` per model loads the model once
  and, for each dataset and context, reads *every* requested layer in one forward pass
  (:meth:`berg_ray.features.FeatureExtractor.extract`), so ``layers="all"`` costs one pass, not one per layer. Each
  layer's (presentations × units) features go to the object store as a separate object; the actor is released as
  soon as its passes are done (at most ``max_extractors`` models are loaded at a time).
* **one Ray task per layer's cells** (:func:`score_cells`) runs the protocol's scorer on those features: for a
  protocol that batches subjects (``pls-groupkfold``: one pass of the batched PLS engine for all subjects), one task
  scores all the cells of one model × layer × context (split over more tasks when a pass has fewer layers than the
  cluster has CPUs); for the others, one task per cell. A fit cache on an
  object store is written by the tasks; a local cache folder by this driver (the tasks return their fits), so that
  on a cluster of several nodes no entry lands on another node's disk.
* every finished or failed cell is handed to ``on_outcome`` as it comes; if anything interrupts the loop, the
  actors are killed and the queued scoring tasks cancelled.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from berg_ray.neural import PereiraAssembly
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest
from berg_ray.sweep.cells import CellScore
from berg_ray.sweep.grid import Cell
from berg_ray.sweep.protocols import get_scorer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorSettings:
    """Where the extractor actors run (the cells' requests say how: dtype, batch size): GPUs per actor and the
    number of models loaded at a time (``None``: one per two CPUs, or one per GPU)."""

    num_gpus: float = 0.0
    max_extractors: int | None = None


@dataclass
class CellOutcome:
    """A computed cell: its score, or (``score is None``) why it failed."""

    cell: Cell
    score: CellScore | None
    reason: str = ""
    features_seconds: float = float("nan")


@dataclass
class _FeaturePass:
    """One actor call in flight: every requested layer of one model on one dataset under one context."""

    model_id: str
    dataset: str
    context: str
    layer_refs: dict[str, Any]  # layer -> ObjectRef of its (n_presentations, units) features


@dataclass
class _ScoringTask:
    cells: list[Cell]  # one or (protocols that batch subjects) all the pass's cells of one layer
    features_seconds: float


@dataclass
class _LoadedModel:
    actor: Any
    passes_left: int


class LayerFeaturesActor:
    """Ray actor: one model loaded once; the features of all the layers of ``request`` per call. torch uses as many
    threads as the actor holds CPUs."""

    def __init__(self, request: ModelRequest, device: str):
        from berg_ray.distributed import use_assigned_cpus
        from berg_ray.features import make_extractor

        use_assigned_cpus()  # torch threads = the CPUs this actor holds (before the model's first op)
        self.layers = list(request.layers)
        # the mapped layer need not exist (e.g. layers="all"): make_extractor loads with a requested one
        self.extractor = make_extractor(request, device=device)

    def features(self, sentences: Sequence[str], context: str, passages: Sequence[Any] | None) -> tuple:
        """One (n_presentations, units) array per layer in ``self.layers`` order, then the seconds it took."""
        started = time.perf_counter()
        features = self.extractor.extract(sentences, self.layers, context=context, passages=passages)
        return (*[features[name] for name in self.layers], time.perf_counter() - started)


class KeptFit:
    """Stands in for the fit cache inside a scoring task whose cache is a local folder: keeps the fits (each an
    :class:`~berg_ray.encoding_model.EncodingModel`) so that the task returns them and the driver writes them."""

    def __init__(self) -> None:
        self.fits: list[tuple[Any, str]] = []  # (model, name) in the order they were saved

    def save(self, model: Any, name: str) -> None:
        self.fits.append((model, name))

    def of_subject(self, subject: str) -> KeptFit | None:
        """The fits of one subject's cell, or ``None`` if it has none."""
        kept = KeptFit()
        kept.fits = [(model, name) for model, name in self.fits if model.subject == subject]
        return kept if kept.fits else None


def score_cells(request: ModelRequest, subjects: Sequence[str], features: np.ndarray, assembly: PereiraAssembly,
                protocol: str, settings: PLSSettings, cache_url: str | None = None,
                keep_fit: bool = False) -> list[tuple[CellScore, KeptFit | None]]:
    """Score the cells of ``subjects`` on the same features with one call of the protocol's
    :meth:`~berg_ray.sweep.protocols.Scorer.score_many` (what each Ray task runs; writes only the optional fit cache).

    Args:
        request: the cells' one-layer request (layer, context, dtype).
        features: array of shape (n_presentations, n_units), rows in ``assembly`` order.
        cache_url: a fit cache the task writes itself (an object store: :func:`berg_ray.distributed.task_cache_url`).
        keep_fit: return the fits instead, for the driver to write into its local cache folder.

    Returns:
        per subject, in order: (the cell's score, its kept fits or ``None``); each cell's ``fit_seconds`` is its
        share of the call's time.
    """
    from berg_ray.store import EncodingModelStore

    started = time.perf_counter()
    kept = KeptFit() if keep_fit else None
    cache = kept if kept is not None else EncodingModelStore(cache_url) if cache_url is not None else None
    scores = get_scorer(protocol).score_many(request, list(subjects), features, assembly, settings, cache)
    seconds = (time.perf_counter() - started) / max(len(subjects), 1)
    return [(CellScore.from_scores(scores[subject], assembly.voxels(subject), seconds),
             kept.of_subject(subject) if kept is not None else None) for subject in subjects]


def score_cell(request: ModelRequest, subject: str, features: np.ndarray, assembly: PereiraAssembly,
               protocol: str, settings: PLSSettings, cache_url: str | None = None,
               keep_fit: bool = False) -> tuple[CellScore, KeptFit | None]:
    """Score one cell with the protocol's :meth:`~berg_ray.sweep.protocols.Scorer.score` (what each Ray task runs
    for protocols that do not batch subjects): :func:`score_cells`'s one (score, kept fits or ``None``) pair.
    """
    from berg_ray.store import EncodingModelStore

    started = time.perf_counter()
    kept = KeptFit() if keep_fit else None
    cache = kept if kept is not None else EncodingModelStore(cache_url) if cache_url is not None else None
    scores = get_scorer(protocol).score(request, subject, features, assembly, settings, cache)
    score = CellScore.from_scores(scores, assembly.voxels(subject), time.perf_counter() - started)
    return score, kept if kept is not None and kept.fits else None


def _scoring_groups(cells: list[Cell], batches: bool, cpus: float) -> list[list[Cell]]:
    """The scoring tasks of one feature pass's cells: one per cell, or (``batches``) one per layer with all its
    subjects (the cells of one dataset and request differ only in their subject). A pass with fewer layers than the
    cluster has CPUs splits each layer's subjects into as many tasks as the CPUs allow
    (:func:`berg_ray.fitting.subject_groups`), so that a one-layer sweep still fills the cluster."""
    if not batches:
        return [[cell] for cell in cells]
    from berg_ray.fitting import subject_groups

    by_request: dict[tuple[str, ModelRequest], list[Cell]] = {}
    for cell in cells:
        by_request.setdefault((cell.dataset, cell.request), []).append(cell)
    groups = []
    for layer_cells in by_request.values():
        by_subject = {cell.subject: cell for cell in layer_cells}
        for subjects in subject_groups(list(by_subject), cpus / len(by_request)):
            groups.append([by_subject[subject] for subject in subjects])
    return groups


def short_error(error: BaseException) -> str:
    """The last line of an exception (unwrapping Ray's task error), for a table cell."""
    cause = getattr(error, "cause", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def _default_extractors(num_gpus_per_actor: float, n_models: int) -> int:
    import ray

    resources = ray.cluster_resources()
    if num_gpus_per_actor > 0:
        limit = int(resources.get("GPU", 0) // num_gpus_per_actor)
    else:  # leave half the CPUs to the fit tasks
        limit = int(resources.get("CPU", 1) // 2)
    return max(1, min(limit, n_models))


def compute_cells(todo: list[Cell], assemblies: Mapping[str, PereiraAssembly], protocol: str,
                  settings: Mapping[str, PLSSettings], cache_url: str | None, actors: ActorSettings,
                  on_outcome: Callable[[CellOutcome], None]) -> int:
    """Compute ``todo`` on the connected Ray cluster; returns the number of feature passes that ran.

    Args:
        assemblies: ``{dataset label: assembly}`` of every cell's :attr:`~berg_ray.sweep.grid.Cell.dataset`.
        settings: ``{dataset label: its settings}``.
        on_outcome: called on the driver once per cell, in completion order.
    """
    import ray
    import torch

    from berg_ray.distributed import actor_resources, task_cache_url
    from berg_ray.model_loading import resolve_dtype
    from berg_ray.store import EncodingModelStore

    by_model: dict[str, list[Cell]] = {}
    for cell in todo:
        by_model.setdefault(cell.spec.model_id, []).append(cell)
    request = todo[0].request  # the sweep's dtype, batch size and device are every cell's
    resources, torch_device = actor_resources(actors.num_gpus, device=request.device)
    resolve_dtype(request.dtype, torch.device(torch_device))  # float16 on CPU fails here, not in every actor
    limit = actors.max_extractors or _default_extractors(resources["num_gpus"], len(by_model))
    needed = list(dict.fromkeys(cell.dataset for cell in todo))
    assembly_refs = {label: ray.put(assemblies[label]) for label in needed}
    texts = {label: (list(assemblies[label].sentences), list(assemblies[label].passages)) for label in needed}
    actor_class = ray.remote(LayerFeaturesActor).options(max_restarts=0, **resources)
    batches = get_scorer(protocol).batches_subjects
    cpus = float(ray.cluster_resources().get("CPU", 1))
    score_task = ray.remote(score_cells if batches else score_cell).options(num_cpus=1)
    fit_cache = EncodingModelStore(cache_url) if cache_url is not None else None
    task_cache = task_cache_url(fit_cache)  # an object store: the tasks write; a local folder: this driver does
    keep_fit = fit_cache is not None and task_cache is None
    queue = deque(by_model)
    loaded: dict[str, _LoadedModel] = {}
    pending: dict[Any, _FeaturePass | _ScoringTask] = {}
    passes = 0

    def start_model() -> None:
        model_id = queue.popleft()
        cells = by_model[model_id]
        layer_names = list(dict.fromkeys(c.layer.name for c in sorted(cells, key=lambda c: c.layer.index or 0)))
        actor = actor_class.remote(cells[0].request.replace(layers=tuple(layer_names)), torch_device)
        passes_of = list(dict.fromkeys((c.dataset, c.context) for c in cells))
        for label, context in passes_of:
            sentences, passages = texts[label]
            refs = actor.features.options(num_returns=len(layer_names) + 1).remote(sentences, context, passages)
            pending[refs[-1]] = _FeaturePass(model_id, label, context,
                                             dict(zip(layer_names, refs[:-1], strict=True)))
        loaded[model_id] = _LoadedModel(actor, len(passes_of))
        logger.info("sweep: extracting %d layer(s) × %d dataset-context pass(es) of %s", len(layer_names),
                    len(passes_of), model_id)

    def features_done(ref: Any, done: _FeaturePass) -> None:
        nonlocal passes
        cells = [c for c in by_model[done.model_id] if (c.dataset, c.context) == (done.dataset, done.context)]
        try:
            seconds = float(ray.get(ref))
        except Exception as error:  # noqa: BLE001  (the model failed to load or run: its cells fail)
            for cell in cells:
                on_outcome(CellOutcome(cell, None, f"feature extraction failed: {short_error(error)}"))
        else:
            passes += 1
            for group in _scoring_groups(cells, batches, cpus):
                subjects = [c.subject for c in group] if batches else group[0].subject
                task = score_task.remote(group[0].request, subjects,
                                         done.layer_refs[group[0].layer.name], assembly_refs[done.dataset], protocol,
                                         settings[done.dataset], task_cache, keep_fit)
                pending[task] = _ScoringTask(group, seconds)
        model = loaded[done.model_id]
        model.passes_left -= 1
        if model.passes_left == 0:  # the features live on in the object store; free the actor's resources
            ray.kill(loaded.pop(done.model_id).actor)
            while queue and len(loaded) < limit:
                start_model()

    try:
        while queue and len(loaded) < limit:
            start_model()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            entry = pending.pop(ready[0])
            if isinstance(entry, _FeaturePass):
                features_done(ready[0], entry)
                continue
            try:
                results = ray.get(ready[0]) if batches else [ray.get(ready[0])]
            except Exception as error:  # noqa: BLE001  (one failing task never stops the sweep)
                for cell in entry.cells:
                    on_outcome(CellOutcome(cell, None, short_error(error), entry.features_seconds))
                continue
            for cell, (score, kept) in zip(entry.cells, results, strict=True):
                try:
                    for model, name in kept.fits if kept is not None else ():
                        fit_cache.save(model, name)
                except Exception as error:  # noqa: BLE001  (one failing cell never stops the sweep)
                    on_outcome(CellOutcome(cell, None, short_error(error), entry.features_seconds))
                else:
                    on_outcome(CellOutcome(cell, score, "", entry.features_seconds))
    finally:  # interrupted (Ctrl-C, an error in this loop): free the cluster; finished cells are stored
        for ref, entry in pending.items():
            if isinstance(entry, _ScoringTask):
                ray.cancel(ref)
        for model in loaded.values():
            ray.kill(model.actor)
    return passes
