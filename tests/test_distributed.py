"""berg_ray.distributed on a real Ray cluster: fits as Ray tasks, the cache (local and S3), GPU requests, dtypes,
and the corpus pipeline losing a worker node.

One ``cluster_utils.Cluster`` serves the module (head: 2 CPUs; tests add and remove worker nodes). The model is
the session's tiny GPT-2, the data the synthetic Pereira file planted with its own features, PLS uses 5 components.
"""

from __future__ import annotations

import json
import math
import posixpath
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import ray
from support import (
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    clean_ray,
    create_bucket,
    environ,
    free_port,
    list_keys,
    ray_temp_dir,
    remove_tree,
    s3_client,
    s3_environment,
    stop_ray_processes,
    subprocess_env,
)

from berg_ray.distributed import actor_resources, cluster_gpus, fit_subjects, init_ray
from berg_ray.errors import InvalidInputError
from berg_ray.fitting import load_cached
from berg_ray.request import ModelRequest
from berg_ray.neural import load_pereira
from berg_ray.registry import get_spec
from berg_ray.regression import PLSSettings
from berg_ray.store import EncodingModelStore

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # own_ray: starts its own Ray (conftest.py runs it first)

SETTINGS = PLSSettings(n_components=RAY_N_COMPONENTS)


@pytest.fixture(scope="module")
def ray_cluster(moto_server):
    """A private Ray cluster (head with 2 CPUs, own auth token) this process is connected to, from and back to a
    clean Ray state (``clean_ray``); AWS variables point at moto."""
    from ray.cluster_utils import Cluster

    temp_dir = ray_temp_dir()
    with clean_ray(**s3_environment(moto_server)):
        # Cluster() would record its address in /tmp/ray/ray_current_cluster, where any ray.init() on this shared
        # machine would find (and join) it: keep it private.
        with mock.patch("ray._private.utils.write_ray_address"):
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 2, "temp_dir": temp_dir, "include_dashboard": False,
                "dashboard_agent_listen_port": free_port()})  # not Ray's fixed default, 52365
        try:
            init_ray(address=cluster.address)
            yield SimpleNamespace(cluster=cluster, temp_dir=temp_dir)
        finally:
            ray.shutdown()
            cluster.shutdown()
            stop_ray_processes(temp_dir)
            remove_tree(temp_dir)


@pytest.fixture(scope="module")
def assembly(gpt2_synthetic):
    return load_pereira(gpt2_synthetic["path"])


@pytest.fixture(scope="module")
def ray_fits(ray_cluster, tiny_gpt2, gpt2_synthetic, tmp_path_factory):
    """RAY_SUBJECTS fitted through Ray tasks into a fresh local cache: ``models`` and ``cache``."""
    cache = tmp_path_factory.mktemp("ray_cache")
    models = fit_subjects(tiny_gpt2.model_id, list(RAY_SUBJECTS), dataset=gpt2_synthetic["path"], cache=str(cache),
                          n_components=RAY_N_COMPONENTS, device="cpu")
    return SimpleNamespace(models=models, cache=str(cache))


EPS32 = float(np.finfo(np.float32).eps)


def assert_same_fit(model, reference, tolerance=4 * EPS32):
    assert model.subject == reference.subject
    assert model.cache_key == reference.cache_key
    # ``tolerance`` is relative to the values' scale (|r| ≤ 1; predictions of the probe reach ~70): 0 for a fit read
    # back from a store (bit-identical); by default 4·eps32 for a fit in another process, whose features equal ours
    # to float32 rounding — a 1-ulp change of every feature moves cv_r by ≤ 0.5·eps32 and predictions by ≤ 0.9·eps32
    # of their scale (measured); another subject's or component count's fit differs by > 1e-2 of the scale
    np.testing.assert_allclose(model.cv_r, reference.cv_r, rtol=0, atol=tolerance)
    probe = np.random.default_rng(0).standard_normal((16, reference.n_units)).astype(np.float32)
    expected = reference.predict(probe)
    np.testing.assert_allclose(model.predict(probe), expected, rtol=0, atol=tolerance * np.abs(expected).max())
    assert model.voxels["neuroid_id"].tolist() == reference.voxels["neuroid_id"].tolist()


def manifests(cache: str) -> list[Path]:
    return sorted(Path(cache).rglob("manifest.json"))


