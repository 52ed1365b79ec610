"""Benchmark: the Ray Data corpus pipeline vs a plain single-process loop, and its memory curve.

1. Overhead (``--speed-sentences``, default 20,000): :func:`berg_ray.corpus.encode_corpus` (Ray Data, a pool of
   ``PartEncoder`` actors, 2 × 1 CPU) vs a plain loop in this process over the same core calls — read the text file
   in chunks of ``rows_per_part`` lines, ``FeatureExtractor(spec)(chunk)``, ``StackedPredictor.predict``, one
   Parquet file per subject and chunk (same names, same columns as the pipeline). Same model, same machine, same
   process, interleaved rounds (median). Both sides start from cached encoding models (fitted once beforehand) and
   include loading the dataset (cache keys), the cached models and the language model. Model: a random-init GPT-2,
   2 blocks × width 128 (``build_gpt2``), read at ``transformer.h.1``; all nine subjects (12,155 voxels).
   The plain loop runs with torch's default threads (2 on this machine) and, for reference, with 1 thread; each
   pipeline actor has ``num_cpus=1``, so Ray sets OMP_NUM_THREADS=1 and torch uses 1 thread per actor (probed and
   printed).

2. Memory (``--sizes``, default 10k, 100k, 1M): peak RSS of the driver (``VmHWM`` of /proc/self/status) and of every
   Ray process it started (sampled every 0.2 s from ``/proc/<pid>/status`` ``VmHWM``, which is the kernel's own
   high-water mark, so no peak is missed while the process lives) for one ``encode_corpus`` run per size, each in a
   fresh subprocess (fresh driver, fresh local Ray). Tiniest model that 25 PLS components fit (1 block × width
   32). To keep the disk use of 1M sentences reasonable the memory runs predict one subject
   (``--memory-subjects``, default 018: 1,358 voxels, ~5.4 kB/sentence; all nine would write ~49 GB at 1M):
   memory per part does not depend on the corpus size either way. Sizes run in increasing order;
   if a size's time extrapolated from the previous one exceeds ``--max-seconds`` it is replaced by the largest
   multiple of 100k that fits, and the report says so.

Usage::

    python bench/corpus.py                       # full: 20k-sentence overhead (3 rounds) + 10k/100k/1M memory
    python bench/corpus.py --quick               # seconds: the memory model, 200 sentences, 2 subjects, 1 round;
                                                 # memory at 200 and 400 sentences
    python bench/corpus.py --sizes 10000,100000  # choose the memory sizes
"""

from __future__ import annotations

import os

os.environ.setdefault("BS_INSTALL_DEPENDENCIES", "no")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import glob
import json
import logging
import posixpath
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import berg_ray  # noqa: E402,F401  (its import sets BS_INSTALL_DEPENDENCIES=no before any brainscore import)

logger = logging.getLogger("bench.corpus")

SPEED_DIMS = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 64}
MEMORY_DIMS = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}  # width ≥ 25 PLS components
#: --quick (tiny sizes; the report's numbers then only show that every step runs)
QUICK = {"speed_sentences": 200, "rows_per_part": 50, "speed_subjects": "018,199", "sizes": "200,400"}
TARGET_OVERHEAD = 0.15
TARGET_GROWTH = 0.10
RESULT_PREFIX = "RESULT "


# --------------------------------------------------------------------------------------------------------------
# Inputs


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


# --------------------------------------------------------------------------------------------------------------
# The plain loop (one process, same core calls)


