"""Layout-exact synthetic stand-ins of brainscore-language's other neural datasets, with a planted linear map.

For each of ``Tuckute2024.language``, ``Blank2014.fROI`` and ``Fedorenko2016.language`` (``STANDIN_IDS``),
:func:`standin_stimuli` builds the presentation table and :func:`write_standin` writes a brainio ``NeuroidAssembly``
netCDF (presentation × neuroid, brainio's ``write_netcdf``) with the coordinates, dtypes, sizes and presentation
order of the real file, as brainscore-language 2.3.0's ``data/<name>/data_packaging.py`` builds it, so it loads
and scores through brainscore's own loader and benchmarks exactly like the real data:

* ``Tuckute2024.language`` (1,000 × 1, float64): presentation ``stimulus_id`` (int64 item ids 0..999, sorted, as
  the packaging's ``groupby('item_id')`` leaves them), ``stimulus`` (1,000 distinct six-word sentences, as the
  experiment's baseline set), ``cond`` and ``cond_approach`` (``'B'``: the train participants saw baseline
  sentences only); neuroid ``neuroid_id`` (int64 ``[1]``), ``subject_UID`` (``'848-853-865-875-876'``), ``roi``
  (``'lang_LH_netw'``).
* ``Blank2014.fROI`` (1,317 × 60, float64): eight stories (brainscore's test's set), each cut into 2 s TR
  fragments of 1–9 words whose concatenation is the story text (every fragment but a story's last ends in a space;
  ``stimulus`` repeats, e.g. every story opens with ``'Once upon a '``, ``stimulus_id`` ``'<story>.<sentence>.<part>'``
  is unique). Presentation coordinates as ``_align_stimuli_recordings`` builds them: ``stimulus_id``,
  ``meta_sentence`` (the TR's words, lower case, without punctuation, as the TextGrid gives them),
  ``sentence_number_in_story`` and ``part_number_in_sentence`` (int64: the sentence the fragment ends in, and its
  part number there), ``stimulus_sentence`` and ``stimulus`` (the fragment), ``story``, ``timepoint_value`` (int64
  seconds of the TR, even, ≥ 6 after the 8 s fixation and 4 s BOLD shift; per story, ``recording_timepoints``
  of ``stories_meta`` minus the fixation TRs, some silent TRs and the TRs after the story ended).
  Presentations sorted by ``(timepoint_value, story)``, so stories interleave in the file, each in time order.
  Neuroids as ``average_subregions`` stacks them (``fROI_area`` outer, ``subject_id`` inner): ``fROI_area`` (the
  12 language fROIs), ``subject_id`` (5 subjects), ``neuroid_id`` ``'<subject_id>.<fROI_area>'``.
* ``Fedorenko2016.language`` (416 × 97, float64): 52 sentences × 8 upper-case words without punctuation (255
  distinct words); presentation ``stimulus_id`` (int64 0..415), ``stimulus`` and ``word`` (the word), ``word_num``
  (int64 0..7), ``sentence_id`` (int64 0..51); neuroid ``electrode`` and ``neuroid_id`` (int64 0..96),
  ``subject_UID`` (int64 1..5 with 47, 8, 9, 15 and 18 electrodes).

Responses: :func:`berg_ray.synthetic.planted_map` of the caller's features (one row per presentation, in file
order), ``z_neuroid(s · z(F) @ A @ B + noise · E)``, standardised per neuroid (units: standard deviations), no NaN.
The real values are on other scales (Tuckute's are means of z-scores, max ≈ 1.285; Blank's are BOLD signal,
Fedorenko's high-gamma signal); a stand-in is only exact in layout. Every file records that it is synthetic
(``berg_ray_synthetic='true'``) with ``berg_ray_dataset``, the planted model, seed, rank, noise and the features'
SHA-256 (:func:`berg_ray.synthetic.features_sha256`).

Texts are generated deterministically from ``seed`` (no network): Blank2014's stories from the topic table of
:mod:`berg_ray.synthetic` (``berg_ray/data/synthetic_topics.json``), Tuckute2024's and Fedorenko2016's short
sentences from templates over its items and adjectives and the word lists of ``berg_ray/data/standin_words.json``.
"""