# ---------------------------------------------------------------------------------------------- parity and caching


def test_ray_fits_equal_in_process_fits(ray_fits, gpt2_fits, gpt2_synthetic):
    assert list(ray_fits.models) == list(RAY_SUBJECTS)
    for subject in RAY_SUBJECTS:
        ray_model, local = ray_fits.models[subject], gpt2_fits[subject]
        assert_same_fit(ray_model, local)
        # and on the real inputs: the tiny model's features of the 384 training sentences
        features = gpt2_synthetic["features"]
        expected = local.predict(features)
        # relative to the scale, 4·eps32 as in assert_same_fit
        np.testing.assert_allclose(ray_model.predict(features), expected, rtol=0,
                                   atol=4 * np.finfo(np.float32).eps * np.abs(expected).max())
        assert ray_model.settings.n_components == RAY_N_COMPONENTS


def test_ray_fits_are_written_to_the_cache(ray_fits, tiny_gpt2, assembly):
    store = EncodingModelStore(ray_fits.cache)
    assert len(manifests(ray_fits.cache)) == len(RAY_SUBJECTS)
    for subject in RAY_SUBJECTS:
        loaded = load_cached(store, ModelRequest.build(tiny_gpt2.model_id), assembly, subject, SETTINGS)
        assert loaded is not None  # sha256 of every file verified on load
        assert_same_fit(loaded, ray_fits.models[subject], tolerance=0)


@pytest.fixture(scope="module")
def raced(ray_fits, tiny_gpt2, assembly, tmp_path_factory):
    """Two drivers (threads of this process, each calling fit_subjects) start at once on a copy of the Ray cache:
    both ask for one cached subject (018) and one new one (289), so both fit 289 and race to save it.

    With 2 CPUs this also pins the fix of a deadlock: both extractor actors used to keep their CPU until the fits
    were done, so the fit tasks never got one.
    """
    cache = tmp_path_factory.mktemp("raced") / "cache"
    shutil.copytree(ray_fits.cache, cache)
    stamps = {m: m.stat().st_mtime_ns for m in manifests(str(cache))}
    start = threading.Barrier(2)

    def drive():
        start.wait()
        # the loaded assembly, not its path: netCDF/HDF5 reads of one file from two threads crash the process
        return fit_subjects(tiny_gpt2.model_id, ["018", "289"], dataset=assembly, cache=str(cache),
                            n_components=RAY_N_COMPONENTS, device="cpu")

    with ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=300) for f in [pool.submit(drive) for _ in range(2)]]
    return SimpleNamespace(cache=str(cache), stamps=stamps, results=results)


def test_cached_subjects_are_loaded_not_refit(raced, ray_fits, tiny_gpt2, gpt2_synthetic, gpt2_fits, monkeypatch):
    first = ray_fits.models
    for result in raced.results:
        assert list(result) == ["018", "289"]
        assert result["018"].fit_seconds == first["018"].fit_seconds  # read from the manifest, not measured
        assert_same_fit(result["018"], gpt2_fits["018"])
    assert {m: m.stat().st_mtime_ns for m in raced.stamps} == raced.stamps  # no cached entry was rewritten

    # everything cached: nothing at all may be submitted to Ray
    stamps = {m: m.stat().st_mtime_ns for m in manifests(raced.cache)}

    def no_ray(*args, **kwargs):
        raise AssertionError("fit_subjects submitted Ray work although every subject was cached")

    monkeypatch.setattr(ray, "remote", no_ray)
    again = fit_subjects(tiny_gpt2.model_id, ["199", "289", "018"], dataset=gpt2_synthetic["path"],
                         cache=raced.cache, n_components=RAY_N_COMPONENTS, device="cpu")
    monkeypatch.undo()
    assert list(again) == ["199", "289", "018"]
    for subject in RAY_SUBJECTS:
        assert again[subject].fit_seconds == first[subject].fit_seconds
    assert again["289"].fit_seconds in {r["289"].fit_seconds for r in raced.results}
    assert {m: m.stat().st_mtime_ns for m in stamps} == stamps


