"""The fitted encoding model of one (language model, layer, context, subject) — a PLS map plus its provenance —
and the stacked predictor of several subjects at once (pure numerics: no I/O, no Ray)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from berg_ray.errors import InvalidInputError
from berg_ray.regression import PLSFit, PLSSettings

if TYPE_CHECKING:
    from berg_ray.request import ModelRequest


@dataclass
class EncodingModel:
    """Maps features of ``model_id``'s ``layer`` to one subject's voxel responses.

    Its layer, context and dtype are its request's (:attr:`layer`, :attr:`context`, :attr:`dtype`).

    Attributes:
        model_id: registered model id (``berg_ray.list_models()``).
        source: hub id or local folder the weights came from.
        subject: Pereira subject id, e.g. ``"018"``.
        fit: the PLS map (``coef`` of shape (n_voxels, n_units)).
        cv_r: (n_voxels,) Pearson r of GroupKFold out-of-fold predictions, per voxel.
        settings: PLS and CV settings.
        dataset_sha256: sha256 of the Pereira ``.nc`` file it was trained on.
        synthetic: True when trained on synthetic data.
        voxels: one row per voxel (neuroid_id, roi, voxel coordinates), in prediction column order.
        request: the request it was fitted (or loaded) for: model, layer, context, dtype, batch size; ``encode``
            extracts with it, so features are read exactly as in training. An entry read from the cache on its own
            carries the request its key fields record (:meth:`ModelRequest.recorded`).
        cache_key: the content key of its cache entry.
        key_fields: what the key was hashed from.
        device: where ``BERG.encode`` extracts features for it (not part of the fit).
        convergence: where this fit's NIPALS stopped at ``max_iter`` (sklearn's rule): ``{"full_fit_components":
            [0-based components of the fit on all sentences], "cv_folds": number of CV folds with such a
            component}``; empty for a fit that converged everywhere and for a model loaded from the cache (its
            fit was reported when it was made). :func:`convergence_summary` words it.
    """

    model_id: str
    source: str
    subject: str
    fit: PLSFit
    cv_r: np.ndarray
    settings: PLSSettings
    dataset_sha256: str
    synthetic: bool
    voxels: pd.DataFrame
    request: ModelRequest
    cache_key: str = ""
    key_fields: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = float("nan")
    device: str = "auto"
    convergence: dict[str, Any] = field(default_factory=dict)
    dataset: str = "Pereira2018.language"
    notes: list[str] = field(default_factory=list)

    @property
    def layer(self) -> str:
        """The module whose output is read (its request's one layer)."""
        return self.request.layer

    @property
    def context(self) -> str:
        """Context policy of training (and so of every prediction): ``"sentence"``, ``"passage"`` or ``"running"``."""
        return self.request.context

    @property
    def dtype(self) -> str:
        """Forward-pass precision of the training features (and so of every prediction's features)."""
        return self.request.dtype

    @property
    def n_voxels(self) -> int:
        return int(self.fit.coef.shape[0])

    @property
    def n_units(self) -> int:
        return int(self.fit.coef.shape[1])

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Predicted responses: features (n_sentences, n_units) -> (n_sentences, n_voxels) float32 (z-units)."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.n_units:
            raise InvalidInputError(f"features must have shape (n_sentences, {self.n_units}) for {self.model_id} "
                             f"{self.layer}, got {features.shape}")
        return self.fit.predict(features).astype(np.float32)

    def cv_summary(self) -> dict[str, Any]:
        """Median and mean CV r over voxels, and the median per ROI."""
        r = self.cv_r
        per_roi = {}
        if "roi" in self.voxels:
            for roi, rows in self.voxels.groupby("roi", sort=True).indices.items():
                per_roi[str(roi)] = float(np.nanmedian(r[rows]))
        return {"median_r": float(np.nanmedian(r)), "mean_r": float(np.nanmean(r)), "per_roi_median_r": per_roi,
                "cv": self.settings.describe_cv()}

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance (what ``encode(..., return_metadata=True)`` and cache manifests report)."""
        return {
            "model_id": self.model_id, "source": self.source, "layer": self.layer, "context": self.context,
            "dataset": self.dataset, "subject": self.subject, "dtype": self.dtype, "n_voxels": self.n_voxels,
            "n_units": self.n_units, "regression": self.settings.regression, "notes": list(self.notes),
            "pls": self.settings.to_dict(), "cv": self.cv_summary(),
            "dataset_sha256": self.dataset_sha256, "synthetic": self.synthetic,
            "cache_key": self.cache_key, "fit_seconds": self.fit_seconds,
            "request": self.request.to_dict(),
        }

    def replace(self, **changes: Any) -> EncodingModel:
        return dataclasses.replace(self, **changes)


@dataclass
class StackedPredictor:
    """All subjects' PLS maps as one factored affine map -> (n, total voxels) float32.

    ``(X - m_s) C_sᵀ + b_s = X C_sᵀ + (b_s - m_s C_sᵀ)`` for each subject s, and a PLS map has rank ≤ n_components,
    so ``C_sᵀ = R_s Q_s`` (thin SVD, R_s: n_units × k, Q_s: k × n_voxels). Prediction is one matmul with all
    subjects' ``R`` side by side (n_units × 9k), then one small (k × n_voxels) matmul per subject: ~10× fewer
    FLOPs than the dense (n_units × 12,155) product, equal to it to float32 rounding. Columns of subject s are
    ``slices[s]``.
    """

    reducer: np.ndarray  # (n_units, sum of ranks) float32: the R_s side by side
    loadings: list[np.ndarray]  # per subject, (rank_s, n_voxels_s) float32: Q_s
    bias: np.ndarray  # (total_voxels,) float32
    slices: dict[str, tuple[int, int]]

    @classmethod
    def from_models(cls, models: dict[str, EncodingModel]) -> StackedPredictor:
        reducers, loadings, biases, slices, start = [], [], [], {}, 0
        for subject, model in models.items():
            coef_t = model.fit.coef.T  # (n_units, n_voxels), float64
            u, singular, vt = np.linalg.svd(coef_t, full_matrices=False)
            rank = int(np.sum(singular > singular[0] * 1e-9)) if singular.size and singular[0] > 0 else 0
            rank = max(1, min(rank, model.settings.n_components))
            reducers.append(u[:, :rank] * singular[:rank])
            loadings.append(np.ascontiguousarray(vt[:rank], dtype=np.float32))
            biases.append(model.fit.intercept - model.fit.x_mean @ coef_t)
            slices[subject] = (start, start + coef_t.shape[1])
            start += coef_t.shape[1]
        return cls(np.ascontiguousarray(np.concatenate(reducers, axis=1), dtype=np.float32), loadings,
                   np.concatenate(biases).astype(np.float32), slices)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n_sentences, n_units) -> (n_sentences, total_voxels) float32."""
        scores = features.astype(np.float32, copy=False) @ self.reducer
        out = np.empty((scores.shape[0], self.bias.shape[0]), dtype=np.float32)
        offset = 0
        for (lo, hi), loading in zip(self.slices.values(), self.loadings):
            rank = loading.shape[0]
            np.matmul(scores[:, offset: offset + rank], loading, out=out[:, lo:hi])
            offset += rank
        out += self.bias
        return out

#: the ConvergenceWarning that :func:`berg_ray.fitting.fit_subjects` gives with :func:`convergence_summary` (a
#: ``warnings.filterwarnings`` message regex: the CLI and the demo print the line in their summary instead)
CONVERGENCE_WARNING = r".*PLS reached max_iter=\d+ for \d+ of \d+ subject"


def convergence_summary(models: dict[str, EncodingModel]) -> str | None:
    """One readable line naming the subjects whose PLS fit or CV folds stopped at ``max_iter`` and how often, or
    None when every fit converged (see :attr:`EncodingModel.convergence`)."""
    named = []
    for subject, model in models.items():
        components = model.convergence.get("full_fit_components", ())
        folds = model.convergence.get("cv_folds", 0)
        what = ([f"fit on all sentences: {len(components)} of {model.settings.n_components} components"]
                if components else []) + ([f"{folds} of {model.settings.cv_folds} CV folds"] if folds else [])
        if what:
            named.append(f"{subject} ({', '.join(what)})")
    if not named:
        return None
    settings = next(iter(models.values())).settings
    return (f"PLS reached max_iter={settings.max_iter} for {len(named)} of {len(models)} subject(s): "
            f"{'; '.join(named)}; the last iteration's weights are used, as sklearn's PLSRegression does")


def format_cv_table(models: dict[str, EncodingModel]) -> str:
    """A text table of per-subject CV r (median, mean) for fitted encoding models."""
    lines = []
    first = next(iter(models.values()))
    if first.synthetic:
        lines.append("*** SYNTHETIC DATA: scores measure recovery of a planted map, not brain predictivity ***")
    lines.append(f"model {first.model_id}  layer {first.layer}  context {first.context}  "
                 f"CV: {first.settings.describe_cv()}")
    lines.append(f"{'subject':>8} {'voxels':>7} {'median r':>9} {'mean r':>8}")
    for subject, model in models.items():
        median, mean = np.nanmedian(model.cv_r), np.nanmean(model.cv_r)
        lines.append(f"{subject:>8} {model.n_voxels:>7d} {median:>9.3f} {mean:>8.3f}")
    medians = [np.nanmedian(m.cv_r) for m in models.values()]
    lines.append(f"{'all':>8} {sum(m.n_voxels for m in models.values()):>7d} {np.median(medians):>9.3f}")
    return "\n".join(lines)
