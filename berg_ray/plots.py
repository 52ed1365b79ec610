"""Plots and the markdown report of a sweep (matplotlib, Agg backend: no display needed).

* ``heatmap_model_subject.png``: median r per model (at its best layer) × subject, one panel per context;
* ``layer_curves.png``: median r across subjects against block index, one line per model × context, with the
  interquartile range across subjects shaded and the registry's mapped layer starred;
* ``roi_bars.png``: median r per ROI (median over subjects) at each model's best layer;
* ``report.md``: the run's settings, the layer table and the plots.

Everything says SYNTHETIC when the data are synthetic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SYNTHETIC_BANNER = "SYNTHETIC DATA (planted map): scores measure map recovery, not brain predictivity"
_LINESTYLES = {"sentence": "-", "passage": "--", "running": ":"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(fig, text: str, synthetic: bool) -> None:
    if synthetic:
        text = f"{SYNTHETIC_BANNER}\n{text}"
    fig.suptitle(text, fontsize=11, color="darkred" if synthetic else "black")


def _best_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model × context: its best layer."""
    best = summary[summary["best_layer"]].drop_duplicates(["model", "context"])
    models = {m: k for k, m in enumerate(dict.fromkeys(summary["model"]))}
    contexts = {c: k for k, c in enumerate(dict.fromkeys(summary["context"]))}
    return best.sort_values(["model", "context"], key=lambda column: column.map({**models, **contexts}))


def _short(model: str) -> str:
    return model.removeprefix("brainscore_language-")


