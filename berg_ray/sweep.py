"""Sweeps: score a model × layer × context × subject grid on Ray, resumably, into tables, plots and a report.

    table = run_sweep(["brainscore_language-distilgpt2", "brainscore_language-gpt2"], layers="all",
                      contexts=("sentence", "passage"), dataset="brainscore", out="sweep_out")

How the grid runs:

* **features once per model × context**: one extractor actor per model loads the model once and, for each context,
  reads *every* requested layer in one forward pass (hooks on all of them; the pass stops after the last one ran),
  so ``layers="all"`` costs one pass, not one per layer. Each layer's (384 × units) features go to the object
  store as a separate object; the actor is released as soon as its passes are done.
* **one Ray task per cell** (model, layer, context, subject) scores it: ``pls-groupkfold`` fits PLS on all 384
  sentences and scores it with GroupKFold-by-story CV (the encoding-model cache is read first and written after,
  so cached fits are reused by the sweep, the API and the CLI alike); ``brainscore-linear`` reproduces brainscore's
  ``Pereira2018.384sentences-linear-shuffle`` metric (:mod:`berg_ray.scoring`).
* **resumable**: every finished cell is written at once, atomically, as ``out/cells/<cell-id>.json`` plus its
  per-voxel r in ``out/voxel_r/<cell-id>.npz`` (no pickle). A rerun reads finished cells instead of recomputing
  them; cells whose fit is in the cache are filled from the cache without features. The cell id is a hash of
  everything that changes the number (model weights, layer, context, subject, dataset sha256, protocol, settings).
* **bad input never stops the sweep**: unknown or unsupported models and unknown layers become ``skipped`` rows with
  the reason; a cell whose task fails becomes a ``failed`` row (retried on the next run).

Outputs in ``out/``: ``scores.parquet`` and ``scores.csv`` (one row per cell), ``summary.csv``/``summary.parquet``
(one row per model × layer × context, with the BrainScore-style pooled score), PNG plots and ``report.md``.
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede brainscore/transformers imports)

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from berg_ray.errors import CacheIntegrityError, InvalidInputError, UnknownModelError, UnsupportedModelError
from berg_ray.features import CONTEXTS, check_context, check_sentences, context_groups
from berg_ray.fsio import FileRoot
from berg_ray.fitting import key_fields, load_cached, resolve_subjects
from berg_ray.neural import PereiraAssembly, load_pereira
from berg_ray.registry import ModelSpec, get_spec
from berg_ray.regression import PLSSettings
from berg_ray.scoring import BRAINSCORE_CV, aggregate_split_r, linear_shuffle_split_r, summarize_voxel_r

logger = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("pls-groupkfold", "brainscore-linear")
#: bump when what a cell file holds, or how it is scored, changes
SWEEP_FORMAT_VERSION = 1

#: the per-cell table's columns, in order (per-ROI columns ``roi_<ROI>`` follow ``mean_r``)
COLUMNS: tuple[str, ...] = (
    "model", "hub_id", "layer", "layer_index", "n_layers", "mapped_layer", "context", "subject", "protocol",
    "status", "reason", "n_voxels", "median_r", "mean_r", "fit_seconds", "features_seconds", "from_cache",
    "dataset_sha256", "synthetic", "cell_id", "voxel_r_file", "cache_key", "computed_at",
)


# --------------------------------------------------------------------------------------------------------------
# Layers


def _meta_model(spec: ModelSpec):
    """The model's module tree without weights (``meta`` device): layer names, at the cost of reading config.json."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    revision = None if spec.is_local else spec.revision
    config = AutoConfig.from_pretrained(spec.source, revision=revision)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "add is_decoder=True" and similar notes are irrelevant here
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)


