"""Custom models: :func:`register_model` and :func:`unregister_model`, in this process and, with ``persist=True``
(what ``berg-ray register`` does), in a JSON file (``$BERG_RAY_REGISTRY``, default ``~/.config/berg_ray/models.json``)
so that every process — CLI, jobs, Ray workers started from the same home — finds them by the same id. The file is
changed under an OS file lock and replaced atomically."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from berg_ray.errors import InvalidInputError
from berg_ray.fsio import atomic_write_bytes
from berg_ray.localizer import LOCALIZED_LAYER, check_top_k
from berg_ray.registry.builtin import builtin_specs
from berg_ray.registry.plugins import brainscore_specs
from berg_ray.registry.sources import check_layer, resolve_source
from berg_ray.registry.spec import BRAINSCORE_PREFIX, BRAINSCORE_TOKENIZER_KWARGS, ModelSpec

logger = logging.getLogger(__name__)

#: the registrations made in this process (persisted or not), by id
_custom: dict[str, ModelSpec] = {}


def registry_path() -> Path:
    """The JSON file that persisted custom registrations live in (``$BERG_RAY_REGISTRY`` overrides)."""
    env = os.environ.get("BERG_RAY_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".config" / "berg_ray" / "models.json"


def _persisted_specs() -> dict[str, ModelSpec]:
    path = registry_path()
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"model registry file {path} is not valid JSON: {error}") from error
    return {e["model_id"]: ModelSpec(**{**e, "origin": "custom"}) for e in entries}


#: seconds a registry change waits for another process's change to the same file
REGISTRY_LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def _registry_locked(path: Path) -> Iterator[None]:
    """Hold the registry file's lock (``<file>.lock``, an OS file lock) across a read-modify-write, so that two
    processes registering at once (``berg-ray register`` twice) both land, neither overwrites the other."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock", timeout=REGISTRY_LOCK_TIMEOUT)
    try:
        lock.acquire()
    except Timeout as error:
        raise InvalidInputError(f"model registry file {path} is being changed by another process (its lock "
                                f"{lock.lock_file} was held for {REGISTRY_LOCK_TIMEOUT:.0f} s); retry when it is "
                                "done") from error
    try:
        yield
    finally:
        lock.release()


def _write_registry(path: Path, entries: dict[str, ModelSpec]) -> None:
    """Replace the registry file atomically (readers in other processes never see a half-written file); call it under
    :func:`_registry_locked`, with ``entries`` read under the same lock."""
    atomic_write_bytes(path, json.dumps([s.to_dict() for s in entries.values()], indent=2).encode())


