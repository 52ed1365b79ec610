"""Plots of a sweep's tables (matplotlib, Agg backend: no display needed); the sweep's report embeds them.

* ``heatmap_model_subject.png``: median r per model (at its best layer) × subject, one panel per context;
* ``layer_curves.png``: median r across subjects against block index, one line per model × context, with the
  interquartile range across subjects shaded and the registry's mapped layer starred;
* ``roi_bars.png``: median r per ROI (median over subjects) at each model's best layer.

and of a corpus ranking (``berg-ray rank``): ``rank.png`` (:func:`plot_rank`), the score distribution with the top and
bottom sentences marked beside their network and ROI profile.

Each ``plot_*`` function draws into ``target`` (a path or a binary file object); :func:`render_plots` returns the
three PNGs as bytes, for the sweep to store wherever its output lives (local or ``s3://``). Everything says
SYNTHETIC when the data are synthetic.
"""

from __future__ import annotations

import io
import os
from typing import IO, Any

import numpy as np
import pandas as pd

SYNTHETIC_BANNER = "SYNTHETIC DATA (planted map): scores measure map recovery, not brain predictivity"
_LINESTYLES = {"sentence": "-", "passage": "--", "running": ":"}
Target = str | os.PathLike | IO[bytes]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, target: Target) -> Target:
    """Write ``fig`` as a PNG to ``target`` (a path or a binary file object) and free it."""
    fig.savefig(target, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return target


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


def plot_heatmap(table: pd.DataFrame, summary: pd.DataFrame, target: Target, synthetic: bool) -> Target:
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
    return _save(plt, fig, target)


def plot_layer_curves(table: pd.DataFrame, summary: pd.DataFrame, target: Target, synthetic: bool) -> Target:
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
    return _save(plt, fig, target)


def plot_roi_bars(table: pd.DataFrame, summary: pd.DataFrame, target: Target, synthetic: bool) -> Target:
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
    return _save(plt, fig, target)


#: plot name -> (file name, drawing function)
PLOTS: dict[str, tuple[str, Any]] = {
    "heatmap": ("heatmap_model_subject.png", plot_heatmap),
    "layer_curves": ("layer_curves.png", plot_layer_curves),
    "roi_bars": ("roi_bars.png", plot_roi_bars),
}


def render_plots(table: pd.DataFrame, summary: pd.DataFrame, synthetic: bool) -> dict[str, tuple[str, bytes]]:
    """The three PNGs (none when no cell finished): ``{name: (file name, PNG bytes)}``."""
    if summary.empty:
        return {}
    rendered = {}
    for name, (filename, plot) in PLOTS.items():
        buffer = io.BytesIO()
        plot(table, summary, buffer, synthetic)
        rendered[name] = (filename, buffer.getvalue())
    return rendered


def plot_rank(counts: np.ndarray, edges: np.ndarray, table: pd.DataFrame, profiles: pd.DataFrame, by: str,
              who: str, synthetic: bool, target: Target) -> Target:
    """A corpus ranking (:mod:`berg_ray.ranking`): left, the distribution of every sentence's score (``counts`` in
    the bins ``edges``) with the top and bottom sentences marked; right, the mean profile over network and ROIs
    (± SD) of the top vs the bottom sentences (``profiles``: one row per row of ``table``, one column per value)."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained",
                                      gridspec_kw={"width_ratios": [1.1, 1]})
    colors = {"top": "tab:red", "bottom": "tab:blue"}
    filled = np.flatnonzero(counts)
    if filled.size:  # streamed bins may span up to twice the data: merge pairs to ≤ 64 over the data, show those
        factor = 1
        while (filled[-1] - filled[0] + 1) / factor > 64 and len(counts) % (2 * factor) == 0:
            factor *= 2
        counts, edges = np.asarray(counts).reshape(-1, factor).sum(axis=1), np.asarray(edges)[::factor]
        filled = np.flatnonzero(counts)
        left.stairs(counts, edges, fill=True, color="0.75", label=f"all sentences ({int(counts.sum())})")
        low, high = edges[filled[0]], edges[filled[-1] + 1]
        left.set_xlim(low - 0.05 * (high - low), high + 0.05 * (high - low))
    for side in ("top", "bottom"):
        scores = table.loc[table["side"] == side, "score"].to_numpy()
        if scores.size:
            left.axvspan(scores.min(), scores.max(), color=colors[side], alpha=0.12, linewidth=0)
            for x in scores:
                left.axvline(x, ymax=0.06, color=colors[side], linewidth=0.8)
            left.plot([], [], color=colors[side], label=f"{side} {scores.size}")
    left.set_xlabel(f"predicted response: {by} ({who}), z-units")
    left.set_ylabel("sentences")
    left.legend(fontsize=8, loc="upper right")
    left.set_title("score distribution (ticks: ranked sentences)", fontsize=10)
    names = list(profiles.columns)
    x = np.arange(len(names))
    for k, side in enumerate(("top", "bottom")):
        rows = profiles[(table["side"] == side).to_numpy()]
        if rows.empty:
            continue
        mean, sd = rows.mean(axis=0).to_numpy(), rows.std(axis=0, ddof=0).to_numpy()
        right.errorbar(x + (k - 0.5) * 0.2, mean, yerr=sd, fmt="o", color=colors[side], capsize=3,
                       label=f"{side} {len(rows)} (mean ± SD)")
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xticks(x, [f"{n} ★" if n == by else n for n in names], rotation=45, ha="right")
    right.set_ylabel("predicted response, z-units")
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=8)
    right.set_title("network and ROI profile of the ranked sentences (★: ranked by)", fontsize=10)
    _title(fig, f"Sentences ranked by predicted {by} response ({who})", synthetic)
    return _save(plt, fig, target)
