"""Benchmark: berg-ray on one CUDA GPU — forward throughput by model size, precision and batch size, and the corpus
pipeline end to end with one and two actors per GPU.

1. Forward (``--sentences``, default 16,384 short English sentences of bench/workload.py, context "sentence"):
   sentences/s of ``FeatureExtractor.extract`` (tokenize, plan, forward pass up to the read layer, read-out copied
   back to the CPU) for random-init GPT-2s of distilgpt2's and gpt2's sizes (6 and 12 blocks × 768, 12 heads,
   1,024 positions, 50,257-token embedding; ``berg_ray.offline_models.build_gpt2``), read at their last block, in
   float32, bfloat16 and float16, at several batch sizes. Beside it, the forward pass alone (the same padded batches, pre-tokenized
   and already on the GPU, through the model's blocks; CUDA-synchronised) with its achieved TFLOP/s — the
   difference is the CPU side of the extractor (tokenizer, planning, read-out). Anchors: GPT-2 small is ~0.25 GFLOP
   per token, so an H100/H200 bounds it at tens of thousands of sentences/s; sentence-transformers reports 2,800
   sentences/s for a 12 × 768 model on a V100.
2. Corpus (``--corpus-sentences``, default 50,000): :func:`berg_ray.corpus.encode_corpus` with the gpt2-sized model,
   ``dtype="auto"`` (bfloat16 on a GPU), all nine subjects (12,155 voxels, ~48.6 kB of float32 output per
   sentence), parts of 2,048 rows on a local Ray: one actor with ``num_gpus=1``, two actors sharing the GPU
   (``num_gpus=0.5`` each: one's forward pass overlaps the other's CPU work — prediction, Parquet encoding,
   writing), and one actor with 4 CPUs. Encoding models are fitted first on a synthetic Pereira dataset (random
   planted features; not timed). Reported: wall time, call → first part started, steady rate while all actors
   encode (from the part markers), seconds per part.

Usage::

    python bench/gpu.py                  # one CUDA GPU: well under 8 minutes on an H100/H200
    python bench/gpu.py --quick          # CPU smoke run (tiny model, fp32/bf16, a few hundred sentences): seconds

Without a CUDA GPU (and without ``--quick``) it prints why and exits with status 0, measuring nothing.
Options: ``--sentences N``, ``--batch-sizes 32,128,512``, ``--dtypes float32,bfloat16,float16``,
``--corpus-sentences N``, ``--subjects all|018,199``, ``--skip-forward``, ``--skip-corpus``, ``--budget-s S`` (corpus
variants that would start after S seconds are skipped and reported), ``--workdir DIR``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import bench  # noqa: E402,F401  (sets the offline environment before any berg_ray import)
import berg_ray  # noqa: E402,F401  (its import sets BS_INSTALL_DEPENDENCIES=no before any brainscore import)
from bench.parts import part_timeline  # noqa: E402
from bench.workload import build_model, prepare, write_corpus  # noqa: E402

logger = logging.getLogger("bench.gpu")

MODELS: dict[str, dict[str, Any]] = {
    "distilgpt2-size": {"n_layer": 6, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
    "gpt2-size": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
}
QUICK_MODELS: dict[str, dict[str, Any]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64},
}
CORPUS_MODEL, QUICK_CORPUS_MODEL = "gpt2-size", "tiny"
#: (label, encode_corpus arguments); quick: the same shapes on CPU
CORPUS_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("1 actor, num_gpus=1, 1 CPU", {"num_extractors": 1, "num_gpus": 1.0, "num_cpus_per_extractor": 1}),
    ("2 actors on the GPU, num_gpus=0.5, 1 CPU each", {"num_extractors": 2, "num_gpus": 0.5,
                                                       "num_cpus_per_extractor": 1}),
    ("1 actor, num_gpus=1, 4 CPUs", {"num_extractors": 1, "num_gpus": 1.0, "num_cpus_per_extractor": 4}),
]
QUICK_CORPUS_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("1 actor (CPU stand-in for num_gpus=1)", {"num_extractors": 1, "num_gpus": 0.0, "num_cpus_per_extractor": 1}),
    ("2 actors (CPU stand-in for num_gpus=0.5)", {"num_extractors": 2, "num_gpus": 0.0,
                                                  "num_cpus_per_extractor": 1}),
]
DEFAULTS = {"sentences": 16_384, "batch_sizes": "32,128,512", "dtypes": "float32,bfloat16,float16",
            "corpus_sentences": 50_000, "subjects": "all", "rows_per_part": 2048}
QUICK = {"sentences": 64, "batch_sizes": "8,32", "dtypes": "float32,bfloat16", "corpus_sentences": 200,
         "subjects": "018,199", "rows_per_part": 50}


# --------------------------------------------------------------------------------------------------------------
# Forward throughput


def block_flops(lengths: list[int], dims: dict[str, Any]) -> float:
    """FLOPs of all blocks over sequences of these lengths: per block and token 24·d² (QKV, output, MLP 4×) plus
    4·L·d for attention scores and their product with the values."""
    d, blocks = dims["n_embd"], dims["n_layer"]
    lengths_ = np.asarray(lengths, dtype=np.float64)
    return float(blocks * np.sum(24 * lengths_ * d * d + 4 * lengths_ ** 2 * d))


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(extractor, sentences: list[str], batch_size: int, repeats: int = 2) -> tuple[float, float]:
    """Seconds for the model's blocks over ``sentences`` (pre-tokenized, sorted by length, padded batches already on
    the device; best of ``repeats``) and their FLOPs: the GPU's share of :meth:`FeatureExtractor.extract`."""
    import torch

    from berg_ray.features import padded_inputs

    lm = extractor.lm
    ids = lm.tokenizer(sentences, truncation=True, max_length=lm.max_length)["input_ids"]
    ids = sorted(ids, key=len, reverse=True)
    batches = [padded_inputs(lm, ids[i:i + batch_size]) for i in range(0, len(ids), batch_size)]
    body = lm.model.transformer  # GPT-2's blocks without the LM head (the extractor stops at the last block too)
    best = float("inf")
    with torch.inference_mode():
        body(**batches[0], use_cache=False)  # warm-up (kernels, allocator)
        for _ in range(repeats):
            synchronize(lm.device)
            started = time.perf_counter()
            for inputs in batches:
                body(**inputs, use_cache=False)
            synchronize(lm.device)
            best = min(best, time.perf_counter() - started)
    return best, block_flops([len(s) for s in ids], {"n_layer": len(body.h), "n_embd": body.config.n_embd})


