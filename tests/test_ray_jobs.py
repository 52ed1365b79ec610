"""The Ray job entry points against a real head: ``ray start --head --block`` (a subprocess with its own ports and
temp dir, token authentication) and ``ray job submit ... -- python jobs/encode_corpus.py``.

Facts this relies on (Ray 2.60, checked on the 2-core test machine): ``--node-ip-address=127.0.0.1`` is accepted,
but Ray still binds the machine's interface address (the job's ``RAY_ADDRESS`` names it), and the head and the job
work; with token authentication every client (``ray job submit``, the job driver) needs ``RAY_AUTH_MODE=token`` and
the token, here in ``RAY_AUTH_TOKEN``, so that the tests never read or write ``~/.ray/auth_token``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support import (
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    REPO_ROOT,
    assert_clean_ray_state,
    free_port,
    free_port_range,
    ray_temp_dir,
    remove_tree,
    stop_ray_processes,
    subprocess_env,
)

from berg_ray.corpus import read_predictions
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # own_ray: starts its own Ray (conftest.py runs it first)

RAY = str(Path(sys.executable).with_name("ray"))
PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port", "object-manager-port",
              "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
              "runtime-env-agent-port")


def distinct_free_ports(n: int, avoid: range) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports and port not in avoid:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
def ray_head(persisted_gpt2, tmp_path_factory):
    """A Ray head in a subprocess (``ray start --head --block``): its own temp dir, a free port for every port
    flag, 2 CPUs, token authentication with a token of its own. Stopped by SIGTERM to its pid. This process
    starts no Ray of its own (the head and every client are subprocesses): it is in a clean Ray state before and
    after."""
    assert_clean_ray_state()
    temp_dir = ray_temp_dir()
    low, high = free_port_range(40)
    ports = dict(zip(PORT_FLAGS, distinct_free_ports(len(PORT_FLAGS), range(low, high + 1)), strict=True))
    token = secrets.token_hex(32)
    env = subprocess_env(BERG_RAY_REGISTRY=persisted_gpt2, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", "--node-ip-address=127.0.0.1",
               "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}",
               f"--min-worker-port={low}", f"--max-worker-port={high}", "--disable-usage-stats",
               *[f"--{flag}={port}" for flag, port in ports.items()]]
    log_path = tmp_path_factory.mktemp("ray_head") / "head.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        _wait_until_up(head, log_path, address)
        yield SimpleNamespace(address=address, env=env, token=token, temp_dir=temp_dir, log=log_path)
    finally:
        # SIGTERM to the head and, at the same time, to every process of this instance (all name its temp dir):
        # the head alone takes ~30 s to take its children down on this machine.
        stopped = stop_ray_processes(temp_dir)
        assert head.pid in stopped or head.poll() is not None
        head.wait(30)
        remove_tree(temp_dir)
    assert_clean_ray_state()


def _wait_until_up(head: subprocess.Popen, log_path: Path, address: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}:\n{log_path.read_text()[-3000:]}")
        if "Ray runtime started" in log_path.read_text():
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=5)
                return
            except urllib.error.HTTPError:  # 401 without a token: the dashboard is up
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the Ray head did not come up in {timeout} s:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)


def ray_cli(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_clients_need_the_cluster_token(ray_head):
    """(With the token, the job test below gets in.)"""
    for name, env in (("no token", {**ray_head.env, "RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""}),
                      ("a wrong token", {**ray_head.env, "RAY_AUTH_TOKEN": secrets.token_hex(32)})):
        refused = ray_cli(["job", "list", "--address", ray_head.address], env, 60)
        assert refused.returncode != 0, f"a client with {name} was let in"
        assert "Unauthorized" in refused.stderr or "authentication" in refused.stderr.lower(), refused.stderr[-2000:]


def test_encode_corpus_job_matches_the_in_process_core(ray_head, tiny_gpt2, gpt2_synthetic, gpt2_fits, tmp_path):
    """``ray job submit --runtime-env-json '{"working_dir": <repo>, ...}' -- python jobs/encode_corpus.py ...``
    runs to SUCCEEDED, and its output equals, row by row, the same sentences through the in-process core."""
    from berg_ray.features import extract_features

    sentences = gpt2_synthetic["sentences"][:150]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"s{i}", "sentence": s}) + "\n" for i, s in enumerate(sentences))
                      + '{"id": "broken", "sentence": 7}\n')
    cache, output = tmp_path / "cache", tmp_path / "out"
    store = EncodingModelStore(str(cache))  # the fits are cached already: the job loads them
    for model in gpt2_fits.values():
        store.save(model, get_spec(model.model_id).name)
    # working_dir uploads the checkout (Ray honours .gitignore, so the 2 GB .venv stays here; excluded anyway)
    runtime_env = {"working_dir": REPO_ROOT, "excludes": [".venv", ".git", "**/__pycache__", "berg_dir", "demo_out"],
                   "env_vars": {"HF_HUB_OFFLINE": "1", "BS_INSTALL_DEPENDENCIES": "no"}}
    submitted = ray_cli(
        ["job", "submit", "--address", ray_head.address, "--runtime-env-json", json.dumps(runtime_env), "--",
         sys.executable, "jobs/encode_corpus.py", tiny_gpt2.model_id, "--input", str(corpus), "--output",
         str(output), "--subjects", *RAY_SUBJECTS, "--dataset", gpt2_synthetic["path"], "--cache", str(cache),
         "--n-components", str(RAY_N_COMPONENTS), "--device", "cpu"], ray_head.env, 540)
    logs = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, logs[-4000:]
    assert "succeeded" in logs, logs[-4000:]

    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["sentences_encoded"] == len(sentences) and manifest["bad_rows"] == 1
    assert manifest["cache_keys"] == {s: gpt2_fits[s].cache_key for s in RAY_SUBJECTS}
    ids = [f"s{i}" for i in range(len(sentences))]
    features = extract_features(tiny_gpt2.model_id, sentences, device="cpu")
    for subject in RAY_SUBJECTS:
        table = read_predictions(str(output), subject).set_index("sentence_id")
        assert table.index.is_unique and sorted(table.index) == sorted(ids)
        got = np.stack(table.loc[ids, "responses"].to_numpy())
        expected = gpt2_fits[subject].predict(features)
        # the stacked float32 map on features batched otherwise: 2·n_units·eps32·max|value|, as in test_corpus's
        # assert_rows_equal_berg; a wrong row or subject is off by ~max|value|
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=2 * features.shape[1] * np.finfo(np.float32).eps * np.abs(expected).max())
