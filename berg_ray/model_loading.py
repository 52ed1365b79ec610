"""Loading a language model: where it runs (device, precision), its weights and tokenizer, and whether the weights
it would read now are the ones a request expects.

The readout of a loaded model (hooks, batching, contexts) is :mod:`berg_ray.features`; no Ray and no storage here.
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede brainscore/transformers imports)

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from berg_ray import code_models, options
from berg_ray.errors import DeviceError, InvalidInputError, ModelNotCachedError, StaleModelError
from berg_ray.precision import resolve_choice, warn_if_slow
from berg_ray.registry import ModelSpec, get_spec, hf_cache_dir, hf_missing_files
from berg_ray.request import DEFAULT_DEVICE, check_dtype

logger = logging.getLogger(__name__)

#: torch dtype of each precision name
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in options.DTYPES}


def resolve_device(device: str | torch.device = DEFAULT_DEVICE) -> torch.device:
    """``"cpu"``, ``"cuda"``/``"cuda:N"`` or ``"auto"`` (CUDA if available, else CPU) -> a usable torch device."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for but this machine has no CUDA GPU; "
                              "use device='cpu' or device='auto'")
        return torch.device(name)
    raise DeviceError(f"unknown device {name!r}; allowed: 'cpu', 'cuda', 'cuda:N', 'auto'")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device, warn: bool = True) -> torch.dtype:
    """fp32 unless asked otherwise; half precision only where it runs (bf16 on CPU and GPU, fp16 on GPU);
    ``"auto"``: bf16 on a GPU or a CPU with native bf16, else fp32 (:func:`berg_ray.precision.auto_dtype`).

    Call it where the model runs: with ``warn``, bf16 on a CPU without native bf16 (~100× slower than fp32 there)
    logs a WARNING once per process (:func:`berg_ray.precision.warn_if_slow`).
    """
    dtype = resolve_choice(check_dtype(dtype), device.type)
    if dtype == "float16" and device.type == "cpu":
        raise InvalidInputError("dtype 'float16' needs a GPU; on CPU use 'float32' or 'bfloat16'")
    if warn:
        warn_if_slow(dtype, device.type)
    return DTYPES[dtype]


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer, readout module and the facts the extractor needs.

    Attributes:
        layer: the anchor module (the last of ``spec.hooked_layers``).
        max_length: the longest context in tokens (the smallest of the tokenizer's and the config's limits).
        calls: how many times each read module runs in one forward pass (probed by its first full pass; brainscore's
            hook keeps the last run's output, e.g. suma's blocks run ``num_cycles`` times); filled by the readout.
    """

    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Any
    layer: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    max_length: int
    calls: dict[str, int] = field(default_factory=dict)


def get_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule of ``model`` at the dotted ``name`` (e.g. ``"transformer.h.5"``); an error naming the modules
    at that depth if there is none."""
    module = model
    for part in name.split("."):
        child = module._modules.get(part)
        if child is None:
            blocks = [n for n, _ in model.named_modules() if n.count(".") <= name.count(".")]
            hint = [n for n in blocks if n.split(".")[:-1] == name.split(".")[:-1]][:8] or blocks[:8]
            raise InvalidInputError(f"layer {name!r} does not exist in this model (no submodule {part!r}); "
                                    f"modules at that depth include: {', '.join(hint)}")
        module = child
    return module


def load_language_model(model: str | ModelSpec, device: str | torch.device = DEFAULT_DEVICE,
                        dtype: str | torch.dtype | None = None) -> LanguageModel:
    """Load a registered model the way brainscore's ``HuggingfaceSubject`` does.

    ``AutoModelForCausalLM.from_pretrained(source)`` (so module names match brainscore's layer mapping) and
    ``AutoTokenizer.from_pretrained(source, truncation_side='left')``. Whether its layers are causal is probed by
    the readout (:class:`berg_ray.features.FeatureExtractor`), which needs a forward pass.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = get_spec(model)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    logger.info("loading %s (%s, layer %s) on %s as %s", spec.model_id, spec.source, spec.layer, torch_device,
                torch_dtype)
    revision = None if spec.is_local else spec.revision
    with _hub_download_errors(spec):
        if spec.kind == "code":  # a network that brainscore's plugin builds in code: the same build, seeded
            net = code_models.build_network(spec.builder).to(torch_dtype)
        else:
            net = AutoModelForCausalLM.from_pretrained(spec.source, revision=revision, low_cpu_mem_usage=True,
                                                       dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(spec.source, revision=revision, **spec.tokenizer_kwargs)
    net.to(torch_device).eval()
    limits = [tokenizer.model_max_length]
    for attr in ("n_positions", "max_position_embeddings"):
        value = getattr(net.config, attr, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    max_length = int(min(limits))
    anchor = spec.hooked_layers[-1]  # a localizer model's spec.layer is the pseudo-layer LOCALIZED_LAYER
    return LanguageModel(spec, net, tokenizer, get_module(net, anchor), torch_device, torch_dtype, max_length)


def _offline() -> bool:
    """Whether this process may not download from the Hugging Face hub (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "").upper() in ("1", "ON", "YES",
                                                                                                  "TRUE")


@contextlib.contextmanager
def _hub_download_errors(spec: ModelSpec) -> Iterator[None]:
    """Turn transformers' "couldn't connect ... couldn't find them in the cached files" ``OSError`` for a hub model
    into one line: the id, that it is not cached (which files), and that there is no network."""
    try:
        yield
    except OSError as error:
        if spec.is_local:
            raise
        missing = hf_missing_files(spec.source) if spec.revision is None else ["the files of that revision"]
        if not missing:
            raise
        network = ("this process is offline (HF_HUB_OFFLINE=1), so nothing can be downloaded" if _offline()
                   else f"the Hugging Face hub could not be reached ({str(error).splitlines()[0]})")
        raise ModelNotCachedError(
            f"model {spec.model_id!r} (hub id {spec.source!r}{f', revision {spec.revision!r}' if spec.revision else ''}"
            f") is not in the local Hugging Face cache {hf_cache_dir()} (missing: {', '.join(missing)}) and {network}; "
            f"download it where there is network (huggingface-cli download {spec.source}) into that cache, or "
            "register a local folder") from error


def current_fingerprint(spec: ModelSpec) -> str | None:
    """The fingerprint of the weights a load of ``spec`` would read now (:meth:`ModelSpec.source_fingerprint`; for a
    local folder a content hash, re-hashed only when a file's size or mtime changed, else a ``stat`` per file);
    ``None`` for a delegated model (its fingerprint hashes gigabytes of weights: taken when its request is built)."""
    return None if spec.kind == "delegated" else spec.source_fingerprint()


def check_fingerprint(spec: ModelSpec, expected: str | None, current: str | None, what: str = "it") -> None:
    """Raise :class:`StaleModelError` when the weights of ``spec`` changed since ``expected`` was recorded (naming
    both fingerprints); nothing to check when either is unknown."""
    if expected and current and expected != current:
        raise StaleModelError(
            f"the weights of model {spec.model_id!r} ({spec.source}) changed since {what} was made: made for "
            f"fingerprint {expected}, the model now has {current}; refit on the new weights (or restore the old "
            "ones)")
