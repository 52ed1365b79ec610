"""Which forward-pass precision fits the hardware: what ``dtype="auto"`` means, and when bf16 will be slow.

bf16 runs fast only where the hardware multiplies it natively: GPUs, and CPUs with AVX512-BF16 or AMX. On a CPU
without either (AVX2 only) torch 2.13's bf16 matmul runs at ~1 GFLOP/s against 110–160 GFLOP/s in float32, so a bf16
forward pass is ~100× slower there (measure it with ``python bench/extract.py --diagnose``: its bf16 row). Hence:

* ``dtype="auto"`` is bfloat16 on a GPU and on a CPU with native bf16, float32 elsewhere (:func:`auto_dtype`);
* an explicit bfloat16 on a CPU without native bf16 runs as asked, with one warning per process that names the
  expected slowdown (:func:`warn_if_slow`).

Native bf16 is read from the CPU flags the kernel reports in ``/proc/cpuinfo`` (``avx512_bf16``, ``amx_bf16``), with
torch's own CPUID probes as the fallback where that file does not exist (macOS, Windows). Everything is in
:func:`cpu_has_native_bf16`. Torch-free at import (torch is imported only to look for a GPU or as that fallback).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable

from berg_ray.errors import InvalidInputError
from berg_ray.options import AUTO_DTYPE, DTYPE_CHOICES, DTYPES

logger = logging.getLogger(__name__)

#: where the kernel lists the CPU's flags (Linux)
CPUINFO_PATH = "/proc/cpuinfo"
#: CPU flags of native bf16 arithmetic (x86: AVX512-BF16 dot products, AMX bf16 tiles)
NATIVE_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
#: bf16 matmul speed relative to float32 on an AVX2-only CPU (torch 2.13: ~1 vs 110–160 GFLOP/s; bench/extract.py)
EMULATED_BF16_SLOWDOWN = 100

_warned: set[str] = set()
_warned_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cpuinfo_flags(path: str) -> frozenset[str] | None:
    """The flags of the first CPU listed in ``path`` (``flags`` on x86), or None when the file cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        return None
    return frozenset()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this machine's CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16).

    Args:
        cpuinfo: the file to read the flags from (default :data:`CPUINFO_PATH`). Where it cannot be read, torch's
            CPUID probes answer (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``: private
            helpers of torch 2.x, used only if present; without them the answer is False, i.e. float32).
    """
    flags = _cpuinfo_flags(cpuinfo or CPUINFO_PATH)
    if flags is not None:
        return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if callable(probe))


def _device_type(device: str) -> str:
    """``"cuda"`` or ``"cpu"`` for a device name (``"auto"``: a GPU if this process sees one, else the CPU)."""
    name = str(device)
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if name.startswith("cuda") else "cpu"


def bf16_support(device: str) -> tuple[str, bool]:
    """``(device type, native bf16)`` of ``device`` as this process sees it: the torch device type (``"cuda"`` or
    ``"cpu"``; ``"auto"``: this process's GPU if any, else its CPU) and whether it multiplies bfloat16 natively (a
    GPU, or a CPU with AVX512-BF16/AMX). Ray front doors run it as a probe task where their actors run
    (:func:`berg_ray.distributed.request_for_actors`)."""
    kind = _device_type(device)
    return kind, kind == "cuda" or cpu_has_native_bf16()


def auto_dtype_for(native_bf16: bool) -> str:
    """What ``dtype="auto"`` means on a device that does (``"bfloat16"``) or does not (``"float32"``) multiply
    bfloat16 natively (the second value of :func:`bf16_support`)."""
    return "bfloat16" if native_bf16 else "float32"


def auto_dtype(device: str) -> str:
    """What ``dtype="auto"`` resolves to on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"``: this
    process's GPU if any, else its CPU): ``"bfloat16"`` on a GPU or a CPU with native bf16, else ``"float32"``."""
    kind, native = bf16_support(device)
    chosen = auto_dtype_for(native)
    logger.debug("dtype %r on %s (%s) -> %s", AUTO_DTYPE, device, kind, chosen)
    return chosen


def resolve_for(dtype: str, native_bf16: bool | Callable[[], bool]) -> str:
    """The precision ``dtype`` names on a device that does or does not multiply bfloat16 natively: the one place
    ``"auto"`` is resolved (:func:`auto_dtype_for`); a concrete name is returned as it is.

    Args:
        dtype: ``"auto"`` or one of :data:`~berg_ray.options.DTYPES` (else :class:`InvalidInputError`).
        native_bf16: whether the device where the model runs has native bf16, or a function that finds out (called
            only for ``"auto"``): this process's device (:func:`resolve_choice`) or a Ray actor's, from a probe
            where it runs (:func:`berg_ray.distributed.actors_dtype`).
    """
    if dtype == AUTO_DTYPE:
        return auto_dtype_for(native_bf16() if callable(native_bf16) else native_bf16)
    if dtype not in DTYPES:
        raise InvalidInputError(f"unknown dtype {dtype!r}; allowed: {', '.join(DTYPE_CHOICES)}")
    return dtype


def resolve_choice(dtype: str, device: str) -> str:
    """``dtype`` (already checked: ``"auto"`` or one of :data:`~berg_ray.options.DTYPES`) with ``"auto"`` resolved
    for ``device`` as this process sees it (:func:`resolve_for`, :func:`auto_dtype`); a concrete name is returned as
    it is."""
    return resolve_for(dtype, lambda: auto_dtype(device) == "bfloat16")


def slow_precision_message(dtype: str, device_type: str, cpuinfo: str | None = None) -> str | None:
    """The warning for running ``dtype`` on ``device_type`` here, or None when it runs at full speed."""
    if dtype != "bfloat16" or device_type != "cpu" or cpu_has_native_bf16(cpuinfo):
        return None
    return (f"dtype 'bfloat16' on a CPU without native bf16 (no {' or '.join(NATIVE_BF16_FLAGS)} in its flags, e.g. "
            f"AVX2 only): bf16 matrix products are emulated there, ~{EMULATED_BF16_SLOWDOWN}x slower than float32 "
            "(measured with torch 2.13: ~1 vs 110-160 GFLOP/s). Use dtype='float32', or dtype='auto' to pick the "
            "fastest precision of each machine")


def warn_if_slow(dtype: str, device_type: str) -> None:
    """Log :func:`slow_precision_message` as a WARNING, once per process."""
    message = slow_precision_message(dtype, device_type)
    if message is None:
        return
    with _warned_lock:
        if message in _warned:
            return
        _warned.add(message)
    logger.warning(message)
