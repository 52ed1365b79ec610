"""``berg-ray`` command line: the same functions as the Python API and the Ray jobs.

    berg-ray models [--all]
    berg-ray datasets [--json]
    berg-ray score MODEL BENCHMARK ...|all [--dataset D] [--json]   (brainscore's neural benchmarks, its raw score)
    berg-ray register MODEL_ID --source DIR_OR_HUB_ID --layer LAYER [--revision R] [--replace]
    berg-ray register MODEL_ID --source DIR_OR_HUB_ID --layer L1 --layer L2 ... --localizer-top-k K  (localizer model:
        --layer once per layer, K a fraction in (0, 1) such as 0.1 or a number of units such as 4096)
    berg-ray fit MODEL --subjects all|018 199 ... [--dataset D] [--cache DIR_OR_S3] [--context C]
    berg-ray encode MODEL --subject S (--text T ... | --input FILE) --out FILE.parquet|.npy
    berg-ray encode-corpus MODEL --input PATH_OR_GLOB --output DIR [--subjects ...] [--overwrite]
        [--write voxels rois] [--predictions-dtype float32|float16]
    berg-ray rank OUTPUT [--by network|ROI] [--subject all|S] [--top N] [--bottom N] [--out DIR]
    berg-ray sweep --models M ... --out DIR [--layers mapped|all] [--contexts sentence passage]
        [--datasets D1 D2 ...] [--benchmarks B1 B2 ...] [--benchmark-dataset D]
    berg-ray demo [--dataset synthetic|brainscore|PATH] [--model MODEL] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from berg_ray import options
from berg_ray.quiet import configure_output

logger = logging.getLogger("berg_ray.cli")

DEFAULT_CACHE = os.environ.get("BERG_RAY_CACHE", "berg_dir")


def _add_common(parser: argparse.ArgumentParser, subjects: bool = True) -> None:
    parser.add_argument("--dataset", default=os.environ.get("BERG_RAY_DATASET", "brainscore"),
                        help="a brainscore dataset id (Pereira2018.language = 'brainscore', Pereira2018.auditory, "
                             "Tuckute2024.language, Blank2014.fROI, Fedorenko2016.language; see 'berg-ray datasets'), "
                             "'synthetic' or 'synthetic:<id>' (a stand-in with a planted map), or a path/URL to a .nc "
                             "file in one of their layouts (default: %(default)s)")
    parser.add_argument("--cache", default=DEFAULT_CACHE,
                        help="cache root: a folder or s3://bucket/prefix ($BERG_RAY_CACHE; default: %(default)s)")
    parser.add_argument("--context", default=None, choices=options.CONTEXTS,
                        help="context policy (default: the dataset's: sentence for Pereira and Tuckute2024, passage "
                             "for Blank2014 and Fedorenko2016)")
    parser.add_argument("--n-components", type=int, default=25, help="PLS components (default: %(default)s)")
    parser.add_argument("--regression", default="pls", choices=("pls", "ridge"),
                        help="encoding model: BERG's PLS, or RidgeCV over brainscore's alphas with one alpha per "
                             "neuroid (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--dtype", default=None, choices=options.DTYPE_CHOICES,
                        help="forward-pass precision (default: float32); auto: bfloat16 on GPUs and on CPUs with "
                             "AVX512-BF16 or AMX, float32 elsewhere")
    parser.add_argument("--batch-size", type=int, default=options.DEFAULT_BATCH_SIZE, help="sequences per forward pass")
    if subjects:
        parser.add_argument("--subjects", nargs="+", default=["all"], help="'all' or subject ids (e.g. 018 199)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="berg-ray", description="In-silico fMRI for BrainScore language models.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show berg-ray's debug log and what third-party libraries print (transformers, "
                             "Ray, xarray warnings), which is hidden by default")
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="list the models berg-ray can run")
    models.add_argument("--all", action="store_true", help="also list registrations berg-ray cannot run, and why")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")

    register = sub.add_parser("register", help="add a custom model (saved in the user registry file)")
    register.add_argument("model_id")
    register.add_argument("--source", required=True, help="local model folder or Hugging Face hub id")
    register.add_argument("--layer", required=True, action="append",
                          help="dotted module name, e.g. transformer.h.5; for a localizer model give --layer once per "
                               "layer, in order (bash: --layer=transformer.h.{0..11}), with --localizer-top-k")
    register.add_argument("--localizer-top-k", default=None, metavar="K",
                          help="make a localizer model (brainscore's use_localizer): the features of all --layer "
                               "modules, masked to the units the Fedorenko (2010) localizer selects: a fraction in "
                               "(0, 1) of them (0.1) or a number of units (4096); required for several layers")
    register.add_argument("--revision", default=None)
    register.add_argument("--replace", action="store_true",
                          help="replace an existing registration of MODEL_ID, or shadow a BrainScore short alias "
                               "such as 'gpt2'")

    fit = sub.add_parser("fit", help="fit (or load) the encoding models of one model for some subjects")
    fit.add_argument("model")
    _add_common(fit)
    fit.add_argument("--ray", action="store_true", help="fit on Ray (local Ray unless RAY_ADDRESS is set)")
    fit.add_argument("--address", default=None, help="Ray address for --ray (default: $RAY_ADDRESS or local)")

    encode = sub.add_parser("encode", help="predict one subject's responses to sentences")
    encode.add_argument("model")
    encode.add_argument("--subject", required=True)
    source = encode.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", help="sentences (or a dataset's units: story fragments, words)")
    source.add_argument("--input", help=".txt (one sentence per line), .jsonl or .parquet (column 'sentence'; "
                                        "column 'passage': the story or sentence of each unit, for context passage)")
    encode.add_argument("--passages", nargs="+", default=None,
                        help="with --text and context passage (Blank2014, Fedorenko2016): the story or sentence each "
                             "text belongs to, one per text")
    encode.add_argument("--out", required=True, help="output .parquet or .npy (metadata beside it as .json)")
    _add_common(encode, subjects=False)

    corpus = sub.add_parser("encode-corpus", help="stream a corpus through Ray into Parquet predictions")
    corpus.add_argument("model")
    corpus.add_argument("--input", required=True, help="file, folder or glob (.txt/.jsonl/.parquet), local or s3://")
    corpus.add_argument("--output", required=True,
                        help="output folder, local or s3://; rerunning the same request resumes it, another "
                             "request is refused (naming what changed) unless --overwrite")
    corpus.add_argument("--overwrite", action="store_true",
                        help="delete an existing output in --output (only the files encode-corpus writes: "
                             "predictions, markers, bad rows, manifest; any other file is kept and named in "
                             "the log, a folder removed only once empty) and encode from scratch")
    corpus.add_argument("--shared-output", action="store_true",
                        help="a local --output that every node of the Ray cluster mounts at the same path (NFS, "
                             "a shared volume): without it, a local output on a cluster of several nodes is refused")
    corpus.add_argument("--num-extractors", type=int, default=1)
    corpus.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per extractor actor (fractional ok)")
    corpus.add_argument("--address", default=None, help="Ray address (default: $RAY_ADDRESS or a local Ray)")
    from berg_ray.reductions import OUTPUT_KINDS, PREDICTION_DTYPES

    corpus.add_argument("--write", nargs="+", default=["voxels"], choices=OUTPUT_KINDS,
                        help="outputs: voxels (every voxel's prediction) and/or rois (network and per-ROI means "
                             "per sentence and subject; rois alone never predicts a voxel) (default: voxels)")
    corpus.add_argument("--predictions-dtype", default="float32", choices=PREDICTION_DTYPES,
                        help="element type of the voxel output; float16 halves it, the manifest records the "
                             "largest rounding error (default: %(default)s)")
    _add_common(corpus)

    datasets = sub.add_parser("datasets", help="list the neural datasets berg-ray trains on (offline)")
    datasets.add_argument("--json", action="store_true", help="print JSON")

    score = sub.add_parser("score", help="score a model on brainscore-language's neural benchmarks, as brainscore "
                                         "does (raw, ceiling, normalised)")
    score.add_argument("model")
    score.add_argument("benchmarks", nargs="+", help="benchmark ids (e.g. Tuckute2024-linear Blank2014-ridge), or "
                                                     "'all' for the twelve neural benchmarks")
    score.add_argument("--dataset", default=None,
                       help="data to score on: default brainscore's own; 'synthetic' (each benchmark's stand-in "
                            "with a planted map, marked SYNTHETIC) or a path/URL to a .nc file in the benchmark's "
                            "dataset layout")
    score.add_argument("--cache", default=DEFAULT_CACHE,
                       help="cache root: downloaded data and computed ceilings (default: %(default)s)")
    score.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    score.add_argument("--dtype", default=None, choices=options.DTYPE_CHOICES)
    score.add_argument("--batch-size", type=int, default=options.DEFAULT_BATCH_SIZE)
    score.add_argument("--json", action="store_true", help="print JSON")

    rank = sub.add_parser("rank", help="list the sentences of a corpus output with the highest and lowest "
                                       "predicted response (drive / suppress)")
    rank.add_argument("output", help="a finished encode-corpus output folder, local or s3://")
    rank.add_argument("--by", default="network",
                      help="'network' (a subject's mean over its neuroids; Tuckute2024: the language network's "
                           "response) or an ROI of the output's dataset (Pereira2018: roi, Tuckute2024: "
                           "lang_LH_netw, Blank2014: fROI_area; Fedorenko2016 has none) (default: network)")
    rank.add_argument("--subject", default="all",
                      help="a subject of the output, or 'all': the mean over its subjects (default: all)")
    rank.add_argument("--top", type=int, default=100, help="sentences with the highest score (default: 100)")
    rank.add_argument("--bottom", type=int, default=100, help="sentences with the lowest score (default: 100)")
    rank.add_argument("--source", default="auto", choices=("auto", "rois", "voxels"),
                      help="read the ROI output or reduce the voxel output (default: auto, rois when present)")
    rank.add_argument("--out", default="rank",
                      help="folder for rank.csv, rank.parquet, rank.png and report.md (default: %(default)s)")

    sweep = sub.add_parser("sweep", help="score a model × layer × context × subject grid")
    sweep.add_argument("--models", nargs="+", required=True)
    sweep.add_argument("--layers", default="mapped", help="'mapped', 'all', or comma-separated layer names")
    sweep.add_argument("--contexts", nargs="+", default=None, choices=options.CONTEXTS,
                       help="context policies (default: each dataset's own: sentence for Pereira and Tuckute2024, "
                            "passage for Blank2014 and Fedorenko2016); a context a dataset cannot be read with "
                            "becomes a skipped row for that dataset")
    sweep.add_argument("--datasets", nargs="+", default=None, metavar="D",
                       help="several datasets as an axis of the grid (brainscore ids, 'synthetic', "
                            "'synthetic:<id>', paths or URLs of .nc files), each with its own CV splits; "
                            "replaces --dataset")
    sweep.add_argument("--benchmarks", nargs="+", default=None, metavar="B",
                       help="brainscore benchmark ids to score every model on after the grid (berg_ray.score), "
                            "e.g. Pereira2018.384sentences-linear-shuffle Tuckute2024-linear: benchmarks.csv and "
                            "the report's Benchmarks section")
    sweep.add_argument("--benchmark-dataset", default=None, metavar="D",
                       help="the data --benchmarks score on (default: each benchmark's brainscore data; "
                            "'synthetic': its stand-in; or a path/URL of a .nc file)")
    sweep.add_argument("--protocol", default=options.DEFAULT_PROTOCOL, choices=options.PROTOCOLS)
    sweep.add_argument("--out", required=True)
    sweep.add_argument("--address", default=None)
    _add_common(sweep)

    demo = sub.add_parser("demo", help="the README's main job: fit nine subjects and encode a few sentences")
    demo.add_argument("--dataset", default="synthetic")
    demo.add_argument("--model", default="minilm-l6")
    demo.add_argument("--berg-dir", default=DEFAULT_CACHE)
    demo.add_argument("--out", default="demo_out", help="folder for the table and the PNG")
    demo.add_argument("--context", default="sentence", choices=options.CONTEXTS)
    demo.add_argument("--device", default="auto")
    demo.add_argument("--no-ray", action="store_true", help="fit in this process instead of on a local Ray")
    return parser


def _localizer_summary(layers: Sequence[str], top_k: float | int | None) -> str:
    """``3 layers (transformer.h.0, ..., transformer.h.2) and top-k 0.1 (a fraction of the units)``."""
    shown = ", ".join(layers) if len(layers) <= 3 else f"{layers[0]}, ..., {layers[-1]}"
    kind = "a fraction of the units" if isinstance(top_k, float) else "units"
    return f"{len(layers)} layer{'s' if len(layers) != 1 else ''} ({shown}) and top-k {top_k} ({kind})"


def _cmd_models(args: argparse.Namespace) -> int:
    from berg_ray.registry import all_specs

    specs = all_specs(include_unsupported=args.all)
    if args.json:
        print(json.dumps([s.to_dict() for s in specs], indent=2))
        return 0
    def note(spec: Any) -> str:
        if not spec.supported:
            return spec.reason
        if spec.control:
            return "control model: its features encode no linguistic content (run through brainscore's subject)"
        if spec.localizer_layers:
            built = f"; {spec.reason.removeprefix('localizer model: ')}" if spec.kind == "code" else ""
            return f"localizer model: {_localizer_summary(spec.localizer_layers, spec.localizer_top_k)}{built}"
        return "run through brainscore's own subject" if spec.kind == "delegated" else ""

    rows = [(s.model_id, s.source or "-", s.layer or "-", s.status, note(s)) for s in specs]
    header = ("model id", "hub id / folder", "layer", "status", "needs / notes")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    print("  ".join(h.ljust(w) for h, w in zip(header, [*widths, 0])).rstrip())
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0])).rstrip())
    counts = {status: sum(s.status == status for s in specs) for status in options.MODEL_STATUSES}
    print(f"\n{sum(s.supported for s in specs)} runnable model(s)"
          + ("" if args.all else "; --all lists the registrations that cannot run here, and what each needs"))
    if args.all:
        print("by status: " + ", ".join(f"{status} {n}" for status, n in counts.items() if n))
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from berg_ray.dataset_layouts import LAYOUTS, describe_layout

    described = [describe_layout(layout) for layout in LAYOUTS.values()]
    if args.json:
        print(json.dumps(described, indent=2))
        return 0
    for entry in described:
        subjects = entry["subjects"]
        listed = (", ".join(f"{s} ({n})" for s, n in subjects.items()) if isinstance(subjects, dict)
                  else ", ".join(subjects) or "as in the file")
        print(f"{entry['dataset']}  [{entry['modality']}]  {entry['title']}")
        neuroids = f"{entry['n_neuroids']:,}" if entry["n_neuroids"] else "atlas"
        print(f"    {entry['n_presentations']:,} {entry['unit']}s × {neuroids} neuroids; "
              f"units: {entry['response_units']}")
        print(f"    subjects (neuroids): {listed}")
        print(f"    read: context {entry['default_context']!r} (allowed: {', '.join(entry['contexts'])}; groups: "
              f"{entry['read_with']}); held-out: {entry['cv']}")
        print(f"    benchmarks: {', '.join(entry['benchmarks']) or '-'}")
        print(f"    source: {entry['url']} (sha1 {entry['sha1'][:12]}…)\n")
    print("'brainscore' = Pereira2018.language; 'synthetic' or 'synthetic:<dataset>' is a stand-in with a planted "
          "map; a path or URL to a .nc file in one of these layouts works too.")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from berg_ray.benchmark_score import score
    from berg_ray.benchmarks import benchmark_ids, get_benchmark

    chosen = benchmark_ids() if args.benchmarks == ["all"] else args.benchmarks
    for benchmark in chosen:  # every id checked before any model runs
        get_benchmark(benchmark)
    results = []
    for benchmark in chosen:
        result = score(args.model, benchmark, dataset=args.dataset, cache_dir=args.cache, device=args.device,
                       dtype=args.dtype, batch_size=args.batch_size, show_progress=True)
        results.append(result)
        if not args.json:
            def shown(value: float | None) -> str:
                return "-" if value is None else f"{value:.4f}"

            label = "  SYNTHETIC data" if result.synthetic else ""
            print(f"{benchmark:42s} raw {shown(result.raw)}  ceiling {shown(result.ceiling)}  normalized "
                  f"{shown(result.normalized)}{label}")
            if result.ceiling is None and result.ceiling_note:
                print(f"    {result.ceiling_note}")
    if args.json:
        print(json.dumps([r.describe() for r in results], indent=2))
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from berg_ray.errors import InvalidInputError
    from berg_ray.localizer import check_top_k
    from berg_ray.registry import register_model, registry_path
    from berg_ray.validation import check_register_arguments

    layers, top_k = check_register_arguments(layers=args.layer, localizer_top_k=args.localizer_top_k, cli=True)
    if top_k is not None:
        try:
            top_k = check_top_k(top_k)
        except InvalidInputError as error:
            raise InvalidInputError(f"--localizer-top-k {args.localizer_top_k}: {error}") from None
    spec = register_model(args.model_id, args.source, layers if top_k is not None else layers[0],
                          revision=args.revision, persist=True, replace=args.replace, localizer_top_k=top_k)
    if spec.localizer_layers:
        print(f"registered localizer model {spec.model_id} -> {spec.source} with "
              f"{_localizer_summary(spec.localizer_layers, spec.localizer_top_k)} in {registry_path()}")
    else:
        print(f"registered {spec.model_id} -> {spec.source} (layer {spec.layer}) in {registry_path()}")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from berg_ray.api import BERG
    from berg_ray.validation import check_fit_arguments

    check_fit_arguments(subjects=args.subjects, n_components=args.n_components, batch_size=args.batch_size,
                        device=args.device, dataset=args.dataset, cli=True)
    berg = BERG(args.cache, dataset=args.dataset, context=args.context, n_components=args.n_components,
                regression=args.regression)
    request = berg.request(args.model, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    use_ray = bool(args.ray or args.address or os.environ.get("RAY_ADDRESS"))
    if use_ray:
        from berg_ray.distributed import init_ray

        init_ray(args.address)
    from berg_ray.encoding_model import CONVERGENCE_WARNING, convergence_summary, format_cv_table

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CONVERGENCE_WARNING)  # said once, below, in the summary
        models = berg.fit(request, args.subjects, use_ray=use_ray, show_progress=True)
    print(format_cv_table(models))
    line = convergence_summary(models)
    if line is not None:
        print(line)
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from berg_ray.api import BERG
    from berg_ray.corpus_io import write_encoded
    from berg_ray.validation import check_encode_arguments

    check_encode_arguments(out=args.out, subject=args.subject, n_components=args.n_components,
                           batch_size=args.batch_size, device=args.device, sentences=args.text, dataset=args.dataset,
                           cli=True)
    passages = args.passages
    if args.text:
        sentences = args.text
    else:
        from berg_ray.corpus_io import read_sentences_table, table_sentences

        table = read_sentences_table(args.input)
        sentences = table_sentences(table, args.input)
        if passages is None and "passage" in table:
            passages = [str(p) for p in table["passage"]]
    berg = BERG(args.cache, dataset=args.dataset, context=args.context, n_components=args.n_components,
                regression=args.regression)
    model = berg.get_encoding_model(args.model, subject=args.subject, device=args.device, show_progress=True,
                                    batch_size=args.batch_size, dtype=args.dtype)
    responses, meta = berg.encode(model, sentences, show_progress=True, return_metadata=True, passages=passages)
    written = write_encoded(args.out, sentences, responses, meta)
    print(f"wrote {responses.shape[0]} × {responses.shape[1]} responses to {', '.join(map(str, written))}")
    return 0


def _cmd_encode_corpus(args: argparse.Namespace) -> int:
    from berg_ray.corpus import encode_corpus
    from berg_ray.reductions import check_output_options
    from berg_ray.validation import check_corpus_arguments

    check_corpus_arguments(subjects=args.subjects, n_components=args.n_components, batch_size=args.batch_size,
                           device=args.device, num_extractors=args.num_extractors, num_gpus=args.num_gpus,
                           output=args.output, dataset=args.dataset, cli=True)
    check_output_options(args.write, args.predictions_dtype, cli=True)
    # encode_corpus checks the output against the input, lists the input and loads the dataset before it starts or
    # joins Ray: a missing or empty input, an output inside it or a bad dataset file fail with no Ray started
    summary = encode_corpus(args.model, args.input, args.output, subjects=args.subjects, dataset=args.dataset,
                            address=args.address,
                            cache=args.cache, context=args.context, batch_size=args.batch_size,
                            num_extractors=args.num_extractors, num_gpus=args.num_gpus, device=args.device,
                            dtype=args.dtype, n_components=args.n_components, regression=args.regression,
                            overwrite=args.overwrite,
                            write=args.write, predictions_dtype=args.predictions_dtype,
                            shared_output=args.shared_output)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    from berg_ray.ranking import rank_corpus, write_rank_outputs

    result = rank_corpus(args.output, by=args.by, subject=args.subject, top=args.top, bottom=args.bottom,
                         source=args.source)
    written = write_rank_outputs(result, args.out)
    if result.synthetic:
        print("*** SYNTHETIC DATA: the encoding models were trained on a planted map, not on brain responses ***")
    print(result.table.to_string(index=False, max_colwidth=60))
    print(f"\nranked {result.n_sentences} sentences by {result.by} ({result.subject}) in {result.seconds:.2f} s; "
          f"wrote {', '.join(written)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from berg_ray.distributed import init_ray
    from berg_ray.sweep import run_sweep

    init_ray(args.address)
    layers = args.layers if args.layers in ("mapped", "all") else args.layers.split(",")
    table = run_sweep(args.models, subjects=args.subjects, layers=layers,
                      contexts=tuple(args.contexts) if args.contexts else None,
                      dataset=None if args.datasets else args.dataset, datasets=args.datasets, cache=args.cache,
                      out=args.out, protocol=args.protocol, n_components=args.n_components, device=args.device,
                      dtype=args.dtype, batch_size=args.batch_size, regression=args.regression,
                      benchmarks=args.benchmarks,
                      benchmark_dataset=args.benchmark_dataset)
    print(table.to_string(index=False))
    if "benchmarks" in table.attrs:
        print()
        print(table.attrs["benchmarks"].drop(columns=["key", "computed_at"]).to_string(index=False))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from berg_ray.demo import run_demo

    summary = run_demo(model_id=args.model, dataset=args.dataset, berg_dir=args.berg_dir, out=args.out,
                       context=args.context, device=args.device, use_ray=not args.no_ray)
    print(summary["table"])
    if summary["convergence"] is not None:
        print(summary["convergence"])
    shapes = ", ".join(f"{s}: {tuple(v['response_shape'])}" for s, v in list(summary["subjects"].items())[:3])
    print(f"\nencoded {len(summary['sentences'])} sentences for {len(summary['subjects'])} subjects ({shapes}, ...)")
    print(f"wrote {', '.join(summary['files'])}")
    print(f"done in {summary['seconds']} s")
    return 0


COMMANDS = {"models": _cmd_models, "datasets": _cmd_datasets, "score": _cmd_score, "register": _cmd_register,
            "fit": _cmd_fit, "encode": _cmd_encode, "encode-corpus": _cmd_encode_corpus, "rank": _cmd_rank,
            "sweep": _cmd_sweep, "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # results, progress bars and berg-ray's warnings; third-party chatter only with -v (berg_ray.quiet)
    restore_output = configure_output(verbose=args.verbose)
    try:
        return COMMANDS[args.command](args)
    except Exception as error:  # berg-ray's own errors, also from a Ray task; an unreachable S3 endpoint: one line
        from berg_ray.validation import berg_ray_cause, storage_failure_message

        cause = berg_ray_cause(error)  # (a Ray task's error holds the worker's traceback in its text: its cause)
        if cause is not None:
            if cause is not error:
                logger.debug("%s failed", args.command, exc_info=True)
            print(f"berg-ray {args.command}: error: {cause}", file=sys.stderr)
            return 2
        message = storage_failure_message(error, resumable=args.command == "encode-corpus")
        if message is None:
            raise
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"berg-ray {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        restore_output()


if __name__ == "__main__":
    sys.exit(main())
