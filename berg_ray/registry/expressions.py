"""The small expression interpreter that reads brainscore plugin sources without importing them: literals and
module-level names (:func:`literal`), and the few expressions localizer plugins build their layer lists from
(:func:`plugin_value`), with ``AutoConfig.from_pretrained(repo)`` read from the local Hugging Face cache."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berg_ray.registry.hf_cache import hf_cached_file


def literal(node: ast.AST, names: dict[str, Any]) -> Any:
    """Evaluate a literal, or a module-level name bound to one; ``None`` when it is not a literal."""
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


class NotCachedError(Exception):
    """A hub file that a plugin reads at import time is not in the local Hugging Face cache."""


class UnreadableError(Exception):
    """A plugin expression outside what :func:`plugin_value` evaluates."""


@dataclass(frozen=True)
class _HubConfig:
    """``AutoConfig.from_pretrained(repo)`` in a plugin, read from the local Hugging Face cache on attribute access."""

    repo: str

    def get(self, attr: str) -> Any:
        path = hf_cached_file(self.repo, "config.json")
        if path is None:
            raise NotCachedError(self.repo)
        config = json.loads(Path(path).read_text())
        if attr not in config:
            raise UnreadableError(f"config.json of {self.repo} has no {attr!r}")
        return config[attr]


def plugin_value(node: ast.AST, assigned: dict[str, ast.AST], scope: dict[str, Any]) -> Any:
    """Evaluate the few expressions localizer plugins build their layer list from: literals, module-level names,
    ``AutoConfig.from_pretrained(repo).attr`` (from the HF cache), ``range``, list comprehensions and f-strings."""
    def value(child: ast.AST, inner: dict[str, Any] = scope) -> Any:
        return plugin_value(child, assigned, inner)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in scope:
            return scope[node.id]
        if node.id in assigned:
            return plugin_value(assigned[node.id], assigned, {})
        raise UnreadableError(node.id)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [value(element) for element in node.elts]
    if isinstance(node, ast.Attribute):
        base = value(node.value)
        if isinstance(base, _HubConfig):
            return base.get(node.attr)
        if node.attr == "language_system" and isinstance(node.value, ast.Attribute):  # RecordingTarget.language_system
            return "language_system"
        raise UnreadableError(ast.unparse(node))
    if isinstance(node, ast.Call) and not node.keywords:
        func, args = node.func, [value(arg) for arg in node.args]
        if isinstance(func, ast.Name) and func.id == "range" and all(isinstance(a, int) for a in args):
            return list(range(*args))
        if (isinstance(func, ast.Attribute) and func.attr == "from_pretrained" and isinstance(func.value, ast.Name)
                and func.value.id == "AutoConfig" and len(args) == 1 and isinstance(args[0], str)):
            return _HubConfig(args[0])
    if isinstance(node, ast.ListComp):
        results: list[Any] = []

        def walk(generators: list[ast.comprehension], inner: dict[str, Any]) -> None:
            if not generators:
                results.append(value(node.elt, inner))
                return
            first = generators[0]
            if not isinstance(first.target, ast.Name) or first.ifs or first.is_async:
                raise UnreadableError(ast.unparse(node))
            for item in value(first.iter, inner):
                walk(generators[1:], {**inner, first.target.id: item})

        walk(list(node.generators), scope)
        return results
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue) and part.conversion == -1 and part.format_spec is None:
                parts.append(format(value(part.value), ""))
            else:
                raise UnreadableError(ast.unparse(node))
        return "".join(parts)
    raise UnreadableError(ast.unparse(node))
