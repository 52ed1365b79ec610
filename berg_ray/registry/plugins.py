"""Discovery of brainscore-language's registrations, offline: each plugin's ``__init__.py`` is read with :mod:`ast`
(never imported), so listing every model downloads nothing, runs no ``pip`` and imports no plugin's dependencies.

A ``HuggingfaceSubject`` with one mapped layer becomes a hub model; a localizer one is read by
:mod:`berg_ray.registry.localizer_plugins`; any other registration runs through brainscore's own subject where
:mod:`berg_ray.model_status` knows its plugin (``kind="delegated"``), else it is listed as unsupported.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
from pathlib import Path
from typing import Any

from berg_ray import model_status
from berg_ray.registry.expressions import literal
from berg_ray.registry.localizer_plugins import localizer_plugin_spec
from berg_ray.registry.spec import BRAINSCORE_PREFIX, ModelSpec

logger = logging.getLogger(__name__)


def _parse_plugin(path: Path) -> list[ModelSpec]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: dict[str, Any] = {}
    specs: list[ModelSpec] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                value = literal(node.value, names)
                if value is not None:
                    names[target.id] = value
                continue
            if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                    and target.value.id == "model_registry"):
                continue
            key = literal(target.slice, names)
            if not isinstance(key, str):
                continue
            specs.append(_spec_from_factory(key, node.value, names, path))
    return specs


def _delegated_spec(key: str, path: Path, unknown_reason: str) -> ModelSpec:
    """A registration that is not a ``HuggingfaceSubject``: run through brainscore's own subject where berg-ray knows
    its plugin (:mod:`berg_ray.model_status` gives its status here and now), else unsupported with ``unknown_reason``.
    """
    model_id = BRAINSCORE_PREFIX + key
    found = model_status.delegation(path.parent.name, path.parent, key)
    if found is None:
        return ModelSpec(model_id, "", "", supported=False, origin="brainscore", reason=unknown_reason)
    return ModelSpec(model_id, model_status.source_of(found.plugin, key), model_status.DELEGATED_LAYER,
                     tokenizer_kwargs={}, supported=found.status == "runnable", reason=found.reason,
                     origin="brainscore", kind="delegated", status=found.status, control=found.facts.control)


def _spec_from_factory(key: str, factory: ast.AST, names: dict[str, Any], path: Path) -> ModelSpec:
    model_id = BRAINSCORE_PREFIX + key
    plugin = path.parent.name
    call = factory.body if isinstance(factory, ast.Lambda) else factory
    if not isinstance(call, ast.Call):
        return _delegated_spec(key, path, f"registered by a custom function in plugin '{plugin}'")
    func = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "?")
    if func != "HuggingfaceSubject":
        return _delegated_spec(key, path, f"not a HuggingfaceSubject ({func} in plugin '{plugin}')")
    kwargs = {kw.arg: kw.value for kw in call.keywords if kw.arg}
    if literal(kwargs.get("use_localizer", ast.Constant(False)), names) not in (False, None):
        return localizer_plugin_spec(model_id, kwargs, names, path)
    source = literal(kwargs["model_id"], names) if "model_id" in kwargs else None
    if source is None and call.args:
        source = literal(call.args[0], names)
    layer_node = kwargs.get("region_layer_mapping")
    layer: Any = None
    if isinstance(layer_node, ast.Dict) and len(layer_node.values) == 1:
        layer = literal(layer_node.values[0], names)
    elif isinstance(layer_node, ast.Dict) and layer_node.values:
        layer = [literal(v, names) for v in layer_node.values]
    reasons = []
    if not isinstance(source, str):
        reasons.append("its hub id is computed at import time")
    if literal(kwargs.get("use_localizer", ast.Constant(False)), names) not in (False, None):
        reasons.append("reads all layers through a functional localizer, not one mapped layer")
    elif not isinstance(layer, str):
        reasons.append("maps the language system to several layers, not one")
    for custom in ("model", "tokenizer"):
        if custom in kwargs and not (isinstance(kwargs[custom], ast.Constant) and kwargs[custom].value is None):
            reasons.append(f"builds a custom {custom} in code")
    return ModelSpec(
        model_id=model_id,
        source=source if isinstance(source, str) else "",
        layer=layer if isinstance(layer, str) else "",
        supported=not reasons,
        reason="; ".join(reasons),
        origin="brainscore",
    )


@functools.lru_cache(maxsize=1)
def brainscore_specs() -> tuple[ModelSpec, ...]:
    """Every model registered in the installed brainscore-language, supported or not, sorted by id."""
    spec = importlib.util.find_spec("brainscore_language")
    if spec is None or not spec.submodule_search_locations:
        logger.warning("brainscore-language is not installed: no BrainScore models are listed")
        return ()
    models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
    found: dict[str, ModelSpec] = {}
    for plugin in sorted(models_dir.glob("*/__init__.py")):
        try:
            for model in _parse_plugin(plugin):
                found.setdefault(model.model_id, model)
        except SyntaxError as error:  # a broken plugin must not hide the others
            logger.warning("could not parse %s: %s", plugin, error)
    return tuple(sorted(found.values(), key=lambda s: s.model_id))
