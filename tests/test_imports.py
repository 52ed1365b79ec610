"""Run-time import check: the numerical and data layers load neither torch nor Ray.

tests/test_layering.py reads the sources only; this imports them. For each layer of its table (foundation, core,
data), a fresh interpreter imports that layer's modules one after another and reports, after each, whether
``torch`` or ``ray`` is in ``sys.modules``: a package ``__init__`` that imports a heavy sibling eagerly (as
``berg_ray.corpus`` once did with its Ray encoder) fails here although every source import is in its right layer.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support import REPO_ROOT, subprocess_env
from test_layering import LAYERS

HEAVY = ("torch", "ray")

#: core modules whose job is torch itself: loading a model onto a torch device in a torch dtype (``model_loading``)
#: and the batched readout (``features``: tokenize, forward pass, hooks)
NEEDS_TORCH = {"model_loading", "features"}

PROBE = """
import importlib, json, sys
report = []
for module in sys.argv[1:]:
    importlib.import_module(module)
    report.append([module, [name for name in {heavy!r} if name in sys.modules]])
print(json.dumps(report))
"""


def loaded_after_each(modules: list[str]) -> dict[str, list[str]]:
    """Import ``modules`` (full names) in this order in a fresh interpreter; for each, the heavy
    packages in ``sys.modules`` right after it was imported."""
    run = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *modules], cwd=REPO_ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return dict(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("layer", ["foundation", "core", "data"])
def test_numerical_and_data_layers_load_neither_torch_nor_ray(layer):
    modules = [f"berg_ray.{m}" for m in LAYERS[layer] if m not in NEEDS_TORCH]
    loaded = loaded_after_each(modules)
    assert list(loaded) == modules
    first = next(((m, heavy) for m, heavy in loaded.items() if heavy), None)
    assert first is None, f"importing {first[0]} ({layer} layer) loaded {first[1]}"


def test_the_check_sees_torch_and_ray():
    """The probe can fail: the readout loads torch, and Ray is seen once imported (berg_ray imports it only inside
    the functions that start or use Ray)."""
    loaded = loaded_after_each(["berg_ray.options", "berg_ray.features", "ray"])
    assert loaded == {"berg_ray.options": [], "berg_ray.features": ["torch"], "ray": ["torch", "ray"]}