def register_model(model_id: str, source: str, layer: str | Sequence[str], *, revision: str | None = None,
                   tokenizer_kwargs: dict[str, Any] | None = None, persist: bool = False,
                   replace: bool = False, localizer_top_k: float | int | None = None) -> ModelSpec:
    """Add a custom model, addressed afterwards by exactly ``model_id`` (API, CLI, jobs).

    A local folder is checked now: it must exist and hold ``config.json``, and ``layer`` must be a module of the
    model its config builds (checked without weights). A hub id (``name`` or ``org/name``) is accepted as such
    (nothing is downloaded; its layer is checked when the model is first loaded).

    Args:
        model_id: the new id; must not be a BrainScore or built-in id.
        source: a local folder with ``config.json`` (absolute path is stored) or a Hugging Face hub id.
        layer: dotted module name of the layer to read (as in ``model.named_modules()``), e.g. ``"transformer.h.5"``;
            with ``localizer_top_k``, a list of them: the layers the functional localizer reads (in hook order).
        revision: hub revision; ignored for local folders (their content hash is used instead).
        tokenizer_kwargs: extra ``AutoTokenizer.from_pretrained`` arguments (default: left truncation, as brainscore).
        persist: also write the registration to :func:`registry_path` so other processes see it.
        replace: allow replacing a different registration of ``model_id`` (in this process or the registry file),
            or shadowing a BrainScore short alias (``"gpt2"`` for ``brainscore_language-gpt2``). Registering the
            same spec again is always allowed.
        localizer_top_k: makes a localizer model (as brainscore's ``HuggingfaceSubject(use_localizer=True)``): its
            features are the last-token outputs of all ``layer`` modules, concatenated and masked to the units the
            Fedorenko (2010) localizer selects: a fraction in (0, 1) of them (``0.1``) or a number (an int ≥ 1).
            Its ``layer`` is then the pseudo-layer ``"localized"`` (see :mod:`berg_ray.localizer`).

    Raises:
        InvalidInputError: bad id, source or layer; or a collision (without ``replace``); the message says which.
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInputError(f"model_id must be a non-empty string, got {model_id!r}")
    layers = [layer] if isinstance(layer, str) else list(layer) if isinstance(layer, (list, tuple)) else []
    if not layers or not all(isinstance(name, str) and name.strip() for name in layers):
        raise InvalidInputError(f"layer must be a dotted module name such as 'transformer.h.5' (or, with "
                                f"localizer_top_k, a non-empty list of them), got {layer!r}")
    repeated = sorted({name for name in layers if layers.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"layer list names {', '.join(map(repr, repeated))} more than once; give each once")
    if localizer_top_k is None and len(layers) > 1:
        raise InvalidInputError(f"a list of {len(layers)} layers makes a localizer model: also give localizer_top_k "
                                "(a fraction of the units such as 0.1, or a number of units); for a plain model "
                                "give one layer name")
    top_k = None if localizer_top_k is None else check_top_k(localizer_top_k)
    if top_k is not None and LOCALIZED_LAYER in layers:
        raise InvalidInputError(f"{LOCALIZED_LAYER!r} names a localizer model's features, not a module; list the "
                                "modules the localizer reads")
    brainscore_ids = {s.model_id for s in brainscore_specs()}
    taken = brainscore_ids | {s.model_id for s in builtin_specs()}
    if model_id in taken:
        raise InvalidInputError(f"model id {model_id!r} is already a BrainScore or built-in model; choose another id")
    if BRAINSCORE_PREFIX + model_id in brainscore_ids and not replace:
        raise InvalidInputError(f"model id {model_id!r} is the short alias of {BRAINSCORE_PREFIX + model_id!r}; "
                                "registering it would shadow that model. Choose another id, or pass replace=True "
                                "(berg-ray register --replace) to shadow it on purpose")
    source, local = resolve_source(source)
    spec = ModelSpec(model_id, source, layers[0] if top_k is None else LOCALIZED_LAYER, revision=revision,
                     tokenizer_kwargs={**BRAINSCORE_TOKENIZER_KWARGS, **(tokenizer_kwargs or {})}, origin="custom",
                     localizer_layers=() if top_k is None else tuple(layers), localizer_top_k=top_k)
    if local:
        check_layer(source, layers)
    path = registry_path()
    # persist: the file is read, checked and written under its lock (another process may be registering too)
    with _registry_locked(path) if persist else contextlib.nullcontext():
        persisted = _persisted_specs()
        for where, existing in (("in this process", _custom.get(model_id)),
                                (f"in {path}", persisted.get(model_id))):
            if existing is not None and existing != spec and not replace:
                raise InvalidInputError(f"model id {model_id!r} is already registered {where} (source "
                                        f"{existing.source!r}, layer {existing.layer!r}, revision "
                                        f"{existing.revision!r}); choose another id, or pass replace=True "
                                        "(berg-ray register --replace) to replace it")
        _custom[model_id] = spec
        if persist:
            _write_registry(path, {**persisted, model_id: spec})
    logger.info("registered model %s -> %s (layer %s%s)", model_id, source, ", ".join(layers),
                "" if top_k is None else f"; localizer top_k {top_k}")
    return spec


def unregister_model(model_id: str) -> None:
    """Remove a custom registration from this process (and from the registry file if it is there)."""
    _custom.pop(model_id, None)
    path = registry_path()
    if model_id not in _persisted_specs():
        return
    with _registry_locked(path):
        persisted = _persisted_specs()
        if persisted.pop(model_id, None) is not None:
            _write_registry(path, persisted)


def custom_specs() -> dict[str, ModelSpec]:
    """Every custom registration by id: the registry file's, then this process's (which win on the same id)."""
    return {**_persisted_specs(), **_custom}