def plain_loop(spec, input_path: str, output: str, dataset: str, cache: str, rows_per_part: int,
               batch_size: int = 32, subjects: Any = "all") -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from berg_ray.encoding_model import StackedPredictor
    from berg_ray.features import FeatureExtractor
    from berg_ray.fitting import load_cached, resolve_subjects
    from berg_ray.neural import load_pereira
    from berg_ray.regression import PLSSettings
    from berg_ray.request import ModelRequest
    from berg_ray.store import EncodingModelStore

    started = time.perf_counter()
    assembly = load_pereira(dataset)
    store = EncodingModelStore(cache)
    request = ModelRequest.build(spec, batch_size=batch_size, device="cpu")
    models = {s: load_cached(store, request, assembly, s, PLSSettings())
              for s in resolve_subjects(assembly, subjects)}
    missing = [s for s, m in models.items() if m is None]
    if missing:
        raise RuntimeError(f"encoding models not cached for {missing}")
    predictor = StackedPredictor.from_models(models)
    extractor = FeatureExtractor(spec, device="cpu", batch_size=batch_size)
    setup_seconds = time.perf_counter() - started
    name = posixpath.basename(input_path)
    written = 0

    def flush(chunk: list[str], start_row: int, index: int) -> None:
        features = extractor(chunk, context="sentence")
        predicted = predictor.predict(features)
        ids = pa.array([f"{name}:{start_row + i}" for i in range(len(chunk))], type=pa.string())
        for subject, (lo, hi) in predictor.slices.items():
            block = np.ascontiguousarray(predicted[:, lo:hi])
            table = pa.table({
                "sentence_id": ids,
                "subject": pa.array([subject] * len(chunk), type=pa.string()),
                "responses": pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), hi - lo),
            })
            folder = os.path.join(output, "predictions", f"subject-{subject}")
            os.makedirs(folder, exist_ok=True)
            pq.write_table(table, os.path.join(folder, f"part-00000-{index:06d}.parquet"))

    chunk: list[str] = []
    start_row = index = 0
    with open(input_path, encoding="utf-8") as handle:
        for line in handle:
            chunk.append(line.rstrip("\n"))
            if len(chunk) == rows_per_part:
                flush(chunk, start_row, index)
                written += len(chunk)
                start_row, index, chunk = start_row + len(chunk), index + 1, []
    if chunk:
        flush(chunk, start_row, index)
        written += len(chunk)
    return {"sentences": written, "subjects": list(models), "setup_seconds": setup_seconds}


# --------------------------------------------------------------------------------------------------------------
# Memory sampling