def plot_heatmap(table: pd.DataFrame, summary: pd.DataFrame, path: Path, synthetic: bool) -> Path:
    """Model × subject heatmap of the median r at each model's best layer (one panel per context)."""
    plt = _pyplot()
    ok = table[table["status"] == "ok"]
    contexts = list(dict.fromkeys(summary["context"]))
    subjects = sorted(ok["subject"].unique())
    models = list(dict.fromkeys(summary["model"]))
    best = _best_rows(summary)
    values = np.full((len(contexts), len(models), len(subjects)), np.nan)
    labels: list[list[str]] = []
    for c, context in enumerate(contexts):
        labels.append([])
        for m, model in enumerate(models):
            row = best[(best["model"] == model) & (best["context"] == context)]
            layer = row["layer"].iloc[0] if len(row) else None
            labels[c].append(f"{_short(model)}\n{layer or '-'}")
            cells = ok[(ok["model"] == model) & (ok["context"] == context) & (ok["layer"] == layer)]
            for _, cell in cells.iterrows():
                values[c, m, subjects.index(cell["subject"])] = cell["median_r"]
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    low, high = min(low, 0.0), max(high, low + 1e-3)
    fig, axes = plt.subplots(len(contexts), 1, figsize=(3.5 + 0.75 * len(subjects),
                                                         1.2 + (1.0 + 0.55 * len(models)) * len(contexts)),
                             squeeze=False, layout="constrained")
    image = None
    for c, context in enumerate(contexts):
        ax = axes[c, 0]
        image = ax.imshow(values[c], cmap="viridis", vmin=low, vmax=high, aspect="auto")
        ax.set_xticks(range(len(subjects)), subjects, rotation=45)
        ax.set_yticks(range(len(models)), labels[c], fontsize=8)
        if c == len(contexts) - 1:
            ax.set_xlabel("subject")
        ax.set_title(f"context: {context}", fontsize=10)
        for m in range(len(models)):
            for s in range(len(subjects)):
                value = values[c, m, s]
                if np.isfinite(value):
                    bright = (value - low) / (high - low) > 0.6
                    ax.text(s, m, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if bright else "white")
    fig.colorbar(image, ax=axes[:, 0].tolist(), fraction=0.04, label="median r over voxels")
    protocol = summary["protocol"].iloc[0] if len(summary) else ""
    _title(fig, f"Median r per subject at each model's best layer (model / best layer; {protocol})", synthetic)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_layer_curves(table: pd.DataFrame, summary: pd.DataFrame, path: Path, synthetic: bool) -> Path:
    """Median r across subjects against block index per model × context; shaded: interquartile range."""
    plt = _pyplot()
    ok = table[table["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for m, model in enumerate(dict.fromkeys(summary["model"])):
        color = colors[m % len(colors)]
        for context in dict.fromkeys(summary["context"]):
            rows = summary[(summary["model"] == model) & (summary["context"] == context)].copy()
            if rows.empty:
                continue
            rows["x"] = rows["layer_index"].astype("Float64").fillna(pd.Series(range(len(rows)), index=rows.index,
                                                                             dtype="Float64")).astype(float)
            rows = rows.sort_values("x")
            lower, upper = [], []
            for layer in rows["layer"]:
                per_subject = ok[(ok["model"] == model) & (ok["context"] == context) & (ok["layer"] == layer)]
                lower.append(np.nanpercentile(per_subject["median_r"], 25))
                upper.append(np.nanpercentile(per_subject["median_r"], 75))
            x = rows["x"].to_numpy()
            ax.plot(x, rows["median_r"], _LINESTYLES.get(context, "-"), marker="o", color=color,
                    label=f"{_short(model)} · {context}")
            ax.fill_between(x, lower, upper, color=color, alpha=0.12, linewidth=0)
            mapped = rows[rows["mapped_layer"].fillna(False).astype(bool)]
            if len(mapped):
                ax.plot(mapped["x"], mapped["median_r"], "*", color=color, markersize=15, markeredgecolor="black")
    ax.set_xlabel("block index (0 = first block; ★ = the registry's mapped layer)")
    ax.set_ylabel("median r across subjects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _title(fig, "Layer-wise scores (shaded: interquartile range across subjects)", synthetic)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_roi_bars(table: pd.DataFrame, summary: pd.DataFrame, path: Path, synthetic: bool) -> Path:
    """Per-ROI median r (median over subjects) at each model's best layer, one bar group per ROI."""
    plt = _pyplot()
    ok = table[table["status"] == "ok"]
    rois = sorted(c for c in ok.columns if c.startswith("roi_") and ok[c].notna().any())
    best = _best_rows(summary)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(rois) + 2), 5.2), layout="constrained")
    width = 0.8 / max(1, len(best))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    model_color = {m: colors[k % len(colors)] for k, m in enumerate(dict.fromkeys(summary["model"]))}
    hatches = {c: h for c, h in zip(dict.fromkeys(summary["context"]), (None, "//", ".."))}
    for k, (_, row) in enumerate(best.iterrows()):
        cells = ok[(ok["model"] == row["model"]) & (ok["context"] == row["context"]) & (ok["layer"] == row["layer"])]
        heights = [float(np.nanmedian(cells[roi])) if cells[roi].notna().any() else np.nan for roi in rois]
        ax.bar(np.arange(len(rois)) + (k - (len(best) - 1) / 2) * width, heights, width,
               label=f"{_short(row['model'])} {row['layer']} · {row['context']}",
               color=model_color[row["model"]], hatch=hatches.get(row["context"]), edgecolor="white")
    ax.set_xticks(range(len(rois)), [r.removeprefix("roi_") for r in rois], rotation=45, ha="right")
    ax.set_ylabel("median r (median over subjects)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=min(3, max(1, len(best))))
    _title(fig, "Per-ROI scores at each model's best layer (hatching: context)", synthetic)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_plots(table: pd.DataFrame, summary: pd.DataFrame, out: str | os.PathLike, synthetic: bool
                ) -> dict[str, Path]:
    """The three PNGs in ``out`` (none when no cell finished); returns ``{name: path}``."""
    out = Path(out)
    if summary.empty:
        return {}
    return {
        "heatmap": plot_heatmap(table, summary, out / "heatmap_model_subject.png", synthetic),
        "layer_curves": plot_layer_curves(table, summary, out / "layer_curves.png", synthetic),
        "roi_bars": plot_roi_bars(table, summary, out / "roi_bars.png", synthetic),
    }


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


def write_report(table: pd.DataFrame, summary: pd.DataFrame, out: str | os.PathLike, pngs: dict[str, Path],
                 meta: dict[str, Any]) -> Path:
    """``out/report.md``: what was run, the per-layer table, the plots, and every skipped or failed cell."""
    out = Path(out)
    run = meta["run"]
    lines = ["# berg-ray sweep report", ""]
    if meta["synthetic"]:
        lines += [f"> **{SYNTHETIC_BANNER}.** Dataset `{meta['dataset']}` is synthetic.", ""]
    lines += [
        f"- protocol: `{meta['protocol']}`; CV: {meta['cv']}"
        + (f"; PLS: {meta['pls']['n_components']} components" if meta.get("pls") else ""),
        f"- dataset: `{meta['dataset']}` (sha256 `{meta['dataset_sha256'][:16]}…`, synthetic: {meta['synthetic']})",
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
                lines += [f"## {title}", "", f"![{title}]({Path(pngs[name]).name})", ""]
        lines += ["## All layers", "",
                  "`median_r`: median over subjects of each subject's median r over voxels. `pooled_score`: "
                  "BrainScore's aggregation over all subjects' voxels pooled"
                  + (" (the benchmark's raw score where `brainscore_comparable`)." if meta["protocol"]
                     == "brainscore-linear" else " (median CV r)."), "",
                  markdown_table(summary.drop(columns=["synthetic", "protocol"])), ""]
    problems = table[table["status"] != "ok"]
    if len(problems):
        lines += ["## Skipped and failed", "",
                  markdown_table(problems[["model", "layer", "context", "subject", "status", "reason"]]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