def test_two_drivers_fitting_one_key_leave_one_consistent_entry(raced, tiny_gpt2, assembly):
    entries = [m for m in manifests(raced.cache) if "_289_" in m.parent.name]
    assert len(entries) == 1  # one entry folder, one manifest
    manifest = entries[0]
    listed = {info["name"] for info in json.loads(manifest.read_text())["files"].values()}
    present = {p.name for p in manifest.parent.iterdir()} - {"manifest.json"}
    assert listed <= present
    assert not [name for name in present if ".tmp-" in name]  # no temporary file left behind
    loaded = load_cached(EncodingModelStore(raced.cache), ModelRequest.build(tiny_gpt2.model_id), assembly, "289",
                         SETTINGS)  # verifies every file's sha256 against the manifest
    assert loaded is not None
    for result in raced.results:
        assert_same_fit(result["289"], loaded)
    assert np.isfinite(loaded.cv_r).any() and loaded.n_voxels == len(loaded.voxels)


def test_concurrent_saves_of_one_entry_stay_consistent(gpt2_fits, moto_server, tmp_path):
    """Eight writers save the same key at once, to a folder and to S3: one manifest, every file verified."""
    model = gpt2_fits["018"]
    create_bucket(moto_server, "race")
    for url in (str(tmp_path / "cache"), "s3://race/cache"):
        with environ(**s3_environment(moto_server)):
            stores = [EncodingModelStore(url) for _ in range(8)]
            with ThreadPoolExecutor(8) as pool:
                folders = set(pool.map(lambda store: store.save(model, "tiny"), stores))
            assert len(folders) == 1
            loaded = EncodingModelStore(url).load("tiny", model.subject, model.cache_key, model.synthetic)
        assert_same_fit(loaded, model, tolerance=0)
    assert len(manifests(str(tmp_path / "cache"))) == 1
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp-" in p.name]
    assert sum(key.endswith("/manifest.json") for key in list_keys(moto_server, "race")) == 1


# ------------------------------------------------------------------------------------------------------ GPUs, dtypes


def test_gpu_request_on_a_cpu_cluster_fails_fast(ray_cluster, tiny_gpt2, gpt2_synthetic):
    assert cluster_gpus() == 0
    with pytest.raises(InvalidInputError, match="no GPUs"):
        actor_resources(num_gpus=1)
    with pytest.raises(InvalidInputError, match="no GPUs"):
        actor_resources(device="cuda")
    for bad in (-1, math.nan):
        with pytest.raises(InvalidInputError, match="num_gpus"):
            actor_resources(num_gpus=bad)
    assert actor_resources() == ({"num_gpus": 0.0, "num_cpus": 1.0}, "cpu")
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="no GPUs"):  # refused before any actor waits for a GPU
        fit_subjects(tiny_gpt2.model_id, ["296"], dataset=gpt2_synthetic["path"], cache=None,
                     n_components=RAY_N_COMPONENTS, num_gpus=1)
    assert time.monotonic() - started < 60


def test_fractional_gpus_on_a_node_that_has_one(ray_cluster):
    """A node declaring one GPU (none is needed to declare it): two 0.5-GPU actors share it."""
    cluster = ray_cluster.cluster
    node = cluster.add_node(num_cpus=1, num_gpus=1, temp_dir=ray_cluster.temp_dir)
    try:
        _wait_for(lambda: cluster_gpus() == 1, "the GPU node to register")
        resources, device = actor_resources(num_gpus=0.5, num_cpus=0.5)
        assert resources == {"num_gpus": 0.5, "num_cpus": 0.5} and device == "cuda"
        assert actor_resources(0.5)[0]["num_gpus"] == 0.5
        assert actor_resources(device="auto") == ({"num_gpus": 1.0, "num_cpus": 1.0}, "cuda")  # auto -> the GPU
        assert actor_resources(device="cpu") == ({"num_gpus": 0.0, "num_cpus": 1.0}, "cpu")
        with pytest.raises(InvalidInputError, match="exceeds"):
            actor_resources(num_gpus=2)

        @ray.remote
        class GpuProbe:
            def gpus(self):
                return ray.get_gpu_ids()

        probes = [GpuProbe.options(**resources).remote() for _ in range(2)]
        gpu_ids = ray.get([p.gpus.remote() for p in probes], timeout=120)
        assert [len(ids) for ids in gpu_ids] == [1, 1] and gpu_ids[0] == gpu_ids[1]  # both on the one GPU
        for probe in probes:
            ray.kill(probe)
    finally:
        cluster.remove_node(node)
        _wait_for(lambda: cluster_gpus() == 0, "the GPU node to leave")


