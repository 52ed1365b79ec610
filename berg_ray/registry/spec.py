"""A model's specification (:class:`ModelSpec`): hub id or local folder, mapped layer, tokenizer settings, and the
fingerprint of its weights that cache keys are built from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berg_ray import code_models, model_status
from berg_ray.hashing import folder_sha256

BRAINSCORE_PREFIX = "brainscore_language-"
#: brainscore's ``HuggingfaceSubject`` loads every tokenizer with these settings (and calls it with truncation=True).
BRAINSCORE_TOKENIZER_KWARGS: dict[str, Any] = {"truncation_side": "left"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load a language model and read its language-system layer.

    Attributes:
        model_id: the id users type, e.g. ``"brainscore_language-gpt2"`` or a custom id.
        source: Hugging Face hub id (``"gpt2"``) or a local folder holding ``config.json`` and weights.
        layer: dotted module name whose forward output is read, e.g. ``"transformer.h.11"``.
        revision: hub revision (branch, tag or commit); ``None`` means the hub's default branch.
        tokenizer_kwargs: keyword arguments for ``AutoTokenizer.from_pretrained``.
        supported: whether berg-ray can run it; if not, ``reason`` says why.
        origin: ``"brainscore"`` (found in brainscore-language), ``"builtin"`` or ``"custom"``.
        localizer_layers: for a localizer model (``layer`` is then :data:`~berg_ray.localizer.LOCALIZED_LAYER`):
            the hooked modules, in order, whose last-token outputs are concatenated and masked.
        localizer_top_k: for a localizer model: the fraction (in (0, 1)) or number of units the localizer keeps.
        kind: ``"huggingface"`` (berg-ray's own batched readout), ``"code"`` (the same readout over a network that
            brainscore's plugin builds in code: ``builder``, :mod:`berg_ray.code_models`; ``source`` is then the hub
            id of its tokenizer) or ``"delegated"`` (run through brainscore's own subject, :mod:`berg_ray.delegated`;
            ``source`` is then ``brainscore:<plugin>/<brainscore id>``).
        status: one of :data:`berg_ray.options.MODEL_STATUSES` (``"runnable"``, ``"needs-weights"``, ...); with
            ``reason`` it says what the model needs (default: ``"runnable"`` if supported, else ``"unsupported"``).
        control: a content-free control model (OASM, random embedding): its features encode no linguistic content.
        builder: for ``kind="code"``: the class, config and seed of the network (:func:`code_models.check_builder`).
    """

    model_id: str
    source: str
    layer: str
    revision: str | None = None
    tokenizer_kwargs: dict[str, Any] = field(default_factory=lambda: dict(BRAINSCORE_TOKENIZER_KWARGS))
    supported: bool = True
    reason: str = ""
    origin: str = "custom"
    localizer_layers: tuple[str, ...] = ()
    localizer_top_k: float | int | None = None
    kind: str = "huggingface"
    status: str = ""
    control: bool = False
    builder: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "localizer_layers", tuple(self.localizer_layers))  # a JSON list from a registry file
        if not self.status:
            object.__setattr__(self, "status", "runnable" if self.supported else "unsupported")

    @property
    def hooked_layers(self) -> tuple[str, ...]:
        """The modules whose outputs make this model's features: the localizer's layers, else ``(layer,)``."""
        return self.localizer_layers or (self.layer,)

    @property
    def name(self) -> str:
        """Short name used in cache folder names (``gpt2`` for ``brainscore_language-gpt2``, ``Qwen_Qwen3-0.6B``
        for ``Qwen/Qwen3-0.6B``): one path component, never ``.``, ``..`` or hidden (a leading ``.`` becomes ``_``).
        """
        base = self.model_id.removeprefix(BRAINSCORE_PREFIX)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
        return "_" + name[1:] if name.startswith(".") else name

    @property
    def is_local(self) -> bool:
        return Path(self.source).expanduser().is_dir()

    def __hash__(self) -> int:
        # the dataclass hash would hash the dicts (tokenizer_kwargs, builder) and raise TypeError; equal specs have
        # equal frozen fields, so this agrees with ==
        return hash(tuple(_frozen(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def source_fingerprint(self) -> str:
        """A string that changes whenever the weights can change: hub id + revision, or a content hash of a folder.

        For a local folder this is the sha256 over every file's relative path and bytes (config, tokenizer and
        weights), so that retraining a model in place never reuses a stale cache entry.
        """
        if self.kind == "delegated":  # brainscore's subject: its plugin code, version and weights
            return model_status.delegated_fingerprint(self.source)
        if self.kind == "code":  # a network built in code: its builder (classes, config, seed) and its tokenizer
            tokenizer = f"hub:{self.source}@{self.revision or 'main'}"
            return f"{code_models.builder_fingerprint(self.builder)}|tokenizer:{tokenizer}"
        if not self.is_local:
            return f"hub:{self.source}@{self.revision or 'main'}"
        return f"dir:{folder_sha256(Path(self.source).expanduser().resolve())}"  # every file, bytes (hashing.py)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a JSON-like value: dicts become sorted item tuples, lists and sets tuples."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(map(repr, value))))
    return value

