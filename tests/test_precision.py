"""dtype="auto": the precision that fits the machine, resolved before any cache key; bf16 where it is slow warns.

bf16 is fast only where the hardware multiplies it natively (GPUs; CPUs with AVX512-BF16 or AMX); on an AVX2-only
CPU it is ~100× slower than float32. The references here are independent of berg-ray's detection: the kernel's CPU
flags read by the test itself, torch's own CPUID probes, and planted ``cpuinfo`` files of CPUs with and without
native bf16.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import subprocess_env

from berg_ray import distributed, precision
from berg_ray.cli import build_parser
from berg_ray.errors import InvalidInputError
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest, check_dtype

AVX2_ONLY = ("processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma\n\n"
             "processor\t: 1\nflags\t\t: fpu sse sse2 avx avx2 fma\n")
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n"


def kernel_flags() -> set[str] | None:
    """This machine's CPU flags as the kernel lists them (read here, not through berg-ray)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.fixture()
def cpu(tmp_path, monkeypatch):
    """Pretend to run on a CPU described by a planted cpuinfo text: ``cpu(AVX2_ONLY)``."""
    def use(text: str) -> None:
        path = tmp_path / f"cpuinfo-{abs(hash(text))}"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO_PATH", str(path))
    return use


def test_native_bf16_detection_reads_the_cpu_flags_of_planted_cpus(tmp_path):
    for name, text, native in (("avx2", AVX2_ONLY, False), ("avx512bf16", AVX512_BF16, True), ("amx", AMX, True)):
        path = tmp_path / name
        path.write_text(text)
        assert precision.cpu_has_native_bf16(str(path)) is native, name


def test_without_cpuinfo_torch_cpuid_probes_answer(tmp_path):
    expected = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert precision.cpu_has_native_bf16(str(tmp_path / "no-such-file")) is expected


def test_auto_on_this_machine_matches_its_kernel_flags_and_torch_cpuid(tiny_gpt2):
    flags = kernel_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo on this machine")
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    # torch reads CPUID itself: the same answer by another route
    assert native == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    request = ModelRequest.build(tiny_gpt2.model_id, dtype="auto", device="cpu")
    assert request.dtype == ("bfloat16" if native else "float32")
    assert request.to_dict()["dtype"] == request.dtype


def test_auto_is_float32_on_a_cpu_without_native_bf16_and_bfloat16_on_one_with_it_or_a_gpu(tiny_gpt2, cpu):
    cpu(AVX2_ONLY)
    assert ModelRequest.build(tiny_gpt2.model_id, dtype="auto", device="cpu").dtype == "float32"
    assert ModelRequest.build(tiny_gpt2.model_id, dtype="auto", device="cuda").dtype == "bfloat16"
    assert ModelRequest.build(tiny_gpt2.model_id, device="cpu").replace(dtype="auto").dtype == "float32"
    cpu(AMX)
    assert ModelRequest.build(tiny_gpt2.model_id, dtype="auto", device="cpu").dtype == "bfloat16"


def test_cache_keys_hold_the_resolved_precision(tiny_gpt2, cpu):
    """An "auto" fit shares its key with the precision it ran in, never with the other one."""
    settings = PLSSettings()

    def key(dtype: str) -> str:
        return ModelRequest.build(tiny_gpt2.model_id, dtype=dtype, device="cpu").cache_key("018", "sha", settings)

    cpu(AVX2_ONLY)
    assert key("auto") == key("float32") != key("bfloat16")
    cpu(AVX512_BF16)
    assert key("auto") == key("bfloat16") != key("float32")
    unresolved = dataclasses.replace(ModelRequest.build(tiny_gpt2.model_id, device="cpu"), dtype="auto")
    with pytest.raises(InvalidInputError, match="'auto' is not a precision"):
        unresolved.key_fields("018", "sha", settings)


