"""Bench steps run in fresh child processes: each prints one ``RESULT {json}`` line that the parent reads back."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any

RESULT_PREFIX = "RESULT "


def print_result(result: dict[str, Any]) -> None:
    """Print ``result`` as this child's ``RESULT {json}`` line (flushed)."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def read_result(stdout: str) -> dict[str, Any] | None:
    """The last ``RESULT {json}`` line of a child's standard output, parsed; None when it printed none."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    return json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else None


def one_thread_env() -> dict[str, str]:
    """A child's environment with one torch and one BLAS thread (what Ray gives a num_cpus=1 actor)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_children(commands: list[list[str]], env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run ``commands`` at the same time; their RESULT lines, each with ``wall`` (its process's wall seconds)."""
    started = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for c in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate()
        result = read_result(out)
        if proc.returncode != 0 or result is None:
            raise RuntimeError(f"child {proc.args[2]} failed (rc {proc.returncode}):\n{err[-4000:]}")
        results.append({**result, "wall": time.perf_counter() - started})
    return results