def test_dtype_is_checked_before_any_actor_starts(ray_cluster, tiny_gpt2, gpt2_synthetic):
    for dtype, message in (("float16", "needs a GPU"), ("int8", "unknown dtype")):
        started = time.monotonic()
        with pytest.raises(InvalidInputError, match=message):
            fit_subjects(tiny_gpt2.model_id, ["296"], dataset=gpt2_synthetic["path"], cache=None,
                         n_components=RAY_N_COMPONENTS, device="cpu", dtype=dtype)
        assert time.monotonic() - started < 30


def test_bfloat16_extraction_runs_on_cpu(tiny_gpt2, gpt2_synthetic):
    from berg_ray.features import extract_features

    features = extract_features(tiny_gpt2.model_id, gpt2_synthetic["sentences"], device="cpu", dtype="bfloat16")
    fp32 = gpt2_synthetic["features"]
    assert features.dtype == np.float32 and features.shape == fp32.shape
    assert not np.array_equal(features, fp32)  # really computed in bf16 ...
    scale = np.abs(fp32).max()
    # ... to bf16 precision: eps_bf16 = 2^-7 (8-bit significand) per rounding, through three blocks; observed
    # 1.15·eps_bf16·scale, allowed 4·eps_bf16·scale ≈ 3%. A wrong layer or row is off by ~the whole scale.
    np.testing.assert_allclose(features, fp32, rtol=0, atol=4 * 2.0 ** -7 * scale)
    # bf16 noise (~0.4% of the scale) on features spread over ~25% of it: 1 - r ≈ 1e-5 seen; wrong rows give r ≪ 0.99
    assert np.corrcoef(features.ravel(), fp32.ravel())[0, 1] > 0.999


# ------------------------------------------------------------------------------------------------------------ S3


#: a writer that saves one cached model to another store and stops (prints READY, sleeps) just before the manifest
_STOPPING_WRITER = """
import sys, time
from berg_ray.fsio import FileRoot
from berg_ray.store import EncodingModelStore
source, target, name, subject, key = sys.argv[1:6]
model = EncodingModelStore(source).load(name, subject, key, True)
write = FileRoot.write
def stopping_write(self, path, data):
    if path.endswith("manifest.json"):
        print("READY", flush=True)
        time.sleep(600)
    write(self, path, data)
FileRoot.write = stopping_write
EncodingModelStore(target).save(model, name)
"""


@pytest.fixture(scope="module")
def killed_writer(ray_fits, tiny_gpt2, gpt2_synthetic, assembly, moto_server):
    """A process saving a model to S3 is SIGKILLed between its data files and its manifest (the server stays up);
    then fit_subjects (Ray) is asked for that subject with the same S3 cache."""
    create_bucket(moto_server, "killed-writer")
    url = "s3://killed-writer/cache"
    spec = get_spec(tiny_gpt2.model_id)
    model = ray_fits.models["018"]
    writer = subprocess.Popen(
        [sys.executable, "-c", _STOPPING_WRITER, ray_fits.cache, url, spec.name, "018", model.cache_key],
        env=subprocess_env(**s3_environment(moto_server)), stdout=subprocess.PIPE, text=True)
    try:
        ready = writer.stdout.readline().strip()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    left = list_keys(moto_server, "killed-writer")
    visible = load_cached(EncodingModelStore(url), ModelRequest.build(spec), assembly, "018", SETTINGS)
    refit = fit_subjects(spec.model_id, ["018"], dataset=gpt2_synthetic["path"], cache=url,
                         n_components=RAY_N_COMPONENTS, device="cpu")
    return SimpleNamespace(url=url, ready=ready, left=left, visible=visible, refit=refit["018"],
                           keys=list_keys(moto_server, "killed-writer"))


def test_s3_writer_killed_before_its_manifest_leaves_no_visible_entry(killed_writer):
    assert killed_writer.ready == "READY", "the writer did not reach its manifest"
    kinds = sorted(posixpath.basename(k).split("-")[0] for k in killed_writer.left)
    assert kinds == ["arrays", "voxels"]  # its data files are there, its manifest is not ...
    assert killed_writer.visible is None  # ... so the half-written entry does not exist for readers


