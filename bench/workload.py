"""Bench inputs: deterministic English sentences, random-init GPT-2 models, the synthetic Pereira dataset and the
cached encoding models every corpus run starts from (bench/corpus.py, bench/gpu.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

_SUBJ = ["The old farmer", "A young doctor", "The small village", "My neighbour", "The river", "A famous painter",
         "The museum", "Our teacher", "The red train", "A careful student", "The ancient castle", "The city council",
         "A tired musician", "The northern forest", "The quiet library", "A local baker"]
_VERB = ["visited", "described", "repaired", "painted", "ignored", "protected", "crossed", "discovered",
         "welcomed", "studied", "remembered", "photographed"]
_OBJ = ["the broken bridge", "a letter from abroad", "the crowded market", "an unusual bird", "the wooden boat",
        "a map of the coast", "the empty station", "a box of old tools", "the garden behind the school",
        "a song about the sea"]
_TAIL = ["last summer", "before the storm arrived", "with great care", "early in the morning",
         "after a long journey", "during the winter festival", "for the first time in years",
         "while everyone else was asleep", "near the harbour", "in the afternoon"]


def write_corpus(path: Path, n: int, seed: int = 0) -> Path:
    """``n`` English sentences of 6–14 words, one per line (deterministic; repeats allowed beyond 16,000)."""
    rng = np.random.default_rng(seed)
    picks = [rng.integers(len(words), size=n) for words in (_SUBJ, _VERB, _OBJ, _TAIL)]
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            handle.write(f"{_SUBJ[picks[0][i]]} {_VERB[picks[1][i]]} {_OBJ[picks[2][i]]} {_TAIL[picks[3][i]]}.\n")
    return path


def build_model(folder: Path, dims: dict[str, int]):
    """A random-init GPT-2 in ``folder`` (built once) and its ModelSpec, read at the last block."""
    from berg_ray.offline_models import build_gpt2
    from berg_ray.registry import ModelSpec

    if not (folder / "config.json").exists():
        corpus = [f"{s} {v} {o} {t}." for s in _SUBJ for v in _VERB[:3] for o in _OBJ[:3] for t in _TAIL[:2]]
        build_gpt2(folder, corpus=corpus, seed=0, **dims)
    return ModelSpec(f"bench-gpt2-{dims['n_layer']}x{dims['n_embd']}", str(folder), f"transformer.h.{dims['n_layer'] - 1}")


def prepare(work: Path) -> dict[str, Any]:
    """Synthetic dataset (random planted features), the two models, and their cached encoding models."""
    from berg_ray.synthetic import write_synthetic_pereira

    dataset = work / "synthetic_pereira.nc"
    if not dataset.exists():
        features = np.random.default_rng(0).standard_normal((384, 64)).astype(np.float32)
        write_synthetic_pereira(dataset, features, seed=0, planted_model="random-normal-64")
    return {"dataset": str(dataset), "cache": str(work / "cache"),
            "speed_model": str(work / "model-speed"), "memory_model": str(work / "model-memory")}


def fit_cache(spec, dataset: str, cache: str, subjects: Any) -> float:
    """Fit (or find) the encoding models of ``spec`` in ``cache`` with berg_ray's Ray path; returns seconds."""
    from berg_ray.distributed import fit_subjects

    started = time.perf_counter()
    fit_subjects(spec, subjects, dataset=dataset, cache=cache, device="cpu")
    return time.perf_counter() - started


def split_corpus(path: Path, n: int) -> list[Path]:
    """``path`` cut into ``n`` consecutive files of (nearly) equal line counts."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    step = -(-len(lines) // n)
    pieces = []
    for k in range(n):
        piece = path.with_name(f"{path.stem}-{k + 1}of{n}{path.suffix}")
        piece.write_text("".join(lines[k * step:(k + 1) * step]), encoding="utf-8")
        pieces.append(piece)
    return pieces
