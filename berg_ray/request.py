"""One frozen request: which language model to run, and how — resolved and validated once, at the front door.

The API, the CLI and the jobs build a :class:`ModelRequest` from what the user typed (a model id, layer(s), context,
precision, batch size, device); every lower layer — feature extraction, fitting, the Ray actors and tasks, the
corpus pipeline, sweeps — receives that object instead of loose ids and keyword arguments, so a setting cannot be
dropped on one path. It is stored on every :class:`~berg_ray.encoding_model.EncodingModel` (so ``BERG.encode``
extracts exactly as the model was fitted) and in every cache manifest.

Cache keys are computed here, once, on the driver: :meth:`ModelRequest.key_fields` lists everything that changes a
fitted model (model content fingerprint, layer, tokenizer settings, context, dtype, subject, dataset sha256, PLS
settings, format versions) and :func:`cache_key` hashes them. The model's fingerprint (for a local folder: a hash of
its files) is taken when the request is built, so Ray workers never re-hash a weight folder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from berg_ray.errors import InvalidInputError
from berg_ray.hashing import json_sha256
from berg_ray.localizer import LOCALIZED_LAYER, LOCALIZER_VERSION, check_top_k
from berg_ray.options import (AUTO_DTYPE, CONTEXTS, DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT, DEFAULT_DTYPE, DTYPE_CHOICES,
                              DTYPES)
from berg_ray.precision import resolve_choice
from berg_ray.registry import ModelSpec, get_spec
from berg_ray.regression import PLSSettings
from berg_ray.validation import check_batch_size, check_device_name, check_layers

#: bump when the cache entry layout or anything that changes fitted numbers changes
CACHE_FORMAT_VERSION = 1
#: identifies how features are read out; change it when the readout changes numbers
FEATURES_VERSION = "brainscore-last-token/1"
#: where models run unless asked otherwise: a GPU when one is visible, else the CPU
DEFAULT_DEVICE = "auto"
#: ``ModelSpec.origin`` of a spec rebuilt from a cache entry's key fields (:meth:`ModelRequest.recorded`), not looked
#: up in the registry
RECORDED_ORIGIN = "cache-entry"


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``fields`` (see :meth:`ModelRequest.key_fields`)."""
    return json_sha256(fields)


def check_context(context: Any) -> str:
    """``context`` if it is one of :data:`~berg_ray.options.CONTEXTS`; else a clear error."""
    if context not in CONTEXTS:
        raise InvalidInputError(f"unknown context policy {context!r}; allowed: {', '.join(CONTEXTS)}")
    return context


def check_dtype(dtype: Any) -> str:
    """The name of a forward-pass precision or ``"auto"`` (``None`` means float32); else a clear error.

    ``"auto"`` is returned as it is: it is resolved for a device (:func:`berg_ray.precision.auto_dtype`) when a
    :class:`ModelRequest` is built, before any cache key exists.
    """
    if dtype is None:
        return DEFAULT_DTYPE
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_CHOICES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_CHOICES)}")
    return name


def context_groups(n_sentences: int, context: str, passages: Sequence[Any] | None = None) -> list[list[int]]:
    """Split sentence indices into groups that share a running context, in input order.

    Returns:
        list of groups, each a list of sentence indices; sentence ``g[k]``'s context is sentences ``g[:k+1]``.
    """
    check_context(context)
    if passages is not None and len(passages) != n_sentences:
        raise InvalidInputError(f"passages has {len(passages)} entries but there are {n_sentences} sentences; "
                                "give one passage label per sentence")
    if context == "sentence":
        return [[i] for i in range(n_sentences)]
    if context == "running":
        return [list(range(n_sentences))]
    if passages is None:
        raise InvalidInputError("context='passage' needs passages=[one label per sentence]")
    groups: dict[Any, list[int]] = {}  # insertion-ordered: passages in first-seen order
    for index, label in enumerate(passages):
        groups.setdefault(label, []).append(index)
    return list(groups.values())