from __future__ import annotations

import berg_ray._environment  # noqa: F401  (must precede any brainscore import)

import functools
import importlib.resources
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from berg_ray import synthetic
from berg_ray.errors import InvalidInputError
from berg_ray.fsio import atomic_path

_logger = logging.getLogger(__name__)

TUCKUTE = "Tuckute2024.language"
BLANK = "Blank2014.fROI"
FEDORENKO = "Fedorenko2016.language"
#: the dataset ids :func:`standin_stimuli` and :func:`write_standin` build
STANDIN_IDS: tuple[str, ...] = (TUCKUTE, BLANK, FEDORENKO)

WORDS_FILE = "standin_words.json"

# --- Tuckute2024 (data/tuckute2024/data_packaging.py) ---------------------------------------------------------
TUCKUTE_N = 1000
TUCKUTE_SUBJECT_UID = "848-853-865-875-876"
TUCKUTE_ROI = "lang_LH_netw"
TUCKUTE_WORDS = 6

# --- Blank2014 (data/blank2014/data_packaging.py) --------------------------------------------------------------
BLANK_N = 1317
#: ``stories_meta``'s ``recording_timepoints`` of the eight stories every kept subject heard
BLANK_TIMEPOINTS: dict[str, int] = {"Aqua": 159, "Boar": 169, "Elvis": 151, "HighSchool": 174, "KingOfBirds": 198,
                                    "MatchstickSeller": 197, "MrSticky": 205, "Tulips": 194}
BLANK_SUBJECTS: tuple[str, ...] = ("061", "085", "088", "090", "098")
#: ``fROIs['language']`` of the packaging code, in its order (also the sorted order)
BLANK_FROIS: tuple[str, ...] = ("01_LH_PostTemp", "02_LH_AntTemp", "03_LH_IFG", "04_LH_IFGorb", "05_LH_MFG",
                                "06_LH_AngG", "07_RH_PostTemp", "08_RH_AntTemp", "09_RH_IFG", "10_RH_IFGorb",
                                "11_RH_MFG", "12_RH_AngG")
_FIXATION_OFFSET, _BOLD_SHIFT, _TR = 8, 4, 2
_TRAILING_TRS = 4  # TRs recorded after a story ended (dropped by the packaging: no new words)
_OPENING = "Once upon a "  # brainscore's test: ``'Once upon a ' in assembly['stimulus'].values``
_COMPARE_CHARACTERS = (",", '"', "'", ":", ".", "!", "?", "(", ")")

# --- Fedorenko2016 (data/fedorenko2016/data_packaging.py) ------------------------------------------------------
FEDORENKO_SENTENCES, FEDORENKO_WORDS, FEDORENKO_UNIQUE = 52, 8, 255
FEDORENKO_ELECTRODES: tuple[int, ...] = (47, 8, 9, 15, 18)  # subjects 1..5

_PRESENTATION_COORDS: dict[str, tuple[str, ...]] = {
    TUCKUTE: ("stimulus_id", "stimulus", "cond", "cond_approach"),
    BLANK: ("stimulus_id", "meta_sentence", "sentence_number_in_story", "part_number_in_sentence",
            "stimulus_sentence", "story", "timepoint_value", "stimulus"),
    FEDORENKO: ("stimulus_id", "stimulus", "word", "word_num", "sentence_id"),
}


def _check_id(identifier: str) -> str:
    if identifier not in STANDIN_IDS:
        raise InvalidInputError(f"no stand-in for dataset {identifier!r}; stand-ins exist for "
                                f"{', '.join(STANDIN_IDS)} (and 'Pereira2018.language': berg_ray.synthetic)")
    return identifier