def run_forward(args: argparse.Namespace, work: Path, device: str) -> list[dict[str, Any]]:
    from berg_ray.features import FeatureExtractor

    # the corpus bench's sentences: the random models' tokenizer was trained on their words, so they take about as
    # many tokens as real GPT-2 BPE gives short English sentences (~1.3 per word)
    path = write_corpus(work / f"forward-{args.sentences}.txt", args.sentences, seed=1)
    sentences = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for name, dims in args.models.items():
        spec = build_model(work / f"model-{name}", dims)
        reference = None
        for dtype in args.dtypes:
            started = time.perf_counter()
            extractor = FeatureExtractor(spec, device=device, dtype=dtype, batch_size=max(args.batch_sizes))
            load_s = time.perf_counter() - started
            layer = spec.layer
            check = extractor.extract(sentences[:256], [layer])[layer]  # also the warm-up
            if dtype == "float32":
                reference = check
            difference = float("nan") if reference is None else \
                float(np.abs(check - reference).max() / (np.abs(reference).max() or 1.0))
            tokens = [len(t) for t in extractor.lm.tokenizer(sentences[:1000])["input_ids"]]
            for batch_size in args.batch_sizes:
                extractor.extract(sentences[: 2 * batch_size], [layer], batch_size=batch_size)  # warm-up
                synchronize(extractor.lm.device)
                started = time.perf_counter()
                extractor.extract(sentences, [layer], batch_size=batch_size)
                synchronize(extractor.lm.device)
                seconds = time.perf_counter() - started
                body_s, flops = forward_only(extractor, sentences, batch_size)
                rows.append({"model": name, "dtype": dtype, "batch_size": batch_size, "seconds": seconds,
                             "rate": len(sentences) / seconds, "forward_rate": len(sentences) / body_s,
                             "tflops": flops / body_s / 1e12, "load_s": load_s, "difference": difference,
                             "tokens": statistics.mean(tokens)})
                logger.info("%s %s batch %d: %.0f sentences/s (forward alone %.0f, %.1f TFLOP/s)", name, dtype,
                            batch_size, rows[-1]["rate"], rows[-1]["forward_rate"], rows[-1]["tflops"])
            del extractor
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------------------------
# Corpus end to end


