"""A sweep's outputs: the per-cell table, the per-layer summary, the dataset × model table, the benchmark table,
``last_run.json``, the plots and ``report.md``.

Every file goes through the sweep's :class:`~berg_ray.sweep.cells.CellStore` (atomic writes, local or ``s3://``).
"""

from __future__ import annotations

import datetime
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from berg_ray.scoring import aggregate_split_r
from berg_ray.sweep.cells import COLUMNS, CellRow, CellStore
from berg_ray.sweep.grid import SweepDataset
from berg_ray.sweep.protocols import get_scorer

SUMMARY_COLUMNS: tuple[str, ...] = (
    "dataset", "model", "layer", "layer_index", "n_layers", "mapped_layer", "context", "protocol", "n_subjects",
    "median_r", "mean_subject_median_r", "pooled_score", "best_layer", "brainscore_comparable", "synthetic",
)


def assemble_table(rows: list[CellRow]) -> pd.DataFrame:
    """The per-cell table of ``rows`` (in that order): columns :data:`COLUMNS` with ``roi_<ROI>`` after
    ``mean_r``, typed (nullable integers, floats with NaN, booleans)."""
    records = [row.record() for row in rows]
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


def summarize_layers(table: pd.DataFrame, out: str | os.PathLike | CellStore,
                     n_dataset_subjects: int | Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per dataset × model × layer × context (finished cells only): scores across subjects and pooled over
    voxels.

    Columns: ``median_r`` (median over subjects of each subject's median r), ``mean_subject_median_r``,
    ``pooled_score`` (BrainScore's aggregation over the pooled voxels of all subjects in the grid: for per-split
    protocols (``brainscore-linear``) the median over voxels per split, then the mean over splits, i.e. the
    benchmark's raw score when all subjects and the passage context are used; otherwise (``pls-groupkfold``) the
    median CV r over the pooled voxels), ``best_layer`` (highest ``median_r`` of its model and context) and
    ``brainscore_comparable`` (the protocol's benchmark context and every subject of the dataset).

    Args:
        out: the sweep's output root (or its store), where the rows' ``voxel_r_file`` s are.
        n_dataset_subjects: the subjects of the dataset (one number) or of each (``{dataset label: number}``).
    """
    store = out if isinstance(out, CellStore) else CellStore(out)
    ok = table[table["status"] == "ok"].copy()
    if ok.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    ok["dataset"] = ok["dataset"].fillna("")
    records = []
    for (dataset, model, layer, context), group in ok.groupby(["dataset", "model", "layer", "context"], sort=False):
        n_subjects = (n_dataset_subjects.get(dataset) if isinstance(n_dataset_subjects, Mapping)
                      else n_dataset_subjects)
        split_parts, voxel_parts = [], []
        for relative in group["voxel_r_file"]:
            arrays = store.voxel_arrays(relative)
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
            "dataset": dataset, "model": model, "layer": layer, "layer_index": first["layer_index"],
            "n_layers": first["n_layers"],
            "mapped_layer": first["mapped_layer"], "context": context, "protocol": protocol,
            "n_subjects": int(group["subject"].nunique()), "median_r": float(np.nanmedian(group["median_r"])),
            "mean_subject_median_r": float(np.nanmean(group["median_r"])), "pooled_score": pooled,
            "brainscore_comparable": bool(get_scorer(protocol).comparable_context == context
                                          and n_subjects is not None
                                          and group["subject"].nunique() == n_subjects),
            "synthetic": bool(first["synthetic"]),
        })
    summary = pd.DataFrame.from_records(records)
    best = summary.groupby(["dataset", "model", "context"])["median_r"].transform("max")
    summary["best_layer"] = summary["median_r"] == best
    for column in ("layer_index", "n_layers"):
        summary[column] = pd.array(pd.to_numeric(summary[column], errors="coerce"), dtype="Int64")
    return summary[list(SUMMARY_COLUMNS)]


#: the columns of the controls table (``controls.csv``, the report's Controls section)
CONTROL_COLUMNS: tuple[str, ...] = ("dataset", "context", "kind", "model", "layer", "n_subjects", "median_r",
                                    "pooled_score", "vs_best_language_model")
LANGUAGE_MODEL = "language model"


def control_kind(model_id: str) -> str | None:
    """``"control: <what it encodes>"`` for a registered control model (OASM: position within the passage; random
    embedding: word identity), None for any other model."""
    from berg_ray import model_status
    from berg_ray.errors import BergRayError
    from berg_ray.registry import get_spec

    try:
        spec = get_spec(model_id)
    except BergRayError:
        return None
    if not spec.control:
        return None
    encodes = model_status.facts_of(spec.source).encodes if spec.kind == "delegated" else ""
    return f"control: {encodes or 'no linguistic content'}"


def controls_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The control models beside the language models, per context: each language model at its best layer (highest
    ``median_r``) and each control, with ``vs_best_language_model`` = its ``pooled_score`` over the best language
    model's of that context. Empty when the sweep has no control model (or no language model).

    Args:
        summary: :func:`summarize_layers` of the sweep.
    """
    if summary.empty:
        return pd.DataFrame(columns=list(CONTROL_COLUMNS))
    kinds = {model: control_kind(model) or LANGUAGE_MODEL for model in summary["model"].unique()}
    if set(kinds.values()) == {LANGUAGE_MODEL} or LANGUAGE_MODEL not in kinds.values():
        return pd.DataFrame(columns=list(CONTROL_COLUMNS))
    records = []
    for (dataset, context), group in summary.groupby(["dataset", "context"], sort=False):
        rows = group[group["best_layer"]].drop_duplicates(["model"])
        best = rows[rows["model"].map(kinds) == LANGUAGE_MODEL]["pooled_score"].max()
        for row in rows.itertuples(index=False):
            records.append({"dataset": dataset, "context": context, "kind": kinds[row.model], "model": row.model,
                            "layer": row.layer,
                            "n_subjects": row.n_subjects, "median_r": row.median_r, "pooled_score": row.pooled_score,
                            "vs_best_language_model": row.pooled_score / best if best and best > 0 else float("nan")})
    table = pd.DataFrame.from_records(records, columns=list(CONTROL_COLUMNS))
    table["_lm"] = table["kind"] != LANGUAGE_MODEL  # language models first, then each kind of control
    table = table.sort_values(["dataset", "context", "_lm", "kind", "pooled_score"],
                              ascending=[True, True, True, True, False], kind="stable")
    return table.drop(columns="_lm").reset_index(drop=True)


def controls_verdicts(controls: pd.DataFrame, protocol: str) -> list[str]:
    """One sentence per dataset, context and kind of control: does its best member come near the best language
    model? (The dataset is named where the controls hold several.)"""
    lines = []
    several = controls["dataset"].nunique() > 1
    for (dataset, context), group in controls.groupby(["dataset", "context"], sort=False):
        languages = group[group["kind"] == LANGUAGE_MODEL]
        if languages.empty:
            continue
        best = languages.sort_values("pooled_score", ascending=False).iloc[0]
        for kind, members in group[group["kind"] != LANGUAGE_MODEL].groupby("kind", sort=True):
            control = members.sort_values("pooled_score", ascending=False).iloc[0]
            ratio = control["vs_best_language_model"]
            encodes = kind.removeprefix("control: ")
            where = f" on `{dataset}`" if several else ""
            head = (f"`{protocol}`{where}, context `{context}`, {encodes}: best `{control['model']}` "
                    f"{control['pooled_score']:.3f} vs best language model `{best['model']}` "
                    f"{best['pooled_score']:.3f}")
            if not np.isfinite(ratio):
                lines.append(f"{head}: no language model scores above 0, so the controls cannot be judged against "
                             "one.")
            elif ratio >= 1:
                lines.append(f"{head} ({ratio:.0%}): **this control scores as well as the language models**: under "
                             f"this protocol and context, {encodes} alone predicts the responses as well as a "
                             "language model does.")
            elif ratio >= 0.5:
                lines.append(f"{head} ({ratio:.0%}): this control reaches more than half of the best language "
                             "model's score; read this protocol's scores with care.")
            else:
                lines.append(f"{head} ({ratio:.0%}): this control stays far below the language models; the protocol "
                             "is not gamed by it.")
    return lines


#: the columns of the dataset × model table (``datasets.csv``, the report's Datasets × models section)
DATASET_MODEL_COLUMNS: tuple[str, ...] = ("dataset", "synthetic", "model", "context", "layer", "n_subjects",
                                          "median_r", "pooled_score")


def dataset_model_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Each model's mapped layer (the registry's language-system layer) on each dataset and context: one row per
    dataset × model × context with its ``median_r`` (median over subjects of the median CV r) and ``pooled_score``;
    empty when no mapped layer was scored.

    Args:
        summary: :func:`summarize_layers` of the sweep.
    """
    if summary.empty:
        return pd.DataFrame(columns=list(DATASET_MODEL_COLUMNS))
    mapped = summary[summary["mapped_layer"].fillna(False).astype(bool)]
    return mapped[list(DATASET_MODEL_COLUMNS)].reset_index(drop=True)


def dataset_model_markdown(frame: pd.DataFrame) -> str:
    """:func:`dataset_model_table` as a model × dataset grid of ``median_r`` (a column per dataset, and per context
    where the sweep has several), each synthetic dataset's column marked SYNTHETIC."""
    several_contexts = frame["context"].nunique() > 1

    def column(row: pd.Series) -> str:
        name = f"{row['dataset']} (SYNTHETIC)" if row["synthetic"] else str(row["dataset"])
        return f"{name} · {row['context']}" if several_contexts else name

    frame = frame.assign(column=frame.apply(column, axis=1))
    grid = frame.pivot_table(index="model", columns="column", values="median_r", aggfunc="first", sort=False)
    grid = grid.reindex(columns=list(dict.fromkeys(frame["column"])))
    return markdown_table(grid.reset_index().rename_axis(columns=None))


def _dataset_meta(dataset: SweepDataset, protocol: str) -> dict[str, Any]:
    """What ``last_run.json`` records of one dataset: where it came from, what the grid took from it, its CV."""
    assembly, axis = dataset.assembly, dataset.axis
    return {"label": axis.label, "name": dataset.name, "identifier": assembly.identifier, "source": assembly.source,
            "sha256": assembly.sha256, "synthetic": assembly.synthetic, "subjects": list(axis.subjects),
            "n_dataset_subjects": len(assembly.subjects), "contexts": list(axis.contexts),
            "refused_contexts": dict(axis.refused_contexts), "refusal": axis.refusal,
            **get_scorer(protocol).describe(axis.settings)}


def run_meta(datasets: Sequence[SweepDataset], protocol: str, run: dict[str, Any],
             extraction: dict[str, Any] | None) -> dict[str, Any]:
    """``last_run.json``: the run's counts, the protocol, every dataset (``datasets``) and, as before datasets were
    an axis, the one dataset's ``dataset``/``dataset_sha256``/``cv``/``pls`` (with several: their labels, ``None``
    and ``"per dataset"``); ``synthetic`` is whether any dataset is."""
    described = [_dataset_meta(dataset, protocol) for dataset in datasets]
    one = described[0] if len(described) == 1 else None
    return {"run": run, "protocol": protocol,
            "cv": one["cv"] if one else "per dataset (see datasets)", "pls": one["pls"] if one else None,
            "extraction": extraction or {},
            "dataset": one["source"] if one else [d["label"] for d in described],
            "dataset_sha256": one["sha256"] if one else None,
            "synthetic": any(d["synthetic"] for d in described), "datasets": described,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def _file_safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def _render_plots(table: pd.DataFrame, summary: pd.DataFrame, datasets: Sequence[SweepDataset],
                  store: CellStore) -> dict[str, str]:
    """The PNGs, written next to the report: ``{name: file name}``; with several datasets one set per dataset,
    named ``<name>:<dataset label>`` and prefixed with the dataset's label."""
    from berg_ray.plots import render_plots

    pngs: dict[str, str] = {}
    if len(datasets) == 1:
        for name, (filename, png) in render_plots(table, summary, datasets[0].assembly.synthetic).items():
            store.write_file(filename, png)
            pngs[name] = filename
        return pngs
    for dataset in datasets:
        rows = table[table["dataset"] == dataset.label]
        layers = summary[summary["dataset"] == dataset.label]
        for name, (filename, png) in render_plots(rows, layers, dataset.assembly.synthetic).items():
            filename = f"{_file_safe(dataset.label)}_{filename}"
            store.write_file(filename, png)
            pngs[f"{name}:{dataset.label}"] = filename
    return pngs


def write_outputs(table: pd.DataFrame, out: str | os.PathLike | CellStore, datasets: Sequence[SweepDataset],
                  protocol: str, run: dict[str, Any], plots: bool = True, extraction: dict[str, Any] | None = None,
                  benchmarks: pd.DataFrame | None = None) -> dict[str, str]:
    """``scores.parquet``/``.csv``, ``summary.parquet``/``.csv``, ``datasets.csv`` (dataset × model at the mapped
    layer), ``benchmarks.csv`` (given ``benchmarks``), ``last_run.json`` and (``plots``) PNGs and ``report.md``
    under ``out``; returns ``{name: path or URL}``.

    Args:
        datasets: the sweep's datasets (with their settings), in grid order.
        run: this run's counts and seconds.
        extraction: the forward-pass settings (dtype, batch size, device) recorded in ``last_run.json``.
        benchmarks: the benchmark table (:func:`berg_ray.sweep.benchmarks.score_benchmarks`), if any.
    """
    store = out if isinstance(out, CellStore) else CellStore(out)
    files: dict[str, str] = {}
    summary = summarize_layers(table, store, {d.label: len(d.assembly.subjects) for d in datasets})
    for name, frame in (("scores", table), ("summary", summary)):
        store.write_file(f"{name}.csv", frame.to_csv(index=False).encode())
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        files[name] = store.write_file(f"{name}.parquet", buffer.getvalue())
    by_dataset = dataset_model_table(summary)
    files["datasets"] = store.write_file("datasets.csv", by_dataset.to_csv(index=False).encode())
    if benchmarks is not None:
        files["benchmarks"] = store.write_file("benchmarks.csv", benchmarks.to_csv(index=False).encode())
    meta = run_meta(datasets, protocol, run, extraction)
    files["last_run"] = store.write_file("last_run.json", json.dumps(meta, indent=2, default=str).encode())
    controls = controls_table(summary)
    if not controls.empty:
        files["controls"] = store.write_file("controls.csv", controls.to_csv(index=False).encode())
    if plots:
        pngs = _render_plots(table, summary, datasets, store)
        files.update({name: store.url(filename) for name, filename in pngs.items()})
        report = report_markdown(table, summary, pngs, meta, get_scorer(protocol).pooled_meaning, controls,
                                 by_dataset, benchmarks)
        files["report"] = store.write_file("report.md", report.encode())
    return files


def markdown_table(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """A GitHub-flavoured markdown table of ``frame`` (no extra dependency)."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return ""
        if isinstance(value, (float, np.floating)):
            return float_format.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _mapping(pls: dict[str, Any] | None) -> str:
    """``"; PLS: 25 components"``, ``"; ridge (RidgeCV, one alpha per neuroid)"`` or ``""`` (no settings)."""
    if not pls:
        return ""
    if pls.get("regression") == "ridge":
        return "; ridge (RidgeCV, one alpha per neuroid)"
    return f"; PLS: {pls['n_components']} components"


def _dataset_lines(meta: dict[str, Any]) -> list[str]:
    """The report's lines on what was run: the protocol and CV of the one dataset, or one line per dataset."""
    if len(meta["datasets"]) == 1:
        return [f"- protocol: `{meta['protocol']}`; CV: {meta['cv']}" + _mapping(meta.get("pls")),
                f"- dataset: `{meta['dataset']}` (sha256 `{meta['dataset_sha256'][:16]}…`, synthetic: "
                f"{meta['synthetic']})"]
    lines = [f"- protocol: `{meta['protocol']}`; {len(meta['datasets'])} datasets, each with its own splits:"]
    for d in meta["datasets"]:
        pls = _mapping(d.get("pls"))
        state = f"; **no cell runs**: {d['refusal']}" if d["refusal"] else ""
        refused = f"; contexts skipped: {', '.join(d['refused_contexts'])}" if d["refused_contexts"] else ""
        lines.append(f"  - `{d['label']}` (`{d['source']}`, sha256 `{d['sha256'][:16]}…`, synthetic: "
                     f"{d['synthetic']}): CV {d['cv']}{pls}; contexts {', '.join(d['contexts']) or '-'}{refused}; "
                     f"{len(d['subjects'])} subject(s){state}")
    return lines


def _benchmark_lines(benchmarks: pd.DataFrame) -> list[str]:
    """The report's Benchmarks section: model × benchmark raw, ceiling and normalized scores."""
    columns = ["model", "benchmark", "dataset", "status", "raw", "ceiling", "normalized", "synthetic", "reason"]
    return ["## Benchmarks", "",
            ("Each model scored as brainscore-language scores its benchmarks (`berg_ray.score`): `raw` is the "
             "benchmark's metric, `normalized` = raw / ceiling."), "",
            markdown_table(benchmarks[columns], float_format="{:.4f}"), ""]


def report_markdown(table: pd.DataFrame, summary: pd.DataFrame, pngs: dict[str, str], meta: dict[str, Any],
                    pooled_meaning: str, controls: pd.DataFrame | None = None,
                    by_dataset: pd.DataFrame | None = None, benchmarks: pd.DataFrame | None = None) -> str:
    """``report.md``: what was run, the dataset × model table (``by_dataset``: :func:`dataset_model_table`), the
    per-layer table, the plots (``pngs``: name -> file name next to the report), the controls beside the language
    models (``controls``: :func:`controls_table`, if not empty), the benchmarks (``benchmarks``), and every skipped
    or failed cell (``pooled_meaning``: the protocol's reading of ``pooled_score``)."""
    from berg_ray.plots import SYNTHETIC_BANNER

    run = meta["run"]
    extraction = meta.get("extraction") or {}
    several = len(meta["datasets"]) > 1
    lines = ["# berg-ray sweep report", ""]
    synthetic = [d["label"] for d in meta["datasets"] if d["synthetic"]]
    if synthetic and not several:
        lines += [f"> **{SYNTHETIC_BANNER}.** Dataset `{meta['dataset']}` is synthetic.", ""]
    elif synthetic:
        lines += [f"> **{SYNTHETIC_BANNER}.** Synthetic datasets: {', '.join(f'`{s}`' for s in synthetic)}.", ""]
    lines += _dataset_lines(meta)
    if extraction:
        lines.append("- features: " + ", ".join(f"{key} `{value}`" for key, value in extraction.items()))
    lines += [
        (f"- cells: {run['cells']} ({run['reused']} reused from earlier runs, {run['from_cache']} from the fit cache, "
         f"{run['computed']} computed, {run['failed']} failed); {run['skipped']} skipped; {run['seconds']} s; "
         f"finished {meta['finished']}"),
        ("- tables: [`scores.csv`](scores.csv) / `scores.parquet` (one row per cell), [`summary.csv`](summary.csv) "
         "(one row per dataset × model × layer × context), [`datasets.csv`](datasets.csv) (dataset × model at the "
         "mapped layer)" + (", [`benchmarks.csv`](benchmarks.csv)" if benchmarks is not None else "")
         + "; per-voxel r: `voxel_r/<cell-id>.npz`"),
        "",
    ]
    if by_dataset is not None and not by_dataset.empty:
        lines += ["## Datasets × models", "",
                  ("Median over subjects of the median CV r of each model's mapped layer (the registry's "
                   "language-system layer), each dataset scored with its own splits; SYNTHETIC: a stand-in with a "
                   "planted map, not brain data."), "", dataset_model_markdown(by_dataset), ""]
    if not summary.empty:
        best = summary[summary["best_layer"]]
        columns = ["dataset"] * several + ["model", "context", "layer", "layer_index", "n_subjects", "median_r",
                                           "pooled_score", "mapped_layer"]
        lines += ["## Best layer per model and context", "", markdown_table(best[columns]), ""]
        for name, title in (("heatmap", "Model × subject"), ("layer_curves", "Layer-wise curves"),
                            ("roi_bars", "Per-ROI scores")):
            for key, filename in pngs.items():
                if key == name or key.startswith(f"{name}:"):
                    where = f" ({key.split(':', 1)[1]})" if ":" in key else ""
                    lines += [f"## {title}{where}", "", f"![{title}{where}]({filename})", ""]
        legend = ("`median_r`: median over subjects of each subject's median r over voxels. `pooled_score`: "
                  f"BrainScore's aggregation over all subjects' voxels pooled ({pooled_meaning}).")
        dropped = ["synthetic", "protocol"] + ["dataset"] * (not several)
        lines += ["## All layers", "", legend, "", markdown_table(summary.drop(columns=dropped)), ""]
    if controls is not None and not controls.empty:
        lines += ["## Controls", "",
                  ("Control models scored with the same protocol and data as the language models (each language "
                   "model at its best layer). OASM encodes no linguistic content, only a sentence's position in the "
                   "block it was digested in; a random embedding encodes word identity through fixed random "
                   "vectors, no learned meaning. A control that comes near the language models shows what the "
                   "protocol rewards besides linguistic content: under shuffled splits (brainscore-linear) OASM can "
                   "predict a held-out sentence from its passage neighbours; under GroupKFold by story "
                   "(pls-groupkfold, brainscore-ridge) a held-out story's OASM columns are all zero in training, so "
                   "its predictions are one constant per fold."), "",
                  *[f"- {line}" for line in controls_verdicts(controls, meta["protocol"])], "",
                  markdown_table(controls), ""]
    if benchmarks is not None and not benchmarks.empty:
        lines += _benchmark_lines(benchmarks)
    problems = table[table["status"] != "ok"]
    if len(problems):
        columns = ["dataset"] * several + ["model", "layer", "context", "subject", "status", "reason"]
        lines += ["## Skipped and failed", "", markdown_table(problems[columns]), ""]
    return "\n".join(lines)