@functools.cache
def _words() -> dict[str, tuple[str, ...]]:
    """Word lists (package data) plus the topic table's one-word items (nouns) and adjectives."""
    text = importlib.resources.files("berg_ray").joinpath("data", WORDS_FILE).read_text(encoding="utf-8")
    lists = {key: tuple(values) for key, values in json.loads(text).items() if key != "description"}
    topics = synthetic.topic_table()
    taken = {word for key in ("male_names", "female_names", "verbs", "feelings", "adverbs") for word in lists[key]}
    nouns = [item for topic in topics for item in topic.items if item.isalpha() and item not in taken]
    adjectives = [adj for topic in topics for adj in topic.adjs if adj.isalpha() and adj not in taken]
    lists["nouns"] = tuple(dict.fromkeys(nouns))
    lists["adjectives"] = tuple(a for a in dict.fromkeys(adjectives) if a not in set(lists["nouns"]))
    return lists


# ------------------------------------------------------------------------------------------------------------------
# Tuckute2024: 1,000 six-word sentences


def _tuckute_sentence(rng: np.random.Generator) -> str:
    w = _words()
    pick = lambda key: w[key][rng.integers(len(w[key]))]  # noqa: E731
    name = lambda: pick("male_names" if rng.random() < 0.5 else "female_names").capitalize()  # noqa: E731
    kind = rng.integers(4)
    if kind == 0:
        return f"The {pick('adjectives')} {pick('nouns')} {pick('verbs')} the {pick('nouns')}."
    if kind == 1:
        return f"{name()} {pick('verbs')} the {pick('adjectives')} {pick('nouns')} today."
    if kind == 2:
        return f"{name()} and {name()} {pick('verbs')} the {pick('nouns')}."
    return f"Yesterday {name()} {pick('verbs')} the {pick('nouns')} again."


def _tuckute_stimuli(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 21])
    sentences: dict[str, None] = {}
    while len(sentences) < TUCKUTE_N:
        sentences[_tuckute_sentence(rng)] = None
    frame = pd.DataFrame({
        "stimulus_id": np.arange(TUCKUTE_N, dtype=np.int64),
        "stimulus": np.asarray(list(sentences), dtype=object),
        "cond": np.full(TUCKUTE_N, "B", dtype=object),
        "cond_approach": np.full(TUCKUTE_N, "B", dtype=object),
    })
    return frame


# ------------------------------------------------------------------------------------------------------------------
# Blank2014: eight stories in TR fragments


def _story_sentences(story_index: int, n_words: int, rng: np.random.Generator) -> list[str]:
    """Sentences of one story (three topics of the table), at least ``n_words`` words in all."""
    topics = synthetic.topic_table()
    chosen = [topics[(3 * story_index + k) % len(topics)] for k in range(3)]
    first = chosen[0]
    low_a, _ = synthetic.with_article(first.items[0], False)
    sentences = [f"Once upon a time, there lived {low_a} who {first.does[rng.integers(len(first.does))]}."]
    count = len(sentences[0].split())
    while count < n_words:
        for topic in chosen:
            for item in topic.items:
                template = synthetic.SENTENCE_TEMPLATES[rng.integers(len(synthetic.SENTENCE_TEMPLATES))]
                sentence = synthetic.fill_template(template, topic, item, rng)
                sentences.append(sentence)
                count += len(sentence.split())
                if count >= n_words:
                    return sentences
    return sentences


def _meta_sentence(fragment: str) -> str:
    """What the TextGrid gives for a TR: its words in lower case, without punctuation."""
    text = fragment
    for character in _COMPARE_CHARACTERS:
        text = text.replace(character, "")
    return " ".join(text.lower().split())


