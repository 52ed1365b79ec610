"""berg-ray: in-silico fMRI for BrainScore language models (BERG-compatible), at cluster scale on Ray.

Public names are imported lazily so that ``berg-ray models`` does not import torch or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

import berg_ray._environment  # noqa: F401  (BS_INSTALL_DEPENDENCIES=no before any brainscore import)

__version__ = "0.1.0"

_EXPORTS = {
    "BERG": "berg_ray.api",
    "list_models": "berg_ray.registry",
    "register_model": "berg_ray.registry",
    "get_spec": "berg_ray.registry",
    "ModelSpec": "berg_ray.registry",
    "extract_features": "berg_ray.features",
    "extract": "berg_ray.features",
    "ModelRequest": "berg_ray.request",
    "FeatureExtractor": "berg_ray.features",
    "load_pereira": "berg_ray.neural",
    "load_dataset": "berg_ray.neural",
    "NeuralAssembly": "berg_ray.neural",
    "PereiraAssembly": "berg_ray.neural",
    "dataset_ids": "berg_ray.dataset_layouts",
    "SUBJECTS": "berg_ray.neural",
    "EncodingModel": "berg_ray.encoding_model",
    "PLSSettings": "berg_ray.regression",
    "fit_pls": "berg_ray.regression",
    "EncodingModelStore": "berg_ray.store",
    "fit_subjects": "berg_ray.distributed",
    "encode_corpus": "berg_ray.corpus",
    "rank_sentences": "berg_ray.ranking",
    "run_sweep": "berg_ray.sweep",
    "score": "berg_ray.benchmark_score",
    "BenchmarkScore": "berg_ray.benchmark_score",
    "benchmark_ids": "berg_ray.benchmarks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'berg_ray' has no attribute {name!r}")