def block_layers(spec: ModelSpec, modules: dict[str, Any] | None = None) -> list[str]:
    """Names of every block of the model, in forward order: the siblings of the mapped layer.

    The mapped layer (e.g. ``transformer.h.11``) sits in a ``ModuleList`` (``transformer.h``); its siblings are the
    model's blocks (``transformer.h.0`` … ``transformer.h.N-1``). A mapped layer below a block
    (``model.layers.21.mlp``) gives the same submodule of every block. Without a usable mapped layer, the longest
    ``ModuleList`` of the model is taken.
    """
    import torch

    modules = modules if modules is not None else dict(_meta_model(spec).named_modules())
    parts = spec.layer.split(".") if spec.layer else []
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        container = modules.get(parent)
        if isinstance(container, torch.nn.ModuleList) and parts[depth].isdigit():
            suffix = parts[depth + 1:]
            names = [".".join([parent, str(k), *suffix]) for k in range(len(container))]
            return [name for name in names if name in modules]
    lists = [(name, module) for name, module in modules.items() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        return [spec.layer] if spec.layer in modules else []
    parent, container = max(lists, key=lambda item: len(item[1]))
    return [f"{parent}.{k}" for k in range(len(container))]


@dataclass(frozen=True)
class _LayerChoice:
    name: str
    index: int | None  # position among the model's blocks
    n_layers: int | None


def resolve_layers(spec: ModelSpec, layers: str | Sequence[str | int]
                   ) -> tuple[list[_LayerChoice], list[tuple[str, str]]]:
    """The layers of ``spec`` to score, and the requested ones that do not exist with the reason.

    Args:
        layers: ``"mapped"`` (the registry's language-system layer), ``"all"`` (every block) or a list of dotted
            module names and/or block indices (``0``, ``"5"``, ``-1`` for the last block).

    Returns:
        ``(chosen, unknown)``: chosen layers in forward order; ``unknown`` as ``(requested name, reason)``.
    """
    modules = dict(_meta_model(spec).named_modules())
    blocks = block_layers(spec, modules)
    index = {name: k for k, name in enumerate(blocks)}

    def choice(name: str) -> _LayerChoice:
        return _LayerChoice(name, index.get(name), len(blocks) if name in index else None)

    if layers == "mapped":
        if spec.layer in modules:
            return [choice(spec.layer)], []
        return [], [(spec.layer or "(none)", f"mapped layer {spec.layer!r} is not a module of {spec.model_id}")]
    if layers == "all":
        if not blocks:
            return [], [("all", f"found no blocks (ModuleList) in {spec.model_id}")]
        return [choice(name) for name in blocks], []
    chosen: list[_LayerChoice] = []
    unknown: list[tuple[str, str]] = []
    for requested in layers:
        text = str(requested).strip()
        if text.lstrip("-").isdigit():
            k = int(text)
            if -len(blocks) <= k < len(blocks):
                chosen.append(choice(blocks[k]))
            else:
                span = f"{blocks[0]} … {blocks[-1]}" if blocks else "none"
                reason = f"block index {k} is out of range: {spec.model_id} has {len(blocks)} blocks ({span})"
                unknown.append((text, reason))
        elif text in modules and text:
            chosen.append(choice(text))
        else:
            from berg_ray.errors import closest

            hint = closest(text, [n for n in modules if n]) or blocks[:5]
            unknown.append((text, f"layer {text!r} is not a module of {spec.model_id}; closest: {', '.join(hint)}"))
    chosen = list({c.name: c for c in chosen}.values())
    position = {name: k for k, name in enumerate(modules)}  # named_modules order ~ forward order for blocks
    return sorted(chosen, key=lambda c: position[c.name]), unknown


# --------------------------------------------------------------------------------------------------------------
# Features of several layers in one forward pass


def _read_layers(lm, sequences: list[list[int]], token_types: list[list[int]] | None,
                 modules: dict[str, Any], rows: list[int], positions: list[int]) -> dict[str, np.ndarray]:
    """One forward pass over right-padded ``sequences`` that reads every module in ``modules`` at (row, position)
    pairs; stops as soon as all of them have run. Returns ``{name: (len(rows), units) float32}``."""
    import torch

    from berg_ray.features import _StopForward, padded_inputs

    inputs = padded_inputs(lm, sequences, token_types)
    row_index, position_index = torch.as_tensor(rows), torch.as_tensor(positions)
    captured: dict[str, np.ndarray] = {}

    def make_hook(name: str):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            if name in captured:
                return
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            captured[name] = hidden[row_index, position_index].float().cpu().numpy()
            if len(captured) == len(modules):
                raise _StopForward
        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        with torch.inference_mode():
            lm.model(**inputs, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in modules if name not in captured]
    if missing:
        raise RuntimeError(f"layer(s) {', '.join(missing)} did not run in the forward pass of {lm.spec.model_id}")
    return captured


def extract_layer_features(extractor, layers: Sequence[str], sentences: str | Sequence[str],
                           context: str = "sentence", passages: Sequence[Any] | None = None
                           ) -> dict[str, np.ndarray]:
    """Features of several layers from one forward pass per batch; each equals ``extract_features`` of that layer.

    Args:
        extractor: a loaded :class:`berg_ray.features.FeatureExtractor` (its tokenizer, batching and context plan
            are used; its own layer only decides causality).
        layers: dotted module names.

    Returns:
        ``{layer: array of shape (n_sentences, n_units) float32}``.
    """
    from berg_ray.features import _get_module

    sentences = check_sentences(sentences)
    groups = context_groups(len(sentences), context, passages)
    lm = extractor.lm
    modules = {name: _get_module(lm.model, name) for name in dict.fromkeys(layers)}
    out: dict[str, np.ndarray] = {}
    with extractor._lock:
        plan = extractor._plan(sentences, groups)
        order = sorted(range(len(plan)), key=lambda i: -len(plan[i].ids))
        for start in range(0, len(order), extractor.batch_size):
            seqs = [plan[i] for i in order[start: start + extractor.batch_size]]
            rows, positions, targets = [], [], []
            for row, seq in enumerate(seqs):
                for index, position in seq.readouts:
                    rows.append(row)
                    positions.append(position)
                    targets.append(index)
            types = [s.token_types for s in seqs] if seqs[0].token_types is not None else None
            picked = _read_layers(lm, [s.ids for s in seqs], types, modules, rows, positions)
            for name, values in picked.items():
                if name not in out:
                    out[name] = np.empty((len(sentences), values.shape[1]), dtype=np.float32)
                out[name][targets] = values
    return out


class LayerFeaturesActor:
    """Ray actor: one model loaded once; features of all requested layers per call."""

    def __init__(self, spec: ModelSpec, layers: Sequence[str], device: str = "cpu", dtype: str | None = None,
                 batch_size: int = 32):
        from berg_ray.features import FeatureExtractor

        self.layers = list(layers)
        self.extractor = FeatureExtractor(dataclasses.replace(spec, layer=self.layers[-1]), device=device,
                                          dtype=dtype, batch_size=batch_size)

    def features(self, sentences: Sequence[str], context: str, passages: Sequence[Any] | None) -> tuple:
        """One (384, units) array per layer in ``self.layers`` order, then the seconds it took."""
        started = time.perf_counter()
        features = extract_layer_features(self.extractor, self.layers, sentences, context, passages)
        return (*[features[name] for name in self.layers], time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------------------
# Cells


@dataclass(frozen=True)
class _Cell:
    spec: ModelSpec  # with .layer = this cell's layer
    layer: _LayerChoice
    mapped_layer: bool
    context: str
    subject: str
    cell_id: str


def _cell_id(spec: ModelSpec, context: str, subject: str, assembly: PereiraAssembly, protocol: str,
             settings: PLSSettings, dtype: str | None) -> str:
    fields = key_fields(spec, subject, context, assembly.sha256, settings, dtype)
    if protocol == "brainscore-linear":
        fields.pop("pls")
        fields["cv"] = BRAINSCORE_CV
    fields.update(protocol=protocol, sweep_format=SWEEP_FORMAT_VERSION)
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    readable = "__".join(_safe(part) for part in (spec.name, spec.layer, context, subject))
    return f"{readable}__{digest[:12]}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def _base_row(model: str, hub_id: str, layer: str | None, context: str | None, subject: str | None,
              protocol: str, assembly: PereiraAssembly, status: str, reason: str = "") -> dict[str, Any]:
    return {"model": model, "hub_id": hub_id, "layer": layer, "layer_index": None, "n_layers": None,
            "mapped_layer": None, "context": context, "subject": subject, "protocol": protocol, "status": status,
            "reason": reason, "n_voxels": None, "median_r": float("nan"), "mean_r": float("nan"),
            "fit_seconds": float("nan"), "features_seconds": float("nan"), "from_cache": False,
            "dataset_sha256": assembly.sha256, "synthetic": assembly.synthetic, "cell_id": None,
            "voxel_r_file": None, "cache_key": None, "computed_at": None}


def _cell_row(cell: _Cell, protocol: str, assembly: PereiraAssembly, status: str, reason: str = ""
              ) -> dict[str, Any]:
    row = _base_row(cell.spec.model_id, cell.spec.source, cell.layer.name, cell.context, cell.subject, protocol,
                    assembly, status, reason)
    row.update(layer_index=cell.layer.index, n_layers=cell.layer.n_layers, mapped_layer=cell.mapped_layer,
               cell_id=cell.cell_id)
    return row


def _atomic_write(path: Path, data: bytes) -> None:
    FileRoot(str(path.parent)).write(str(path), data)


def _write_cell(out: Path, row: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> None:
    """Per-voxel arrays first, the row last: a cell file exists only once everything it points to does."""
    if arrays is not None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        relative = f"voxel_r/{row['cell_id']}.npz"
        _atomic_write(out / relative, buffer.getvalue())
        row["voxel_r_file"] = relative
    row["computed_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    _atomic_write(out / "cells" / f"{row['cell_id']}.json", json.dumps(_jsonable(row), indent=1).encode())


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    clean = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not np.isfinite(value):
            value = None
        clean[key] = value
    return clean


def _read_cell(out: Path, cell_id: str) -> dict[str, Any] | None:
    """A finished cell's row, or ``None`` if it is missing, unreadable, failed, or its voxel file is gone."""
    path = out / "cells" / f"{cell_id}.json"
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("ignoring unreadable cell file %s (it will be recomputed)", path)
        return None
    if row.get("status") != "ok" or row.get("cell_id") != cell_id:
        return None
    if row.get("voxel_r_file") and not (out / row["voxel_r_file"]).is_file():
        return None
    return row


def _summary_fields(voxels: pd.DataFrame, voxel_r: np.ndarray, split_r: np.ndarray | None) -> dict[str, Any]:
    summary = summarize_voxel_r(voxel_r, voxels.get("roi"), split_r)
    fields = {"n_voxels": len(voxel_r), "median_r": summary["median_r"], "mean_r": summary["mean_r"]}
    fields.update({f"roi_{roi}": value for roi, value in summary["roi_median_r"].items()})
    return fields


def _voxel_arrays(voxels: pd.DataFrame, voxel_r: np.ndarray, split_r: np.ndarray | None) -> dict[str, np.ndarray]:
    arrays = {"r": np.asarray(voxel_r, dtype=np.float64),
              "neuroid_id": np.asarray(voxels["neuroid_id"].astype(str).to_numpy(), dtype=str)}
    if "roi" in voxels:
        arrays["roi"] = np.asarray(voxels["roi"].astype(str).to_numpy(), dtype=str)
    if split_r is not None:
        arrays["split_r"] = np.asarray(split_r, dtype=np.float64)
    return arrays


def score_cell(spec: ModelSpec, features: np.ndarray, assembly: PereiraAssembly, subject: str, context: str,
               protocol: str, settings: PLSSettings, cache_url: str | None = None, dtype: str | None = None
               ) -> dict[str, Any]:
    """Score one cell (what each Ray task runs); pure computation except the optional cache write.

    Args:
        spec: the model spec with ``layer`` set to the cell's layer.
        features: array of shape (384, n_units), rows in ``assembly`` order.

    Returns:
        ``{"fields": row fields, "arrays": per-voxel arrays}``.
    """
    from berg_ray.fitting import fit_encoding_model
    from berg_ray.store import EncodingModelStore

    started = time.perf_counter()
    voxels = assembly.voxels(subject)
    split_r = None
    cache_key = None
    if protocol == "pls-groupkfold":
        model = fit_encoding_model(spec, features, assembly, subject, context, settings, dtype)
        if cache_url is not None:
            EncodingModelStore(cache_url).save(model, spec.name)
        voxel_r, cache_key = model.cv_r, model.cache_key
    else:
        split_r = linear_shuffle_split_r(features, assembly.responses(subject), assembly.stimulus_ids,
                                         n_splits=BRAINSCORE_CV["splits"], train_size=BRAINSCORE_CV["train_size"],
                                         random_state=BRAINSCORE_CV["random_state"])
        voxel_r = np.nanmean(split_r, axis=0)
    fields = _summary_fields(voxels, voxel_r, split_r)
    fields.update(fit_seconds=time.perf_counter() - started, cache_key=cache_key)
    return {"fields": fields, "arrays": _voxel_arrays(voxels, voxel_r, split_r)}


# --------------------------------------------------------------------------------------------------------------
# The sweep


def _as_list(value: Any, what: str) -> list:
    if isinstance(value, (str, int)):
        return [value]
    if value is None:
        return []
    try:
        return list(value)
    except TypeError:
        raise InvalidInputError(f"{what} must be a string or a list, got {type(value).__name__}") from None


def _plan_grid(models: list[str], layers: Any, contexts: list[str], subjects: list[str],
               assembly: PereiraAssembly, protocol: str, settings: PLSSettings, dtype: str | None
               ) -> tuple[list[_Cell], list[dict[str, Any]]]:
    cells: list[_Cell] = []
    skipped: list[dict[str, Any]] = []
    seen: set[str] = set()
    for requested in models:
        try:
            spec = get_spec(requested)
        except (UnknownModelError, UnsupportedModelError) as error:
            kind = "unsupported model" if isinstance(error, UnsupportedModelError) else "unknown model"
            skipped.append(_base_row(str(requested), "", None, None, None, protocol, assembly, "skipped",
                                     f"{kind}: {error}"))
            logger.warning("sweep: skipping %r: %s", requested, error)
            continue
        if spec.model_id in seen:
            continue
        seen.add(spec.model_id)
        try:
            chosen, unknown = resolve_layers(spec, layers)
        except Exception as error:  # noqa: BLE001  (config unreadable, hub id not cached offline, ...)
            skipped.append(_base_row(spec.model_id, spec.source, None, None, None, protocol, assembly, "failed",
                                     f"could not read the model's layer structure: {type(error).__name__}: "
                                     f"{error}"))
            logger.warning("sweep: %s: could not read its layers: %s", spec.model_id, error)
            continue
        for name, reason in unknown:
            skipped.append(_base_row(spec.model_id, spec.source, name, None, None, protocol, assembly, "skipped",
                                     f"unknown layer: {reason}"))
            logger.warning("sweep: skipping %s layer %s: %s", spec.model_id, name, reason)
        for layer in chosen:
            layer_spec = dataclasses.replace(spec, layer=layer.name)
            for context in contexts:
                for subject in subjects:
                    cells.append(_Cell(layer_spec, layer, layer.name == spec.layer, context, subject,
                                       _cell_id(layer_spec, context, subject, assembly, protocol, settings, dtype)))
    return cells, skipped


def _default_extractors(num_gpus_per_actor: float, n_models: int) -> int:
    import ray

    resources = ray.cluster_resources()
    if num_gpus_per_actor > 0:
        limit = int(resources.get("GPU", 0) // num_gpus_per_actor)
    else:  # leave half the CPUs to the fit tasks
        limit = int(resources.get("CPU", 1) // 2)
    return max(1, min(limit, n_models))


def run_sweep(models: str | Sequence[str], subjects: str | Iterable[str] = "all",
              layers: str | Sequence[str | int] = "mapped",
              contexts: Sequence[str] = ("sentence",), dataset: str | PereiraAssembly = "brainscore",
              cache: str | os.PathLike | None = "berg_dir", out: str | os.PathLike = "sweep_out",
              protocol: str = "pls-groupkfold", n_components: int = 25, device: str = "auto", *,
              settings: PLSSettings | None = None, num_gpus: float = 0.0, dtype: str | None = None,
              batch_size: int = 32, max_extractors: int | None = None, plots: bool = True) -> pd.DataFrame:
    """Score every (model, layer, context, subject) cell on Ray and write tables, plots and a report to ``out``.

    Args:
        models: model ids (``berg_ray.list_models()``); unknown or unsupported ids become ``skipped`` rows.
        subjects: ``"all"`` or subject ids (unknown ids raise :class:`~berg_ray.errors.UnknownSubjectError`).
        layers: ``"mapped"`` (the registry's layer), ``"all"`` (every block) or a list of module names and/or block
            indices; names a model lacks become ``skipped`` rows.
        contexts: context policies (``"sentence"``, ``"passage"``, ``"running"``).
        dataset: ``"brainscore"``, ``"synthetic"``, a path/URL to a Pereira ``.nc`` or a loaded assembly.
        cache: encoding-model cache root (folder or ``s3://``), read and written by ``pls-groupkfold``; ``None``
            disables it.
        out: output folder (local); rerunning into the same folder resumes.
        protocol: ``"pls-groupkfold"`` (PLS, ``n_components``, GroupKFold(10) by story: BERG's encoding model) or
            ``"brainscore-linear"`` (brainscore's Pereira2018 ``-linear-shuffle`` raw score; comparable to the
            benchmark with ``contexts=("passage",)`` and all subjects).
        n_components: PLS components (ignored when ``settings`` is given).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the extractor actors.
        settings: full PLS/CV settings (overrides ``n_components``).
        num_gpus: GPUs per extractor actor (fractions allowed).
        max_extractors: models loaded at the same time (default: one per two CPUs, or one per GPU).
        plots: write the PNG plots and ``report.md``.

    Returns:
        the per-cell table (also ``out/scores.parquet`` and ``out/scores.csv``), in grid order; columns
        :data:`COLUMNS` plus ``roi_<ROI>`` medians. ``table.attrs["run"]`` holds this run's counts and seconds.

    Raises:
        InvalidInputError: an empty grid (no models, contexts, subjects or layers), an unknown protocol or context.
    """
    from berg_ray.distributed import _as_store, init_ray

    started = time.perf_counter()
    models = [m for m in _as_list(models, "models")]
    if not models:
        raise InvalidInputError("empty grid: no models given; pass at least one model id (see `berg-ray models`)")
    if protocol not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    contexts = list(dict.fromkeys(_as_list(contexts, "contexts")))
    if not contexts:
        raise InvalidInputError(f"empty grid: no contexts given; allowed: {', '.join(CONTEXTS)}")
    for context in contexts:
        check_context(context)
    if not (isinstance(layers, str) and layers in ("mapped", "all")):
        if isinstance(layers, str):
            layers = [part for part in layers.split(",") if part.strip()]
        layers = _as_list(layers, "layers")
        if not layers:
            raise InvalidInputError("empty grid: no layers given; use 'mapped', 'all' or a list of layer names")
    subject_list = _as_list(subjects, "subjects")
    if subject_list == ["all"]:
        subjects = "all"
    elif not subject_list:
        raise InvalidInputError("empty grid: no subjects given; use 'all' or a list of subject ids")
    else:
        subjects = subject_list
    settings = settings or PLSSettings(n_components=n_components)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if protocol == "brainscore-linear" and "passage" not in contexts:
        logger.warning("protocol 'brainscore-linear' with contexts %s: BrainScore's benchmark digests each passage "
                       "separately; add 'passage' for comparable scores", contexts)

    assembly = dataset if isinstance(dataset, PereiraAssembly) else load_pereira(dataset)
    chosen_subjects = resolve_subjects(assembly, subjects)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if assembly.synthetic:
        logger.warning("SYNTHETIC dataset: the scores measure recovery of a planted map, not brain predictivity")

    cells, skipped = _plan_grid(models, layers, contexts, chosen_subjects, assembly, protocol, settings, dtype)
    if not cells:
        logger.warning("sweep: no runnable cell in the grid (every model or layer was skipped)")
    rows: dict[str, dict[str, Any]] = {}
    run = {"cells": len(cells), "skipped": sum(r["status"] == "skipped" for r in skipped), "reused": 0,
           "from_cache": 0, "computed": 0, "failed": sum(r["status"] == "failed" for r in skipped),
           "feature_passes": 0}
    todo: list[_Cell] = []
    for cell in cells:
        row = _read_cell(out_dir, cell.cell_id)
        if row is not None:
            rows[cell.cell_id] = row
            run["reused"] += 1
        else:
            todo.append(cell)
    if run["reused"]:
        logger.info("sweep: %d of %d cell(s) already finished in %s", run["reused"], len(cells), out_dir)

    store = _as_store(cache) if protocol == "pls-groupkfold" and cache is not None else None
    if store is not None and todo:
        remaining = []
        for cell in todo:
            try:
                cached = load_cached(store, cell.spec, assembly, cell.subject, cell.context, settings, dtype)
            except CacheIntegrityError as error:
                logger.warning("sweep: %s: %s; refitting", cell.cell_id, error)
                cached = None
            if cached is None:
                remaining.append(cell)
                continue
            row = _cell_row(cell, protocol, assembly, "ok")
            row.update(_summary_fields(cached.voxels, cached.cv_r, None), from_cache=True,
                       fit_seconds=cached.fit_seconds, cache_key=cached.cache_key)
            _write_cell(out_dir, row, _voxel_arrays(cached.voxels, cached.cv_r, None))
            rows[cell.cell_id] = row
            run["from_cache"] += 1
        todo = remaining

    if todo:
        init_ray()
        _compute_cells(todo, assembly, protocol, settings, store.url if store else None, out_dir, rows, run,
                       device=device, num_gpus=num_gpus, dtype=dtype, batch_size=batch_size,
                       max_extractors=max_extractors, total=len(cells))

    table = _assemble(cells, skipped, rows)
    run["seconds"] = round(time.perf_counter() - started, 2)
    write_outputs(table, out_dir, assembly, protocol, settings, run, plots=plots)
    table.attrs["run"] = run
    logger.info("sweep: %d cell(s): %d reused, %d from the fit cache, %d computed, %d failed, %d skipped in %.1f s",
                run["cells"], run["reused"], run["from_cache"], run["computed"], run["failed"], run["skipped"],
                run["seconds"])
    return table


def _compute_cells(todo: list[_Cell], assembly: PereiraAssembly, protocol: str, settings: PLSSettings,
                   cache_url: str | None, out: Path, rows: dict[str, dict[str, Any]], run: dict[str, Any], *,
                   device: str, num_gpus: float, dtype: str | None, batch_size: int, max_extractors: int | None,
                   total: int) -> None:
    """Features per model × context on extractor actors, then one scoring task per cell; rows written as they come."""
    import ray

    from berg_ray.distributed import actor_resources

    by_model: dict[str, list[_Cell]] = {}
    for cell in todo:
        by_model.setdefault(cell.spec.model_id, []).append(cell)
    resources, torch_device = actor_resources(num_gpus, device=device)
    import torch

    from berg_ray.features import resolve_dtype

    resolve_dtype(dtype, torch.device(torch_device))  # a bad dtype fails here, not inside every actor
    limit = max_extractors or _default_extractors(resources["num_gpus"], len(by_model))
    assembly_ref = ray.put(assembly)
    sentences, passages = list(assembly.sentences), list(assembly.passages)
    actor_class = ray.remote(LayerFeaturesActor).options(max_restarts=0, **resources)
    score_task = ray.remote(score_cell).options(num_cpus=1)
    queue = deque(by_model)
    active: dict[str, list] = {}  # model id -> [actor, feature passes still running]
    pending: dict[Any, tuple] = {}
    done = [total - len(todo)]

    def finish(cell: _Cell, row: dict[str, Any], arrays: dict[str, np.ndarray] | None) -> None:
        _write_cell(out, row, arrays)
        rows[cell.cell_id] = row
        done[0] += 1
        if row["status"] == "ok":
            run["computed"] += 1
            logger.info("sweep [%d/%d] %s %s %s %s: median r %.3f", done[0], total, cell.spec.model_id,
                        cell.layer.name, cell.context, cell.subject, row["median_r"])
        else:
            run["failed"] += 1
            logger.warning("sweep [%d/%d] %s %s %s %s FAILED: %s", done[0], total, cell.spec.model_id,
                           cell.layer.name, cell.context, cell.subject, row["reason"])

    def start_model() -> None:
        model_id = queue.popleft()
        cells = by_model[model_id]
        layer_names = list(dict.fromkeys(c.layer.name for c in sorted(cells, key=lambda c: c.layer.index or 0)))
        spec = cells[0].spec
        actor = actor_class.remote(spec, layer_names, torch_device, dtype, batch_size)
        contexts = list(dict.fromkeys(c.context for c in cells))
        for context in contexts:
            refs = actor.features.options(num_returns=len(layer_names) + 1).remote(sentences, context, passages)
            pending[refs[-1]] = ("features", model_id, context, dict(zip(layer_names, refs[:-1])))
        active[model_id] = [actor, len(contexts)]
        logger.info("sweep: extracting %d layer(s) × %d context(s) of %s", len(layer_names), len(contexts), model_id)

    try:
        while queue and len(active) < limit:
            start_model()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            kind, *payload = pending.pop(ready[0])
            if kind == "features":
                model_id, context, layer_refs = payload
                cells = [c for c in by_model[model_id] if c.context == context]
                try:
                    seconds = float(ray.get(ready[0]))
                except Exception as error:  # noqa: BLE001  (the model failed to load or run: its cells fail)
                    reason = f"feature extraction failed: {_short_error(error)}"
                    for cell in cells:
                        finish(cell, _cell_row(cell, protocol, assembly, "failed", reason), None)
                else:
                    run["feature_passes"] += 1
                    for cell in cells:
                        ref = score_task.remote(cell.spec, layer_refs[cell.layer.name], assembly_ref, cell.subject,
                                                cell.context, protocol, settings, cache_url, dtype)
                        pending[ref] = ("cell", cell, seconds)
                active[model_id][1] -= 1
                if active[model_id][1] == 0:  # the features live on in the object store; free the actor's resources
                    ray.kill(active.pop(model_id)[0])
                    while queue and len(active) < limit:
                        start_model()
            else:
                cell, seconds = payload
                try:
                    result = ray.get(ready[0])
                except Exception as error:  # noqa: BLE001  (one failing cell never stops the sweep)
                    finish(cell, _cell_row(cell, protocol, assembly, "failed", _short_error(error)), None)
                    continue
                row = _cell_row(cell, protocol, assembly, "ok")
                row.update(result["fields"], features_seconds=seconds)
                finish(cell, row, result["arrays"])
    finally:  # interrupted (Ctrl-C, an error in this loop): free the cluster; finished cells are on disk
        for ref, entry in pending.items():
            if entry[0] == "cell":
                ray.cancel(ref)
        for actor, _ in active.values():
            ray.kill(actor)


def _short_error(error: BaseException) -> str:
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the original exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:500]


def _assemble(cells: list[_Cell], skipped: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    records = [rows[c.cell_id] for c in cells if c.cell_id in rows] + skipped
    table = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=list(COLUMNS))
    rois = sorted(c for c in table.columns if c.startswith("roi_"))
    for column in COLUMNS:
        if column not in table:
            table[column] = None
    head = list(COLUMNS[:COLUMNS.index("mean_r") + 1])
    table = table[head + rois + [c for c in COLUMNS if c not in head]]
    for column in ("layer_index", "n_layers", "n_voxels"):
        table[column] = pd.array(pd.to_numeric(table[column], errors="coerce"), dtype="Int64")
    for column in ("median_r", "mean_r", "fit_seconds", "features_seconds", *rois):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    table["mapped_layer"] = table["mapped_layer"].astype("boolean")
    table["from_cache"] = table["from_cache"].fillna(False).astype(bool)
    table["synthetic"] = table["synthetic"].astype(bool)
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------------
# Tables and report


def summarize_layers(table: pd.DataFrame, out: str | os.PathLike, n_dataset_subjects: int | None = None
                     ) -> pd.DataFrame:
    """One row per model × layer × context (finished cells only): scores across subjects and pooled over voxels.

    Columns: ``median_r`` (median over subjects of each subject's median r), ``mean_subject_median_r``,
    ``pooled_score`` (BrainScore's aggregation over the pooled voxels of all subjects in the grid: for
    ``brainscore-linear`` the median over voxels per split, then the mean over splits, i.e. the benchmark's raw
    score when all subjects and the passage context are used; for ``pls-groupkfold`` the median CV r over the pooled
    voxels), ``best_layer`` (highest ``median_r`` of its model and context) and ``brainscore_comparable``.
    """
    ok = table[table["status"] == "ok"]
    columns = ["model", "layer", "layer_index", "n_layers", "mapped_layer", "context", "protocol", "n_subjects",
               "median_r", "mean_subject_median_r", "pooled_score", "best_layer", "brainscore_comparable",
               "synthetic"]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    records = []
    for (model, layer, context), group in ok.groupby(["model", "layer", "context"], sort=False):
        split_parts, voxel_parts = [], []
        for relative in group["voxel_r_file"]:
            with np.load(Path(out) / relative, allow_pickle=False) as arrays:
                voxel_parts.append(arrays["r"])
                if "split_r" in arrays:
                    split_parts.append(arrays["split_r"])
        protocol = group["protocol"].iloc[0]
        if split_parts and len(split_parts) == len(voxel_parts):
            pooled = aggregate_split_r(np.concatenate(split_parts, axis=1))
        else:
            pooled = float(np.nanmedian(np.concatenate(voxel_parts)))
        first = group.iloc[0]
        records.append({
            "model": model, "layer": layer, "layer_index": first["layer_index"], "n_layers": first["n_layers"],
            "mapped_layer": first["mapped_layer"], "context": context, "protocol": protocol,
            "n_subjects": int(group["subject"].nunique()), "median_r": float(np.nanmedian(group["median_r"])),
            "mean_subject_median_r": float(np.nanmean(group["median_r"])), "pooled_score": pooled,
            "brainscore_comparable": bool(protocol == "brainscore-linear" and context == "passage"
                                          and n_dataset_subjects is not None
                                          and group["subject"].nunique() == n_dataset_subjects),
            "synthetic": bool(first["synthetic"]),
        })
    summary = pd.DataFrame.from_records(records)
    best = summary.groupby(["model", "context"])["median_r"].transform("max")
    summary["best_layer"] = summary["median_r"] == best
    for column in ("layer_index", "n_layers"):
        summary[column] = pd.array(pd.to_numeric(summary[column], errors="coerce"), dtype="Int64")
    return summary[columns]


def write_outputs(table: pd.DataFrame, out: str | os.PathLike, assembly: PereiraAssembly, protocol: str,
                  settings: PLSSettings, run: dict[str, Any], plots: bool = True) -> dict[str, Path]:
    """``scores.parquet``/``.csv``, ``summary.parquet``/``.csv``, ``last_run.json`` and (``plots``) PNGs and
    ``report.md`` in ``out``; returns their paths."""
    out = Path(out)
    files: dict[str, Path] = {}
    for name, frame in (("scores", table), ("summary", summarize_layers(table, out, len(assembly.subjects)))):
        _atomic_write(out / f"{name}.csv", frame.to_csv(index=False).encode())
        parquet = out / f".{name}.{uuid.uuid4().hex}.parquet"
        frame.to_parquet(parquet, index=False)
        os.replace(parquet, out / f"{name}.parquet")
        files[name] = out / f"{name}.parquet"
        if name == "summary":
            summary = frame
    meta = {"run": run, "protocol": protocol, "pls": settings.to_dict() if protocol == "pls-groupkfold" else None,
            "cv": (f"GroupKFold({settings.cv_folds}) by {settings.cv_group}" if protocol == "pls-groupkfold"
                   else "ShuffleSplit(10, train_size=0.9, random_state=1) on stimulus_id"),
            "dataset": assembly.source, "dataset_sha256": assembly.sha256, "synthetic": assembly.synthetic,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    _atomic_write(out / "last_run.json", json.dumps(meta, indent=2, default=str).encode())
    files["last_run"] = out / "last_run.json"
    if plots:
        from berg_ray.plots import write_plots, write_report

        pngs = write_plots(table, summary, out, synthetic=assembly.synthetic)
        files.update(pngs)
        files["report"] = write_report(table, summary, out, pngs, meta)
    return files
