""":func:`run_sweep`: load the datasets, plan the grid, reuse what is finished or cached, compute the rest on Ray,
score the optional benchmarks, write the outputs."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from berg_ray.dataset_layouts import check_context_for
from berg_ray.errors import CacheIntegrityError, InvalidInputError, UnknownSubjectError
from berg_ray.fitting import cv_groups, resolve_subjects, settings_for
from berg_ray.neural import NeuralAssembly, check_subject, load_dataset
from berg_ray.options import AUTO_DTYPE, DEFAULT_BATCH_SIZE
from berg_ray.regression import PLSSettings
from berg_ray.request import check_dtype
from berg_ray.store import EncodingModelStore
from berg_ray.sweep.benchmarks import score_benchmarks
from berg_ray.sweep.cells import CellRow, CellScore, CellStore
from berg_ray.sweep.grid import Cell, DatasetAxis, GridAxes, SkippedRow, SweepDataset, check_axes, plan_grid
from berg_ray.sweep.protocols import Scorer, get_scorer
from berg_ray.sweep.report import assemble_table, write_outputs
from berg_ray.sweep.scheduler import ActorSettings, CellOutcome, compute_cells
from berg_ray.validation import check_batch_size, check_device_name

logger = logging.getLogger(__name__)


@dataclass
class RunCounts:
    """What one run did with the grid's cells (``table.attrs["run"]`` and ``last_run.json`` hold it as a dict)."""

    cells: int = 0
    skipped: int = 0
    reused: int = 0  # finished in an earlier run into the same output
    from_cache: int = 0  # filled from the encoding-model cache, without features
    computed: int = 0
    failed: int = 0
    feature_passes: int = 0
    seconds: float = 0.0


def dataset_names(dataset: str | os.PathLike | NeuralAssembly | None,
                  datasets: str | os.PathLike | NeuralAssembly | Sequence[str | os.PathLike | NeuralAssembly] | None
                  ) -> list[str | NeuralAssembly]:
    """The sweep's datasets, in order, duplicates once: ``datasets`` (one or a list), else ``[dataset]``, else
    ``["brainscore"]``. Both given, or an empty ``datasets``: :class:`InvalidInputError`."""
    if dataset is not None and datasets is not None:
        raise InvalidInputError(f"give dataset= (one dataset) or datasets= (several), not both: got dataset="
                                f"{dataset!r} and datasets={datasets!r}")
    if datasets is None:
        chosen = [dataset if dataset is not None else "brainscore"]
    elif isinstance(datasets, (str, os.PathLike, NeuralAssembly)):
        chosen = [datasets]
    else:
        chosen = list(datasets)
    if not chosen:
        raise InvalidInputError("empty grid: no datasets given; use brainscore ids (see `berg-ray datasets`), "
                                "'synthetic', 'synthetic:<id>' or paths/URLs of .nc files")
    names = [item if isinstance(item, NeuralAssembly) else os.fspath(item) for item in chosen]
    return list(dict.fromkeys(names))


def load_datasets(names: Sequence[str | NeuralAssembly]) -> list[tuple[str, NeuralAssembly]]:
    """Load each dataset once: ``[(name, assembly)]`` in order; a file already loaded under another name (same
    sha256, e.g. 'brainscore' and 'Pereira2018.language') is dropped with a warning."""
    loaded: list[tuple[str, NeuralAssembly]] = []
    seen: dict[str, str] = {}
    for name in names:
        assembly = name if isinstance(name, NeuralAssembly) else load_dataset(name)
        label = assembly.source if isinstance(name, NeuralAssembly) else name
        if assembly.sha256 in seen:
            logger.warning("sweep: dataset %r is the same file as %r (sha256 %s…); scoring it once", label,
                           seen[assembly.sha256], assembly.sha256[:12])
            continue
        seen[assembly.sha256] = label
        if assembly.synthetic:
            logger.warning("SYNTHETIC dataset %s: its scores measure recovery of a planted map, not brain "
                           "predictivity", label)
        loaded.append((label, assembly))
    return loaded


