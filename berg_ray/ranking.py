"""Drive/suppress ranking of a corpus output's sentences (Tuckute et al. 2024): the sentences with the highest and
lowest predicted response of the language network, or of one ROI, for one subject or averaged over subjects.

:func:`rank_sentences` streams over a finished output (local or ``s3://``), one part at a time in input order
(``parts.parquet``), keeping only the current top and bottom candidates and a histogram of every score: its memory
does not grow with the corpus. It reads the ROI output (``rois/``) when the output has one, else reduces the voxel
predictions (``predictions/``) part by part with the averaging weights of ``voxels.parquet``; both give the same
scores (to float32 rounding). Ties are broken by input order (the earlier sentence ranks first on either side). The
sentence text comes from the output's ``sentences/`` (see :mod:`berg_ray.corpus_outputs`).

What ``by`` may name depends on the dataset the output's encoding models were trained on (the manifest's
``dataset`` and ``roi_column``; see :mod:`berg_ray.reductions`): ``"network"`` always (a subject's mean over its
neuroids; for Tuckute2024.language, whose one neuroid is the left-hemisphere language network, that neuroid: the
paper's drive/suppress procedure at network level), or an ROI: Pereira2018's ``roi`` labels, Tuckute2024's
``lang_LH_netw`` (the same scores as ``network``), Blank2014's ``fROI_area`` names; Fedorenko2016's electrodes have
no ROIs. Any other ``by`` is refused with the output's dataset and its allowed values.

:func:`write_rank_outputs` writes what ``berg-ray rank`` leaves in ``--out``: the table as CSV and Parquet, a PNG
(score distribution with the top and bottom marked; ROI profile of top vs bottom) and ``report.md``.
"""

from __future__ import annotations

import io
import logging
import numbers
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from berg_ray.corpus_outputs import manifest_roi_column, read_manifest, read_part_table, read_plan, read_reduction
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import FileRoot
from berg_ray.reductions import NETWORK, RoiReduction

logger = logging.getLogger(__name__)

#: where scores are read from: the ROI output, the voxel output, or the ROI output when there is one
SOURCES: tuple[str, ...] = ("auto", "rois", "voxels")
#: the columns of a ranking table
RANK_COLUMNS: tuple[str, ...] = ("side", "rank", "sentence_id", "sentence", "score")
#: file names that write_rank_outputs writes
RANK_FILES: tuple[str, ...] = ("rank.csv", "rank.parquet", "rank.png", "report.md")
#: bins of the streamed score histogram (the plot merges them to ≤ 64 over the data)
HISTOGRAM_BINS = 256


