"""The fitted encoding model of one (language model, layer, context, subject): a PLS map plus its provenance."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from berg_ray.errors import InvalidInputError
from berg_ray.regression import PLSFit, PLSSettings


@dataclass
class EncodingModel:
    """Maps features of ``model_id``'s ``layer`` to one subject's voxel responses.

    Attributes:
        model_id: registered model id (``berg_ray.list_models()``).
        source: hub id or local folder the weights came from.
        layer: module whose output is read.
        context: context policy used for training (and to be used for prediction).
        subject: Pereira subject id, e.g. ``"018"``.
        fit: the PLS map (``coef`` of shape (n_voxels, n_units)).
        cv_r: (n_voxels,) Pearson r of GroupKFold out-of-fold predictions, per voxel.
        settings: PLS and CV settings.
        dataset_sha256: sha256 of the Pereira ``.nc`` file it was trained on.
        synthetic: True when trained on synthetic data.
        voxels: one row per voxel (neuroid_id, roi, voxel coordinates), in prediction column order.
        cache_key: the content key of its cache entry.
        key_fields: what the key was hashed from.
        device: where ``BERG.encode`` extracts features for it (not part of the fit).
    """

    model_id: str
    source: str
    layer: str
    context: str
    subject: str
    fit: PLSFit
    cv_r: np.ndarray
    settings: PLSSettings
    dataset_sha256: str
    synthetic: bool
    voxels: pd.DataFrame
    cache_key: str = ""
    key_fields: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float = float("nan")
    device: str = "cpu"

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
                "cv": f"GroupKFold({self.settings.cv_folds}) by {self.settings.cv_group}"}

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance (what ``encode(..., return_metadata=True)`` and cache manifests report)."""
        return {
            "model_id": self.model_id, "source": self.source, "layer": self.layer, "context": self.context,
            "subject": self.subject, "n_voxels": self.n_voxels, "n_units": self.n_units,
            "pls": self.settings.to_dict(), "cv": self.cv_summary(),
            "dataset_sha256": self.dataset_sha256, "synthetic": self.synthetic,
            "cache_key": self.cache_key, "fit_seconds": self.fit_seconds,
        }

    def replace(self, **changes: Any) -> "EncodingModel":
        return dataclasses.replace(self, **changes)
