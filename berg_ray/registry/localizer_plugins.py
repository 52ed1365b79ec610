"""Specs of brainscore's localizer registrations (``HuggingfaceSubject(use_localizer=True, ...)``), read from the
plugin's source: hub models (runnable when their weights are in the local Hugging Face cache) and networks built in
code (``kind="code"``, :mod:`berg_ray.code_models`).

Their plugins read the model's config at import time (``AutoConfig.from_pretrained``), which fails offline, so the
layer list is evaluated here from the plugin's source and the config in the local Hugging Face cache
(:mod:`berg_ray.registry.expressions`).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from berg_ray import code_models
from berg_ray.errors import InvalidInputError
from berg_ray.localizer import LOCALIZED_LAYER, check_top_k
from berg_ray.registry.expressions import NotCachedError, UnreadableError, literal, plugin_value
from berg_ray.registry.hf_cache import hf_cache_dir, hf_missing_files, hf_missing_tokenizer_files
from berg_ray.registry.spec import ModelSpec


def localizer_plugin_spec(model_id: str, kwargs: dict[str, ast.AST], names: dict[str, Any], path: Path) -> ModelSpec:
    """The spec of a ``HuggingfaceSubject(use_localizer=True, ...)`` registration: runnable when its hub weights are
    in the local Hugging Face cache; otherwise a reason that says exactly what is missing."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assigned = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}

    def value(node: ast.AST | None) -> Any:
        if node is None:
            raise UnreadableError("(missing)")
        return plugin_value(node, assigned, {})

    def unsupported(reason: str, source: str = "", layers: tuple[str, ...] = (), top_k: Any = None,
                    status: str = "unsupported") -> ModelSpec:
        return ModelSpec(model_id, source, LOCALIZED_LAYER, supported=False, origin="brainscore",
                         reason=f"localizer model: {reason}", localizer_layers=layers, localizer_top_k=top_k,
                         status=status)

    options = kwargs.get("localizer_kwargs")
    try:
        source = value(kwargs.get("model_id"))
        top_k = check_top_k(value(dict(zip([literal(k, names) for k in options.keys], options.values))["top_k"]))
    except (UnreadableError, NotCachedError, InvalidInputError, KeyError, AttributeError) as error:
        return unsupported(f"its model id or top_k is computed in a way berg-ray does not read ({error})")
    mapping = kwargs.get("region_layer_mapping")
    layers: tuple[str, ...] = ()
    try:
        if not isinstance(mapping, ast.Dict) or len(mapping.values) != 1:
            raise UnreadableError("region_layer_mapping is not a one-region dict")
        found = value(mapping.values[0])
        layers = tuple([found] if isinstance(found, str) else found)
        if not layers or not all(isinstance(layer, str) for layer in layers):
            raise UnreadableError(f"layer list {found!r}")
    except NotCachedError:
        pass  # the layer count comes from the config, which is missing with the weights (reported below)
    except UnreadableError as error:
        return unsupported(f"its layer list is computed in a way berg-ray does not read ({error})", source,
                           top_k=top_k)
    if any(name in kwargs and not (isinstance(kwargs[name], ast.Constant) and kwargs[name].value is None)
           for name in ("model", "tokenizer")):
        return _code_built_spec(model_id, kwargs, tree, value, layers, top_k, unsupported)
    missing = hf_missing_files(source)
    if missing:
        folder = "models--" + source.replace("/", "--")
        return unsupported(f"needs the weights of {source!r} in the local Hugging Face cache ({hf_cache_dir()}), "
                           f"which lacks {', '.join(missing)}; fetch them where there is network with "
                           f"`huggingface-cli download {source}` (or copy its {folder} folder into that cache)",
                           source, layers, top_k, status="needs-weights")
    return ModelSpec(model_id, source, LOCALIZED_LAYER, origin="brainscore", localizer_layers=layers,
                     localizer_top_k=top_k)


