"""The package's layering, checked by machine (docs/architecture.md draws it).

Every module of ``berg_ray`` belongs to one layer; a module may import (at module level or inside a function) only
modules of its own layer or of lower ones. There are no import cycles between modules, and no module uses another
module's private (``_underscore``) names. The test reads the sources with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "berg_ray"

#: lowest first. A new module must be placed here (the test fails until it is).
LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("errors", "options", "validation", "provenance", "quiet", "_environment", "precision", "fsio",
                   "hashing", "verified_store", "dataset_layouts"),
    "core": ("regression", "scoring", "localizer", "registry", "registry.spec", "registry.hf_cache",
             "registry.expressions", "registry.localizer_plugins", "registry.plugins", "registry.builtin",
             "registry.sources", "registry.custom", "registry.lookup", "request", "encoding_model", "model_loading",
             "features", "layers", "synthetic", "offline_models", "reductions", "model_status", "delegated",
             "code_models", "pls_batched", "ridge_fit", "standins", "benchmarks"),
    "data": ("corpus_io", "neural", "store", "plots", "corpus_outputs", "ranking", "corpus.inputs",
             "corpus.plan", "corpus.read", "corpus.output_folder", "corpus.request_identity", "corpus.manifest"),
    "compute": ("fitting", "benchmark_score"),
    "ray": ("distributed", "corpus", "corpus.duplicate_ids", "corpus.encoder", "corpus.run", "sweep", "sweep.grid",
            "sweep.benchmarks", "sweep.protocols", "sweep.cells", "sweep.scheduler", "sweep.report", "sweep.run"),
    "front doors": ("api", "demo", "cli", "__init__"),
}
LEVEL = {module: level for level, modules in enumerate(LAYERS.values()) for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path, here: str | None = None) -> tuple[set[str], set[str]]:
    """(berg_ray modules imported anywhere in the file, private names used from them); ``here``: the module's name
    (default: from its path in the package)."""
    tree = ast.parse(path.read_text())
    here = here or module_name(path)
    found, private = set(), set()
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level] if here != "__init__" else []
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and (node.module == "berg_ray" or node.module.startswith("berg_ray.")):
                target = node.module.removeprefix("berg_ray").lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{target}.{alias.name}".lstrip(".")
                if candidate in LEVEL or (PACKAGE / f"{candidate.replace('.', '/')}.py").exists():
                    found.add(candidate)  # `from berg_ray import validation` imports a module
                    aliases[alias.asname or alias.name] = candidate
                elif target:
                    found.add(target)
                    if alias.name.startswith("_"):
                        private.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("berg_ray."):
                    found.add(alias.name.removeprefix("berg_ray."))
    for node in ast.walk(tree):  # module._private through an imported module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                private.add(f"{aliases[node.value.id]}.{node.attr}")
    found.discard(here)
    found.discard("")
    return found, private


SOURCES = sorted(PACKAGE.rglob("*.py"))
GRAPH = {module_name(path): imports(path) for path in SOURCES}


def test_every_module_has_a_layer():
    assert sorted(set(GRAPH) - set(LEVEL)) == [], "place new modules in LAYERS (tests/test_layering.py)"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_own_or_lower_layers(module):
    upward = sorted(f"{target} ({_layer(target)})" for target in GRAPH[module][0]
                    if LEVEL.get(target, -1) > LEVEL[module] and target != "_environment")
    assert upward == [], f"{module} ({_layer(module)}) imports higher layers: {upward}"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_uses_another_modules_private_names(module):
    assert sorted(GRAPH[module][1] - {"_environment"}) == []


def test_there_are_no_import_cycles():
    graph = {m: {t for t in deps if t in GRAPH and t != "__init__"} for m, (deps, _) in GRAPH.items()
             if m != "__init__"}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_a_violation(tmp_path):
    """The checks above can fail: upward imports and private names in a planted core module are found."""
    planted = tmp_path / "regression.py"
    planted.write_text("import numpy\nfrom berg_ray.errors import InvalidInputError\n"
                       "from berg_ray.features import _get_module\nimport berg_ray.cli\n"
                       "def f():\n    from berg_ray import api\n    return api._cached_assembly\n")
    found, private = imports(planted, here="regression")
    assert found == {"errors", "features", "cli", "api"}
    assert private == {"features._get_module", "api._cached_assembly"}
    assert sorted(t for t in found if LEVEL[t] > LEVEL["regression"]) == ["api", "cli"]  # features: same layer


def _layer(module: str) -> str:
    return next((name for name, modules in LAYERS.items() if module in modules), "?")