@dataclass(frozen=True)
class ModelRequest:
    """A language model and how to run it; immutable, hashable, cheap to send to Ray workers.

    Attributes:
        spec: the registered model (hub id or local folder, mapped layer, tokenizer settings).
        layers: modules read out, in order; ``(spec.layer,)`` unless asked otherwise.
        context: context policy: ``"sentence"``, ``"passage"`` or ``"running"``.
        dtype: forward-pass precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``; never ``"auto"``, which
            :meth:`build` resolves for the request's device in the building process (the driver): ``"cuda"`` → bf16,
            ``"cpu"`` → bf16 where the CPU has AVX512-BF16/AMX else float32, ``"auto"`` → as for this process's
            GPU or CPU. Ray front doors whose actors run elsewhere resolve it again for the actors' device, by a
            probe task where they run (:func:`berg_ray.distributed.request_for_actors`: ``BERG.fit`` on Ray,
            :func:`berg_ray.corpus.encode_corpus`, :func:`berg_ray.distributed.fit_subjects`), before any cache
            key. Cache keys hold the resolved name, so a bf16 and a float32 fit never share one.
        batch_size: sequences per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; resolved where the model is loaded (a Ray actor
            decides on its own node).
        fingerprint: the model's content fingerprint (hub id + revision, or a hash of the local folder's files).
        localizer_top_k: for a request that reads a localizer model's ``"localized"`` features: the fraction or
            number of units its functional localizer keeps (``spec.localizer_top_k``, part of the cache key with
            ``spec.localizer_layers``); ``None`` otherwise. Derived from ``spec`` and ``layers`` by :meth:`build`
            and :meth:`replace`.
        dtype_auto: ``dtype`` was asked as ``"auto"`` and resolved for the building process's ``device``, not yet
            for a Ray actor's (:func:`berg_ray.distributed.request_for_actors` resolves it there and clears this).
            Not part of equality, the cache key or :meth:`to_dict`: it says where ``dtype`` was chosen, not what
            it is.
    """

    spec: ModelSpec
    layers: tuple[str, ...]
    context: str = DEFAULT_CONTEXT
    dtype: str = DEFAULT_DTYPE
    batch_size: int = DEFAULT_BATCH_SIZE
    device: str = DEFAULT_DEVICE
    fingerprint: str = ""
    localizer_top_k: float | int | None = None
    dtype_auto: bool = dataclasses.field(default=False, compare=False)

    @classmethod
    def build(cls, model: str | ModelSpec, *, layers: str | Sequence[str] | None = None,
              context: str | None = DEFAULT_CONTEXT, dtype: str | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, device: str | None = DEFAULT_DEVICE,
              localizer_top_k: float | int | None = None) -> ModelRequest:
        """Resolve ``model`` (an id or spec) once and check every setting; raises ``InvalidInputError`` naming the bad
        value. ``layers=None`` reads the layer the model's submitter mapped to the language system; ``dtype="auto"``
        becomes the precision that fits ``device`` (see :attr:`dtype`); ``localizer_top_k`` replaces a localizer
        model's own top-k (see :attr:`localizer_top_k`)."""
        spec = get_spec(model)
        if localizer_top_k is not None:
            if not spec.localizer_layers:
                raise InvalidInputError(f"localizer_top_k={localizer_top_k!r} was given but {spec.model_id!r} is not a "
                                        "localizer model; register one with register_model(..., layer=[...], "
                                        "localizer_top_k=0.1)")
            spec = dataclasses.replace(spec, localizer_top_k=check_top_k(localizer_top_k))
        chosen = (spec.layer,) if layers is None else tuple(check_layers(layers))
        device = check_device_name(device or DEFAULT_DEVICE)
        asked = check_dtype(dtype)
        return cls(spec=spec, layers=chosen, context=check_context(context or DEFAULT_CONTEXT),
                   dtype=resolve_choice(asked, device), batch_size=check_batch_size(batch_size),
                   device=device, fingerprint=spec.source_fingerprint(),
                   localizer_top_k=_localizer_top_k(spec, chosen), dtype_auto=asked == AUTO_DTYPE)

    @classmethod
    def recorded(cls, model_id: str, source: str, fields: Mapping[str, Any]) -> ModelRequest:
        """The request a cache entry was fitted for, rebuilt from its key fields (:meth:`key_fields`: ``layer``,
        ``context``, ``dtype``, ``tokenizer``, ``model``, ``localizer``) without the registry or any hashing: what an
        entry read on its own carries until a caller's request replaces it (:attr:`is_recorded`). Entries written
        before ``dtype`` was a key field were float32."""
        localizer = fields.get("localizer") or {}
        spec = ModelSpec(model_id, source, str(fields["layer"]), origin=RECORDED_ORIGIN,
                         localizer_layers=tuple(localizer.get("layers", ())),
                         localizer_top_k=localizer.get("top_k"),
                         **({"tokenizer_kwargs": dict(fields["tokenizer"])} if "tokenizer" in fields else {}))
        return cls(spec=spec, layers=(str(fields["layer"]),), context=str(fields["context"]),
                   dtype=str(fields.get("dtype", DEFAULT_DTYPE)), fingerprint=str(fields.get("model", "")),
                   localizer_top_k=localizer.get("top_k"))

    # -- views ------------------------------------------------------------------------------------------------------

    @property
    def is_recorded(self) -> bool:
        """Rebuilt from a cache entry's key fields (:meth:`recorded`): its spec is not the registry's (no builder,
        kind or revision), so running the model needs the registered one (:meth:`build` of :attr:`model_id`)."""
        return self.spec.origin == RECORDED_ORIGIN

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def layer(self) -> str:
        """The one layer read out; an error for a multi-layer request (use :attr:`layers`)."""
        if len(self.layers) != 1:
            raise InvalidInputError(f"this request reads {len(self.layers)} layers ({', '.join(self.layers)}); "
                                    "an encoding model reads one")
        return self.layers[0]

    def replace(self, **changes: Any) -> ModelRequest:
        """A copy with some settings changed, checked like :meth:`build` (the fingerprint is kept: same model;
        ``dtype="auto"`` is resolved for the copy's device, and :attr:`dtype_auto` follows ``dtype``)."""
        if "spec" in changes or "fingerprint" in changes:
            raise InvalidInputError("a request's model cannot be replaced; build a new request")
        if "localizer_top_k" in changes:
            raise InvalidInputError("a request's localizer_top_k follows its model; build a new request with "
                                    "ModelRequest.build(..., localizer_top_k=...)")
        device = check_device_name(changes.get("device", self.device))
        if "dtype" in changes:
            asked = check_dtype(changes["dtype"])
            changes["dtype"], changes["dtype_auto"] = resolve_choice(asked, device), asked == AUTO_DTYPE
        updated = dataclasses.replace(self, **changes)
        return dataclasses.replace(updated, context=check_context(updated.context), dtype=check_dtype(updated.dtype),
                                   batch_size=check_batch_size(updated.batch_size), device=device,
                                   layers=tuple(updated.layers),
                                   localizer_top_k=_localizer_top_k(self.spec, tuple(updated.layers)))

    def for_layer(self, layer: str) -> ModelRequest:
        """The one-layer request of ``layer`` (a sweep cell, or one layer of a multi-layer readout)."""
        return self.replace(layers=(layer,))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (cache manifests, ``encode(..., return_metadata=True)``, corpus outputs)."""
        described = {"model_id": self.spec.model_id, "source": self.spec.source, "revision": self.spec.revision,
                     "layers": list(self.layers), "context": self.context, "dtype": self.dtype,
                     "batch_size": self.batch_size, "device": self.device, "fingerprint": self.fingerprint}
        if self.localizer_top_k is not None:
            described.update(localizer_layers=list(self.spec.localizer_layers), localizer_top_k=self.localizer_top_k)
        return described

    # -- cache identity ---------------------------------------------------------------------------------------------

    def key_fields(self, subject: str, dataset_sha256: str, settings: PLSSettings) -> dict[str, Any]:
        """Everything that changes the fitted encoding model of ``subject``: its cache key hashes these fields.

        Batch size and device change no number (the readout is exact for any batching), so they are not part of it.
        """
        if self.dtype not in DTYPES:  # "auto" must have been resolved (build/replace do): keys name a precision
            raise InvalidInputError(f"request dtype {self.dtype!r} is not a precision ({', '.join(DTYPES)}); build "
                                    "requests with ModelRequest.build, which resolves 'auto'")
        fields = {
            "cache_format": CACHE_FORMAT_VERSION,
            "features": FEATURES_VERSION,
            "model": self.fingerprint or self.spec.source_fingerprint(),
            "layer": self.layer,
            "tokenizer": self.spec.tokenizer_kwargs,
            "context": self.context,
            "dtype": self.dtype,
            "subject": subject,
            "dataset_sha256": dataset_sha256,
            "pls": settings.to_dict(),
        }
        if self.localizer_top_k is not None:  # only for localizer models: every other key stays as it was
            fields["localizer"] = {"method": LOCALIZER_VERSION, "layers": list(self.spec.localizer_layers),
                                   "top_k": self.localizer_top_k}
        return fields

    def cache_key(self, subject: str, dataset_sha256: str, settings: PLSSettings) -> str:
        """The cache key of ``subject``'s encoding model (sha256 hex of :meth:`key_fields`)."""
        return cache_key(self.key_fields(subject, dataset_sha256, settings))


def _localizer_top_k(spec: ModelSpec, layers: tuple[str, ...]) -> float | int | None:
    """The localizer's top-k of a request for ``layers`` of ``spec``: set only when it reads the localized features."""
    return spec.localizer_top_k if spec.localizer_layers and LOCALIZED_LAYER in layers else None