def dataset_labels(assemblies: Sequence[NeuralAssembly]) -> list[str]:
    """Each dataset's name in the tables: its brainscore id (``synthetic:<id>`` for a stand-in), with
    ``@<sha256[:8]>`` where two datasets of the sweep would share it."""
    bases = [f"synthetic:{a.identifier}" if a.synthetic else a.identifier for a in assemblies]
    return [f"{base}@{a.sha256[:8]}" if bases.count(base) > 1 else base for base, a in zip(bases, assemblies,
                                                                                           strict=True)]


def dataset_settings(name: str, label: str, assembly: NeuralAssembly,
                     settings: PLSSettings | Mapping[str, PLSSettings] | None, n_components: int,
                     regression: str = "pls") -> PLSSettings:
    """A dataset's settings: ``settings`` itself (one for every dataset), its entry in a mapping (keyed by the
    dataset's name as given, its label or its brainscore id), else the dataset's own CV splits with
    ``n_components`` and ``regression`` (:func:`~berg_ray.fitting.settings_for`)."""
    if isinstance(settings, PLSSettings):
        return settings
    for key in (name, label, assembly.identifier):
        if settings and key in settings:
            return settings[key]
    return settings_for(assembly, n_components, regression)


def settings_refusal(assembly: NeuralAssembly, settings: PLSSettings) -> str:
    """Why ``settings``' CV cannot split ``assembly`` (a cv_group it lacks, too few groups); ``""`` when it can."""
    try:
        settings.cv_splits(cv_groups(assembly, settings), assembly.n_presentations)
    except InvalidInputError as error:
        return f"settings cannot score {assembly.identifier}: {error}"
    return ""


def dataset_contexts(assembly: NeuralAssembly, contexts: Sequence[str] | None) -> tuple[tuple[str, ...],
                                                                                        dict[str, str]]:
    """The contexts a dataset's cells use (``None``: its default one), and ``{context: reason}`` for the requested
    ones it cannot be read with (:func:`~berg_ray.dataset_layouts.check_context_for`)."""
    if contexts is None:
        return (assembly.layout.default_context,), {}
    usable, refused = [], {}
    for context in contexts:
        try:
            usable.append(check_context_for(assembly.layout, context))
        except InvalidInputError as error:
            refused[context] = str(error)
            logger.warning("sweep: %s", error)
    return tuple(usable), refused


def dataset_subjects(assemblies: Sequence[NeuralAssembly], subjects: str | list[str]) -> list[list[str]]:
    """Each dataset's subjects of the grid: all of them for ``"all"``; else, with one dataset, the ids checked
    (:func:`~berg_ray.fitting.resolve_subjects`); with several, the given ids each dataset has (an id in none of
    them raises :class:`~berg_ray.errors.UnknownSubjectError` naming every dataset's subjects)."""
    if subjects == "all" or len(assemblies) == 1:
        return [resolve_subjects(assembly, subjects) for assembly in assemblies]
    chosen: list[list[str]] = [[] for _ in assemblies]
    for subject in subjects:
        found = False
        for k, assembly in enumerate(assemblies):
            try:
                chosen[k].append(check_subject(assembly, subject))
                found = True
            except UnknownSubjectError:
                pass
        if not found:
            known = "; ".join(f"{a.identifier}: {', '.join(a.subjects)}" for a in assemblies)
            raise UnknownSubjectError(f"Unknown subject {subject!r}: in none of the sweep's datasets ({known})")
    return [list(dict.fromkeys(ids)) for ids in chosen]


def plan_datasets(loaded: Sequence[tuple[str, NeuralAssembly]], axes: GridAxes, scorer: Scorer,
                  settings: PLSSettings | Mapping[str, PLSSettings] | None, n_components: int,
                  regression: str = "pls") -> list[SweepDataset]:
    """Each loaded dataset with its axis of the grid: label, subjects, contexts (and refused ones), settings, and
    the reason no cell of it can run (the protocol refuses it, its settings cannot split it, none of the requested
    subjects is in it)."""
    assemblies = [assembly for _, assembly in loaded]
    labels = dataset_labels(assemblies)
    planned = []
    for (name, assembly), label, subjects in zip(loaded, labels, dataset_subjects(assemblies, axes.subjects),
                                                 strict=True):
        chosen = dataset_settings(name, label, assembly, settings, n_components, regression)
        contexts, refused = dataset_contexts(assembly, axes.contexts)
        refusal = scorer.refusal(assembly) or settings_refusal(assembly, chosen)
        if not subjects:
            refusal = refusal or (f"none of the requested subjects is in {assembly.identifier} (its subjects: "
                                  f"{', '.join(assembly.subjects)})")
        if refusal:
            logger.warning("sweep: no cell of %s can run: %s", label, refusal)
        axis = DatasetAxis(label, assembly.sha256, tuple(subjects), contexts, chosen, refused, refusal)
        planned.append(SweepDataset(name, assembly, axis))
    return planned


