"""Benchmark: the Ray Data corpus pipeline vs a plain single-process loop, and its memory curve.

1. Throughput and start-up (``--speed-sentences``, default 20,000): :func:`berg_ray.corpus.encode_corpus` (Ray
   Data, a pool of ``PartEncoder`` actors, 2 × 1 CPU) vs a plain loop over the same core calls — read the text file
   in chunks of ``rows_per_part`` lines, ``FeatureExtractor(spec)(chunk)``, ``StackedPredictor.predict``, one
   Parquet file per subject and chunk (same names, same columns as the pipeline) — once in this process with one
   torch and one BLAS thread, and as 2 such processes side by side on halves of the corpus (what the cores give two
   processes at once under the machine's current load). Same model, same machine, interleaved rounds (median). All
   start from cached encoding models (fitted once beforehand). Model: a random-init GPT-2, 2 blocks × width 128
   (``build_gpt2``), read at ``transformer.h.1``; all nine subjects (12,155 voxels). Each pipeline actor has
   ``num_cpus=1`` and sets torch to the CPUs it holds (probed and printed). Ray runs its workers at niceness 15 by
   default, so on a machine shared with other work they yield to every other process while the plain loops do not;
   the bench starts Ray with ``--ray-niceness`` (default 0) to compare on equal terms.
   Steady state: the plain loops' rate without their set-up; the pipeline's rate while all its actors encode (from
   the part markers). Start-up: call → first part started, against the model load that every actor pays — a fresh
   process importing ``berg_ray.corpus`` and loading the model, 2 at once (as the actors start), timed just before
   each pipeline run.

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

import argparse
import glob
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import bench  # noqa: E402,F401  (sets the offline environment before any berg_ray import)
import berg_ray  # noqa: E402,F401  (its import sets BS_INSTALL_DEPENDENCIES=no before any brainscore import)
from bench.children import one_thread_env, print_result, read_result, run_children  # noqa: E402
from bench.parts import compare_outputs, part_timeline  # noqa: E402
from bench.plain_loop import plain_loop  # noqa: E402
from bench.report import median, status  # noqa: E402
from bench.sampling import Sampler, status_kb  # noqa: E402
from bench.workload import build_model, fit_cache, prepare, split_corpus, write_corpus  # noqa: E402

logger = logging.getLogger("bench.corpus")

SPEED_DIMS = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 64}
MEMORY_DIMS = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}  # width ≥ 25 PLS components
#: --quick (tiny sizes; the report's numbers then only show that every step runs)
QUICK = {"speed_sentences": 200, "rows_per_part": 50, "speed_subjects": "018,199", "sizes": "200,400"}
#: PartEncoder actors of the pipeline runs (num_cpus=1 each) and plain-loop processes run side by side
ACTORS = 2
#: steady state ≥ this fraction of ACTORS × the 1-thread plain loop's steady rate (issue 12)
TARGET_STEADY = 0.85
#: call → first part started ≤ this many seconds plus the model load (a fresh process's import + load)
TARGET_STARTUP_S = 5.0
#: Ray runs its workers at niceness 15 by default; the plain loops run at 0 (see --ray-niceness)
DEFAULT_RAY_NICENESS = 0
TARGET_GROWTH = 0.10


# --------------------------------------------------------------------------------------------------------------
# Memory runs (one encode_corpus per size, each in a fresh process)


def memory_child(args: argparse.Namespace) -> int:
    """One encode_corpus run in a fresh process: prints RESULT {json}."""
    import ray

    from berg_ray.corpus import encode_corpus
    from berg_ray.registry import ModelSpec

    logging.basicConfig(level=logging.WARNING)
    spec = ModelSpec(args.model_id, args.model, args.layer)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             _system_config={"worker_niceness": int(args.ray_niceness)})
    ray.data.DataContext.get_current().enable_progress_bars = False
    sampler = Sampler()
    sampler.start()
    try:
        started, t0 = time.perf_counter(), time.time()
        manifest = encode_corpus(spec, input=args.input, output=args.output, subjects=args.subjects.split(","),
                                 dataset=args.dataset, cache=args.cache, num_extractors=ACTORS,
                                 num_cpus_per_extractor=1, rows_per_part=args.rows_per_part, device="cpu",
                                 show_progress=False)
        seconds = time.perf_counter() - started
        timeline = part_timeline(args.output, t0, time.time(), ACTORS)
    finally:
        sampler.stop()
        ray.shutdown()
    by_kind: dict[str, list[int]] = {}
    for pid, peak in sampler.peaks.items():
        by_kind.setdefault(sampler.kinds[pid], []).append(peak)
    result = {
        "sentences": manifest["sentences_encoded"], "parts": manifest["n_parts"], "seconds": seconds,
        "timeline": timeline,
        "driver_hwm_kb": status_kb(os.getpid(), "VmHWM"),
        "by_kind": {k: sorted(v, reverse=True) for k, v in by_kind.items()},
        "ray_total_kb": sum(sampler.peaks.values()),
        "processes": sorted(((sampler.kinds[p], sampler.names[p], k) for p, k in sampler.peaks.items()),
                            key=lambda x: -x[2]),
    }
    print_result(result)
    return 0


def run_memory(size: int, work: Path, paths: dict[str, Any], spec, subjects: str, rows_per_part: int,
               niceness: int = DEFAULT_RAY_NICENESS) -> dict[str, Any]:
    input_path = work / f"corpus-{size}.txt"
    if not input_path.exists():
        write_corpus(input_path, size, seed=1)
    output = work / f"out-memory-{size}"
    shutil.rmtree(output, ignore_errors=True)
    command = [sys.executable, __file__, "--_memory-child", "--input", str(input_path), "--output", str(output),
               "--dataset", paths["dataset"], "--cache", paths["cache"], "--model", spec.source,
               "--model-id", spec.model_id, "--layer", spec.layer, "--subjects", subjects,
               "--rows-per-part", str(rows_per_part), "--ray-niceness", str(niceness)]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    disk = sum(os.path.getsize(p) for p in glob.glob(str(output / "predictions" / "*" / "*.parquet")))
    shutil.rmtree(output, ignore_errors=True)
    result = read_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"memory run at {size} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
    result.update(size=size, process_wall=wall, output_mb=disk / 2**20)
    logger.info("memory %d: %.1f s, driver %.0f MB, actors %s", size, result["seconds"],
                result["driver_hwm_kb"] / 1024, [round(v / 1024) for v in result["by_kind"].get("actor", [])])
    for kind, name, kb in result["processes"]:
        logger.info("  %-8s %6.0f MB  %s", kind, kb / 1024, name)
    return result


# --------------------------------------------------------------------------------------------------------------
# Overhead: the pipeline vs the plain loop (children: a model load, a plain loop)


def child_command(mode: str, spec, **options: Any) -> list[str]:
    """This script run as an internal child (``--_<mode>-child``) with ``--name value`` options."""
    command = [sys.executable, __file__, f"--_{mode}-child", "--model", spec.source, "--model-id", spec.model_id,
               "--layer", spec.layer]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def load_child(args: argparse.Namespace) -> int:
    """A fresh process that does what a PartEncoder actor does before its first part: import the corpus module,
    load the model, extract one sentence (the warm-up). Prints RESULT {"seconds": import + load + warm-up}."""
    started = time.perf_counter()
    from berg_ray.corpus import encode_corpus  # noqa: F401  (the module an actor unpickles PartEncoder from)
    from berg_ray.features import FeatureExtractor
    from berg_ray.registry import ModelSpec

    extractor = FeatureExtractor(ModelSpec(args.model_id, args.model, args.layer), device="cpu")
    extractor.extract(["A sentence to warm up with."], [args.layer])
    print_result({"seconds": time.perf_counter() - started})
    return 0


def plain_child(args: argparse.Namespace) -> int:
    """The plain loop in a fresh 1-thread process (one of several run side by side). Prints RESULT {...}."""
    from berg_ray.registry import ModelSpec

    spec = ModelSpec(args.model_id, args.model, args.layer)
    started = time.perf_counter()
    info = plain_loop(spec, args.input, args.output, args.dataset, args.cache, int(args.rows_per_part),
                      subjects=args.subjects if args.subjects == "all" else args.subjects.split(","))
    seconds = time.perf_counter() - started
    print_result({"sentences": info["sentences"], "seconds": seconds, "setup_seconds": info["setup_seconds"],
                  "loop_cpu_seconds": info["loop_cpu_seconds"]})
    return 0


def probe_threads(num_cpus: float) -> str:
    """torch threads and niceness inside a Ray actor with ``num_cpus``, set up as a PartEncoder sets itself up."""
    import ray

    @ray.remote(num_cpus=num_cpus)
    class Probe:
        def threads(self) -> str:
            from berg_ray.distributed import use_assigned_cpus

            threads = use_assigned_cpus()
            return f"{threads} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, nice {os.nice(0)})"

    actor = Probe.remote()
    try:
        return ray.get(actor.threads.remote())
    finally:
        ray.kill(actor)


def speed(args: argparse.Namespace, work: Path, paths: dict[str, Any]) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    from berg_ray.corpus import encode_corpus

    spec = build_model(Path(paths["speed_model"]), args.speed_dims)
    subjects = args.speed_subjects
    subjects_arg = "all" if subjects == "all" else ",".join(subjects)
    n_actors = ACTORS
    input_path = work / f"corpus-speed-{args.speed_sentences}.txt"
    write_corpus(input_path, args.speed_sentences, seed=0)
    pieces = split_corpus(input_path, n_actors)
    fit_s = fit_cache(spec, paths["dataset"], paths["cache"], subjects)
    logger.info("encoding models for %s ready in %.1f s", spec.model_id, fit_s)
    threads_default = torch.get_num_threads()
    actor_threads = probe_threads(1)
    kinds = ["pipeline", "plain1", "parallel"] + (["plain"] if args.plain_default_threads else [])
    times: dict[str, list[float]] = {k: [] for k in kinds}
    steady: dict[str, list[float]] = {k: [] for k in kinds}
    timelines: list[dict[str, float]] = []
    loads: list[float] = []
    setups: dict[str, list[float]] = {"plain": [], "plain1": [], "parallel": []}
    load_avgs: list[float] = []
    cpu: dict[str, list[float]] = {k: [] for k in kinds}  # CPU seconds per 1,000 sentences, steady state
    cpu_split: list[dict[str, float]] = []  # pipeline: by kind of process
    diff = None
    compared = "018" if subjects == "all" else subjects[0]  # the subject whose outputs are compared

    def run(kind: str, round_: int) -> None:
        nonlocal diff
        out = str(work / f"out-{kind}-{round_}")
        shutil.rmtree(out, ignore_errors=True)
        load_avgs.append(os.getloadavg()[0])
        if kind == "pipeline":
            # what each actor does before its first part, in as many fresh processes at once, just before
            probes = run_children([child_command("load", spec) for _ in range(n_actors)], env=one_thread_env())
            loads.append(max(p["seconds"] for p in probes))
        started, t0 = time.perf_counter(), time.time()
        if kind == "pipeline":
            sampler = Sampler(interval=0.5)
            sampler.start()
            try:
                encode_corpus(spec, input=str(input_path), output=out, subjects=subjects, dataset=paths["dataset"],
                              cache=paths["cache"], num_extractors=n_actors, num_cpus_per_extractor=1,
                              rows_per_part=args.rows_per_part, device="cpu", show_progress=False)
            finally:
                sampler.stop()
        elif kind == "parallel":
            results = run_children([child_command("plain", spec, input=piece, output=f"{out}/{k}",
                                                  dataset=paths["dataset"], cache=paths["cache"],
                                                  subjects=subjects_arg, rows_per_part=args.rows_per_part)
                                    for k, piece in enumerate(pieces)], env=one_thread_env())
            steady[kind].append(sum(r["sentences"] / (r["seconds"] - r["setup_seconds"]) for r in results))
            setups[kind].append(max(r["setup_seconds"] for r in results))
            cpu[kind].append(1000 * sum(r["loop_cpu_seconds"] for r in results) / args.speed_sentences)
        else:
            threads = torch.get_num_threads()
            one = kind == "plain1"
            torch.set_num_threads(1 if one else threads_default)
            try:
                with threadpool_limits(limits=1 if one else None):  # BLAS too, as in a num_cpus=1 actor
                    info = plain_loop(spec, str(input_path), out, paths["dataset"], paths["cache"],
                                      args.rows_per_part, subjects=subjects)
                setups[kind].append(info["setup_seconds"])
                cpu[kind].append(1000 * info["loop_cpu_seconds"] / args.speed_sentences)
            finally:
                torch.set_num_threads(threads)
        seconds = time.perf_counter() - started
        times[kind].append(seconds)
        if kind in ("plain", "plain1"):
            steady[kind].append(args.speed_sentences / (seconds - setups[kind][-1]))
        if kind == "pipeline":
            timeline = part_timeline(out, t0, time.time(), n_actors)
            timelines.append(timeline)
            steady[kind].append(timeline["steady"])
            # every process of this run (actors, Ray's own, this driver) in the steady window, per 1,000 sentences
            split = sampler.cpu_between(timeline["steady_start"], timeline["steady_end"])
            cpu_split.append({k: 1000 * v / max(timeline["steady_rows"], 1e-9) for k, v in split.items()})
            cpu[kind].append(sum(cpu_split[-1].values()))
        logger.info("round %d %s: %.2f s (steady %.0f sentences/s; load average %.1f)", round_ + 1, kind, seconds,
                    steady[kind][-1], load_avgs[-1])
        if round_ == 0 and kind == "plain1":
            diff = compare_outputs(str(work / "out-pipeline-0"), out, compared)
        if not (round_ == 0 and kind == "pipeline"):
            shutil.rmtree(out, ignore_errors=True)
        if round_ == 0 and kind == "plain1":
            shutil.rmtree(work / "out-pipeline-0", ignore_errors=True)

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
    return {"times": times, "steady": steady, "cpu": cpu, "cpu_split": cpu_split, "timelines": timelines, "loads": loads, "steps": steps,
            "setups": setups, "diff": diff, "compared": compared, "threads_default": threads_default,
            "actor_threads": actor_threads, "fit_seconds": fit_s, "model": spec, "load_avgs": load_avgs}


# --------------------------------------------------------------------------------------------------------------
# Main


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
    parser.add_argument("--plain-default-threads", action="store_true",
                        help="also time the plain loop with torch's default threads (oversubscribes a busy machine)")
    parser.add_argument("--ray-niceness", type=int, default=DEFAULT_RAY_NICENESS,
                        help="niceness of the Ray workers (Ray's own default is 15, which on a machine shared with "
                             "other work lets every other process run first; the plain loops run at 0; default "
                             "%(default)s: equal terms)")
    parser.add_argument("--workdir", default=None, help="keep inputs, models and cache here (default: a temp dir)")
    # internal: one memory run, one model load, or one plain loop in a fresh process
    parser.add_argument("--_memory-child", dest="memory_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_load-child", dest="load_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_plain-child", dest="plain_child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--input", "--output", "--dataset", "--cache", "--model", "--model-id", "--layer", "--subjects"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args)
    if args.load_child:
        return load_child(args)
    if args.plain_child:
        return plain_child(args)
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
            ray.init(address="local", num_cpus=ACTORS, include_dashboard=False, logging_level=logging.WARNING,
                     _system_config={"worker_niceness": args.ray_niceness})
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
                                                  args.rows_per_part, args.ray_niceness))
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()

    # ---------------- report
    print()
    print(f"# bench/corpus.py — {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
          f"ray {ray.__version__}; Ray Data pool: {ACTORS} PartEncoder actors × num_cpus=1; rows_per_part "
          f"{args.rows_per_part}; Ray workers at niceness {args.ray_niceness} (plain loops: 0)")
    if speed_result is not None:
        t, st = speed_result["times"], speed_result["steady"]
        pipe, plain1, parallel = median(t["pipeline"]), median(t["plain1"]), median(t["parallel"])
        steady_pipe, steady1, steady_par = median(st["pipeline"]), median(st["plain1"]), median(st["parallel"])
        ideal = ACTORS * steady1
        spec = speed_result["model"]
        n = args.speed_sentences
        print()
        who = "all 9 subjects (12,155 voxels)" if args.speed_subjects == "all" else \
            f"subjects {', '.join(args.speed_subjects)}"
        avgs = speed_result["load_avgs"]
        print(f"## Overhead: {n:,} sentences, model {spec.model_id} ({args.speed_dims}, layer {spec.layer}), {who}, "
              f"{args.rounds} interleaved round(s); 1-min load average during the runs {min(avgs):.1f}–{max(avgs):.1f}")
        print()
        print("Steady state: the plain loops without their set-up (dataset, cached models, model load); the pipeline "
              f"while all {ACTORS} actors encode (from the part markers).")
        print()
        cpu = {k: median(v) for k, v in speed_result["cpu"].items()}
        print(f"| variant | torch threads | median s | sentences/s end to end | steady sentences/s | steady vs "
              f"{ACTORS} × plain loop (1 thread) | steady CPU s per 1,000 sentences |")
        print("|---|---|---:|---:|---:|---:|---:|")
        print(f"| plain loop, one process | 1 | {plain1:.2f} | {n / plain1:,.0f} | {steady1:,.0f} | "
              f"{steady1 / ideal:.2f} | {cpu['plain1']:.2f} |")
        if t.get("plain"):
            plain = median(t["plain"])
            print(f"| plain loop, one process | {speed_result['threads_default']} | {plain:.2f} | {n / plain:,.0f} | "
                  f"{median(st['plain']):,.0f} | {median(st['plain']) / ideal:.2f} | {cpu['plain']:.2f} |")
        print(f"| {ACTORS} plain loops side by side ({ACTORS} processes × 1 thread, 1/{ACTORS} of the corpus each) | 1 "
              f"each | {parallel:.2f} | {n / parallel:,.0f} | {steady_par:,.0f} | {steady_par / ideal:.2f} | "
              f"{cpu['parallel']:.2f} |")
        print(f"| encode_corpus (Ray Data, {ACTORS} actors) | {speed_result['actor_threads']} per actor | {pipe:.2f} | "
              f"{n / pipe:,.0f} | {steady_pipe:,.0f} | {steady_pipe / ideal:.2f} | {cpu['pipeline']:.2f} |")
        print()
        print("- all runs (s): " + ", ".join(f"{k} {[round(x, 2) for x in v]}" for k, v in t.items() if v))
        print("- all steady rates (sentences/s): " + ", ".join(f"{k} {[round(x) for x in v]}" for k, v in st.items()
                                                               if v))
        tl = {k: median([x[k] for x in speed_result["timelines"]])
              for k in ("busy", "before", "span", "after", "per_actor_busy_rate", "steady_window")}
        load = median(speed_result["loads"])
        startup = tl["before"] - load
        print(f"- pipeline timeline (medians, from the part markers): {tl['before']:.1f} s from the call to the first "
              f"part's start, {tl['span']:.1f} s first part start → last part end ({tl['steady_window']:.1f} s of it "
              f"with all actors encoding), {tl['after']:.1f} s after it (manifest); part work summed over actors "
              f"{tl['busy']:.1f} s ({tl['per_actor_busy_rate']:,.0f} sentences/s per busy actor)")
        print(f"- start-up: model load = a fresh process importing berg_ray.corpus, loading the model and extracting "
              "one sentence "
              f"({ACTORS} at once, as the actors do; median of the slowest) {load:.1f} s; call → first part started "
              f"{tl['before']:.1f} s = model load {startup:+.1f} s (runs: model load "
              f"{[round(x, 1) for x in speed_result['loads']]}, before first part "
              f"{[round(x['before'], 1) for x in speed_result['timelines']]})")
        # a --quick run under load can end before its steady window holds a CPU sample: say so, don't divide by 0
        efficiency = (f"{cpu['plain1'] / cpu['pipeline']:.0%}" if cpu["pipeline"] > 0
                      else "n/a (no CPU sampled in the steady window: run too short)")
        split = {k: median([x.get(k, 0.0) for x in speed_result["cpu_split"]])
                 for k in dict.fromkeys(k for x in speed_result["cpu_split"] for k in x)}
        print("- pipeline CPU s per 1,000 sentences in its steady window, by process: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v >= 0.005)
            + f"; CPU efficiency vs the 1-thread plain loop {efficiency} (load-independent: "
            f"on {ACTORS} free cores the steady rate would be about that fraction of {ACTORS} × the plain loop)")
        print("- encode_corpus driver steps timed alone: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in speed_result["steps"].items()))
        su = {k: median(v) for k, v in speed_result["setups"].items() if v}
        print("- plain loop set-up (dataset load, cached models, model load, warm-up; in-process: modules imported) "
              "included in 'median s': " + ", ".join(f"{k} {v:.1f} s" for k, v in su.items()))
        print(f"- pipeline vs plain (1 thread), same output: subject {speed_result['compared']} max |Δ| = "
              f"{speed_result['diff']:.2e}")
        print(f"- encoding models fitted beforehand in {speed_result['fit_seconds']:.1f} s (cached; not timed above)")
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
        print(f"- {status(steady_pipe >= TARGET_STEADY * ideal)}: steady state ≥ {TARGET_STEADY:.0%} of {ACTORS} × the "
              f"1-thread plain loop at {args.speed_sentences:,} sentences — {steady_pipe / ideal:.0%} "
              f"({steady_pipe:,.0f} vs {ACTORS} × {steady1:,.0f} sentences/s)"
              + (" [below the 20k of the target]" if args.speed_sentences < 20_000 else ""))
        print(f"- reference: vs the {ACTORS} plain loops run side by side (what the cores gave {ACTORS} processes at "
              f"once, under the same load) — {steady_pipe / steady_par:.0%}")
        print(f"- {status(startup <= TARGET_STARTUP_S)}: call → first part started ≤ {TARGET_STARTUP_S:g} s plus model "
              f"load — model load {startup:+.1f} s")
    if memory_results:
        ok = driver_growth <= TARGET_GROWTH and actor_growth <= TARGET_GROWTH
        print(f"- {status(ok)}: peak RSS flat (≤ +{TARGET_GROWTH:.0%}) from {first['sentences']:,} to "
              f"{last['sentences']:,} sentences — driver {driver_growth:+.1%}, workers (largest actor) "
              f"{actor_growth:+.1%}" + ("" if last["sentences"] >= 1_000_000 else " [largest size below 1M]"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