def _code_built_spec(model_id: str, kwargs: dict[str, ast.AST], tree: ast.Module, value: Any,
                     layers: tuple[str, ...], top_k: float | int, unsupported: Any) -> ModelSpec:
    """A localizer registration whose network is built in code (``model=Net(config=NetConfig(...))`` with classes
    from brainscore_language and ``tokenizer=AutoTokenizer.from_pretrained('<hub id>')``): ``kind="code"``, built by
    :mod:`berg_ray.code_models` under a recorded seed; runnable when the tokenizer is in the local HF cache."""
    imports = {alias.asname or alias.name: node.module for node in tree.body
               if isinstance(node, ast.ImportFrom) and node.module for alias in node.names}
    network, tokenizer = kwargs.get("model"), kwargs.get("tokenizer")
    try:
        if not (isinstance(network, ast.Call) and isinstance(network.func, ast.Name)):
            raise UnreadableError("its network is not built by one class call")
        config_node = next((kw.value for kw in network.keywords if kw.arg == "config"),
                           network.args[0] if network.args else None)
        if not (isinstance(config_node, ast.Call) and isinstance(config_node.func, ast.Name) and not config_node.args):
            raise UnreadableError("its network's config is not one class call with keyword arguments")
        module = imports.get(network.func.id)
        if module is None or imports.get(config_node.func.id) != module:
            raise UnreadableError(f"{network.func.id} and {config_node.func.id} are not imported from one module")
        builder = code_models.check_builder({
            "module": module, "model_class": network.func.id, "config_class": config_node.func.id,
            "config": {kw.arg: value(kw.value) for kw in config_node.keywords}, "seed": code_models.DEFAULT_SEED})
        if not (isinstance(tokenizer, ast.Call) and isinstance(tokenizer.func, ast.Attribute)
                and tokenizer.func.attr == "from_pretrained" and len(tokenizer.args) == 1):
            raise UnreadableError("its tokenizer is not AutoTokenizer.from_pretrained(<hub id>)")
        repo = value(tokenizer.args[0])
        tokenizer_kwargs = {kw.arg: value(kw.value) for kw in tokenizer.keywords}
        if not isinstance(repo, str) or not layers:
            raise UnreadableError("its tokenizer id or layer list is not a literal")
    except (UnreadableError, NotCachedError, InvalidInputError) as error:
        return unsupported(f"builds its network in code in a way berg-ray does not read ({error})", top_k=top_k)
    cycles = builder["config"].get("num_cycles")
    if cycles is not None and not isinstance(cycles, int):
        return unsupported(f"its blocks run a number of times that depends on the input (num_cycles={cycles!r}), "
                           "which berg-ray's readout does not reproduce", repo, layers, top_k)
    seeded = (f"{builder['model_class']} built in code with random weights (brainscore builds it unseeded on every "
              f"load, so its numbers come from one unrecorded random network; berg-ray seeds it with seed "
              f"{builder['seed']}, recorded in every cache entry)")
    missing = hf_missing_tokenizer_files(repo)
    if missing:
        folder = "models--" + repo.replace("/", "--")
        return ModelSpec(model_id, repo, LOCALIZED_LAYER, supported=False, origin="brainscore", kind="code",
                         localizer_layers=layers, localizer_top_k=top_k, builder=builder,
                         tokenizer_kwargs=tokenizer_kwargs, status="needs-weights",
                         reason=f"localizer model: {seeded}; needs the tokenizer of {repo!r} in the local Hugging Face "
                                f"cache ({hf_cache_dir()}), which lacks {', '.join(missing)}; where there is network "
                                f"(and access, if the repo is gated) run `huggingface-cli download {repo} "
                                "tokenizer_config.json tokenizer.json tokenizer.model special_tokens_map.json` (or "
                                f"copy its {folder} folder into that cache)")
    return ModelSpec(model_id, repo, LOCALIZED_LAYER, origin="brainscore", kind="code", localizer_layers=layers,
                     localizer_top_k=top_k, builder=builder, tokenizer_kwargs=tokenizer_kwargs,
                     reason=f"localizer model: {seeded}")
