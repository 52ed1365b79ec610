"""The grid of a sweep: the (dataset, model, layer, context, subject) cells to score, and the requested rows that
cannot run.

Unknown or unsupported models, unknown layers, a context a dataset cannot be read with and a protocol a dataset
cannot be scored by never stop a sweep: they become :class:`SkippedRow` s with the reason (a model whose layer
structure cannot be read becomes a ``failed`` row). Every cell has an id that hashes everything that changes its
number (model weights, layer, context, subject, dataset sha256, protocol and its settings, forward-pass dtype), so a
rerun finds the cells it already scored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from berg_ray import options
from berg_ray.errors import InvalidInputError, UnknownModelError, UnsupportedModelError
from berg_ray.hashing import json_sha256
from berg_ray.request import check_context
from berg_ray.delegated import delegated_layers, is_delegated
from berg_ray.layers import LayerChoice, resolve_layers
from berg_ray.neural import NeuralAssembly
from berg_ray.registry import ModelSpec, get_spec
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest
from berg_ray.sweep.protocols import Scorer

logger = logging.getLogger(__name__)

#: bump when what a cell file holds, or how it is scored, changes
SWEEP_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Cell:
    """One (dataset, model, layer, context, subject) cell of the grid."""

    request: ModelRequest  # the cell's one layer, its context, and the sweep's dtype, batch size and device
    layer: LayerChoice
    mapped_layer: bool  # whether this is the registry's language-system layer
    subject: str
    cell_id: str
    dataset: str = ""  # the label of the cell's dataset (:attr:`DatasetAxis.label`)

    @property
    def spec(self) -> ModelSpec:
        return self.request.spec

    @property
    def context(self) -> str:
        return self.request.context


@dataclass(frozen=True)
class SkippedRow:
    """A requested model or layer that yields no cells, with the reason."""

    model: str
    hub_id: str
    layer: str | None
    status: str  # "skipped" (unknown model or layer) or "failed" (the model's layers could not be read)
    reason: str
    dataset: str | None = None  # the dataset it is skipped for (None: every dataset)
    context: str | None = None  # the context it is skipped for (None: every context)


@dataclass(frozen=True)
class DatasetAxis:
    """One dataset of the grid, as the grid needs it (the sweep loads the assembly; the grid sees only this).

    Attributes:
        label: the dataset's name in the tables (its brainscore id, ``synthetic:`` before it for a stand-in, and
            ``@<sha256 prefix>`` after it when two datasets of the sweep would share a name).
        sha256: SHA-256 of the dataset file (hashed into every cell id).
        subjects: the subjects of the grid in this dataset.
        contexts: the contexts its cells are scored under.
        refused_contexts: ``{context: reason}``: requested contexts it cannot be read with (skipped rows).
        refusal: why no cell of this dataset can run (the protocol or the CV settings cannot score it; every model
            gets a skipped row); ``""`` when its cells run.
        settings: its encoding-model and CV settings (hashed into every cell id).
    """

    label: str
    sha256: str
    subjects: tuple[str, ...]
    contexts: tuple[str, ...]
    settings: PLSSettings
    refused_contexts: dict[str, str] = field(default_factory=dict)
    refusal: str = ""


@dataclass(frozen=True)
class SweepDataset:
    """One loaded dataset of a sweep: what the caller named, the assembly, and its axis of the grid."""

    name: str  # as the caller gave it (a brainscore id, 'synthetic', a path, ...; a loaded assembly's source)
    assembly: NeuralAssembly
    axis: DatasetAxis

    @property
    def label(self) -> str:
        return self.axis.label


@dataclass
class Grid:
    cells: list[Cell]
    skipped: list[SkippedRow]
    requests: dict[str, ModelRequest] = field(default_factory=dict)  # model id -> its request, for every model found


@dataclass(frozen=True)
class GridAxes:
    """The checked axes of a grid, before models and layers are looked up."""

    models: list[str]
    layers: str | list[str | int]  # "mapped", "all" or names/indices
    contexts: list[str] | None  # None: each dataset's default context
    subjects: str | list[str]  # "all" or ids


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, (str, int)):
        return [value]
    if value is None:
        return []
    try:
        return list(value)
    except TypeError:
        raise InvalidInputError(f"{what} must be a string or a list, got {type(value).__name__}") from None


def check_axes(models: str | Sequence[str], layers: str | Sequence[str | int], contexts: Sequence[str] | None,
               subjects: str | Iterable[str]) -> GridAxes:
    """The grid's axes as lists, or :class:`InvalidInputError` for an empty axis or an unknown context
    (``contexts=None``: each dataset's default context)."""
    model_list = _as_list(models, "models")
    if not model_list:
        raise InvalidInputError("empty grid: no models given; pass at least one model id (see `berg-ray models`)")
    context_list = None if contexts is None else list(dict.fromkeys(_as_list(contexts, "contexts")))
    if context_list is not None and not context_list:
        raise InvalidInputError(f"empty grid: no contexts given; allowed: {', '.join(options.CONTEXTS)}")
    for context in context_list or ():
        check_context(context)
    if not (isinstance(layers, str) and layers in options.LAYER_SELECTIONS):
        if isinstance(layers, str):
            layers = [part for part in layers.split(",") if part.strip()]
        layers = _as_list(layers, "layers")
        if not layers:
            raise InvalidInputError("empty grid: no layers given; use 'mapped', 'all' or a list of layer names")
    subject_list = _as_list(subjects, "subjects")
    if not subject_list:
        raise InvalidInputError("empty grid: no subjects given; use 'all' or a list of subject ids")
    return GridAxes(model_list, layers, context_list, "all" if subject_list == ["all"] else subject_list)


def cell_id(request: ModelRequest, subject: str, dataset_sha256: str, scorer: Scorer, settings: PLSSettings) -> str:
    """``<model>__<layer>__<context>__<subject>__<hash>`` of a one-layer ``request``: the hash covers everything
    that changes the cell's number (the encoding-model cache's key fields, with the protocol's own settings instead
    of PLS's)."""
    fields = request.key_fields(subject, dataset_sha256, settings)
    fields.pop("pls")
    fields.update(scorer.identity(settings))
    fields.update(protocol=scorer.name, sweep_format=SWEEP_FORMAT_VERSION)
    digest = json_sha256(fields)
    readable = "__".join(_safe(part) for part in (request.spec.name, request.layer, request.context, subject))
    return f"{readable}__{digest[:12]}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


@dataclass(frozen=True)
class _Model:
    """A looked-up model of the grid: its request (weights fingerprinted once) and its chosen layers."""

    spec: ModelSpec
    request: ModelRequest
    layers: list[LayerChoice]


def _look_up_models(axes: GridAxes, context: str, *, dtype: str, batch_size: int, device: str
                    ) -> tuple[list[_Model], list[SkippedRow]]:
    """Every requested model with its layers, in order (duplicates once), and a :class:`SkippedRow` for each model
    or layer that yields no cell (on every dataset)."""
    models: list[_Model] = []
    skipped: list[SkippedRow] = []
    seen: set[str] = set()
    for requested in axes.models:
        try:
            spec = get_spec(requested)
        except (UnknownModelError, UnsupportedModelError) as error:
            kind = "unsupported model" if isinstance(error, UnsupportedModelError) else "unknown model"
            skipped.append(SkippedRow(str(requested), "", None, "skipped", f"{kind}: {error}"))
            logger.warning("sweep: skipping %r: %s", requested, error)
            continue
        if spec.model_id in seen:
            continue
        seen.add(spec.model_id)
        try:
            request = ModelRequest.build(spec, context=context, dtype=dtype, batch_size=batch_size,
                                         device=device)  # fingerprints the weights once per model
            if is_delegated(spec):  # brainscore's own subject: one readout, nothing to read from a config
                chosen, unknown = delegated_layers(spec, axes.layers)
            else:
                chosen, unknown = resolve_layers(spec, axes.layers)
        except Exception as error:  # noqa: BLE001  (config unreadable, hub id not cached offline, ...)
            skipped.append(SkippedRow(spec.model_id, spec.source, None, "failed",
                                      f"could not read the model's layer structure: {type(error).__name__}: {error}"))
            logger.warning("sweep: %s: could not read its layers: %s", spec.model_id, error)
            continue
        for name, reason in unknown:
            skipped.append(SkippedRow(spec.model_id, spec.source, name, "skipped", f"unknown layer: {reason}"))
            logger.warning("sweep: skipping %s layer %s: %s", spec.model_id, name, reason)
        models.append(_Model(spec, request, list(chosen)))
    return models, skipped


def _dataset_cells(model: _Model, dataset: DatasetAxis, scorer: Scorer) -> tuple[list[Cell], list[SkippedRow]]:
    """The cells of one model on one dataset (layer, context, subject order), and the skipped rows of the contexts
    (or the whole dataset) it cannot be scored on."""
    spec = model.spec
    if dataset.refusal:
        return [], [SkippedRow(spec.model_id, spec.source, None, "skipped", dataset.refusal, dataset=dataset.label)]
    skipped = [SkippedRow(spec.model_id, spec.source, None, "skipped", reason, dataset=dataset.label,
                          context=context) for context, reason in dataset.refused_contexts.items()]
    cells = []
    for layer in model.layers:
        for context in dataset.contexts:
            cell_request = model.request.replace(layers=(layer.name,), context=context)
            for subject in dataset.subjects:
                identity = cell_id(cell_request, subject, dataset.sha256, scorer, dataset.settings)
                cells.append(Cell(cell_request, layer, layer.name == spec.layer, subject, identity, dataset.label))
    return cells, skipped


def plan_grid(axes: GridAxes, datasets: Sequence[DatasetAxis], scorer: Scorer, *, dtype: str, batch_size: int,
              device: str) -> Grid:
    """Look up every model and its layers (once, for every dataset): the runnable cells in grid order (dataset,
    model, layer, context, subject), and a :class:`SkippedRow` for each model or layer that yields none, and for
    each model × dataset (× context) that cannot be scored. ``dtype``, ``batch_size`` and ``device`` (checked by the
    caller) go into every cell's request."""
    first_context = next((c for d in datasets for c in d.contexts), "sentence")
    models, skipped = _look_up_models(axes, first_context, dtype=dtype, batch_size=batch_size, device=device)
    cells: list[Cell] = []
    for dataset in datasets:
        for model in models:
            dataset_cells, dataset_skipped = _dataset_cells(model, dataset, scorer)
            cells += dataset_cells
            skipped += dataset_skipped
    return Grid(cells, skipped, {model.spec.model_id: model.request for model in models})
