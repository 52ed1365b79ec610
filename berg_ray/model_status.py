"""What berg-ray can do with the brainscore-language registrations that are not plain ``HuggingfaceSubject`` s.

brainscore-language 2.3.0 registers 94 model ids. The single-layer ``HuggingfaceSubject`` ones run on berg-ray's own
batched readout (:mod:`berg_ray.features`). Most of the others produce neural output through their own
``ArtificialSubject``; berg-ray runs those *delegated*: through brainscore's own subject (``load_model`` →
``start_neural_recording(language_system, fMRI)`` → ``digest_text``, :mod:`berg_ray.delegated`). This module says,
per plugin and without importing any of them, whether a delegated id can run here and, if not, exactly what it
needs:

=================  ===================================================================================================
runnable           ``oasm-sigma*`` (49 confound baselines), ``randomembedding-100/-1600``; and the ones below once
                   what they need is in place
needs-weights      ``glove-840b``: ``glove.840B.300d.txt`` in the glove plugin's folder, or its path in
                   ``$BERG_RAY_GLOVE_WEIGHTS``; ``llada-8b-base``: a local checkpoint folder in ``$LLADA_MODEL_PATH``;
                   ``lm1b``: its TensorFlow checkpoint in the lm1b plugin's ``resources/`` folder
needs-dependency   ``lm1b``: the ``tensorflow`` package (the plugin imports it at import time)
needs-container    the seven ``rnn-*`` ids: docker (with a reachable daemon) or singularity, and the model's image
behaviour-only     ``earley-parser-minivocab``: its subject raises for neural recording
=================  ===================================================================================================

Everything here reads files and environment variables only (stdlib, ``ast``): ``berg-ray models --all`` stays
offline and fast. Environment-dependent statuses are evaluated when the registry is first read in a process.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from berg_ray import hashing

#: the one readout of a delegated model: what its subject records for ``RecordingTarget.language_system``
DELEGATED_LAYER = "language_system"
#: how delegated features are produced; part of every delegated model's fingerprint (so of every cache key)
DELEGATED_PROCEDURE = "brainscore-digest-text/1"
#: where the glove plugin looks for its weights, and the variable that points berg-ray at another copy
GLOVE_FILE = "glove.840B.300d.txt"
GLOVE_WEIGHTS_ENV = "BERG_RAY_GLOVE_WEIGHTS"
#: the variable the llada8b plugin reads for a local checkpoint folder
LLADA_ENV = "LLADA_MODEL_PATH"
#: prefix of a delegated model's ``ModelSpec.source``: ``brainscore:<plugin>/<brainscore id>``
SOURCE_PREFIX = "brainscore:"


@dataclass(frozen=True)
class PluginFacts:
    """What berg-ray knows about one non-``HuggingfaceSubject`` plugin of brainscore-language.

    Attributes:
        control: a content-free baseline (its features encode no linguistic content); ``note`` says what they encode.
        stateful: each ``digest_text`` call depends on the calls before it on the same subject instance (OASM takes
            the next columns; lm1b's LSTM state carries over), so every extraction call gets a fresh instance.
        note: one line on what the model is (shown with ``encode`` warnings and metadata for controls).
        dependencies: Python distributions the plugin imports beyond brainscore-language's own.
        encodes: for a control: what its features do encode, in a few words (sweep reports group controls by it).
    """

    control: bool = False
    stateful: bool = False
    note: str = ""
    dependencies: tuple[str, ...] = ()
    encodes: str = ""


#: plugin folder name -> facts (checked against brainscore-language 2.3.0's sources)
PLUGINS: dict[str, PluginFacts] = {
    "oasm": PluginFacts(control=True, stateful=True, encodes="position within the passage (OASM)", note=(
        "OASM (Hadidi et al. 2025) is a confound baseline that encodes no linguistic content: its features are "
        "each sentence's position within the block it was digested in (smoothed identity), orthogonal across "
        "blocks")),
    "random_embedding": PluginFacts(control=True, dependencies=("gensim",), encodes="word identity (random embedding)",
                                    note=(
        "random embedding is a control that encodes no linguistic content beyond word identity: a fixed random "
        "vector per word (seeded by the word's hash), averaged over the sentence")),
    "glove": PluginFacts(dependencies=("gensim",), note="GloVe 840B word vectors, averaged over the sentence"),
    "lm1b": PluginFacts(stateful=True, note="the LM1B LSTM language model (TensorFlow), layer lstm_1"),
    "llada8b": PluginFacts(note="LLaDA-8B-Base (diffusion LM), mean of layer 24 over each part's tokens"),
    "rnng": PluginFacts(note="RNNG / LSTM models in a container image (ContainerSubject)"),
    "rnnlm": PluginFacts(note="an RNN language model in a container image (ContainerSubject)"),
    "earley_parser": PluginFacts(note="an Earley parser (behavioural benchmarks only)"),
}


@dataclass(frozen=True)
class Delegation:
    """The status of one delegated registration here and now: ``status`` (one of
    :data:`berg_ray.options.MODEL_STATUSES`) and ``reason``: what it needs, or what it is."""

    plugin: str
    status: str
    reason: str
    facts: PluginFacts


def source_of(plugin: str, identifier: str) -> str:
    """The ``ModelSpec.source`` of a delegated model: ``brainscore:<plugin>/<brainscore id>``."""
    return f"{SOURCE_PREFIX}{plugin}/{identifier}"


def parse_source(source: str) -> tuple[str, str]:
    """``(plugin, brainscore id)`` of a delegated model's source (:func:`source_of`); ValueError otherwise."""
    if not source.startswith(SOURCE_PREFIX) or "/" not in source:
        raise ValueError(f"{source!r} is not a delegated model's source ('{SOURCE_PREFIX}<plugin>/<id>')")
    plugin, identifier = source[len(SOURCE_PREFIX):].split("/", 1)
    return plugin, identifier


def facts_of(source: str) -> PluginFacts:
    """The :class:`PluginFacts` of a delegated model's plugin (empty facts for a plugin not in :data:`PLUGINS`)."""
    return PLUGINS.get(parse_source(source)[0], PluginFacts())


def is_stateful(source: str) -> bool:
    """Whether a delegated model's features depend on earlier ``digest_text`` calls of the same subject."""
    return facts_of(source).stateful


def brainscore_models_dir() -> Path | None:
    """``brainscore_language/models`` of the installed package (found without importing it), or None."""
    spec = importlib.util.find_spec("brainscore_language")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "models"


# --------------------------------------------------------------------------------------------------------------
# Statuses


def _missing_distributions(names: tuple[str, ...] | list[str]) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def _requirements(plugin_dir: Path) -> list[str]:
    """Distribution names in the plugin's ``requirements.txt`` (version specifiers dropped)."""
    path = plugin_dir / "requirements.txt"
    if not path.is_file():
        return []
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = re.split(r"[\s<>=!~;\[]", line.strip(), maxsplit=1)[0]
        if name and not name.startswith("#"):
            names.append(name)
    return names


def glove_weights(plugin_dir: Path | None = None) -> Path | None:
    """The GloVe weights file berg-ray uses: the glove plugin's own (where brainscore looks), else
    ``$BERG_RAY_GLOVE_WEIGHTS``; None when neither exists."""
    plugin_dir = plugin_dir or ((brainscore_models_dir() or Path()) / "glove")
    own = plugin_dir / GLOVE_FILE
    if own.is_file():
        return own
    env = os.environ.get(GLOVE_WEIGHTS_ENV)
    if env and Path(env).expanduser().is_file():
        return Path(env).expanduser()
    return None


def container_runtime() -> str | None:
    """``"singularity"``, or ``"docker"`` when its binary and a daemon address are there (``$DOCKER_HOST`` or
    ``/var/run/docker.sock``); None otherwise. Nothing is run: the daemon itself is checked by the load probe."""
    if shutil.which("singularity"):
        return "singularity"
    if shutil.which("docker") and (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return "docker"
    return None


@functools.lru_cache(maxsize=16)
def _container_images(init_file: str) -> dict[str, str]:
    """``{brainscore id: container image}`` of a plugin that registers ``ContainerSubject`` s, read with ast."""
    tree = ast.parse(Path(init_file).read_text(encoding="utf-8"))

    def image_in(node: ast.AST) -> str | None:
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                for keyword in call.keywords:
                    if keyword.arg == "container" and isinstance(keyword.value, ast.Constant):
                        return str(keyword.value.value)
        return None

    makers = {f.name: image_in(f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    images: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Subscript)
                and isinstance(node.targets[0].slice, ast.Constant)):
            continue
        call = node.value.body if isinstance(node.value, ast.Lambda) else node.value
        image = image_in(call)
        if image is None and isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            image = makers.get(call.func.id)
        if image:
            images[str(node.targets[0].slice.value)] = image
    return images


def delegation(plugin: str, plugin_dir: Path, identifier: str) -> Delegation | None:
    """The status of registration ``identifier`` of ``plugin`` here and now, or None for a plugin berg-ray does not
    know (then it stays unsupported). Reads files and environment variables only."""
    facts = PLUGINS.get(plugin)
    if facts is None:
        return None

    def make(status: str, reason: str) -> Delegation:
        return Delegation(plugin, status, reason, facts)

    missing = _missing_distributions([*facts.dependencies, *(
        name for name in _requirements(plugin_dir) if plugin != "earley_parser")])
    if plugin == "earley_parser":
        return make("behaviour-only", "behaviour only: EarleyParserSubject raises NotImplementedError for neural "
                                      "recording (it has no neural output to fit)")
    if missing:
        return make("needs-dependency", f"needs the Python package(s) {', '.join(missing)} (pip install "
                                        f"{' '.join(missing)}), which plugin '{plugin}' imports")
    if plugin == "glove":
        if glove_weights(plugin_dir) is None:
            return make("needs-weights", f"needs its weights file {GLOVE_FILE} (5.6 GB, from "
                                         f"https://nlp.stanford.edu/data/glove.840B.300d.zip): put it in "
                                         f"{plugin_dir}/ or set {GLOVE_WEIGHTS_ENV}=/path/to/{GLOVE_FILE}")
        return make("runnable", f"delegated to brainscore's GensimKeyedVectorsSubject ({glove_weights(plugin_dir)})")
    if plugin == "llada8b":
        folder = os.environ.get(LLADA_ENV)
        if not folder or not Path(folder).expanduser().is_dir():
            return make("needs-weights", f"needs a local GSAI-ML/LLaDA-8B-Base checkpoint folder (revision "
                                         f"0f2787f2d87eac5eed8a087d5ecd24277e6255b2, loaded with trust_remote_code) "
                                         f"in {LLADA_ENV}" + (f" ({folder!r} is not a folder)" if folder else ""))
        return make("runnable", f"delegated to brainscore's LLaDA8BSubject ({LLADA_ENV}={folder})")
    if plugin == "lm1b":
        resources = plugin_dir / "resources"
        if not resources.is_dir():
            return make("needs-weights", f"needs the LM1B TensorFlow checkpoint (graph-2016-09-10.pbtxt, ckpt-*, "
                                         f"vocab-2016-09-10.txt from download.tensorflow.org/models/LM_LSTM_CNN) "
                                         f"in {resources}/")
        return make("runnable", "delegated to brainscore's LM1B subject")
    if plugin in ("rnng", "rnnlm"):
        image = _container_images(str(plugin_dir / "__init__.py")).get(identifier, "(see the plugin)")
        runtime = container_runtime()
        if runtime is None:
            found = "docker is installed but no daemon address was found" if shutil.which("docker") else \
                "neither docker nor singularity is installed"
            return make("needs-container", f"needs a container runtime (docker with a running daemon, or "
                                           f"singularity) and the image {image}; {found}")
        return make("runnable", f"delegated to brainscore's ContainerSubject: {runtime} runs image {image} once "
                                "per sentence (checked by a probe when it loads)")
    return make("runnable", f"delegated to brainscore's own subject (plugin '{plugin}')"
                + ("; a control model: its features encode no linguistic content" if facts.control else ""))


# --------------------------------------------------------------------------------------------------------------
# Fingerprints


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return hashing.file_sha256(path)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, computed once per (path, size, mtime) in a process."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _tree_sha256(root: Path, pattern: str = "*") -> str:
    return hashing.folder_sha256(root, pattern=pattern, exclude=("__pycache__",), entry="sha256")


def delegated_fingerprint(source: str) -> str:
    """A string that changes whenever a delegated model's features can change: the brainscore-language version,
    a hash of the plugin's Python files, the weights it reads (content hash: glove file, llada folder, lm1b
    resources) and :data:`DELEGATED_PROCEDURE`."""
    plugin, identifier = parse_source(source)
    models = brainscore_models_dir()
    plugin_dir = (models / plugin) if models is not None else None
    try:
        version = importlib.metadata.version("brainscore_language")
    except importlib.metadata.PackageNotFoundError:
        version = "absent"
    code = _tree_sha256(plugin_dir, "*.py")[:16] if plugin_dir is not None and plugin_dir.is_dir() else "absent"
    weights = ""
    if plugin == "glove":
        found = glove_weights(plugin_dir)
        weights = file_sha256(found)[:16] if found is not None else "absent"
    elif plugin == "llada8b" and os.environ.get(LLADA_ENV) and Path(os.environ[LLADA_ENV]).is_dir():
        weights = _tree_sha256(Path(os.environ[LLADA_ENV]).expanduser())[:16]
    elif plugin == "lm1b" and plugin_dir is not None and (plugin_dir / "resources").is_dir():
        weights = _tree_sha256(plugin_dir / "resources")[:16]
    return (f"{source}@brainscore-language=={version}:plugin={code}"
            + (f":weights={weights}" if weights else "") + f":{DELEGATED_PROCEDURE}")
