""":func:`run_sweep`: plan the grid, reuse what is finished or cached, compute the rest on Ray, write the outputs."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from berg_ray.errors import CacheIntegrityError
from berg_ray.fitting import resolve_subjects
from berg_ray.neural import PereiraAssembly, load_pereira
from berg_ray.options import AUTO_DTYPE, DEFAULT_BATCH_SIZE
from berg_ray.regression import PLSSettings
from berg_ray.request import check_dtype
from berg_ray.store import EncodingModelStore
from berg_ray.sweep.cells import CellRow, CellScore, CellStore
from berg_ray.sweep.grid import Cell, check_axes, plan_grid
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


def run_sweep(models: str | Sequence[str], subjects: str | Iterable[str] = "all",
              layers: str | Sequence[str | int] = "mapped",
              contexts: Sequence[str] = ("sentence",), dataset: str | PereiraAssembly = "brainscore",
              cache: str | os.PathLike | EncodingModelStore | None = "berg_dir", out: str | os.PathLike = "sweep_out",
              protocol: str = "pls-groupkfold", n_components: int = 25, device: str = "auto", *,
              settings: PLSSettings | None = None, num_gpus: float = 0.0, dtype: str | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, max_extractors: int | None = None,
              plots: bool = True) -> pd.DataFrame:
    """Score every (model, layer, context, subject) cell on Ray and write tables, plots and a report to ``out``.

    Args:
        models: model ids (``berg_ray.list_models()``); unknown or unsupported ids become ``skipped`` rows.
        subjects: ``"all"`` or subject ids (unknown ids raise :class:`~berg_ray.errors.UnknownSubjectError`).
        layers: ``"mapped"`` (the registry's layer), ``"all"`` (every block) or a list of module names and/or block
            indices; names a model lacks become ``skipped`` rows.
        contexts: context policies (``"sentence"``, ``"passage"``, ``"running"``).
        dataset: ``"brainscore"``, ``"synthetic"``, a path/URL to a Pereira ``.nc`` or a loaded assembly.
        cache: encoding-model cache root (folder or ``s3://``), read and written by protocols that cache their fits
            (``pls-groupkfold``); ``None`` disables it.
        out: output folder or ``s3://`` prefix; rerunning into the same output resumes.
        protocol: ``"pls-groupkfold"`` (PLS, ``n_components``, GroupKFold(10) by story: BERG's encoding model),
            ``"brainscore-linear"`` (brainscore's Pereira2018 ``-linear-shuffle`` raw score) or ``"brainscore-ridge"``
            (its ``-ridge`` raw score); the brainscore ones are comparable to the benchmark with
            ``contexts=("passage",)`` and all subjects. Control models among ``models`` (``oasm-sigma*``,
            ``randomembedding-*``) are scored alike and reported beside the language models.
        n_components: PLS components (ignored when ``settings`` is given).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for the extractor actors.
        settings: full PLS/CV settings (overrides ``n_components``).
        num_gpus: GPUs per extractor actor (fractions allowed).
        dtype: forward-pass precision of the extractors (``None``/``"float32"``, ``"bfloat16"``, ``"float16"`` on
            GPU); part of every cell id and fit-cache key.
        batch_size: sequences per forward pass of the extractors.
        max_extractors: models loaded at the same time (default: one per two CPUs, or one per GPU).
        plots: write the PNG plots and ``report.md``.

    Returns:
        the per-cell table (also ``out/scores.parquet`` and ``out/scores.csv``), in grid order; columns
        :data:`~berg_ray.sweep.cells.COLUMNS` plus ``roi_<ROI>`` medians. ``table.attrs["run"]`` holds this run's
        counts and seconds.

    Raises:
        InvalidInputError: an empty grid (no models, contexts, subjects or layers), an unknown protocol, context or
            dtype, or a bad batch size.
    """
    from berg_ray.distributed import actors_dtype, init_ray

    started = time.perf_counter()
    axes = check_axes(models, layers, contexts, subjects)
    scorer = get_scorer(protocol)
    settings = settings or PLSSettings(n_components=n_components)
    dtype = check_dtype(dtype)
    batch_size = check_batch_size(batch_size)
    device = check_device_name(device)
    if scorer.comparable_context and scorer.comparable_context not in axes.contexts:
        logger.warning("protocol %r with contexts %s: BrainScore's benchmark digests each passage separately; add "
                       "%r for comparable scores", protocol, axes.contexts, scorer.comparable_context)

    assembly = dataset if isinstance(dataset, PereiraAssembly) else load_pereira(dataset)
    chosen_subjects = resolve_subjects(assembly, axes.subjects)
    store = CellStore(out)
    if assembly.synthetic:
        logger.warning("SYNTHETIC dataset: the scores measure recovery of a planted map, not brain predictivity")

    if dtype == AUTO_DTYPE:
        # the precision of the extractors' device, from a probe where they run, before any cell id (ids hold the
        # dtype): Ray starts here even if every cell turns out to be finished; an explicit dtype avoids that
        init_ray()
        dtype = actors_dtype(dtype, device, num_gpus)
    grid = plan_grid(axes, chosen_subjects, assembly.sha256, scorer, settings, dtype=dtype, batch_size=batch_size,
                     device=device)
    if not grid.cells:
        logger.warning("sweep: no runnable cell in the grid (every model or layer was skipped)")
    counts = RunCounts(cells=len(grid.cells), skipped=sum(r.status == "skipped" for r in grid.skipped),
                       failed=sum(r.status == "failed" for r in grid.skipped))
    rows = store.finished(c.cell_id for c in grid.cells)
    counts.reused = len(rows)
    if counts.reused:
        logger.info("sweep: %d of %d cell(s) already finished in %s", counts.reused, len(grid.cells), store)
    todo = [cell for cell in grid.cells if cell.cell_id not in rows]

    fit_cache = None
    if scorer.caches_fits and cache is not None:
        fit_cache = cache if isinstance(cache, EncodingModelStore) else EncodingModelStore(cache)
    if fit_cache is not None and todo:
        todo = _fill_from_cache(todo, scorer, assembly, settings, fit_cache, store, rows, counts)

    if todo:
        init_ray()
        done = len(grid.cells) - len(todo)

        def on_outcome(outcome: CellOutcome) -> None:
            nonlocal done
            cell = outcome.cell
            if outcome.score is None:
                row = CellRow.for_cell(cell, protocol, assembly, "failed", outcome.reason)
                store.write(row, None)
                counts.failed += 1
            else:
                row = outcome.score.fill(CellRow.for_cell(cell, protocol, assembly, "ok"),
                                         features_seconds=outcome.features_seconds)
                store.write(row, outcome.score.arrays)
                counts.computed += 1
            rows[cell.cell_id] = row
            done += 1
            if row.status == "ok":
                logger.info("sweep [%d/%d] %s %s %s %s: median r %.3f", done, len(grid.cells), cell.spec.model_id,
                            cell.layer.name, cell.context, cell.subject, row.median_r)
            else:
                logger.warning("sweep [%d/%d] %s %s %s %s FAILED: %s", done, len(grid.cells), cell.spec.model_id,
                               cell.layer.name, cell.context, cell.subject, row.reason)

        counts.feature_passes = compute_cells(todo, assembly, protocol, settings,
                                              fit_cache.url if fit_cache is not None else None,
                                              ActorSettings(num_gpus=num_gpus, max_extractors=max_extractors),
                                              on_outcome)

    ordered = [rows[c.cell_id] for c in grid.cells if c.cell_id in rows]
    table = assemble_table(ordered + [CellRow.skipped(row, protocol, assembly) for row in grid.skipped])
    counts.seconds = round(time.perf_counter() - started, 2)
    run = dataclasses.asdict(counts)
    write_outputs(table, store, assembly, protocol, settings, run, plots=plots,
                  extraction={"dtype": dtype, "batch_size": batch_size, "device": device})
    table.attrs["run"] = run
    logger.info("sweep: %d cell(s): %d reused, %d from the fit cache, %d computed, %d failed, %d skipped in %.1f s",
                counts.cells, counts.reused, counts.from_cache, counts.computed, counts.failed, counts.skipped,
                counts.seconds)
    return table


def _fill_from_cache(todo: list[Cell], scorer: Scorer, assembly: PereiraAssembly, settings: PLSSettings,
                     fit_cache: EncodingModelStore, store: CellStore, rows: dict[str, CellRow],
                     counts: RunCounts) -> list[Cell]:
    """Store the cells whose fit is in the encoding-model cache (no features needed); returns the others."""
    remaining = []
    for cell in todo:
        try:
            scores = scorer.cached(cell.request, cell.subject, assembly, settings, fit_cache)
        except CacheIntegrityError as error:
            logger.warning("sweep: %s: %s; refitting", cell.cell_id, error)
            scores = None
        if scores is None:
            remaining.append(cell)
            continue
        score = CellScore.from_scores(scores, assembly.voxels(cell.subject), scores.fit_seconds)
        row = score.fill(CellRow.for_cell(cell, scorer.name, assembly, "ok"), from_cache=True)
        store.write(row, score.arrays)
        rows[cell.cell_id] = row
        counts.from_cache += 1
    return remaining
