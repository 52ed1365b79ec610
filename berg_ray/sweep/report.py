"""A sweep's outputs: the per-cell table, the per-layer summary, ``last_run.json``, the plots and ``report.md``.

Every file goes through the sweep's :class:`~berg_ray.sweep.cells.CellStore` (atomic writes, local or ``s3://``).
"""

from __future__ import annotations

import datetime
import io
import json
import os
from typing import Any

import numpy as np
import pandas as pd

from berg_ray.neural import PereiraAssembly
from berg_ray.regression import PLSSettings
from berg_ray.scoring import aggregate_split_r
from berg_ray.sweep.cells import COLUMNS, CellRow, CellStore
from berg_ray.sweep.protocols import get_scorer

SUMMARY_COLUMNS: tuple[str, ...] = (
    "model", "layer", "layer_index", "n_layers", "mapped_layer", "context", "protocol", "n_subjects", "median_r",
    "mean_subject_median_r", "pooled_score", "best_layer", "brainscore_comparable", "synthetic",
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


def summarize_layers(table: pd.DataFrame, out: str | os.PathLike | CellStore, n_dataset_subjects: int | None = None
                     ) -> pd.DataFrame:
    """One row per model × layer × context (finished cells only): scores across subjects and pooled over voxels.

    Columns: ``median_r`` (median over subjects of each subject's median r), ``mean_subject_median_r``,
    ``pooled_score`` (BrainScore's aggregation over the pooled voxels of all subjects in the grid: for per-split
    protocols (``brainscore-linear``) the median over voxels per split, then the mean over splits, i.e. the
    benchmark's raw score when all subjects and the passage context are used; otherwise (``pls-groupkfold``) the
    median CV r over the pooled voxels), ``best_layer`` (highest ``median_r`` of its model and context) and
    ``brainscore_comparable`` (the protocol's benchmark context and every subject of the dataset).

    Args:
        out: the sweep's output root (or its store), where the rows' ``voxel_r_file`` s are.
    """
    store = out if isinstance(out, CellStore) else CellStore(out)
    ok = table[table["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    records = []
    for (model, layer, context), group in ok.groupby(["model", "layer", "context"], sort=False):
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
            "model": model, "layer": layer, "layer_index": first["layer_index"], "n_layers": first["n_layers"],
            "mapped_layer": first["mapped_layer"], "context": context, "protocol": protocol,
            "n_subjects": int(group["subject"].nunique()), "median_r": float(np.nanmedian(group["median_r"])),
            "mean_subject_median_r": float(np.nanmean(group["median_r"])), "pooled_score": pooled,
            "brainscore_comparable": bool(get_scorer(protocol).comparable_context == context
                                          and n_dataset_subjects is not None
                                          and group["subject"].nunique() == n_dataset_subjects),
            "synthetic": bool(first["synthetic"]),
        })
    summary = pd.DataFrame.from_records(records)
    best = summary.groupby(["model", "context"])["median_r"].transform("max")
    summary["best_layer"] = summary["median_r"] == best
    for column in ("layer_index", "n_layers"):
        summary[column] = pd.array(pd.to_numeric(summary[column], errors="coerce"), dtype="Int64")
    return summary[list(SUMMARY_COLUMNS)]


#: the columns of the controls table (``controls.csv``, the report's Controls section)
CONTROL_COLUMNS: tuple[str, ...] = ("context", "kind", "model", "layer", "n_subjects", "median_r", "pooled_score",
                                    "vs_best_language_model")
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
    for context, group in summary.groupby("context", sort=False):
        rows = group[group["best_layer"]].drop_duplicates(["model"])
        best = rows[rows["model"].map(kinds) == LANGUAGE_MODEL]["pooled_score"].max()
        for row in rows.itertuples(index=False):
            records.append({"context": context, "kind": kinds[row.model], "model": row.model, "layer": row.layer,
                            "n_subjects": row.n_subjects, "median_r": row.median_r, "pooled_score": row.pooled_score,
                            "vs_best_language_model": row.pooled_score / best if best and best > 0 else float("nan")})
    table = pd.DataFrame.from_records(records, columns=list(CONTROL_COLUMNS))
    table["_lm"] = table["kind"] != LANGUAGE_MODEL  # language models first, then each kind of control
    table = table.sort_values(["context", "_lm", "kind", "pooled_score"], ascending=[True, True, True, False],
                              kind="stable")
    return table.drop(columns="_lm").reset_index(drop=True)


def controls_verdicts(controls: pd.DataFrame, protocol: str) -> list[str]:
    """One sentence per context and kind of control: does its best member come near the best language model?"""
    lines = []
    for context, group in controls.groupby("context", sort=False):
        best = group[group["kind"] == LANGUAGE_MODEL].sort_values("pooled_score", ascending=False).iloc[0]
        for kind, members in group[group["kind"] != LANGUAGE_MODEL].groupby("kind", sort=True):
            control = members.sort_values("pooled_score", ascending=False).iloc[0]
            ratio = control["vs_best_language_model"]
            encodes = kind.removeprefix("control: ")
            head = (f"`{protocol}`, context `{context}`, {encodes}: best `{control['model']}` "
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


def write_outputs(table: pd.DataFrame, out: str | os.PathLike | CellStore, assembly: PereiraAssembly,
                  protocol: str, settings: PLSSettings, run: dict[str, Any], plots: bool = True,
                  extraction: dict[str, Any] | None = None) -> dict[str, str]:
    """``scores.parquet``/``.csv``, ``summary.parquet``/``.csv``, ``last_run.json`` and (``plots``) PNGs and
    ``report.md`` under ``out``; returns ``{name: path or URL}``.

    Args:
        run: this run's counts and seconds.
        extraction: the forward-pass settings (dtype, batch size, device) recorded in ``last_run.json``.
    """
    store = out if isinstance(out, CellStore) else CellStore(out)
    files: dict[str, str] = {}
    summary = summarize_layers(table, store, len(assembly.subjects))
    for name, frame in (("scores", table), ("summary", summary)):
        store.write_file(f"{name}.csv", frame.to_csv(index=False).encode())
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        files[name] = store.write_file(f"{name}.parquet", buffer.getvalue())
    scorer = get_scorer(protocol)
    meta = {"run": run, "protocol": protocol, **scorer.describe(settings), "extraction": extraction or {},
            "dataset": assembly.source, "dataset_sha256": assembly.sha256, "synthetic": assembly.synthetic,
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    files["last_run"] = store.write_file("last_run.json", json.dumps(meta, indent=2, default=str).encode())
    controls = controls_table(summary)
    if not controls.empty:
        files["controls"] = store.write_file("controls.csv", controls.to_csv(index=False).encode())
    if plots:
        from berg_ray.plots import render_plots

        pngs = {}
        for name, (filename, png) in render_plots(table, summary, assembly.synthetic).items():
            files[name] = store.write_file(filename, png)
            pngs[name] = filename
        report = report_markdown(table, summary, pngs, meta, scorer.pooled_meaning, controls)
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


def report_markdown(table: pd.DataFrame, summary: pd.DataFrame, pngs: dict[str, str], meta: dict[str, Any],
                    pooled_meaning: str, controls: pd.DataFrame | None = None) -> str:
    """``report.md``: what was run, the per-layer table, the plots (``pngs``: name -> file name next to the
    report), the controls beside the language models (``controls``: :func:`controls_table`, if not empty), and
    every skipped or failed cell (``pooled_meaning``: the protocol's reading of ``pooled_score``)."""
    from berg_ray.plots import SYNTHETIC_BANNER

    run = meta["run"]
    extraction = meta.get("extraction") or {}
    lines = ["# berg-ray sweep report", ""]
    if meta["synthetic"]:
        lines += [f"> **{SYNTHETIC_BANNER}.** Dataset `{meta['dataset']}` is synthetic.", ""]
    lines += [
        f"- protocol: `{meta['protocol']}`; CV: {meta['cv']}"
        + (f"; PLS: {meta['pls']['n_components']} components" if meta.get("pls") else ""),
        f"- dataset: `{meta['dataset']}` (sha256 `{meta['dataset_sha256'][:16]}…`, synthetic: {meta['synthetic']})",
    ]
    if extraction:
        lines.append("- features: " + ", ".join(f"{key} `{value}`" for key, value in extraction.items()))
    lines += [
        (f"- cells: {run['cells']} ({run['reused']} reused from earlier runs, {run['from_cache']} from the fit cache, "
         f"{run['computed']} computed, {run['failed']} failed); {run['skipped']} skipped; {run['seconds']} s; "
         f"finished {meta['finished']}"),
        ("- tables: [`scores.csv`](scores.csv) / `scores.parquet` (one row per cell), [`summary.csv`](summary.csv) "
         "(one row per model × layer × context); per-voxel r: `voxel_r/<cell-id>.npz`"),
        "",
    ]
    if not summary.empty:
        best = summary[summary["best_layer"]]
        lines += ["## Best layer per model and context", "",
                  markdown_table(best[["model", "context", "layer", "layer_index", "n_subjects", "median_r",
                                       "pooled_score", "mapped_layer"]]), ""]
        for name, title in (("heatmap", "Model × subject"), ("layer_curves", "Layer-wise curves"),
                            ("roi_bars", "Per-ROI scores")):
            if name in pngs:
                lines += [f"## {title}", "", f"![{title}]({pngs[name]})", ""]
        legend = ("`median_r`: median over subjects of each subject's median r over voxels. `pooled_score`: "
                  f"BrainScore's aggregation over all subjects' voxels pooled ({pooled_meaning}).")
        lines += ["## All layers", "", legend, "", markdown_table(summary.drop(columns=["synthetic", "protocol"])), ""]
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
    problems = table[table["status"] != "ok"]
    if len(problems):
        lines += ["## Skipped and failed", "",
                  markdown_table(problems[["model", "layer", "context", "subject", "status", "reason"]]), ""]
    return "\n".join(lines)
