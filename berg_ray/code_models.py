"""Networks that a brainscore plugin builds in code instead of loading weights (suma's ``SUMAModel``).

brainscore's ``suma`` plugin registers ``HuggingfaceSubject(model=SUMAModel(config=SUMAConfig(...)), ...)``: a
network with fresh random weights on every load, built without a seed, so brainscore's numbers for it come from
one unrecorded random network. berg-ray builds the same class with the same config under a recorded seed (the
*builder*, a JSON-able dict that the registry reads from the plugin's source): the same seed gives the same network,
bit for bit, as brainscore's own constructor run right after ``torch.manual_seed(seed)``. The builder and the
seed are part of the model's fingerprint, so every cache entry says which network it came from.

A builder::

    {"module": "brainscore_language.model_helpers.modeling_suma", "model_class": "SUMAModel",
     "config_class": "SUMAConfig", "config": {"num_hidden_layers": 1, ...}, "seed": 0}

Only classes inside the installed ``brainscore_language`` package are built (a registry entry never names
arbitrary code to import).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from berg_ray.errors import InvalidInputError
from berg_ray.hashing import canonical_json, file_sha256

logger = logging.getLogger(__name__)

#: the seed berg-ray builds brainscore's unseeded code-built networks with (recorded in every fingerprint)
DEFAULT_SEED = 0
#: the only package whose classes a builder may name
ALLOWED_PACKAGE = "brainscore_language"
BUILDER_KEYS = ("module", "model_class", "config_class", "config", "seed")


def check_builder(builder: Mapping[str, Any]) -> dict[str, Any]:
    """A validated copy of ``builder`` (keys :data:`BUILDER_KEYS`); raises :class:`InvalidInputError` naming the bad
    field."""
    missing = [key for key in BUILDER_KEYS if key not in builder]
    if missing:
        raise InvalidInputError(f"model builder lacks {', '.join(missing)} (needs {', '.join(BUILDER_KEYS)})")
    module = builder["module"]
    if not isinstance(module, str) or not (module == ALLOWED_PACKAGE or module.startswith(ALLOWED_PACKAGE + ".")):
        raise InvalidInputError(f"model builder module {module!r} is not inside {ALLOWED_PACKAGE!r}")
    for key in ("model_class", "config_class"):
        if not isinstance(builder[key], str) or not builder[key].isidentifier():
            raise InvalidInputError(f"model builder {key} {builder[key]!r} is not a class name")
    config = builder["config"]
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise InvalidInputError(f"model builder config {config!r} is not a mapping of keyword arguments")
    bad = {k: v for k, v in config.items() if not isinstance(v, (int, float, str, bool, type(None)))}
    if bad:
        raise InvalidInputError(f"model builder config values must be JSON scalars; got {bad!r}")
    seed = builder["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"model builder seed {seed!r} must be an integer ≥ 0")
    return {"module": module, "model_class": builder["model_class"], "config_class": builder["config_class"],
            "config": dict(config), "seed": seed}


def _module(builder: Mapping[str, Any]) -> Any:
    return importlib.import_module(builder["module"])


def build_network(builder: Mapping[str, Any]) -> Any:
    """The network of ``builder``, in float32 on the CPU, in eval mode: ``model_class(config=config_class(**config))``
    built right after ``torch.manual_seed(seed)`` (the caller's RNG state is restored afterwards)."""
    import torch

    builder = check_builder(builder)
    module = _module(builder)
    model_class, config_class = getattr(module, builder["model_class"]), getattr(module, builder["config_class"])
    logger.info("building %s.%s (seed %d) with %s", builder["module"], builder["model_class"], builder["seed"],
                builder["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(builder["seed"])
        network = model_class(config=config_class(**builder["config"]))
    return network.eval()


def builder_fingerprint(builder: Mapping[str, Any]) -> str:
    """A string that changes whenever the built network can change: the classes, config and seed, the installed
    brainscore-language version and a hash of the module's source file."""
    builder = check_builder(builder)
    try:
        version = importlib.metadata.version("brainscore_language")
    except importlib.metadata.PackageNotFoundError:
        version = "absent"
    spec = importlib.util.find_spec(builder["module"])
    origin = Path(spec.origin) if spec is not None and spec.origin else None
    code = file_sha256(origin)[:16] if origin is not None and origin.is_file() else "absent"
    described = canonical_json(builder)
    return f"code:{described}@brainscore-language=={version}:module={code}"
