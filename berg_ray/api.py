"""BERG-compatible Python API: ``BERG(berg_dir).get_encoding_model(...)`` and ``.encode(...)``.

A user of BERG's ``brainscore_language`` gateway changes one import (``from berg_ray import BERG``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from berg_ray.delegated import control_note
from berg_ray.encoding_model import EncodingModel
from berg_ray.errors import InvalidInputError
from berg_ray.features import extract_request
from berg_ray.dataset_layouts import check_context_for, get_layout
from berg_ray.fitting import fit_subjects, settings_for
from berg_ray.model_loading import resolve_device
from berg_ray.neural import NeuralAssembly, dataset_cache_dir, dataset_layout_for, load_dataset
from berg_ray.options import DEFAULT_BATCH_SIZE
from berg_ray.provenance import package_versions
from berg_ray.registry import ModelSpec
from berg_ray.registry import list_models as _list_models
from berg_ray.request import ModelRequest, check_context
from berg_ray.regression import PLSSettings
from berg_ray.store import EncodingModelStore
from berg_ray.validation import check_batch_size, check_n_components, check_sentences

logger = logging.getLogger(__name__)

#: BERG's gateway id without a model name means its default model
GATEWAY_ID = "brainscore_language"
GATEWAY_DEFAULT_MODEL = "brainscore_language-gpt2"


@functools.lru_cache(maxsize=8)
def _cached_assembly(dataset: str, cache_dir: str | None) -> NeuralAssembly:
    return load_dataset(dataset, cache_dir=cache_dir)


class BERG:
    """Encoding models of BrainScore language models trained on a neural dataset, cached under ``berg_dir``.

    Args:
        berg_dir: cache root: a local folder or an fsspec URL (``s3://bucket/prefix``).
        dataset: a brainscore dataset id (``"Pereira2018.language"`` — BERG's ``"brainscore"`` —,
            ``"Pereira2018.auditory"``, ``"Tuckute2024.language"``, ``"Blank2014.fROI"``, ``"Fedorenko2016.language"``),
            a path/URL to a ``.nc`` file in one of their layouts, ``"synthetic"`` (Pereira's layout) or
            ``"synthetic:<id>"`` (a stand-in of that dataset, with a planted map).
        context: default context policy for new encoding models; ``None``: the dataset's (``"sentence"`` for Pereira
            and Tuckute2024, ``"passage"`` — the story or sentence so far — for Blank2014 and Fedorenko2016). A
            context that cannot read the dataset's units is refused when the data are loaded.
        n_components: PLS components (BERG: 25; capped, with a note on the model, where the data hold fewer).
        regression: ``"pls"`` (BERG) or ``"ridge"`` (RidgeCV over brainscore's alphas, one alpha per neuroid).
    """

    def __init__(self, berg_dir: str | os.PathLike, dataset: str = "brainscore", *, context: str | None = None,
                 n_components: int = 25, regression: str = "pls"):
        self.berg_dir = os.fspath(berg_dir)
        self.dataset = os.fspath(dataset) if isinstance(dataset, os.PathLike) else dataset
        named = dataset_layout_for(self.dataset) if isinstance(self.dataset, str) else None
        self._context = check_context(context) if context is not None else None
        if named is not None and self._context is not None:
            check_context_for(named, self._context)  # a named dataset is checked before anything loads
        self.n_components = check_n_components(n_components)
        self.regression = PLSSettings(regression=regression).regression
        self.store = EncodingModelStore(self.berg_dir)

    def __repr__(self) -> str:
        return f"BERG({self.berg_dir!r}, dataset={self.dataset!r})"

    def assembly(self) -> NeuralAssembly:
        """The training data (loaded once per process)."""
        return _cached_assembly(self.dataset, dataset_cache_dir(self.berg_dir))

    @property
    def context(self) -> str:
        """The default context of new encoding models: as given, or the dataset's."""
        if self._context is not None:
            return self._context
        named = dataset_layout_for(self.dataset)
        return (named or self.assembly().layout).default_context

    @property
    def settings(self) -> PLSSettings:
        """The encoding-model settings: PLS components and regression as given, the dataset's own CV splits."""
        return settings_for(self.assembly(), self.n_components, self.regression)

    def list_subjects(self) -> list[str]:
        """The dataset's subjects, as :meth:`get_encoding_model` accepts them (Pereira: ``'018'``, ...;
        Tuckute2024: its one network average ``'848-853-865-875-876'``; Fedorenko2016: ``'1'``…)."""
        return list(self.assembly().subjects)

    @staticmethod
    def list_models(expand_brainscore_language: bool = True) -> list[str]:
        """Model ids accepted by :meth:`get_encoding_model` (see :func:`berg_ray.list_models`)."""
        return _list_models(expand_brainscore_language)

    def request(self, model_id: str | ModelSpec, *, context: str | None = None, device: str = "auto",
                dtype: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                layers: str | Sequence[str] | None = None) -> ModelRequest:
        """The :class:`ModelRequest` for ``model_id`` with this object's default context: resolved and checked once
        (an unknown id, context, dtype, batch size or device fails here, before any data or model is loaded)."""
        if model_id == GATEWAY_ID:
            model_id = GATEWAY_DEFAULT_MODEL
        return ModelRequest.build(model_id, layers=layers, context=context or self.context, dtype=dtype,
                                  batch_size=batch_size, device=device)

    def fit(self, request: ModelRequest, subjects: str | Sequence[str] = "all", *, use_ray: bool | None = None,
            num_gpus: float = 0.0, show_progress: bool = False) -> dict[str, EncodingModel]:
        """Cached-or-fitted encoding models of ``request`` for ``subjects`` (``{subject: EncodingModel}``).

        Args:
            use_ray: fit on Ray (an extractor actor + one task per subject); ``None`` means: on Ray when this process
                is connected to a Ray cluster (``ray.init`` was called), else in this process. Numbers are equal.
            num_gpus: GPUs for the Ray extractor actor (fractions allowed).

        A ``dtype="auto"`` request (resolved for this process by :meth:`request`) is resolved again on Ray for the
        device of the extractor actor (:func:`berg_ray.distributed.request_for_actors`), before any cache key: the
        returned models then carry that precision.
        """
        from berg_ray import distributed

        if use_ray or (use_ray is None and distributed.ray_is_available()):  # the Ray front door, with our data
            return distributed.fit_subjects(request, subjects, dataset=self.assembly(), cache=self.store,
                                            settings=self.settings, num_gpus=num_gpus, show_progress=show_progress)
        return fit_subjects(request, self.assembly(), subjects, settings=self.settings, store=self.store,
                            show_progress=show_progress)

    def get_encoding_model(self, model_id: str, subject: str, device: str = "auto", *, context: str | None = None,
                           show_progress: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, dtype: str | None = None
                           ) -> EncodingModel:
        """Load the cached encoding model of ``model_id`` for ``subject``, fitting and caching it first if needed.

        Args:
            model_id: e.g. ``"brainscore_language-gpt2"`` (``"brainscore_language"`` alone means gpt2, as in BERG).
            subject: one of the dataset's subjects (:meth:`list_subjects`), e.g. Pereira's ``"018"``.
            device: ``"cpu"``, ``"cuda"`` or ``"auto"``; used for feature extraction (fit and encode).
            dtype: forward-pass precision (``None``/``"float32"``, ``"bfloat16"``, ``"float16"`` on GPU); part of the
                cache key, and ``encode`` extracts with it too.
        """
        request = self.request(model_id, context=context, device=device, dtype=dtype, batch_size=batch_size)
        model = next(iter(self.fit(request, [subject], show_progress=show_progress).values()))
        return model.replace(device=str(resolve_device(request.device)))

    def encode(self, model: EncodingModel, stimulus: str | Sequence[str], show_progress: bool = False,
               return_metadata: bool = False, *, passages: Sequence[Any] | None = None,
               batch_size: int | None = None) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
        """Predicted responses to ``stimulus``: float32 array of shape (n_units, n_neuroids), in the training data's
        units (Pereira: z-scored BOLD per voxel; see ``return_metadata``).

        One prediction per unit of the dataset: a sentence (Pereira, Tuckute2024), a story fragment (Blank2014) or a
        word (Fedorenko2016); fragments and words are read with the earlier ones of their story or sentence, so give
        ``passages=`` (the story or sentence each belongs to), as in training.

        Features are read exactly as for training: the model's layer, context and dtype (its request).

        Args:
            model: from :meth:`get_encoding_model`.
            stimulus: a sentence or a list of sentences.
            return_metadata: also return a dict describing the model, voxels, data and versions.
            passages: passage label per sentence, for models trained with ``context="passage"``.
            batch_size: sequences per forward pass (default: the model's request's).

        Raises:
            StaleModelError: the model's weights (a local folder retrained in place) are not the ones ``model`` was
                fitted on; the message names both fingerprints.
        """
        if not isinstance(model, EncodingModel):
            raise InvalidInputError(f"model must come from get_encoding_model(), got {type(model).__name__}")
        sentences = check_sentences(stimulus)
        request = model.request
        if request.context == "passage" and passages is None:
            layout = get_layout(model.dataset)
            raise InvalidInputError(
                f"{model.model_id} ({layout.identifier}, subject {model.subject}) reads each {layout.unit} with the "
                f"earlier {layout.unit}s of its {layout.context_coord} (context 'passage'), as in training: pass "
                f"passages=[the {layout.context_coord} of each {layout.unit}]")
        if request.is_recorded:  # an entry read on its own: run the model as registered, as the entry was fitted
            request = ModelRequest.build(model.model_id, layers=model.layer, context=model.context, dtype=model.dtype)
        batch_size = check_batch_size(batch_size if batch_size is not None else request.batch_size)
        # the weights it was fitted on (its cache key's "model"); a folder retrained since is refused, naming both
        fitted_on = model.key_fields.get("model") or request.fingerprint
        here = request.replace(device=model.device, batch_size=batch_size)  # where this process runs it
        features = extract_request(here, sentences, passages, fingerprint=fitted_on,
                                   show_progress=show_progress)[request.layer]
        responses = model.predict(features)
        if not return_metadata:
            return responses
        return responses, encode_metadata(model, len(sentences))


def encode_metadata(model: EncodingModel, n_sentences: int) -> dict[str, Any]:
    """What ``encode(..., return_metadata=True)`` returns beside the responses."""
    described = model.describe()
    return {
        **described,
        "hub_id": model.source,
        "n_sentences": n_sentences,
        "voxels": model.voxels.copy(),
        "shape": [f"n_{get_layout(model.dataset).unit}s", "n_neuroids"],
        "units": f"{get_layout(model.dataset).response_units} (as the {model.dataset} training data)",
        "versions": package_versions(),
        "device": model.device,
        "dtype": model.dtype,
        # a control model (OASM, random embedding) encodes no linguistic content: say so beside its predictions
        "control_model": control_note(model.request.spec),
    }
