"""ruff, configured in pyproject.toml, is clean on the package, its tests, benchmarks and jobs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           str(REPO / "pyproject.toml"), *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_is_clean():
    run = ruff("berg_ray", "tests", "bench", "jobs", ".ci")
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_ruff_catches_a_planted_problem(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n\n\ndef f(x=[]):\n    return x\n")
    run = ruff(str(planted))
    assert run.returncode == 1 and "F401" in run.stdout and "B006" in run.stdout