def run_sweep(models: str | Sequence[str], subjects: str | Iterable[str] = "all",
              layers: str | Sequence[str | int] = "mapped", contexts: Sequence[str] | None = None,
              dataset: str | os.PathLike | NeuralAssembly | None = None,
              cache: str | os.PathLike | EncodingModelStore | None = "berg_dir", out: str | os.PathLike = "sweep_out",
              protocol: str = "pls-groupkfold", n_components: int = 25, device: str = "auto", *,
              regression: str = "pls", datasets: Sequence[str | os.PathLike | NeuralAssembly] | None = None,
              settings: PLSSettings | Mapping[str, PLSSettings] | None = None, num_gpus: float = 0.0,
              dtype: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE, max_extractors: int | None = None,
              plots: bool = True, benchmarks: Sequence[str] | None = None,
              benchmark_dataset: str | None = None) -> pd.DataFrame:
    """Score every (dataset, model, layer, context, subject) cell on Ray and write tables, plots and a report to
    ``out``.

    Args:
        models: model ids (``berg_ray.list_models()``); unknown or unsupported ids become ``skipped`` rows.
        subjects: ``"all"`` (every subject of each dataset) or subject ids (with one dataset, unknown ids raise
            :class:`~berg_ray.errors.UnknownSubjectError`; with several, each dataset takes the ids it has and an
            id in none of them raises).
        layers: ``"mapped"`` (the registry's layer), ``"all"`` (every block) or a list of module names and/or block
            indices; names a model lacks become ``skipped`` rows.
        contexts: context policies (``"sentence"``, ``"passage"``, ``"running"``); ``None``: each dataset's default
            (Pereira, Tuckute2024: sentence; Blank2014, Fedorenko2016: passage). A context a dataset cannot be read
            with (:func:`~berg_ray.dataset_layouts.check_context_for`) becomes a ``skipped`` row per model with the
            reason, for that dataset only.
        dataset: one dataset (a one-dataset sweep): a brainscore id (``"brainscore"`` = Pereira2018.language),
            ``"synthetic"``, ``"synthetic:<id>"``, a path/URL to a ``.nc`` or a loaded assembly; default
            ``"brainscore"``. Not with ``datasets``.
        cache: encoding-model cache root (folder or ``s3://``), read and written by protocols that cache their fits
            (``pls-groupkfold``); ``None`` disables it.
        out: output folder or ``s3://`` prefix; rerunning into the same output resumes.
        protocol: ``"pls-groupkfold"`` (PLS, ``n_components``, each dataset's own held-out splits: Pereira's
            GroupKFold(10) by story, BERG's encoding model), ``"brainscore-linear"`` (brainscore's Pereira2018
            ``-linear-shuffle`` raw score) or ``"brainscore-ridge"`` (its ``-ridge`` raw score); the brainscore ones
            score Pereira2018 only (other datasets become ``skipped`` rows; see ``benchmarks``) and are comparable to
            the benchmark with ``contexts=("passage",)`` and all subjects. Control models among ``models``
            (``oasm-sigma*``, ``randomembedding-*``) are scored alike and reported beside the language models.
        n_components: PLS components (ignored for the datasets ``settings`` gives settings for).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the extractor actors.
        regression: ``"pls"`` or ``"ridge"`` (``pls-groupkfold``'s mapping; ignored for the datasets ``settings``
            gives settings for).
        datasets: several datasets (each as ``dataset``), an axis of the grid: each is loaded once and its cells use
            its own settings and subjects. Not with ``dataset``.
        settings: full PLS/CV settings: one for every dataset (a dataset its CV cannot split becomes ``skipped``
            rows), or ``{dataset: settings}`` keyed by the dataset as given, its label or its brainscore id (the
            others: their own splits, :func:`~berg_ray.fitting.settings_for`).
        num_gpus: GPUs per extractor actor (fractions allowed).
        dtype: forward-pass precision of the extractors (``None``/``"float32"``, ``"bfloat16"``, ``"float16"`` on
            GPU); part of every cell id and fit-cache key.
        batch_size: sequences per forward pass of the extractors.
        max_extractors: models loaded at the same time (default: one per two CPUs, or one per GPU).
        plots: write the PNG plots and ``report.md``.
        benchmarks: brainscore benchmark ids to score every model on after the grid
            (:func:`berg_ray.score`, read lazily from ``berg_ray.benchmark_score``): ``benchmarks.csv`` (model ×
            benchmark: raw, ceiling, normalized) and the report's Benchmarks section; finished ones are reused on a
            rerun.
        benchmark_dataset: the ``dataset`` passed to :func:`berg_ray.score` (``None``: each benchmark's own
            brainscore data; ``"synthetic"``: its stand-in).

    Returns:
        the per-cell table (also ``out/scores.parquet`` and ``out/scores.csv``), in grid order; columns
        :data:`~berg_ray.sweep.cells.COLUMNS` plus ``roi_<ROI>`` medians. ``table.attrs["run"]`` holds this run's
        counts and seconds; ``table.attrs["benchmarks"]`` the benchmark table when ``benchmarks`` were given.

    Raises:
        InvalidInputError: an empty grid (no models, contexts, subjects, layers or datasets), both ``dataset`` and
            ``datasets``, an unknown protocol, context or dtype, or a bad batch size.
    """
    from berg_ray.distributed import actors_dtype, init_ray

    started = time.perf_counter()
    axes = check_axes(models, layers, contexts, subjects)
    scorer = get_scorer(protocol)
    dtype = check_dtype(dtype)
    batch_size = check_batch_size(batch_size)
    device = check_device_name(device)
    if scorer.comparable_context and axes.contexts is not None and scorer.comparable_context not in axes.contexts:
        logger.warning("protocol %r with contexts %s: BrainScore's benchmark digests each passage separately; add "
                       "%r for comparable scores", protocol, axes.contexts, scorer.comparable_context)

    planned = plan_datasets(load_datasets(dataset_names(dataset, datasets)), axes, scorer, settings, n_components,
                            regression)
    by_label = {d.label: d for d in planned}
    assemblies = {d.label: d.assembly for d in planned}
    cv_of = {d.label: scorer.describe(d.axis.settings)["cv"] for d in planned}
    store = CellStore(out)

    if dtype == AUTO_DTYPE:
        # the precision of the extractors' device, from a probe where they run, before any cell id (ids hold the
        # dtype): Ray starts here even if every cell turns out to be finished; an explicit dtype avoids that
        init_ray()
        dtype = actors_dtype(dtype, device, num_gpus)
    grid = plan_grid(axes, [d.axis for d in planned], scorer, dtype=dtype, batch_size=batch_size, device=device)
    if not grid.cells:
        logger.warning("sweep: no runnable cell in the grid (every model, layer or dataset was skipped)")
    counts = RunCounts(cells=len(grid.cells), skipped=sum(r.status == "skipped" for r in grid.skipped),
                       failed=sum(r.status == "failed" for r in grid.skipped))
    cell_dataset = {cell.cell_id: cell.dataset for cell in grid.cells}
    rows = {cell_id: dataclasses.replace(row, dataset=label, cv=cv_of[label])  # this run's names (old runs: none)
            for cell_id, row in store.finished(cell_dataset).items() for label in [cell_dataset[cell_id]]}
    counts.reused = len(rows)
    if counts.reused:
        logger.info("sweep: %d of %d cell(s) already finished in %s", counts.reused, len(grid.cells), store)
    todo = [cell for cell in grid.cells if cell.cell_id not in rows]

    fit_cache = None
    if scorer.caches_fits and cache is not None:
        fit_cache = cache if isinstance(cache, EncodingModelStore) else EncodingModelStore(cache)
    if fit_cache is not None and todo:
        todo = _fill_from_cache(todo, scorer, by_label, fit_cache, store, rows, counts)

    if todo:
        init_ray()
        done = len(grid.cells) - len(todo)

        def on_outcome(outcome: CellOutcome) -> None:
            nonlocal done
            cell = outcome.cell
            assembly = assemblies[cell.dataset]
            if outcome.score is None:
                row = CellRow.for_cell(cell, protocol, assembly, "failed", outcome.reason, cv_of[cell.dataset])
                store.write(row, None)
                counts.failed += 1
            else:
                row = outcome.score.fill(CellRow.for_cell(cell, protocol, assembly, "ok", cv=cv_of[cell.dataset]),
                                         features_seconds=outcome.features_seconds)
                store.write(row, outcome.score.arrays)
                counts.computed += 1
            rows[cell.cell_id] = row
            done += 1
            if row.status == "ok":
                logger.info("sweep [%d/%d] %s %s %s %s %s: median r %.3f", done, len(grid.cells), cell.dataset,
                            cell.spec.model_id, cell.layer.name, cell.context, cell.subject, row.median_r)
            else:
                logger.warning("sweep [%d/%d] %s %s %s %s %s FAILED: %s", done, len(grid.cells), cell.dataset,
                               cell.spec.model_id, cell.layer.name, cell.context, cell.subject, row.reason)

        counts.feature_passes = compute_cells(todo, assemblies, protocol, {d.label: d.axis.settings for d in planned},
                                              fit_cache.url if fit_cache is not None else None,
                                              ActorSettings(num_gpus=num_gpus, max_extractors=max_extractors),
                                              on_outcome)

    ordered = [rows[c.cell_id] for c in grid.cells if c.cell_id in rows]
    table = assemble_table(ordered + [_skipped_row(row, protocol, planned) for row in grid.skipped])
    benchmark_table = None
    if benchmarks:
        benchmark_table = score_benchmarks(grid.requests, benchmarks, store, dataset=benchmark_dataset,
                                           device=device, batch_size=batch_size)
    counts.seconds = round(time.perf_counter() - started, 2)
    run = dataclasses.asdict(counts)
    write_outputs(table, store, planned, protocol, run, plots=plots,
                  extraction={"dtype": dtype, "batch_size": batch_size, "device": device},
                  benchmarks=benchmark_table)
    table.attrs["run"] = run
    if benchmark_table is not None:
        table.attrs["benchmarks"] = benchmark_table
    logger.info("sweep: %d cell(s) on %d dataset(s): %d reused, %d from the fit cache, %d computed, %d failed, "
                "%d skipped in %.1f s", counts.cells, len(planned), counts.reused, counts.from_cache, counts.computed,
                counts.failed, counts.skipped, counts.seconds)
    return table


