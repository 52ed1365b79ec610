"""Sweeps: score a dataset × model × layer × context × subject grid on Ray, resumably, into tables, plots and a
report.

    table = run_sweep(["brainscore_language-distilgpt2", "brainscore_language-gpt2"], layers="all",
                      contexts=("sentence", "passage"), dataset="brainscore", out="sweep_out")
    table = run_sweep(["brainscore_language-gpt2"], datasets=["Pereira2018.language", "Tuckute2024.language"],
                      benchmarks=["Tuckute2024-linear"], out="sweep_out")  # each dataset: its splits and context

One module per step:

* :mod:`~berg_ray.sweep.grid`: the cells (dataset, model, layer, context, subject) and the skipped rows with
  reasons (a context a dataset cannot be read with, a protocol that cannot score a dataset); every cell's id hashes
  everything that changes its number (model weights, layer, context, subject, dataset sha256, protocol and its
  settings, dtype);
* :mod:`~berg_ray.sweep.protocols`: the scoring protocols, a registry of scorers (``pls-groupkfold``: PLS on all
  presentations with the dataset's own CV (Pereira: GroupKFold by story), fits shared with the encoding-model
  cache of the API and the CLI;
  ``brainscore-linear``: brainscore's ``Pereira2018.384sentences-linear-shuffle`` metric; ``brainscore-ridge``:
  its ``Pereira2018.384sentences-ridge`` metric, one ridge fit over every subject's voxels; both Pereira2018 only);
* :mod:`~berg_ray.sweep.cells`: the store of finished cells (``out/cells/<cell-id>.json`` plus per-voxel r in
  ``out/voxel_r/<cell-id>.npz``, no pickle, atomic, local or ``s3://``): a rerun reads finished cells instead of
  recomputing them, and cells whose fit is in the cache are filled from it without features;
* :mod:`~berg_ray.sweep.scheduler`: features once per model × context on extractor actors (every requested layer
  in one forward pass), one Ray task per layer's cells (pls-groupkfold: all its subjects in one batched PLS pass)
  or per cell (the other protocols); a failing cell becomes a ``failed`` row (retried on the next run);
* :mod:`~berg_ray.sweep.report`: ``scores.parquet``/``.csv`` (one row per cell), ``summary.csv``/``.parquet`` (one
  row per model × layer × context, with the BrainScore-style pooled score), PNG plots and ``report.md``; with a
  control model (OASM, random embedding) among the models, ``controls.csv`` and the report's Controls section;
* :mod:`~berg_ray.sweep.benchmarks`: the optional benchmark scores of every model (``berg_ray.score``), stored
  under ``out/benchmarks/`` and reused on a rerun;
* :mod:`~berg_ray.sweep.run`: :func:`run_sweep`, which ties them together.

Bad input never stops the sweep: unknown or unsupported models and unknown layers become ``skipped`` rows with the
reason.
"""

from berg_ray.sweep.cells import COLUMNS, CellRow, CellStore
from berg_ray.sweep.benchmarks import BENCHMARK_COLUMNS, score_benchmarks
from berg_ray.sweep.grid import SWEEP_FORMAT_VERSION, Cell, DatasetAxis, SweepDataset
from berg_ray.sweep.protocols import SCORERS, Scorer, get_scorer
from berg_ray.sweep.report import DATASET_MODEL_COLUMNS, dataset_model_table, summarize_layers, write_outputs
from berg_ray.sweep.run import run_sweep

__all__ = ["BENCHMARK_COLUMNS", "COLUMNS", "DATASET_MODEL_COLUMNS", "SCORERS", "SWEEP_FORMAT_VERSION", "Cell",
           "CellRow", "CellStore", "DatasetAxis", "Scorer", "SweepDataset", "dataset_model_table", "get_scorer",
           "run_sweep", "score_benchmarks", "summarize_layers", "write_outputs"]