def run_corpus(args: argparse.Namespace, work: Path, started_all: float) -> tuple[list[dict[str, Any]], list[str]]:
    from berg_ray.corpus import encode_corpus
    from berg_ray.distributed import fit_subjects

    paths = prepare(work)
    spec = build_model(work / f"model-{args.corpus_model}", args.models_all[args.corpus_model])
    input_path = write_corpus(work / f"corpus-{args.corpus_sentences}.txt", args.corpus_sentences, seed=0)
    subjects = "all" if args.subjects == "all" else args.subjects.split(",")
    gpu = args.variants[0][1]["num_gpus"] > 0
    started = time.perf_counter()
    fit_subjects(spec, subjects, dataset=paths["dataset"], cache=paths["cache"], dtype="auto",
                 num_gpus=1.0 if gpu else 0.0, device="auto" if gpu else "cpu")
    fit_s = time.perf_counter() - started
    logger.info("encoding models of %s fitted in %.1f s", spec.model_id, fit_s)
    rows, notes = [], [f"encoding models ({args.subjects} subjects) fitted beforehand in {fit_s:.1f} s (not timed)"]
    for label, options in args.variants:
        if time.perf_counter() - started_all > args.budget_s:
            notes.append(f"skipped {label!r}: the run passed --budget-s {args.budget_s:g}")
            continue
        out = work / "out-corpus"
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.time()
        started = time.perf_counter()
        manifest = encode_corpus(spec, input=str(input_path), output=str(out), subjects=subjects,
                                 dataset=paths["dataset"], cache=paths["cache"], dtype="auto",
                                 device="auto" if gpu else "cpu", rows_per_part=args.rows_per_part,
                                 show_progress=False, **options)
        seconds = time.perf_counter() - started
        timeline = part_timeline(str(out), t0, time.time(), options["num_extractors"])
        n_parts = manifest["n_parts"]
        rows.append({"label": label, "seconds": seconds, "rate": manifest["sentences_encoded"] / seconds,
                     "before": timeline["before"], "steady": timeline["steady"], "part_s": timeline["busy"] / n_parts,
                     "dtype": manifest["dtype"], "parts": n_parts,
                     "mb_per_s": sum(os.path.getsize(p) for p in out.rglob("*.parquet")) / 2**20 / seconds})
        logger.info("%s: %.1f s, steady %.0f sentences/s", label, seconds, timeline["steady"])
        shutil.rmtree(out, ignore_errors=True)
    return rows, notes


# --------------------------------------------------------------------------------------------------------------
# Main