def _blank_story(story: str, story_index: int, n_fragments: int, n_timepoints: int,
                 rng: np.random.Generator) -> list[dict[str, object]]:
    # TR values of the recording: 2 - 8, 4 - 8, ...; fragments only where a TR's shifted time is > 0
    timepoints = np.arange(_TR - _FIXATION_OFFSET, _TR + n_timepoints * _TR - _FIXATION_OFFSET, _TR)
    available = timepoints[timepoints - _BOLD_SHIFT > 0][:-_TRAILING_TRS]
    silent = rng.choice(np.arange(1, len(available)), size=len(available) - n_fragments, replace=False)
    kept = np.delete(available, silent)
    assert len(kept) == n_fragments
    # fragment lengths: the opening's 3 words, then 2-8 words per TR (about 5, as a reader's 2 s), then the story's
    # text is generated to at least that many words and the excess spread over the fragments
    n_open = len(_OPENING.split())
    lengths = np.concatenate([[n_open], rng.integers(2, 9, size=n_fragments - 1)])
    sentences = _story_sentences(story_index, int(lengths.sum()), rng)
    words = [(word, k) for k, sentence in enumerate(sentences) for word in sentence.split(" ")]
    for _ in range(len(words) - int(lengths.sum())):
        lengths[1 + rng.integers(n_fragments - 1)] += 1
    cuts = np.cumsum(lengths)[:-1]
    bounds = [0, *cuts.tolist(), len(words)]
    rows: list[dict[str, object]] = []
    parts: Counter[int] = Counter()
    for f, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        last = stop == len(words)
        fragment = " ".join(word for word, _ in words[start:stop]) + ("" if last else " ")
        sentence_num = words[stop - 1][1]  # the sentence the fragment ends in (as _align_stimuli_recordings)
        part = parts[sentence_num]
        parts[sentence_num] += 1
        rows.append({
            "stimulus_id": f"{story}.{sentence_num}.{part}",
            "meta_sentence": _meta_sentence(fragment),
            "sentence_number_in_story": sentence_num,
            "part_number_in_sentence": part,
            "stimulus_sentence": fragment,
            "story": story,
            "timepoint_value": int(kept[f]),
            "stimulus": fragment,
        })
    assert "".join(row["stimulus"] for row in rows) == " ".join(sentences)
    return rows


def _blank_stimuli(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, 22])
    stories = sorted(BLANK_TIMEPOINTS)
    capacity = {story: BLANK_TIMEPOINTS[story] - (_FIXATION_OFFSET + _BOLD_SHIFT) // _TR - _TRAILING_TRS
                for story in stories}
    # silent TRs: spread the difference between what the recordings hold and 1,317 over the stories
    drop = sum(capacity.values()) - BLANK_N
    drops = {story: drop // len(stories) + (1 if k < drop % len(stories) else 0) for k, story in enumerate(stories)}
    rows: list[dict[str, object]] = []
    for k, story in enumerate(stories):
        rows += _blank_story(story, k, capacity[story] - drops[story], BLANK_TIMEPOINTS[story], rng)
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["timepoint_value", "story"], kind="stable").reset_index(drop=True)
    for name in ("sentence_number_in_story", "part_number_in_sentence", "timepoint_value"):
        frame[name] = frame[name].astype(np.int64)
    for name in ("stimulus_id", "meta_sentence", "stimulus_sentence", "story", "stimulus"):
        frame[name] = frame[name].astype(object)
    return frame


# ------------------------------------------------------------------------------------------------------------------
# Fedorenko2016: 52 sentences of 8 upper-case words, 255 distinct words

# slots: a category of _words() (content) or a fixed word; 'pronoun' follows the sentence's first name's gender
_FEDORENKO_TEMPLATES: tuple[tuple[str, ...], ...] = (
    ("@name", "WAS", "@feelings", "SO", "@pronoun", "@verbs", "THE", "@nouns"),
    ("@name", "@verbs", "THE", "@adjectives", "@nouns", "NEAR", "THE", "@nouns"),
    ("THE", "@adjectives", "@nouns", "@verbs", "THE", "@nouns", "FOR", "@name"),
    ("@name", "AND", "@name", "@verbs", "THE", "@adjectives", "@nouns", "TODAY"),
    ("YESTERDAY", "@name", "@verbs", "THE", "@adjectives", "@nouns", "AND", "@nouns"),
    ("THE", "@adjectives", "@nouns", "@verbs", "THE", "@adjectives", "@nouns", "@adverbs"),
    ("@name", "@adverbs", "@verbs", "THE", "@adjectives", "@nouns", "NEAR", "@name"),
)