def test_s3_cache_is_completed_by_the_fit_tasks_and_then_loaded(killed_writer, ray_fits, tiny_gpt2, gpt2_synthetic,
                                                                assembly, moto_server):
    model = ray_fits.models["018"]
    assert killed_writer.refit.fit_seconds != model.fit_seconds  # fitted again (by a Ray task), not loaded
    assert_same_fit(killed_writer.refit, model)
    keys = killed_writer.keys
    assert sum(k.endswith("/manifest.json") for k in keys) == 1
    assert len(keys) == 3  # manifest + the same content-named arrays and voxels files the killed writer left
    spec = get_spec(tiny_gpt2.model_id)
    loaded = load_cached(EncodingModelStore(killed_writer.url), ModelRequest.build(spec), assembly, "018", SETTINGS)
    assert_same_fit(loaded, killed_writer.refit, tolerance=0)  # every file's sha256 verified
    again = fit_subjects(spec.model_id, ["018"], dataset=gpt2_synthetic["path"], cache=killed_writer.url,
                         n_components=RAY_N_COMPONENTS, device="cpu")
    assert again["018"].fit_seconds == killed_writer.refit.fit_seconds  # now loaded from S3
    assert list_keys(moto_server, "killed-writer") == keys


def _start_moto(port: int) -> subprocess.Popen:
    from botocore.exceptions import BotoCoreError, ClientError

    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"

    def up():
        try:
            s3_client(endpoint).list_buckets()
            return True
        except (BotoCoreError, ClientError):
            assert server.poll() is None, "moto server exited"
            return False

    _wait_for(up, "moto to listen", timeout=60)
    return server


def test_s3_server_restart_during_a_save(gpt2_fits, tmp_path):
    """A moto server process is killed just before the manifest PUT and restarted: the save fails (it does not
    hang or claim success), no partial entry is visible afterwards, and the retried save is complete.

    moto keeps objects in memory, so its restart also forgets the data files and the bucket (recreated here); the
    durable case — data files kept, manifest missing — is the killed-writer test above.
    """
    from berg_ray.fsio import FileRoot

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "us-east-1"}, "config_kwargs": {"retries": {"max_attempts": 2}}}
    model = gpt2_fits["199"]
    server = _start_moto(port)
    try:
        create_bucket(endpoint, "restart")
        store = EncodingModelStore("s3://restart/cache", storage_options=options)
        write = FileRoot.write
        written = []

        def write_then_lose_the_server(self, path, data):
            if path.endswith("manifest.json"):
                server.kill()
                server.wait(30)
            write(self, path, data)
            written.append(posixpath.basename(path))

        with mock.patch.object(FileRoot, "write", write_then_lose_the_server):
            started = time.monotonic()
            with pytest.raises(Exception) as failure:
                store.save(model, "tiny")
        assert time.monotonic() - started < 120
        assert not isinstance(failure.value, AssertionError)
        assert [name.split("-")[0] for name in written] == ["arrays", "voxels"]  # the manifest never landed

        server = _start_moto(port)
        create_bucket(endpoint, "restart")
        assert store.load("tiny", model.subject, model.cache_key, model.synthetic) is None
        store.save(model, "tiny")  # the retry
        loaded = EncodingModelStore("s3://restart/cache", storage_options=options).load(
            "tiny", model.subject, model.cache_key, model.synthetic)
        assert_same_fit(loaded, model, tolerance=0)
        assert sum(k.endswith("/manifest.json") for k in list_keys(endpoint, "restart")) == 1
    finally:
        server.kill()
        server.wait(30)


# -------------------------------------------------------------------------------------------- losing a worker node


