"""Which layers a model has: its blocks in forward order, and the layers a user asks for by name or index.

Read from the model's module tree built on the ``meta`` device (config.json only, no weights), so listing the layers
of a large model costs nothing. :func:`berg_ray.features.extract` reads the chosen layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from berg_ray.errors import closest
from berg_ray.registry import ModelSpec


def model_modules(spec: ModelSpec) -> dict[str, Any]:
    """``{dotted name: module}`` of the model's module tree, without weights (``meta`` device), in
    ``named_modules`` order (the root is ``""``)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    revision = None if spec.is_local else spec.revision
    config = AutoConfig.from_pretrained(spec.source, revision=revision)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "add is_decoder=True" and similar notes are irrelevant here
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    finally:
        hf_logging.set_verbosity(verbosity)
    return dict(model.named_modules())


def block_layers(spec: ModelSpec, modules: dict[str, Any] | None = None) -> list[str]:
    """Names of every block of the model, in forward order: the siblings of the mapped layer.

    The mapped layer (e.g. ``transformer.h.11``) sits in a ``ModuleList`` (``transformer.h``); its siblings are the
    model's blocks (``transformer.h.0`` … ``transformer.h.N-1``). A mapped layer below a block
    (``model.layers.21.mlp``) gives the same submodule of every block. Without a usable mapped layer, the longest
    ``ModuleList`` of the model is taken.

    Args:
        modules: the model's :func:`model_modules` (read from its config when not given).
    """
    import torch

    modules = modules if modules is not None else model_modules(spec)
    parts = spec.layer.split(".") if spec.layer else []
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        container = modules.get(parent)
        if isinstance(container, torch.nn.ModuleList) and parts[depth].isdigit():
            suffix = parts[depth + 1:]
            names = [".".join([parent, str(k), *suffix]) for k in range(len(container))]
            return [name for name in names if name in modules]
    lists = [(name, module) for name, module in modules.items() if isinstance(module, torch.nn.ModuleList)]
    if not lists:
        return [spec.layer] if spec.layer in modules else []
    parent, container = max(lists, key=lambda item: len(item[1]))
    return [f"{parent}.{k}" for k in range(len(container))]


@dataclass(frozen=True)
class LayerChoice:
    """A layer to read: its dotted module name and, for a block, its position among the model's blocks."""

    name: str
    index: int | None  # position among the model's blocks; None for a module that is not a block
    n_layers: int | None  # the model's number of blocks (None when ``index`` is None)


def resolve_layers(spec: ModelSpec, layers: str | Sequence[str | int]
                   ) -> tuple[list[LayerChoice], list[tuple[str, str]]]:
    """The layers of ``spec`` to read, and the requested ones that do not exist with the reason.

    Args:
        layers: ``"mapped"`` (the registry's language-system layer), ``"all"`` (every block) or a list of dotted
            module names and/or block indices (``0``, ``"5"``, ``-1`` for the last block).

    Returns:
        ``(chosen, unknown)``: chosen layers in forward order, each once; ``unknown`` as ``(requested, reason)``.
    """
    modules = model_modules(spec)
    blocks = block_layers(spec, modules)
    index = {name: k for k, name in enumerate(blocks)}

    def choice(name: str) -> LayerChoice:
        return LayerChoice(name, index.get(name), len(blocks) if name in index else None)

    if layers == "mapped":
        if spec.layer in modules:
            return [choice(spec.layer)], []
        return [], [(spec.layer or "(none)", f"mapped layer {spec.layer!r} is not a module of {spec.model_id}")]
    if layers == "all":
        if not blocks:
            return [], [("all", f"found no blocks (ModuleList) in {spec.model_id}")]
        return [choice(name) for name in blocks], []
    chosen: list[LayerChoice] = []
    unknown: list[tuple[str, str]] = []
    for requested in layers:
        text = str(requested).strip()
        if text.lstrip("-").isdigit():
            k = int(text)
            if -len(blocks) <= k < len(blocks):
                chosen.append(choice(blocks[k]))
            else:
                span = f"{blocks[0]} … {blocks[-1]}" if blocks else "none"
                reason = f"block index {k} is out of range: {spec.model_id} has {len(blocks)} blocks ({span})"
                unknown.append((text, reason))
        elif text in modules and text:
            chosen.append(choice(text))
        else:
            hint = closest(text, [n for n in modules if n]) or blocks[:5]
            unknown.append((text, f"layer {text!r} is not a module of {spec.model_id}; closest: {', '.join(hint)}"))
    chosen = list({c.name: c for c in chosen}.values())
    position = {name: k for k, name in enumerate(modules)}  # named_modules order ~ forward order for blocks
    return sorted(chosen, key=lambda c: position[c.name]), unknown
