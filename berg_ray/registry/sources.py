"""A custom model's source and layers, checked before it is registered: an existing local model folder (its layers
are modules of the network its config builds, checked without weights) or a valid Hugging Face hub id."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from berg_ray.errors import InvalidInputError, closest


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` was meant as a local folder rather than a hub id (``name`` or ``org/name``)."""
    if os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source:
        return True
    parts = [part for part in source.replace(os.sep, "/").split("/") if part]
    # a hub id has at most one "/"; "models/my_modle" whose first folder exists here is a mistyped local path
    return len(parts) > 2 or (len(parts) > 1 and Path(parts[0]).is_dir())


def resolve_source(source: str) -> tuple[str, bool]:
    """``(absolute folder, True)`` for an existing local model folder, ``(hub id, False)`` for a hub id."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidInputError(f"source must be a local model folder or a Hugging Face hub id, got {source!r}")
    local = Path(source).expanduser()
    if local.exists():
        if not local.is_dir() or not (local / "config.json").exists():
            raise InvalidInputError(f"model folder {source!r} has no config.json; give a saved transformers model "
                                    "folder or a Hugging Face hub id")
        return str(local.resolve()), True
    if _looks_like_path(source):
        raise InvalidInputError(f"model folder {source!r} does not exist (looked for {local.resolve()}); give an "
                                "existing saved transformers model folder, or a Hugging Face hub id such as "
                                "'gpt2' or 'org/name'")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(source)
    except HFValidationError as error:
        raise InvalidInputError(f"source {source!r} is neither an existing folder nor a valid Hugging Face hub id "
                                f"('name' or 'org/name'): {error}") from error
    return source, False


def weightless_model(source: str, revision: str | None = None) -> Any:
    """The ``torch.nn.Module`` tree of ``source`` as features load it (``AutoModelForCausalLM``), built from its
    config on the ``meta`` device: module names and types at the cost of reading ``config.json``, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(source, revision=revision)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "add is_decoder=True" and similar notes are irrelevant here
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)


def check_layer(source: str, layer: str | list[str]) -> None:
    """Raise unless ``layer`` (or each of a list) is a module of the model in local folder ``source`` (nearest names
    in the message)."""
    try:
        names = [name for name, _ in weightless_model(source).named_modules() if name]
    except (OSError, ValueError, KeyError) as error:  # unreadable config, unknown model_type, not a causal LM
        raise InvalidInputError(f"cannot build the model in {source!r} from its config.json "
                                f"(berg-ray loads it with AutoModelForCausalLM): {error}") from error
    layer = next((name for name in ([layer] if isinstance(layer, str) else layer) if name not in names), None)
    if layer is not None:
        nearest = closest(layer, names)
        hint = (f"nearest layer names: {', '.join(nearest)}" if nearest else "modules at that depth include: "
                + ", ".join([n for n in names if n.count(".") <= layer.count(".")][:8]))
        raise InvalidInputError(f"layer {layer!r} is not a module of the model in {source!r}; {hint} "
                                f"({len(names)} modules, as in model.named_modules())")