def _skipped_row(row: SkippedRow, protocol: str, planned: Sequence[SweepDataset]) -> CellRow:
    """The table row of a skipped model, layer, context or dataset: its dataset's (or, in a one-dataset sweep, the
    dataset's for rows of every dataset)."""
    label = row.dataset if row.dataset is not None else planned[0].label if len(planned) == 1 else None
    match = next((d for d in planned if d.label == label), None)
    return CellRow.skipped(row, protocol, match.assembly if match else None, label)


def _fill_from_cache(todo: list[Cell], scorer: Scorer, datasets: Mapping[str, SweepDataset],
                     fit_cache: EncodingModelStore, store: CellStore, rows: dict[str, CellRow],
                     counts: RunCounts) -> list[Cell]:
    """Store the cells whose fit is in the encoding-model cache (no features needed); returns the others."""
    remaining = []
    for cell in todo:
        assembly, settings = datasets[cell.dataset].assembly, datasets[cell.dataset].axis.settings
        try:
            scores = scorer.cached(cell.request, cell.subject, assembly, settings, fit_cache)
        except CacheIntegrityError as error:
            logger.warning("sweep: %s: %s; refitting", cell.cell_id, error)
            scores = None
        if scores is None:
            remaining.append(cell)
            continue
        score = CellScore.from_scores(scores, assembly.voxels(cell.subject), scores.fit_seconds)
        row = score.fill(CellRow.for_cell(cell, scorer.name, assembly, "ok", cv=scorer.describe(settings)["cv"]),
                         from_cache=True)
        store.write(row, score.arrays)
        rows[cell.cell_id] = row
        counts.from_cache += 1
    return remaining
