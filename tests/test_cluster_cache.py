"""A local cache folder on a Ray cluster of two nodes (issue 16, section 5): every entry lands where the driver
looks, never on the node that ran the fit.

The cluster is a real ``ray.cluster_utils.Cluster``: a head without CPUs (the driver's node) and one worker node
with 2 CPUs, started from another working folder. Both run on this machine, so "the other node's disk" is the
worker's own working folder: a relative cache path (``berg_dir``, the default) resolves there on the worker and
in the driver's folder on the driver. Every extractor actor and fit task has to run on the worker node.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import ray
from support import RAY_N_COMPONENTS, RAY_SUBJECTS, clean_ray, free_port, ray_temp_dir, remove_tree, stop_ray_processes

from berg_ray.distributed import fit_subjects, init_ray
from berg_ray.fitting import load_cached
from berg_ray.neural import load_pereira
from berg_ray.regression import PLSSettings
from berg_ray.request import ModelRequest
from berg_ray.store import EncodingModelStore

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # a two-node cluster, a model loaded on it twice: about 40 s

SETTINGS = PLSSettings(n_components=RAY_N_COMPONENTS)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The head (0 CPUs) started from ``driver``, the worker node (2 CPUs) from ``worker``; this process is
    connected to the cluster."""
    from ray.cluster_utils import Cluster

    driver, worker = tmp_path_factory.mktemp("driver"), tmp_path_factory.mktemp("worker")
    temp_dir = ray_temp_dir()
    here = os.getcwd()
    with clean_ray():
        try:
            os.chdir(driver)
            with mock.patch("ray._private.utils.write_ray_address"):  # keep the cluster private (no address file)
                cluster = Cluster(initialize_head=True, head_node_args={
                    "num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False,
                    "dashboard_agent_listen_port": free_port()})
            os.chdir(worker)  # the worker node's processes (raylet, workers) start in its own folder
            node = cluster.add_node(num_cpus=2, temp_dir=temp_dir)
        finally:
            os.chdir(here)
        try:
            init_ray(address=cluster.address)
            # the premise of every test here: work lands on the worker node, where relative paths resolve elsewhere
            def where() -> tuple[str, str]:  # (a local function: Ray ships it by value, not by module name)
                return ray.get_runtime_context().get_node_id(), os.getcwd()

            node_id, cwd = ray.get(ray.remote(where).options(num_cpus=1).remote())
            assert node_id == node.node_id and Path(cwd).resolve() == worker.resolve()
            yield SimpleNamespace(cluster=cluster, node=node, driver=driver, worker=worker)
        finally:
            ray.shutdown()
            cluster.shutdown()
            stop_ray_processes(temp_dir)
            remove_tree(temp_dir)


def _manifests(folder: Path) -> list[Path]:
    return sorted(folder.rglob("manifest.json"))


def test_fit_subjects_writes_a_local_cache_on_the_driver(two_nodes, tiny_gpt2, gpt2_synthetic, monkeypatch):
    monkeypatch.chdir(two_nodes.driver)
    subject = RAY_SUBJECTS[0]
    models = fit_subjects(tiny_gpt2.model_id, [subject], dataset=gpt2_synthetic["path"], cache="berg_dir",
                          n_components=RAY_N_COMPONENTS, device="cpu", dtype="float32")
    assert _manifests(two_nodes.worker) == []
    entries = _manifests(two_nodes.driver / "berg_dir")
    assert len(entries) == 1 and f"_{subject}_pereira384_" in entries[0].parent.name
    # the next run finds it: the same fit, read back from the driver's cache
    request = ModelRequest.build(tiny_gpt2.model_id, context="sentence", dtype="float32", device="cpu")
    cached = load_cached(EncodingModelStore("berg_dir"), request, load_pereira(gpt2_synthetic["path"]), subject,
                         SETTINGS)
    assert cached is not None and cached.cache_key == models[subject].cache_key
    assert (cached.cv_r == models[subject].cv_r).all()


def test_sweep_writes_a_local_fit_cache_on_the_driver(two_nodes, tiny_gpt2, gpt2_synthetic, monkeypatch):
    from berg_ray.sweep import run_sweep

    monkeypatch.chdir(two_nodes.driver)
    subject = RAY_SUBJECTS[1]
    table = run_sweep([tiny_gpt2.model_id], subjects=[subject], dataset=gpt2_synthetic["path"],
                      cache="sweep_cache", out="sweep_out", n_components=RAY_N_COMPONENTS, device="cpu",
                      dtype="float32", plots=False)
    assert (table["status"] == "ok").all() and len(table) == 1
    assert _manifests(two_nodes.worker) == []
    entries = _manifests(two_nodes.driver / "sweep_cache")
    assert len(entries) == 1 and f"_{subject}_pereira384_" in entries[0].parent.name
    again = run_sweep([tiny_gpt2.model_id], subjects=[subject], dataset=gpt2_synthetic["path"],
                      cache="sweep_cache", out="sweep_out_2", n_components=RAY_N_COMPONENTS, device="cpu",
                      dtype="float32", plots=False)
    assert again.attrs["run"]["from_cache"] == 1 and again.attrs["run"]["computed"] == 0


def test_encode_corpus_refuses_a_local_output_on_two_nodes_unless_shared(two_nodes, tiny_gpt2, gpt2_synthetic,
                                                                         tmp_path, monkeypatch):
    """Its actors would write the parts on the worker node's disk: refused before anything is written, unless the
    caller says every node mounts the folder (here both nodes share this machine's disk, so that run completes)."""
    from berg_ray.corpus import encode_corpus
    from berg_ray.errors import InvalidInputError

    monkeypatch.chdir(two_nodes.driver)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{s}\n" for s in gpt2_synthetic["sentences"][:5]))
    options = dict(subjects=[RAY_SUBJECTS[0]], dataset=gpt2_synthetic["path"], cache=str(tmp_path / "cache"),
                   n_components=RAY_N_COMPONENTS, device="cpu", dtype="float32", num_cpus_per_extractor=1,
                   show_progress=False)
    with pytest.raises(InvalidInputError, match=r"local folder, but this Ray cluster has 2 nodes.*s3://"):
        encode_corpus(tiny_gpt2.model_id, str(corpus), "out", **options)
    assert not (two_nodes.driver / "out").exists() and not (two_nodes.worker / "out").exists()
    manifest = encode_corpus(tiny_gpt2.model_id, str(corpus), "out", shared_output=True, **options)
    assert manifest["sentences_encoded"] == 5 and manifest["bad_rows"] == 0
    parts = sorted((two_nodes.driver / "out" / "predictions").rglob("part-*.parquet"))
    assert parts and not (two_nodes.worker / "out").exists()