def _fedorenko_sentences(seed: int) -> list[list[str]]:
    w = {key: [word.upper() for word in values] for key, values in _words().items()}
    rng = np.random.default_rng([seed, 23])
    sentences: list[list[str]] = []
    slots: list[tuple[int, int, str]] = []  # (sentence, position, category) of every content word
    for s in range(FEDORENKO_SENTENCES):
        template = _FEDORENKO_TEMPLATES[0 if s == 0 else rng.integers(len(_FEDORENKO_TEMPLATES))]
        gender = None
        words: list[str] = []
        for position, slot in enumerate(template):
            if not slot.startswith("@"):
                words.append(slot)
                continue
            category = slot[1:]
            if category == "name":
                category = "male_names" if rng.random() < 0.5 else "female_names"
                gender = gender or category
            if category == "pronoun":
                words.append("HE" if gender == "male_names" else "SHE")
                continue
            words.append(w[category][rng.integers(len(w[category]))])
            slots.append((s, position, category))
        sentences.append(words)
    # exactly 255 distinct words: replace single-use content words by used ones of their category, or repeated
    # ones by unused ones, until the count is right
    def counts() -> Counter[str]:
        return Counter(word for words in sentences for word in words)

    while True:
        counter = counts()
        excess = len(counter) - FEDORENKO_UNIQUE
        if excess == 0:
            break
        order = rng.permutation(len(slots))
        for index in order:
            s, position, category = slots[index]
            word = sentences[s][position]
            if excess > 0 and counter[word] == 1:
                used = [c for c in w[category] if counter[c] > 0 and c != word]
                if used:
                    sentences[s][position] = used[rng.integers(len(used))]
                    break
            if excess < 0 and counter[word] > 1:
                unused = [c for c in w[category] if counter[c] == 0]
                if unused:
                    sentences[s][position] = unused[rng.integers(len(unused))]
                    break
        else:  # pragma: no cover - the word lists are large enough
            raise RuntimeError("cannot reach 255 distinct words with the stand-in word lists")
    if len({" ".join(words) for words in sentences}) != FEDORENKO_SENTENCES:  # pragma: no cover
        raise RuntimeError("stand-in Fedorenko2016 sentences are not distinct; try another seed")
    return sentences


def _fedorenko_stimuli(seed: int) -> pd.DataFrame:
    sentences = _fedorenko_sentences(seed)
    words = np.asarray([word for sentence in sentences for word in sentence], dtype=object)
    n = len(words)
    return pd.DataFrame({
        "stimulus_id": np.arange(n, dtype=np.int64),
        "stimulus": words,
        "word": words.copy(),
        "word_num": np.tile(np.arange(FEDORENKO_WORDS, dtype=np.int64), FEDORENKO_SENTENCES),
        "sentence_id": np.repeat(np.arange(FEDORENKO_SENTENCES, dtype=np.int64), FEDORENKO_WORDS),
    })


# ------------------------------------------------------------------------------------------------------------------
# public API


def standin_stimuli(identifier: str, seed: int = 0) -> pd.DataFrame:
    """The presentation coordinates of ``identifier``'s stand-in: one row per presentation, in file order.

    Columns: every presentation coordinate of the real file, with its dtype (int64 or str objects), in the order
    of :data:`_PRESENTATION_COORDS`; rows: Tuckute2024 1,000, Blank2014 1,317, Fedorenko2016 416 (see the module
    docstring). Deterministic for a given ``seed``; no network.
    """
    _check_id(identifier)
    if identifier == TUCKUTE:
        frame = _tuckute_stimuli(seed)
    elif identifier == BLANK:
        frame = _blank_stimuli(seed)
    else:
        frame = _fedorenko_stimuli(seed)
    return frame[list(_PRESENTATION_COORDS[identifier])]


