"""The benchmark scripts keep working: each runs end to end in ``--quick`` mode (tiny random models, few sentences
and subjects) and prints its report, and they use only berg-ray's public names.

No timing is asserted (the machine is shared); the equality checks each report makes (berg-ray vs brainscore, vs
sklearn, pipeline vs plain loop) are.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT, ray_temp_dir, remove_tree, stop_ray_processes, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # own_ray: starts its own Ray (conftest.py runs it first)

BENCH = Path(REPO_ROOT) / "bench"
SCRIPTS = ("extract.py", "fit.py", "corpus.py", "gpu.py")
#: the modules the scripts share
HELPERS = ("children.py", "parts.py", "plain_loop.py", "report.py", "sampling.py", "workload.py")
#: generous: --quick took 1-2 min per script on a 2-core machine under a load average of 10-20 (Ray start-ups)
TIMEOUT_S = 1500


def run_quick(script: str, home: Path, *options: str, **extra_env: str | None) -> subprocess.CompletedProcess:
    """``python bench/SCRIPT --quick`` (or ``options``) with its own HOME (Ray's token file) and Ray temp dir
    (stopped afterwards); ``extra_env`` sets (None: removes) more variables."""
    home.mkdir(parents=True, exist_ok=True)
    temp_dir = ray_temp_dir()
    env = subprocess_env(HOME=str(home), RAY_TMPDIR=temp_dir, RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=None,
                         RAY_AUTH_TOKEN_PATH=None, MPLCONFIGDIR=None, **extra_env)
    try:
        run = subprocess.run([sys.executable, str(BENCH / script), *(options or ("--quick",))], cwd=str(home),
                             env=env, check=False, capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        stop_ray_processes(temp_dir)
        remove_tree(temp_dir)
    assert run.returncode == 0, f"{script} --quick failed:\n{run.stderr[-4000:]}"
    return run


def number(pattern: str, text: str) -> float:
    found = re.search(pattern, text)
    assert found, f"no line matching {pattern!r} in the report:\n{text}"
    return float(found.group(1))


def test_extract_quick_prints_its_report_and_matches_brainscore(tmp_path):
    out = run_quick("extract.py", tmp_path / "home").stdout
    for line in ("berg-ray extract vs brainscore digest_text", "[1] sentence context", "[3] FLOP/s",
                 "[2a] running, first", "[2] running context, all"):
        assert line in out, out
    # equality within the bench's own tolerance (max |ours - brainscore| / max |brainscore| <= 1e-4)
    assert "PASS [1] sentence-context equality" in out and "PASS [2] running-context equality" in out, out
    assert re.search(r"(?m)^(PASS|MISS) \[1\] sentence-context speed-up", out), out


def test_fit_quick_prints_its_report_and_matches_sklearn(tmp_path):
    out = run_quick("fit.py", tmp_path / "home").stdout
    for line in ("## Fit:", "| B berg-ray, 2 Ray tasks", "## Predict:", "| StackedPredictor.predict", "## Targets"):
        assert line in out, out
    # float32 features through berg-ray's float64 PLS vs sklearn's: rounding only; the bench's TOLERANCE is 1e-4
    assert number(r"predictions A vs B on [\d,]+ held-out rows: max \|Δ\| = (\S+)", out) <= 1e-4
    assert number(r"CV r max \|Δ\| = (\S+);", out) <= 1e-4
    # the factored float32 product vs sklearn's float64 predict, responses of order 1: float32 rounding
    assert number(r"\| StackedPredictor\.predict [^|]*\| [^|]*\| [^|]*\| (\S+) \|", out) <= 1e-4


def test_corpus_quick_prints_its_report_and_the_pipeline_equals_the_plain_loop(tmp_path):
    out = run_quick("corpus.py", tmp_path / "home").stdout
    for line in ("## Overhead:", "| plain loop, one process | 1 |", "| 2 plain loops side by side",
                 "| encode_corpus (Ray Data, 2 actors)", "- start-up: model load", "CPU efficiency vs the 1-thread",
                 "## Memory:", "## Targets", "steady state ≥ 85% of 2 × the 1-thread plain loop",
                 "call → first part started ≤ 5 s plus model load"):
        assert line in out, out
    assert len(re.findall(r"(?m)^\| (200|400) \| \d+ \|", out)) == 2, out  # one memory row per --quick size
    # every actor holds one CPU and runs torch on one thread
    assert re.search(r"\| encode_corpus \(Ray Data, 2 actors\) \| 1 \(", out), out
    # same model, same inputs, one torch thread on both sides: float32 rounding at most
    assert number(r"same output: subject \d+ max \|Δ\| = (\S+)", out) <= 1e-5


def test_gpu_quick_runs_every_step_on_cpu(tmp_path):
    out = run_quick("gpu.py", tmp_path / "home").stdout
    for line in ("## Forward:", "| tiny | float32 | 8 |", "| tiny | bfloat16 | 32 |", "## Corpus end to end:",
                 "| 1 actor (CPU stand-in for num_gpus=1) |", "| 2 actors (CPU stand-in for num_gpus=0.5) |"):
        assert line in out, out
    # bf16 features vs float32 on the same tiny model: not equal (bf16 did run), and bf16 keeps 8 bits of mantissa
    # (2^-8 ≈ 4e-3 relative per rounding): a few roundings per block over 2 blocks stay well under 10%
    assert 0 < number(r"\| tiny \| bfloat16 \| 8 \| [^|]+\|[^|]+\|[^|]+\| (\S+) \|", out) < 0.1


def test_gpu_without_a_gpu_says_so_and_exits_cleanly(tmp_path):
    # no GPU visible to the script, on any machine (CUDA_VISIBLE_DEVICES="" hides every CUDA device from torch)
    run = run_quick("gpu.py", tmp_path / "home", "--skip-corpus", CUDA_VISIBLE_DEVICES="")
    assert run.stdout.startswith("bench/gpu.py: no CUDA GPU is visible"), run.stdout
    assert "nothing was measured" in run.stdout and "## Forward" not in run.stdout


@pytest.mark.parametrize("script", SCRIPTS + HELPERS)
def test_bench_scripts_use_only_public_berg_ray_names(script):
    """No ``berg_ray._module`` or ``_name`` import and no ``obj._attribute`` access (berg-ray's or any other)."""
    tree = ast.parse((BENCH / script).read_text())
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("berg_ray"):
            private += [f"from {node.module} import {alias.name}" for alias in node.names
                        if alias.name.startswith("_") or any(p.startswith("_") for p in node.module.split("."))]
        elif isinstance(node, ast.Import):
            private += [f"import {alias.name}" for alias in node.names
                        if alias.name.startswith("berg_ray") and any(p.startswith("_") for p in alias.name.split("."))]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            private.append(f"line {node.lineno}: .{node.attr}")
    assert private == []