class StreamingHistogram:
    """Counts of a stream of values in ``bins`` equal bins whose range grows as needed (doubling the bin width and
    merging neighbouring bins), so the memory is fixed whatever the number of values; exact counts, bin edges
    within a factor 2 of the data's range."""

    def __init__(self, bins: int = HISTOGRAM_BINS):
        if bins < 2 or bins % 2:
            raise InvalidInputError(f"bins must be an even integer ≥ 2, got {bins!r}")
        self.bins = bins
        self.low: float | None = None
        self.width = 0.0
        self.counts = np.zeros(bins, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        low, high = float(values.min()), float(values.max())
        if self.low is None:  # the first values sit mid-bin: no value lies on an edge as the bins merge
            self.width = (high - low) / (self.bins - 1) if high > low else max(abs(low), 1.0) * 1e-6
            self.low = low - self.width / 2
        while low < self.low or high >= self.low + self.width * self.bins:
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros(self.bins, dtype=np.int64)
            if low < self.low:  # grow to the left: the old range becomes the upper half
                self.low -= self.width * self.bins
                self.counts[self.bins // 2:] = merged
            else:
                self.counts[: self.bins // 2] = merged
            self.width *= 2
        index = np.minimum(((values - self.low) / self.width).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    @property
    def edges(self) -> np.ndarray:
        """(bins + 1,) bin edges (empty before the first value)."""
        if self.low is None:
            return np.zeros(0)
        return self.low + self.width * np.arange(self.bins + 1)


@dataclass
class RankResult:
    """A ranking and what its report shows.

    Attributes:
        table: the ranking (:data:`RANK_COLUMNS`): ``top`` rows (rank 1 = highest score) then ``bottom`` rows
            (rank 1 = lowest score).
        profiles: one row per row of ``table`` (same index): the sentence's value in every column (network, ROIs),
            for the same subject or subject mean as ``score``.
        histogram: the distribution of every sentence's score.
        n_sentences: sentences ranked.
    """

    table: pd.DataFrame
    profiles: pd.DataFrame
    histogram: StreamingHistogram
    n_sentences: int
    by: str
    subject: str
    subjects: list[str]
    source: str
    output: str
    manifest: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic"))


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidInputError(f"{name} must be an integer ≥ 0, got {value!r}")
    return int(value)


def _mean_over_subjects(blocks: list[np.ndarray]) -> np.ndarray:
    """Mean of (n, columns) blocks over subjects, ignoring a subject's NaN (an ROI it has no voxels in)."""
    stacked = np.stack(blocks)
    counts = np.isfinite(stacked).sum(axis=0)
    total = np.where(np.isfinite(stacked), stacked, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _same_ids(ids: np.ndarray | None, subject_ids: np.ndarray, where: str, subject: str, first: str) -> np.ndarray:
    if ids is not None and not np.array_equal(ids, subject_ids):
        raise InvalidInputError(f"{where}: subject {subject!r} has other sentences than {first!r}; the output is "
                                "damaged (encode it again)")
    return subject_ids


def _part_profile(out: FileRoot, part_id: str, subjects: list[str], reduction: RoiReduction,
                  source: str) -> tuple[np.ndarray, np.ndarray]:
    """(sentence ids (n,), values (n, columns) float64: the mean over ``subjects``) of one part."""
    columns = list(reduction.columns)
    blocks, ids = [], None
    if source == "rois":
        where = f"rois/part-{part_id}.parquet"
        table = read_part_table(out, where, ["sentence_id", "subject", *columns])
        codes = table.column("subject").combine_chunks().dictionary_encode()
        names = codes.dictionary.to_pylist()
        codes = codes.indices.to_numpy()
        all_ids = table.column("sentence_id").to_numpy(zero_copy_only=False)
        values = np.column_stack([table.column(c).to_numpy().astype(np.float64) for c in columns])
        for subject in subjects:
            if subject not in names:
                raise InvalidInputError(f"{where} has no rows for subject {subject!r}; the output is damaged (encode "
                                        "it again)")
            rows = np.flatnonzero(codes == names.index(subject))
            ids = _same_ids(ids, all_ids[rows], where, subject, subjects[0])
            blocks.append(values[rows])
    else:
        for subject in subjects:
            where = f"predictions/subject-{subject}/part-{part_id}.parquet"
            table = read_part_table(out, where, ["sentence_id", "responses"])
            ids = _same_ids(ids, table.column("sentence_id").to_numpy(zero_copy_only=False), where, subject,
                            subjects[0])
            responses = table.column("responses").combine_chunks()
            values = responses.flatten().to_numpy(zero_copy_only=False).reshape(len(responses), -1)
            blocks.append(reduction.reduce(subject, values))
    return ids, _mean_over_subjects(blocks)


class _Extremes:
    """The ``n`` most extreme sentences seen so far on one side (highest scores, or lowest), ties by input order:
    at most ``n`` rows of (input order, part index, sentence id, score, profile) as numpy arrays."""

    def __init__(self, n: int, descending: bool, n_columns: int):
        self.n, self.sign = n, -1.0 if descending else 1.0
        self.order = np.zeros(0, dtype=np.int64)
        self.part = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=object)
        self.score = np.zeros(0)
        self.values = np.zeros((0, n_columns))

    def add(self, order: np.ndarray, part: int, ids: np.ndarray, score: np.ndarray, values: np.ndarray) -> None:
        if self.n == 0:
            return
        order = np.concatenate([self.order, order])
        part = np.concatenate([self.part, np.full(len(ids), part, dtype=np.int64)])
        ids = np.concatenate([self.ids, np.asarray(ids, dtype=object)])
        score = np.concatenate([self.score, score])
        values = np.concatenate([self.values, values])
        key = np.where(np.isnan(score), np.inf, self.sign * score)  # NaN (no value) never ranks before a number
        keep = np.lexsort((order, key))[: self.n]  # by key, then by input order
        self.order, self.part, self.ids, self.score, self.values = (order[keep], part[keep], ids[keep], score[keep],
                                                                    values[keep])

    def frame(self, side: str, columns: list[str]) -> pd.DataFrame:
        frame = pd.DataFrame(self.values, columns=columns)
        frame.insert(0, "score", self.score)
        frame.insert(0, "sentence_id", pd.Series(self.ids, dtype=object))
        frame.insert(0, "part", self.part)
        frame.insert(0, "rank", np.arange(1, len(self.ids) + 1, dtype=np.int64))
        frame.insert(0, "side", side)
        return frame


def unknown_by_message(by: str, manifest: dict[str, Any], reduction: RoiReduction) -> str:
    """The error for a ``by`` that is neither ``network`` nor an ROI of the output: the output's dataset, its ROI
    grouping and every allowed value."""
    dataset = manifest.get("dataset", "Pereira2018.language")
    column = manifest_roi_column(manifest)
    if not reduction.rois:
        unit = manifest.get("neuroid_unit", "neuroid")
        return (f"by must be 'network' for an output of {dataset} (the mean over each subject's {unit}s): its "
                f"{unit}s are not grouped into ROIs, got {by!r}")
    return (f"by must be 'network' or one of the ROIs of this {dataset} output (its neuroids' {column!r}: "
            f"{', '.join(reduction.rois)}), got {by!r}")


def rank_corpus(output: str, by: str = NETWORK, subject: str = "all", top: int = 100, bottom: int = 100,
                source: str = "auto") -> RankResult:
    """:func:`rank_sentences`, with what a report needs besides the table (profiles, score histogram, provenance).

    See :func:`rank_sentences` for the arguments; ``source``: ``"rois"``, ``"voxels"`` or ``"auto"`` (the ROI
    output when the output has one).
    """
    started = time.perf_counter()
    top, bottom = _check_count(top, "top"), _check_count(bottom, "bottom")
    if top + bottom == 0:
        raise InvalidInputError("top and bottom are both 0: nothing to rank")
    if source not in SOURCES:
        raise InvalidInputError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    out = FileRoot(output)
    manifest = read_manifest(out)
    subjects = list(manifest["subjects"])
    if subject != "all" and subject not in subjects:
        raise InvalidInputError(f"subject must be 'all' or one of the output's subjects {', '.join(subjects)}, got "
                                f"{subject!r}")
    chosen = subjects if subject == "all" else [subject]
    outputs = manifest["outputs"]
    if source == "auto":
        source = "rois" if "rois" in outputs else "voxels"
    if source not in outputs:
        raise InvalidInputError(f"{output!r} holds no {source} output (it holds {', '.join(outputs)})")
    reduction = read_reduction(out, manifest, subjects)
    columns = list(reduction.columns)
    if source == "rois" and manifest.get("rois") != columns:
        raise InvalidInputError(f"{output!r}: the ROI output's columns {manifest.get('rois')} differ from those of "
                                f"voxels.parquet {columns}; the output is damaged (encode it again)")
    if by not in columns:
        raise InvalidInputError(unknown_by_message(by, manifest, reduction))
    column = columns.index(by)
    if not any(reduction.present[s][column] for s in chosen):
        raise InvalidInputError(f"subject {subject!r} has no voxels in ROI {by!r}: nothing to rank by")
    plan = read_plan(out, manifest)
    histogram = StreamingHistogram()
    best, worst = _Extremes(top, True, len(columns)), _Extremes(bottom, False, len(columns))
    n_sentences = 0
    for index, (part_id, n_written) in enumerate(zip(plan["part_id"], plan["n_written"])):
        if not n_written:
            continue
        ids, values = _part_profile(out, part_id, chosen, reduction, source)
        order = n_sentences + np.arange(len(ids))
        for side in (best, worst):
            side.add(order, index, ids, values[:, column], values)
        histogram.add(values[:, column])
        n_sentences += len(ids)
    chosen_rows = pd.concat([best.frame("top", columns), worst.frame("bottom", columns)], ignore_index=True)
    sentences: dict[str, str] = {}
    for index in sorted(set(chosen_rows["part"].astype(int))):
        table = read_part_table(out, f"sentences/part-{plan['part_id'].iloc[index]}.parquet").to_pydict()
        sentences.update(zip(table["sentence_id"], table["sentence"]))
    chosen_rows["sentence"] = [sentences[i] for i in chosen_rows["sentence_id"]]
    result_table = chosen_rows[list(RANK_COLUMNS)].astype({"rank": np.int64, "score": np.float64})
    result_table = result_table.astype({"sentence_id": object, "sentence": object})
    seconds = time.perf_counter() - started
    logger.info("ranked %d sentences of %s by %s (%s, from %s) in %.2f s", n_sentences, output, by, subject, source,
                seconds)
    return RankResult(result_table, chosen_rows[columns].astype(np.float64), histogram, n_sentences, by, subject,
                      subjects, source, output, manifest, seconds)


def rank_sentences(output: str, by: str = NETWORK, subject: str = "all", top: int = 100, bottom: int = 100,
                   source: str = "auto") -> pd.DataFrame:
    """The ``top`` sentences of a finished corpus output with the highest predicted response and the ``bottom``
    ones with the lowest (drive and suppress), streaming over its Parquet parts (local or ``s3://``).

    Args:
        output: a finished :func:`~berg_ray.corpus.encode_corpus` output folder.
        by: ``"network"`` (the mean over all of a subject's voxels, or neuroids) or an ROI name (the mean over its
            voxels; ROI names come from the dataset's ROI coordinate, see the module docstring; the
            ROI names of ``voxels.parquet``).
        subject: a subject of the output, or ``"all"``: the mean of the per-subject scores over the output's
            subjects (over those with voxels in the ROI).
        top, bottom: how many sentences to list on each side (integers ≥ 0; the sides are ranked independently, so
            they overlap when ``top + bottom`` exceeds the number of sentences).
        source: ``"auto"`` (the ROI output when there is one, else the voxel output), ``"rois"`` or ``"voxels"``.

    Returns:
        A frame of ``top + bottom`` rows (fewer when the corpus is smaller) with columns ``side`` (``"top"`` then
        ``"bottom"``), ``rank`` (1 = most extreme), ``sentence_id``, ``sentence``, ``score`` (predicted response,
        z-units of the training data); ties ranked by input order.

    Raises:
        InvalidInputError: no finished output, an unknown ``by`` or ``subject``, a missing ``source``, or negative
            counts.
    """
    return rank_corpus(output, by, subject, top, bottom, source).table


# --------------------------------------------------------------------------------------------------------------
# berg-ray rank: files


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def rank_report(result: RankResult, png_name: str = "rank.png") -> str:
    """``report.md``: what was ranked, how, and the top and bottom sentences."""
    manifest = result.manifest
    who = (f"the mean over {len(result.subjects)} subjects ({', '.join(result.subjects)})" if result.subject == "all"
           else f"subject {result.subject}")
    unit = manifest.get("neuroid_unit", "voxel")
    network = ("the language network (its one neuroid: the network's response)" if unit == "network"
               else f"the language network (mean over all {unit}s)")
    what = network if result.by == NETWORK else f"ROI {result.by}"
    dataset = manifest.get("dataset", "Pereira2018.language")
    folder = "rois/" if result.source == "rois" else "predictions/ (reduced part by part)"
    lines = [f"# Sentences that drive and suppress {what}", ""]
    if result.synthetic:
        lines += [f"> **SYNTHETIC DATA**: the encoding models were trained on a synthetic {dataset}-shaped dataset "
                  "with a planted map; these scores rank sentences by that map, not by any brain's response.", ""]
    lines += [f"- corpus output: `{result.output}` ({result.n_sentences} sentences ranked, read from {folder})",
              f"- model: {manifest.get('model_id')} (layer `{manifest.get('layer')}`, context "
              f"{manifest.get('context')}), dataset {dataset} (sha256 {str(manifest.get('dataset_sha256'))[:12]}…)",
              f"- score: predicted response of {what}, {who}; z-units of the training data",
              "- ties: ranked by input order (the earlier sentence first)", "",
              f"![score distribution]({png_name})", ""]
    for side, title in (("top", "Top (drive)"), ("bottom", "Bottom (suppress)")):
        rows = result.table[result.table["side"] == side]
        if rows.empty:
            continue
        lines += [f"## {title}: {len(rows)} sentences", "", "| rank | score | sentence_id | sentence |",
                  "| ---: | ---: | --- | --- |"]
        lines += [f"| {r.rank} | {r.score:.4f} | {_cell(r.sentence_id)} | {_cell(r.sentence)} |"
                  for r in rows.itertuples(index=False)]
        lines.append("")
    return "\n".join(lines)


def write_rank_outputs(result: RankResult, out: str) -> list[str]:
    """Write ``rank.csv``, ``rank.parquet``, ``rank.png`` and ``report.md`` into folder ``out`` (local or
    ``s3://``); returns their paths."""
    from berg_ray.plots import plot_rank

    root = FileRoot(out)
    buffer = io.BytesIO()
    result.table.to_parquet(buffer, index=False)
    png = io.BytesIO()
    plot_rank(result.histogram.counts, result.histogram.edges, result.table, result.profiles, result.by,
              "mean over subjects" if result.subject == "all" else f"subject {result.subject}", result.synthetic, png)
    contents = {"rank.csv": result.table.to_csv(index=False).encode(), "rank.parquet": buffer.getvalue(),
                "rank.png": png.getvalue(), "report.md": rank_report(result).encode()}
    written = []
    for name in RANK_FILES:
        root.write(root.path(name), contents[name])
        written.append(root.path(name) if root.local else f"{out.rstrip('/')}/{name}")
    return written