def standin_neuroids(identifier: str) -> dict[str, np.ndarray]:
    """The neuroid coordinates of ``identifier``'s real file (name → (n_neuroids,) array), in file order."""
    _check_id(identifier)
    if identifier == TUCKUTE:
        return {"neuroid_id": np.asarray([1], dtype=np.int64),
                "subject_UID": np.asarray([TUCKUTE_SUBJECT_UID], dtype=object),
                "roi": np.asarray([TUCKUTE_ROI], dtype=object)}
    if identifier == BLANK:
        froi = np.repeat(np.asarray(BLANK_FROIS, dtype=object), len(BLANK_SUBJECTS))
        subject = np.tile(np.asarray(BLANK_SUBJECTS, dtype=object), len(BLANK_FROIS))
        return {"fROI_area": froi, "subject_id": subject,
                "neuroid_id": np.asarray([f"{s}.{f}" for s, f in zip(subject, froi)], dtype=object)}
    electrodes = np.arange(sum(FEDORENKO_ELECTRODES), dtype=np.int64)
    subjects = np.repeat(np.arange(1, len(FEDORENKO_ELECTRODES) + 1, dtype=np.int64), FEDORENKO_ELECTRODES)
    return {"electrode": electrodes, "neuroid_id": electrodes.copy(), "subject_UID": subjects}


def make_standin(identifier: str, features: np.ndarray, *, seed: int = 0, rank: int = 10, noise: float = 1.0,
                 planted_model: str | None = None):
    """Build ``identifier``'s stand-in ``NeuroidAssembly`` (presentation × neuroid, float64).

    ``features``: (n_presentations, d), one row per row of :func:`standin_stimuli` ``(identifier, seed)``, in
    order. Responses: :func:`berg_ray.synthetic.planted_map` (z-scored per neuroid, dimensionless).
    """
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

    stimuli = standin_stimuli(identifier, seed)
    array = synthetic.check_features(features, rank, noise, n_rows=len(stimuli),
                                      rows=f"presentation of standin_stimuli({identifier!r})")
    neuroids = standin_neuroids(identifier)
    n_neuroids = len(next(iter(neuroids.values())))
    data = synthetic.planted_map(array, n_neuroids, seed=seed, rank=rank, noise=noise)
    coords = {name: ("presentation", stimuli[name].to_numpy()) for name in stimuli.columns}
    coords.update({name: ("neuroid", values) for name, values in neuroids.items()})
    assembly = NeuroidAssembly(data, coords=coords, dims=["presentation", "neuroid"])
    prefix = synthetic.ATTR_PREFIX
    assembly.attrs.update({
        synthetic.SYNTHETIC_ATTR: "true",
        f"{prefix}dataset": identifier,
        f"{prefix}planted_model": planted_model or "",
        f"{prefix}seed": int(seed),
        f"{prefix}rank": int(rank),
        f"{prefix}noise": float(noise),
        f"{prefix}features_sha256": synthetic.features_sha256(features),
        f"{prefix}features_shape": f"{array.shape[0]}x{array.shape[1]}",
        f"{prefix}generator": "berg_ray.standins: z_neuroid(s * z(F) @ A @ B + noise * E)",
    })
    return assembly


def write_standin(identifier: str, path: str | os.PathLike, features: np.ndarray, *, seed: int = 0,
                  rank: int = 10, noise: float = 1.0, planted_model: str | None = None) -> Path:
    """Write ``identifier``'s stand-in to ``path`` (brainio ``write_netcdf``, atomically) and return its path.

    ``features``: (n_presentations, d) planted features, rows in file order (:func:`standin_stimuli`); the
    caller extracts them with the dataset's own context (Blank2014 per story, Fedorenko2016 per sentence,
    Tuckute2024 per sentence) and names the model in ``planted_model``.
    """
    from brainscore_core.supported_data_standards.brainio.packaging import write_netcdf

    path = Path(path)
    assembly = make_standin(identifier, features, seed=seed, rank=rank, noise=noise, planted_model=planted_model)
    with atomic_path(path, suffix=".nc") as temporary:
        sha1 = write_netcdf(assembly, temporary)
    _logger.info("wrote %s stand-in %s (sha1 %s, %d x %d, seed %d, rank %d, noise %g, planted model %s)",
                 identifier, path, sha1, *assembly.shape, seed, rank, noise, planted_model or "unknown")
    return path
