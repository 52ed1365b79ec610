"""Model registry: model id -> :class:`ModelSpec` (hub id or local folder, mapped layer, tokenizer settings).

The BrainScore models are discovered offline by reading (not importing) the plugin files of the installed
brainscore-language: each ``brainscore_language/models/*/__init__.py`` registers models with
``model_registry['id'] = lambda: HuggingfaceSubject(model_id=..., region_layer_mapping={...: 'layer'})``.
Parsing the source with :mod:`ast` finds every registration without downloading a model, running ``pip`` or
importing each plugin's own dependencies.

Custom models are added with :func:`register_model`; with ``persist=True`` (what ``berg-ray register`` does) they are
written to a JSON file (``$BERG_RAY_REGISTRY``, default ``~/.config/berg_ray/models.json``) so that every process —
CLI, jobs, Ray workers started from the same home — finds them by the same id.

This package's public face; one job per module, each importing only those before it:

- :mod:`~berg_ray.registry.spec`: :class:`ModelSpec` and the fingerprint of its weights;
- :mod:`~berg_ray.registry.hf_cache`: which files of a hub repo the local Hugging Face cache holds;
- :mod:`~berg_ray.registry.expressions`: the small interpreter that evaluates plugin source expressions;
- :mod:`~berg_ray.registry.localizer_plugins`: specs of brainscore's localizer (and built-in-code) registrations;
- :mod:`~berg_ray.registry.plugins`: :func:`brainscore_specs`, every registration of brainscore-language;
- :mod:`~berg_ray.registry.builtin`: models shipped inside a PyPI package;
- :mod:`~berg_ray.registry.sources`: checking a custom model's folder or hub id and its layers;
- :mod:`~berg_ray.registry.custom`: :func:`register_model`, :func:`unregister_model` and the JSON registry file;
- :mod:`~berg_ray.registry.lookup`: :func:`get_spec`, :func:`all_specs`, :func:`list_models`.
"""

from __future__ import annotations

from berg_ray.registry.builtin import builtin_specs
from berg_ray.registry.custom import (
    REGISTRY_LOCK_TIMEOUT,
    custom_specs,
    register_model,
    registry_path,
    unregister_model,
)
from berg_ray.registry.hf_cache import hf_cache_dir, hf_cached_file, hf_missing_files, hf_missing_tokenizer_files
from berg_ray.registry.lookup import all_specs, get_spec, list_models
from berg_ray.registry.plugins import brainscore_specs
from berg_ray.registry.sources import check_layer, resolve_source, weightless_model
from berg_ray.registry.spec import BRAINSCORE_PREFIX, BRAINSCORE_TOKENIZER_KWARGS, ModelSpec

__all__ = [
    "BRAINSCORE_PREFIX",
    "BRAINSCORE_TOKENIZER_KWARGS",
    "REGISTRY_LOCK_TIMEOUT",
    "ModelSpec",
    "all_specs",
    "brainscore_specs",
    "builtin_specs",
    "check_layer",
    "custom_specs",
    "get_spec",
    "hf_cache_dir",
    "hf_cached_file",
    "hf_missing_files",
    "hf_missing_tokenizer_files",
    "list_models",
    "register_model",
    "registry_path",
    "resolve_source",
    "unregister_model",
    "weightless_model",
]