def test_ray_front_doors_resolve_auto_for_the_actors_device_not_the_driver(tiny_gpt2, cpu, monkeypatch):
    cpu(AVX2_ONLY)  # a driver (head node) without native bf16 ...
    monkeypatch.setattr(distributed, "cluster_gpus", lambda: 1.0)  # ... on a cluster with a GPU
    on_driver = ModelRequest.build(tiny_gpt2.model_id, dtype="auto", device="auto")
    assert on_driver.dtype == ("bfloat16" if torch.cuda.is_available() else "float32")
    assert distributed.request_for_actors(on_driver, "auto", num_gpus=1).dtype == "bfloat16"
    assert distributed.request_for_actors(on_driver, "auto", num_gpus=0).dtype == "bfloat16"  # auto device → GPU
    on_cpu = ModelRequest.build(tiny_gpt2.model_id, dtype="auto", device="cpu")
    assert distributed.request_for_actors(on_cpu, "auto", num_gpus=0).dtype == "float32"
    explicit = ModelRequest.build(tiny_gpt2.model_id, dtype="float32", device="auto")
    assert distributed.request_for_actors(explicit, "float32", num_gpus=1) is explicit


def test_explicit_bf16_on_a_cpu_without_it_warns_once_per_process_and_auto_does_not(tiny_gpt2, tmp_path):
    """In a fresh process (the warning is once per process): resolve_dtype and the model loader, on a planted
    AVX2-only CPU."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2_ONLY)
    script = f"""
import json, logging, torch
from berg_ray import precision
from berg_ray.model_loading import load_language_model, resolve_dtype
from berg_ray.registry import ModelSpec
precision.CPUINFO_PATH = {str(cpuinfo)!r}
records = []
handler = logging.Handler()
handler.emit = lambda record: records.append((record.levelname, record.getMessage()))
logging.getLogger("berg_ray").addHandler(handler)
steps = {{}}
steps["auto"] = (str(resolve_dtype("auto", torch.device("cpu"))), len(records))
steps["float32"] = (str(resolve_dtype("float32", torch.device("cpu"))), len(records))
steps["bfloat16"] = (str(resolve_dtype("bfloat16", torch.device("cpu"))), len(records))
lm = load_language_model(ModelSpec("t", {tiny_gpt2.folder!r}, {tiny_gpt2.layer!r}), device="cpu", dtype="bfloat16")
steps["load bfloat16"] = (str(lm.dtype), len(records))
print(json.dumps({{"steps": steps, "warnings": [m for level, m in records if level == "WARNING"]}}))
"""
    run = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    steps, warnings = result["steps"], result["warnings"]
    assert steps["auto"] == ["torch.float32", 0] and steps["float32"] == ["torch.float32", 0]
    assert steps["bfloat16"] == ["torch.bfloat16", 1]  # runs as asked, with the warning
    assert steps["load bfloat16"] == ["torch.bfloat16", 1]  # loading again in the same process: no second warning
    assert len(warnings) == 1 and "~100x slower than float32" in warnings[0] and "dtype='auto'" in warnings[0]


def test_no_warning_where_bf16_is_native_or_on_gpu(tmp_path):
    path = tmp_path / "cpuinfo-amx"
    path.write_text(AMX)
    assert precision.slow_precision_message("bfloat16", "cpu", str(path)) is None
    path = tmp_path / "cpuinfo-avx2"
    path.write_text(AVX2_ONLY)
    assert precision.slow_precision_message("bfloat16", "cuda", str(path)) is None
    assert precision.slow_precision_message("float32", "cpu", str(path)) is None
    assert precision.slow_precision_message("bfloat16", "cpu", str(path)) is not None


def test_auto_is_a_dtype_choice_everywhere_and_typos_name_the_choices():
    assert build_parser().parse_args(["fit", "some-model", "--dtype", "auto"]).dtype == "auto"
    for check in (check_dtype, lambda name: precision.resolve_choice(name, "cpu")):
        with pytest.raises(InvalidInputError, match="unknown dtype 'bf16'; allowed: float32, bfloat16, float16, auto"):
            check("bf16")