def no_gpu_message() -> str | None:
    """Why this machine cannot run the GPU benchmark, or None when a CUDA GPU is visible."""
    import torch

    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return (f"bench/gpu.py: no CUDA GPU is visible to torch {torch.__version__} ({build}); nothing was measured. "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or use --quick for the CPU smoke run.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: tiny model, fp32/bf16, few sentences")
    parser.add_argument("--sentences", type=int, default=None)
    parser.add_argument("--batch-sizes", default=None)
    parser.add_argument("--dtypes", default=None)
    parser.add_argument("--corpus-sentences", type=int, default=None)
    parser.add_argument("--subjects", default=None, help="'all' or comma-separated subject ids")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-corpus", action="store_true")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="corpus variants that would start after this many seconds are skipped (default "
                             "%(default)s: the whole run stays under 8 minutes)")
    parser.add_argument("--workdir", default=None, help="keep models and the encoding-model cache here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("berg_ray", "ray", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.quick:
        message = no_gpu_message()
        if message is not None:
            print(message)
            return 0
    chosen = QUICK if args.quick else DEFAULTS
    args.sentences = args.sentences or chosen["sentences"]
    args.batch_sizes = [int(b) for b in (args.batch_sizes or chosen["batch_sizes"]).split(",")]
    args.dtypes = (args.dtypes or chosen["dtypes"]).split(",")
    args.corpus_sentences = args.corpus_sentences or chosen["corpus_sentences"]
    args.subjects = args.subjects or chosen["subjects"]
    args.rows_per_part = chosen["rows_per_part"]
    args.models_all = QUICK_MODELS if args.quick else MODELS
    args.models = args.models_all
    args.corpus_model = QUICK_CORPUS_MODEL if args.quick else CORPUS_MODEL
    args.variants = QUICK_CORPUS_VARIANTS if args.quick else CORPUS_VARIANTS
    device = "cpu" if args.quick else "cuda"

    import ray
    import torch

    from berg_ray.precision import auto_dtype, cpu_has_native_bf16

    started_all = time.perf_counter()
    work_ctx = tempfile.TemporaryDirectory(prefix="bench-gpu-") if args.workdir is None else None
    work = Path(args.workdir or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    forward_rows: list[dict[str, Any]] = []
    corpus_rows: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        if not args.skip_forward:
            forward_rows = run_forward(args, work, device)
        if not args.skip_corpus:
            ray.init(address="local", num_cpus=2 if args.quick else os.cpu_count(),
                     num_gpus=0 if args.quick else torch.cuda.device_count(), include_dashboard=False,
                     logging_level=logging.WARNING)
            ray.data.DataContext.get_current().enable_progress_bars = False
            try:
                corpus_rows, notes = run_corpus(args, work, started_all)
            finally:
                ray.shutdown()
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
    total = time.perf_counter() - started_all

    # ---------------- report
    where = "CPU (--quick smoke run: the numbers only show that every step runs)" if args.quick else \
        f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    print()
    print(f"# bench/gpu.py — {where}; torch {torch.__version__}, CUDA {torch.version.cuda}, ray {ray.__version__}; "
          f"{os.cpu_count()} CPUs (native bf16: {cpu_has_native_bf16()}); dtype 'auto' here: "
          f"{auto_dtype(device)}; {total:.0f} s in all")
    if forward_rows:
        print()
        print(f"## Forward: {args.sentences:,} sentences (context 'sentence', ~{forward_rows[0]['tokens']:.1f} tokens "
              "each), read at the last block")
        print()
        print("| model | dtype | batch | sentences/s (FeatureExtractor.extract) | forward alone sentences/s | "
              "forward TFLOP/s | max rel. Δ vs float32 (256 sentences) | load s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in forward_rows:
            print(f"| {r['model']} | {r['dtype']} | {r['batch_size']} | {r['rate']:,.0f} | {r['forward_rate']:,.0f} | "
                  f"{r['tflops']:.3g} | {r['difference']:.1e} | {r['load_s']:.1f} |")
        best = max(forward_rows, key=lambda r: r["rate"])
        print()
        print(f"- fastest: {best['model']} {best['dtype']} batch {best['batch_size']}: {best['rate']:,.0f} "
              f"sentences/s (forward alone {best['forward_rate']:,.0f})")
    if corpus_rows or notes:
        print()
        print(f"## Corpus end to end: {args.corpus_sentences:,} sentences, {args.corpus_model} model, dtype 'auto', "
              f"subjects {args.subjects}, parts of {args.rows_per_part} rows")
        print()
        print("| variant | dtype | wall s | sentences/s end to end | call → first part s | steady sentences/s | "
              "s per part | output MB/s |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in corpus_rows:
            print(f"| {r['label']} | {r['dtype']} | {r['seconds']:.1f} | {r['rate']:,.0f} | {r['before']:.1f} | "
                  f"{r['steady']:,.0f} | {r['part_s']:.2f} | {r['mb_per_s']:.0f} |")
        print()
        for note in notes:
            print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