def test_corpus_keeps_every_row_once_when_a_worker_node_is_lost(ray_cluster, ray_fits, tiny_gpt2, gpt2_synthetic,
                                                               gpt2_fits, tmp_path):
    """Two worker nodes run the extractor pool; one is removed while parts are being encoded. Ray restarts its
    actor on the surviving node and retries its part; deterministic part files make the retry an overwrite."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from berg_ray.corpus import encode_corpus, read_predictions
    from berg_ray.features import extract_features

    cluster = ray_cluster.cluster
    sentences = [f"{s} Item {i}." for i, s in enumerate(gpt2_synthetic["sentences"] * 6)][:2000]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences) + "\n")
    output = tmp_path / "out"
    rows_per_part = 25
    n_parts = math.ceil(len(sentences) / rows_per_part)

    @ray.remote
    class Placeholder:
        def ready(self):
            return True

    # Fill the head's CPUs so that the pool's actors must run on the worker nodes.
    head = Placeholder.options(num_cpus=2, scheduling_strategy=NodeAffinitySchedulingStrategy(
        cluster.head_node.node_id, soft=False)).remote()
    ray.get(head.ready.remote(), timeout=120)
    workers = [cluster.add_node(num_cpus=1, temp_dir=ray_cluster.temp_dir) for _ in range(2)]
    removal = {}

    def remove_a_busy_worker():
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and "stop" not in removal:
            markers = list((output / "_parts").glob("*.json"))
            if len(markers) >= 3:
                available = ray._private.state.available_resources_per_node()
                # (Ray leaves a resource out of the map when none of it is free)
                busy = [w for w in workers if available.get(w.node_id, {}).get("CPU", 0.0) < 1.0]
                victim = (busy or workers)[0]
                removal.update(markers=len(markers), had_actor=bool(busy))
                cluster.remove_node(victim)
                removal["node"] = victim
                return
            time.sleep(0.05)

    remover = threading.Thread(target=remove_a_busy_worker, daemon=True)
    remover.start()
    try:
        manifest = encode_corpus(tiny_gpt2.model_id, str(corpus), str(output), subjects=list(RAY_SUBJECTS),
                                 dataset=gpt2_synthetic["path"], cache=ray_fits.cache, n_components=RAY_N_COMPONENTS,
                                 device="cpu", num_extractors=2, num_cpus_per_extractor=0.5,
                                 rows_per_part=rows_per_part, show_progress=False,
                                 shared_output=True)  # every node of this cluster runs on this machine's disk
    finally:
        removal["stop"] = True
        remover.join(120)
        ray.kill(head)
        for worker in workers:
            if worker is not removal.get("node"):
                cluster.remove_node(worker)

    assert "node" in removal, "no worker node was removed"
    assert removal["had_actor"], "the removed node ran no extractor"
    assert removal["markers"] < n_parts, "the corpus was finished before the node was removed"
    assert manifest["n_parts"] == n_parts
    assert manifest["sentences_encoded"] == len(sentences) and manifest["bad_rows"] == 0
    features = extract_features(tiny_gpt2.model_id, sentences, device="cpu")
    for subject in RAY_SUBJECTS:
        table = read_predictions(str(output), subject)
        assert len(table) == len(sentences)  # none lost ...
        assert table["sentence_id"].is_unique  # ... none duplicated
        assert set(table["sentence_id"]) == {f"corpus.txt:{i}" for i in range(len(sentences))}
        rows = table["sentence_id"].str.rsplit(":", n=1).str[1].astype(int).to_numpy()
        expected = gpt2_fits[subject].predict(features)[rows]
        # the stacked float32 map on features batched otherwise: 2·n_units·eps32·max|value|, as in test_corpus's
        # assert_rows_equal_berg; a lost, duplicated or misplaced row is off by ~max|value|
        np.testing.assert_allclose(np.stack(table["responses"].to_numpy()), expected, rtol=0,
                                   atol=2 * features.shape[1] * np.finfo(np.float32).eps * np.abs(expected).max())


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_ray_fits_of_another_dataset_equal_in_process_fits(ray_cluster, tiny_gpt2, gpt2_standins, tmp_path):
    """A Blank2014 stand-in on Ray: its context (each fragment with its story so far), its splits (GroupKFold by
    story, seed 1234) and its neuroids travel to the actor and the fit tasks; the fits equal the in-process ones and
    land in that dataset's cache folder (written by the driver)."""
    from berg_ray import BERG

    path = gpt2_standins["Blank2014.fROI"]["path"]
    local = BERG(tmp_path / "local", dataset=path)
    on_ray = BERG(tmp_path / "ray", dataset=path)
    subjects = ["061", "098"]
    expected = local.fit(local.request(tiny_gpt2.model_id, device="cpu"), subjects, use_ray=False)
    got = on_ray.fit(on_ray.request(tiny_gpt2.model_id, device="cpu"), subjects, use_ray=True)
    for subject in subjects:
        assert got[subject].context == "passage" and got[subject].dataset == "Blank2014.fROI"
        assert_same_fit(got[subject], expected[subject])
    entries = manifests(str(tmp_path / "ray"))
    assert len(entries) == 2 and all("train_dataset-synthetic-blank2014-froi" in str(e) for e in entries)