def _status_kb(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def _kind(cmdline: str) -> str:
    """actor (PartEncoder), fit, worker (other ray:: processes), or the program's name (raylet, gcs_server, ...)."""
    if "PartEncoder" in cmdline or "MapWorker" in cmdline:
        return "actor"
    if "ExtractorActor" in cmdline or "fit_task" in cmdline:  # Ray names a task's worker after its function
        return "fit"
    if cmdline.startswith("ray::"):
        return "worker"
    args = cmdline.split()
    if not args:
        return "other"
    scripts = [a for a in args[1:3] if a.endswith(".py")]
    return posixpath.basename(scripts[0] if scripts else args[0])


def _descendants(root: int) -> dict[int, str]:
    """pid -> command line of every live descendant of ``root`` (from /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # fields after "(comm)": state, ppid, ...
        children.setdefault(ppid, []).append(int(entry))
    found: dict[int, str] = {}
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                found[pid] = handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        stack.extend(children.get(pid, []))
    return found


class Sampler(threading.Thread):
    """Every ``interval`` s: VmHWM (peak RSS, kB) of each descendant process of this one, kept per pid."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval = interval
        self.stop_event = threading.Event()
        self.peaks: dict[int, int] = {}
        self.kinds: dict[int, str] = {}
        self.names: dict[int, str] = {}

    def sample(self) -> None:
        for pid, cmd in _descendants(os.getpid()).items():
            hwm = _status_kb(pid, "VmHWM")
            if hwm is None:
                continue
            self.peaks[pid] = max(self.peaks.get(pid, 0), hwm)
            kind = _kind(cmd)
            if kind != "worker" or pid not in self.kinds:  # keep the most specific name seen
                self.kinds[pid] = kind
                self.names[pid] = cmd[:60]

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.sample()
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        self.stop_event.set()
        self.join()
        self.sample()


def probe_threads(num_cpus: float) -> int:
    """torch threads inside a Ray actor with ``num_cpus`` (what a PartEncoder sees)."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def threads(self) -> str:
            import torch

            return f"{torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})"

    actor = Probe.remote()
    try:
        return ray.get(actor.threads.remote())
    finally:
        ray.kill(actor)


def memory_child(args: argparse.Namespace) -> int:
    """One encode_corpus run in a fresh process: prints RESULT {json}."""
    import ray

    from berg_ray.corpus import encode_corpus
    from berg_ray.registry import ModelSpec

    logging.basicConfig(level=logging.WARNING)
    spec = ModelSpec(args.model_id, args.model, args.layer)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = Sampler()
    sampler.start()
    try:
        started, t0 = time.perf_counter(), time.time()
        manifest = encode_corpus(spec, input=args.input, output=args.output, subjects=args.subjects.split(","),
                                 dataset=args.dataset, cache=args.cache, num_extractors=2,
                                 num_cpus_per_extractor=1, rows_per_part=args.rows_per_part, device="cpu",
                                 show_progress=False)
        seconds = time.perf_counter() - started
        timeline = part_timeline(args.output, t0, time.time())
    finally:
        sampler.stop()
        ray.shutdown()
    by_kind: dict[str, list[int]] = {}
    for pid, peak in sampler.peaks.items():
        by_kind.setdefault(sampler.kinds[pid], []).append(peak)
    result = {
        "sentences": manifest["sentences_encoded"], "parts": manifest["n_parts"], "seconds": seconds,
        "timeline": timeline,
        "driver_hwm_kb": _status_kb(os.getpid(), "VmHWM"),
        "by_kind": {k: sorted(v, reverse=True) for k, v in by_kind.items()},
        "ray_total_kb": sum(sampler.peaks.values()),
        "processes": sorted(((sampler.kinds[p], sampler.names[p], k) for p, k in sampler.peaks.items()),
                            key=lambda x: -x[2]),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_memory(size: int, work: Path, paths: dict[str, Any], spec, subjects: str, rows_per_part: int
               ) -> dict[str, Any]:
    input_path = work / f"corpus-{size}.txt"
    if not input_path.exists():
        write_corpus(input_path, size, seed=1)
    output = work / f"out-memory-{size}"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, __file__, "--_memory-child", "--input", str(input_path), "--output", str(output),
               "--dataset", paths["dataset"], "--cache", paths["cache"], "--model", spec.source,
               "--model-id", spec.model_id, "--layer", spec.layer, "--subjects", subjects,
               "--rows-per-part", str(rows_per_part)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    disk = sum(os.path.getsize(p) for p in glob.glob(str(output / "predictions" / "*" / "*.parquet")))
    shutil.rmtree(output, ignore_errors=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"memory run at {size} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result.update(size=size, process_wall=wall, output_mb=disk / 2**20)
    logger.info("memory %d: %.1f s, driver %.0f MB, actors %s", size, result["seconds"],
                result["driver_hwm_kb"] / 1024, [round(v / 1024) for v in result["by_kind"].get("actor", [])])
    for kind, name, kb in result["processes"]:
        logger.info("  %-8s %6.0f MB  %s", kind, kb / 1024, name)
    return result


# --------------------------------------------------------------------------------------------------------------
# Main


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def status(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def compare_outputs(pipeline_out: str, plain_out: str, subject: str) -> float:
    import pyarrow.parquet as pq

    from berg_ray.corpus import read_predictions

    a = read_predictions(pipeline_out, subject)
    b = pq.read_table(os.path.join(plain_out, "predictions", f"subject-{subject}")).to_pandas()
    if list(a["sentence_id"]) != list(b["sentence_id"]):
        return float("inf")
    return float(np.abs(np.stack(a["responses"].to_numpy()) - np.stack(b["responses"].to_numpy())).max())


def part_timeline(output: str, t0: float, t1: float) -> dict[str, float]:
    """From the part markers (written last by each part; mtime = end, minus its ``seconds`` = start)."""
    parts = [(os.path.getmtime(p), json.loads(Path(p).read_text())["seconds"])
             for p in glob.glob(os.path.join(output, "_parts", "*.json"))]
    first_start = min(end - sec for end, sec in parts)
    last_end = max(end for end, _ in parts)
    return {"busy": sum(sec for _, sec in parts), "before": first_start - t0, "span": last_end - first_start,
            "after": t1 - last_end}


def speed(args: argparse.Namespace, work: Path, paths: dict[str, Any]) -> dict[str, Any]:
    import torch

    from berg_ray.corpus import encode_corpus

    spec = build_model(Path(paths["speed_model"]), args.speed_dims)
    subjects = args.speed_subjects
    input_path = work / f"corpus-speed-{args.speed_sentences}.txt"
    write_corpus(input_path, args.speed_sentences, seed=0)
    fit_s = fit_cache(spec, paths["dataset"], paths["cache"], subjects)
    logger.info("encoding models for %s ready in %.1f s", spec.model_id, fit_s)
    threads_default = torch.get_num_threads()
    actor_threads = probe_threads(1)
    times: dict[str, list[float]] = {"pipeline": [], "plain": [], "plain1": []}
    timelines: list[dict[str, float]] = []
    setups: dict[str, list[float]] = {"plain": [], "plain1": []}
    diff = None
    compared = "018" if subjects == "all" else subjects[0]  # the subject whose outputs are compared

    def run(kind: str, round_: int) -> None:
        nonlocal diff
        out = str(work / f"out-{kind}-{round_}")
        shutil.rmtree(out, ignore_errors=True)
        started, t0 = time.perf_counter(), time.time()
        if kind == "pipeline":
            encode_corpus(spec, input=str(input_path), output=out, subjects=subjects, dataset=paths["dataset"],
                          cache=paths["cache"], num_extractors=2, num_cpus_per_extractor=1,
                          rows_per_part=args.rows_per_part, device="cpu", show_progress=False)
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1 if kind == "plain1" else threads_default)
            try:
                info = plain_loop(spec, str(input_path), out, paths["dataset"], paths["cache"], args.rows_per_part,
                                  subjects=subjects)
                setups[kind].append(info["setup_seconds"])
            finally:
                torch.set_num_threads(threads)
        seconds = time.perf_counter() - started
        times[kind].append(seconds)
        logger.info("round %d %s: %.2f s", round_ + 1, kind, seconds)
        if kind == "pipeline":
            timelines.append(part_timeline(out, t0, time.time()))
        if round_ == 0 and kind == "plain":
            diff = compare_outputs(str(work / "out-pipeline-0"), out, compared)
        if not (round_ == 0 and kind == "pipeline"):
            shutil.rmtree(out, ignore_errors=True)
        if round_ == 0 and kind == "plain":
            shutil.rmtree(work / "out-pipeline-0", ignore_errors=True)

    kinds = ["pipeline", "plain"] + (["plain1"] if not args.no_plain_one_thread else [])
    for round_ in range(args.rounds):
        order = kinds if round_ % 2 == 0 else kinds[::-1]
        if round_ == 0:
            order = kinds  # the first round writes the pipeline output used for the equality check first
        for kind in order:
            run(kind, round_)
    # driver-side steps of encode_corpus before any actor exists, timed alone (once)
    from berg_ray.distributed import fit_subjects
    from berg_ray.neural import load_pereira

    started = time.perf_counter()
    assembly = load_pereira(paths["dataset"])
    steps = {"load_pereira": time.perf_counter() - started}
    started = time.perf_counter()
    fit_subjects(spec, subjects, dataset=assembly, cache=paths["cache"], device="cpu")
    steps["fit_subjects (all cached)"] = time.perf_counter() - started
    return {"times": times, "timelines": timelines, "steps": steps, "setups": setups, "diff": diff,
            "compared": compared, "threads_default": threads_default,
            "actor_threads": actor_threads, "fit_seconds": fit_s, "model": spec}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="seconds: overhead with the memory model on 200 sentences (parts of 50), subjects 018 "
                             "and 199, 1 round; memory at 200 and 400 sentences")
    parser.add_argument("--speed-sentences", type=int, default=None, help="default 20,000 (quick 200)")
    parser.add_argument("--speed-subjects", default=None,
                        help="subjects of the overhead run, comma-separated, or 'all' (default all; quick 018,199)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, quick 1)")
    parser.add_argument("--rows-per-part", type=int, default=None, help="default 2048 (quick 50)")
    parser.add_argument("--sizes", default=None, help="memory sizes, comma-separated (default 10000,100000,1000000)")
    parser.add_argument("--memory-subjects", default="018")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="time budget of one memory run")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--no-plain-one-thread", action="store_true", help="skip the 1-thread plain-loop reference")
    parser.add_argument("--workdir", default=None, help="keep inputs, models and cache here (default: a temp dir)")
    # internal: one memory run in a fresh process
    parser.add_argument("--_memory-child", dest="memory_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--input", "--output", "--dataset", "--cache", "--model", "--model-id", "--layer", "--subjects"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("berg_ray", "ray", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.speed_sentences = args.speed_sentences or (QUICK["speed_sentences"] if args.quick else 20_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.rows_per_part = args.rows_per_part or (QUICK["rows_per_part"] if args.quick else 2048)
    speed_subjects = args.speed_subjects or (QUICK["speed_subjects"] if args.quick else "all")
    args.speed_subjects = "all" if speed_subjects == "all" else speed_subjects.split(",")
    args.speed_dims = MEMORY_DIMS if args.quick else SPEED_DIMS  # quick: one tiny model and one fit for both parts
    sizes = [int(s) for s in (args.sizes or (QUICK["sizes"] if args.quick else "10000,100000,1000000")).split(",")]

    import ray

    work_ctx = tempfile.TemporaryDirectory(prefix="bench-corpus-") if args.workdir is None else None
    work = Path(args.workdir or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    paths = prepare(work)
    if args.quick:
        paths["speed_model"] = paths["memory_model"]
    try:
        speed_result = None
        memory_results: list[dict[str, Any]] = []
        notes: list[str] = []
        mem_fit = None
        if not (args.skip_speed and args.skip_memory):  # one local Ray for the overhead runs and the memory fits
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
            ray.data.DataContext.get_current().enable_progress_bars = False
            try:
                if not args.skip_speed:
                    speed_result = speed(args, work, paths)
                if not args.skip_memory:
                    spec = build_model(Path(paths["memory_model"]), MEMORY_DIMS)
                    mem_fit = fit_cache(spec, paths["dataset"], paths["cache"], args.memory_subjects.split(","))
            finally:
                ray.shutdown()
        if not args.skip_memory:
            for size in sorted(sizes):
                if memory_results:
                    # steady-state rate from the part markers (first part start → last part end), plus the
                    # fixed cost (start-up before the first part, manifest after the last)
                    last = memory_results[-1]
                    timeline = last["timeline"]
                    rate = last["sentences"] / max(timeline["span"], 1e-3)
                    fixed = last["seconds"] - timeline["span"]
                    estimate = fixed + size / rate
                    if estimate > args.max_seconds:
                        fit_size = int((args.max_seconds * 0.9 - fixed) * rate // 100_000 * 100_000)
                        action = f"ran {fit_size:,} instead" if fit_size > last["size"] else "skipped"
                        notes.append(f"{size:,} sentences would take ~{estimate / 60:.0f} min at "
                                     f"{rate:,.0f} sentences/s (> --max-seconds {args.max_seconds:g}): {action}")
                        if fit_size <= last["size"]:
                            continue
                        size = fit_size
                memory_results.append(run_memory(size, work, paths, spec, args.memory_subjects,
                                                  args.rows_per_part))
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()

    # ---------------- report
    print()
    print(f"# bench/corpus.py — {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"ray {ray.__version__}; Ray Data pool: 2 PartEncoder actors × num_cpus=1; rows_per_part "
          f"{args.rows_per_part}")
    if speed_result is not None:
        t = speed_result["times"]
        pipe, plain, plain1 = median(t["pipeline"]), median(t["plain"]), median(t["plain1"])
        overhead = pipe / plain - 1
        spec = speed_result["model"]
        n = args.speed_sentences
        print()
        who = "all 9 subjects (12,155 voxels)" if args.speed_subjects == "all" else \
            f"subjects {', '.join(args.speed_subjects)}"
        print(f"## Overhead: {n:,} sentences, model {spec.model_id} ({args.speed_dims}, layer {spec.layer}), {who}, "
              f"{args.rounds} interleaved round(s)")
        print()
        print("| variant | torch threads | median s | sentences/s | vs plain (default threads) |")
        print("|---|---|---:|---:|---:|")
        print(f"| plain loop, one process | {speed_result['threads_default']} | {plain:.2f} | {n / plain:,.0f} | 1.00 |")
        if t["plain1"]:
            print(f"| plain loop, one process | 1 | {plain1:.2f} | {n / plain1:,.0f} | {plain1 / plain:.2f} |")
        print(f"| encode_corpus (Ray Data, 2 actors) | {speed_result['actor_threads']} per actor | {pipe:.2f} | "
              f"{n / pipe:,.0f} | {pipe / plain:.2f} |")
        print()
        print("- all runs (s): " + ", ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in t.items() if v))
        tl = {k: median([x[k] for x in speed_result["timelines"]]) for k in ("busy", "before", "span", "after")}
        print(f"- pipeline timeline (medians, from the part markers): {tl['before']:.1f} s from the call to the first "
              f"part's start (dataset load, cached models, planning, actor start-up incl. imports and model load), "
              f"{tl['span']:.1f} s first part start → last part end, {tl['after']:.1f} s after it (manifest); "
              f"part work summed over actors {tl['busy']:.1f} s = {tl['busy'] / 2:.1f} s per actor")
        print("- encode_corpus driver steps timed alone: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in speed_result["steps"].items()))
        su = {k: median(v) for k, v in speed_result["setups"].items() if v}
        print("- plain loop set-up (dataset load, cached models, model load) included above: "
              + ", ".join(f"{k} {v:.1f} s" for k, v in su.items()))
        print(f"- pipeline vs plain, same output: subject {speed_result['compared']} max |Δ| = "
              f"{speed_result['diff']:.2e} "
              "(torch thread counts differ: float rounding only)")
        print(f"- encoding models fitted beforehand in {speed_result['fit_seconds']:.1f} s (cached; not timed above)")
        if t["plain1"]:
            print(f"- overhead vs the faster plain loop ({'1 thread' if plain1 < plain else 'default threads'}): "
                  f"{pipe / min(plain, plain1) - 1:+.1%}")
    if memory_results:
        print()
        print(f"## Memory: model {MEMORY_DIMS}, subjects {args.memory_subjects}, one fresh driver + Ray per size")
        print()
        print("| sentences | parts | wall s | sentences/s | driver peak MB | actor peaks MB | other Ray workers max MB "
              "| raylet MB | gcs MB | all Ray processes Σ peaks MB | output MB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in memory_results:
            kinds = r["by_kind"]
            print(f"| {r['sentences']:,} | {r['parts']} | {r['seconds']:.1f} | {r['sentences'] / r['seconds']:,.0f} | "
                  f"{r['driver_hwm_kb'] / 1024:.0f} | {', '.join(str(round(v / 1024)) for v in kinds.get('actor', []))} | "
                  f"{max(kinds.get('worker', [0])) / 1024:.0f} | {max(kinds.get('raylet', [0])) / 1024:.0f} | "
                  f"{max(kinds.get('gcs_server', [0])) / 1024:.0f} | {r['ray_total_kb'] / 1024:.0f} | "
                  f"{r['output_mb']:.0f} |")
        first, last = memory_results[0], memory_results[-1]
        driver_growth = last["driver_hwm_kb"] / first["driver_hwm_kb"] - 1
        actor_growth = max(last["by_kind"].get("actor", [0])) / max(max(first["by_kind"].get("actor", [1])), 1) - 1
        total_growth = last["ray_total_kb"] / first["ray_total_kb"] - 1
        print()
        print(f"- growth {first['sentences']:,} → {last['sentences']:,}: driver {driver_growth:+.1%}, largest actor "
              f"{actor_growth:+.1%}, all Ray processes {total_growth:+.1%}")
        if mem_fit is not None:
            print(f"- encoding models for the memory model fitted beforehand in {mem_fit:.1f} s")
        for note in notes:
            print(f"- note: {note}")
    print()
    print("## Targets")
    print()
    if speed_result is not None:
        print(f"- {status(overhead <= TARGET_OVERHEAD)}: pipeline overhead vs plain loop ≤ {TARGET_OVERHEAD:.0%} at "
              f"{args.speed_sentences:,} sentences — {overhead:+.1%} (plain with torch's "
              f"{speed_result['threads_default']} threads)" + (" [below the 20k of the target]"
                                                                if args.speed_sentences < 20_000 else ""))
        if t["plain1"]:
            overhead1 = pipe / plain1 - 1
            print(f"- {status(overhead1 <= TARGET_OVERHEAD)} (reference, not the target's definition): vs the plain "
                  f"loop on 1 torch thread — {overhead1:+.1%}")
    if memory_results:
        ok = driver_growth <= TARGET_GROWTH and actor_growth <= TARGET_GROWTH
        print(f"- {status(ok)}: peak RSS flat (≤ +{TARGET_GROWTH:.0%}) from {first['sentences']:,} to "
              f"{last['sentences']:,} sentences — driver {driver_growth:+.1%}, workers (largest actor) "
              f"{actor_growth:+.1%}" + ("" if last["sentences"] >= 1_000_000 else " [largest size below 1M]"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
