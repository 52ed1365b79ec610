"""Fit (or load from the cache) the per-subject encoding models of one language model, in this process.

The Ray layer (``berg_ray.distributed``) runs the same functions as tasks; results are identical either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import InvalidInputError
from berg_ray.features import check_context, extract_features
from berg_ray.neural import PereiraAssembly, check_subject
from berg_ray.registry import ModelSpec, get_spec
from berg_ray.regression import PLSSettings, cross_validated_r, fit_pls
from berg_ray.store import CACHE_FORMAT_VERSION, EncodingModelStore, cache_key

logger = logging.getLogger(__name__)

#: identifies how features are read out; change it when the readout changes numbers
FEATURES_VERSION = "brainscore-last-token/1"


def resolve_subjects(assembly: PereiraAssembly, subjects: str | Iterable[str] = "all") -> list[str]:
    """``"all"`` -> every subject of the dataset; otherwise each id checked and normalised ("18" -> "018")."""
    if isinstance(subjects, str) and subjects == "all":
        return list(assembly.subjects)
    if isinstance(subjects, (str, int)):
        subjects = [subjects]
    chosen = [check_subject(assembly, s) for s in subjects]
    if not chosen:
        raise InvalidInputError(f"no subjects given; allowed: 'all' or any of {', '.join(assembly.subjects)}")
    return list(dict.fromkeys(chosen))


def key_fields(spec: ModelSpec, subject: str, context: str, dataset_sha256: str, settings: PLSSettings,
               dtype: str | None = None) -> dict[str, Any]:
    """Everything that changes a fitted model: its cache key is the sha256 of these fields."""
    return {
        "cache_format": CACHE_FORMAT_VERSION,
        "features": FEATURES_VERSION,
        "model": spec.source_fingerprint(),
        "layer": spec.layer,
        "tokenizer": spec.tokenizer_kwargs,
        "context": context,
        "dtype": dtype or "float32",  # forward-pass precision changes the features
        "subject": subject,
        "dataset_sha256": dataset_sha256,
        "pls": settings.to_dict(),
    }


def training_features(spec: ModelSpec, assembly: PereiraAssembly, context: str, device: str = "cpu",
                      dtype: str | None = None, batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
    """Features of the 384 training sentences under ``context``: array (384, n_units) float32.

    ``passage`` uses the dataset's passage labels (as the BrainScore benchmark); ``running`` runs one context over
    all 384 sentences in file order (as BERG).
    """
    return extract_features(spec, list(assembly.sentences), context=context, passages=list(assembly.passages),
                            device=device, dtype=dtype, batch_size=batch_size, show_progress=show_progress)


def cv_groups(assembly: PereiraAssembly, settings: PLSSettings) -> Sequence[str]:
    return assembly.stories if settings.cv_group == "story" else assembly.passages


def fit_encoding_model(spec: ModelSpec, features: np.ndarray, assembly: PereiraAssembly, subject: str,
                       context: str, settings: PLSSettings, dtype: str | None = None) -> EncodingModel:
    """Fit PLS on all 384 sentences and score it with GroupKFold CV (pure computation, no cache).

    Args:
        features: (384, n_units) training features, rows in ``assembly`` order.
    """
    started = time.perf_counter()
    responses = assembly.responses(subject)
    if features.shape[0] != responses.shape[0]:
        raise InvalidInputError(f"features have {features.shape[0]} rows, the dataset {responses.shape[0]}")
    fit = fit_pls(features, responses, settings.n_components, settings.scale, settings.max_iter, settings.tol)
    cv_r = cross_validated_r(features, responses, cv_groups(assembly, settings), settings)
    fields = key_fields(spec, subject, context, assembly.sha256, settings, dtype)
    return EncodingModel(
        model_id=spec.model_id, source=spec.source, layer=spec.layer, context=context, subject=subject, fit=fit,
        cv_r=cv_r, settings=settings, dataset_sha256=assembly.sha256, synthetic=assembly.synthetic,
        voxels=assembly.voxels(subject).reset_index(drop=True), cache_key=cache_key(fields), key_fields=fields,
        fit_seconds=time.perf_counter() - started,
    )


def load_cached(store: EncodingModelStore | None, spec: ModelSpec, assembly: PereiraAssembly, subject: str,
                context: str, settings: PLSSettings, dtype: str | None = None) -> EncodingModel | None:
    if store is None:
        return None
    key = cache_key(key_fields(spec, subject, context, assembly.sha256, settings, dtype))
    model = store.load(spec.name, subject, key, assembly.synthetic)
    if model is not None:
        model.model_id = spec.model_id
    return model


def fit_subjects_local(model_id: str | ModelSpec, assembly: PereiraAssembly, subjects: str | Iterable[str] = "all",
                       store: EncodingModelStore | None = None, context: str = "sentence",
                       settings: PLSSettings | None = None, device: str = "cpu", dtype: str | None = None,
                       batch_size: int = 32, show_progress: bool = False) -> dict[str, EncodingModel]:
    """Cached-or-fitted encoding models for ``subjects``, computed in this process.

    Features of the 384 training sentences are extracted once (only if some subject is not cached).
    """
    spec = get_spec(model_id)
    check_context(context)
    settings = settings or PLSSettings()
    chosen = resolve_subjects(assembly, subjects)
    models: dict[str, EncodingModel] = {}
    for subject in chosen:
        cached = load_cached(store, spec, assembly, subject, context, settings, dtype)
        if cached is not None:
            logger.info("%s subject %s: loaded from cache", spec.model_id, subject)
            models[subject] = cached
    missing = [s for s in chosen if s not in models]
    if missing:
        features = training_features(spec, assembly, context, device, dtype, batch_size, show_progress)
        iterator: Any = missing
        if show_progress:
            from tqdm.auto import tqdm

            iterator = tqdm(missing, desc=f"fit PLS {spec.model_id}", unit="subject")
        for subject in iterator:
            model = fit_encoding_model(spec, features, assembly, subject, context, settings, dtype)
            if store is not None:
                store.save(model, spec.name)
            logger.info("%s subject %s: fitted in %.1f s, median CV r %.3f", spec.model_id, subject,
                        model.fit_seconds, np.nanmedian(model.cv_r))
            models[subject] = model
    return {s: models[s] for s in chosen}
