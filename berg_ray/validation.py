"""Argument checks for the front doors (Python API, CLI commands, Ray entry points), run before any work starts.

Every check raises :class:`~berg_ray.errors.InvalidInputError` with a message that names the bad value and what is
allowed, so a typo fails in milliseconds instead of after Ray has started, a model has loaded or nine subjects have
been fitted. This module imports neither torch nor Ray nor a filesystem library: it is safe to call first.

The per-command bundles (:func:`check_fit_arguments`, :func:`check_encode_arguments`,
:func:`check_corpus_arguments`) are what the CLI and the library entry points call in one line; the small checks
they are made of are public for other callers.
"""

from __future__ import annotations

import numbers
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from berg_ray.errors import BergRayError, InvalidInputError, UnknownSubjectError, closest
from berg_ray.options import SUBJECTS

#: output formats of ``berg-ray encode --out`` (see :func:`berg_ray.corpus_io.write_encoded`)
ENCODE_OUTPUT_SUFFIXES: tuple[str, ...] = (".parquet", ".npy")
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


# ---------------------------------------------------------------------------------------------------- numbers


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an integer ≥ 1 (not a bool, not a float); else :class:`InvalidInputError` naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer (1, 2, ...), got {value!r}")
    return int(value)


def check_batch_size(batch_size: Any, name: str = "batch_size") -> int:
    """Sequences per forward pass: a positive integer."""
    return check_positive_int(batch_size, name)


def check_n_components(n_components: Any, name: str = "n_components") -> int:
    """PLS components: a positive integer."""
    return check_positive_int(n_components, name)


def check_non_negative_number(value: Any, name: str) -> float:
    """``value`` if it is a finite real number ≥ 0 (e.g. ``num_gpus``: fractions allowed, 0 = none)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < float("inf"):
        raise InvalidInputError(f"{name} must be a number ≥ 0 (fractions allowed), got {value!r}")
    return float(value)


def check_positive_number(value: Any, name: str) -> float:
    """``value`` if it is a finite real number > 0 (e.g. ``num_cpus_per_extractor``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
        raise InvalidInputError(f"{name} must be a number > 0 (fractions allowed), got {value!r}")
    return float(value)


def check_device_name(device: Any) -> str:
    """The spelling of a device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (whether a GPU exists is checked later,
    by :func:`berg_ray.model_loading.resolve_device`)."""
    name = str(device) if device is not None else ""
    if not _DEVICE.match(name):
        raise InvalidInputError(f"unknown device {device!r}; allowed: 'cpu', 'cuda', 'cuda:N', 'auto'")
    return name


# ---------------------------------------------------------------------------------------------------- sentences


def sentence_problem(sentence: Any) -> str | None:
    """What is wrong with one sentence, as a phrase (``"is empty ('')"``), or None when it is usable.

    Usable: a ``str`` with some non-whitespace text that encodes to UTF-8 (a lone surrogate such as ``'\\ud800'``,
    which ``surrogateescape`` or a JSON ``\\ud800`` escape produces, does not; tokenizers reject it).
    """
    if isinstance(sentence, (bytes, bytearray)):
        return f"is bytes {bytes(sentence[:60])!r}, not a string; decode it first (e.g. .decode('utf-8'))"
    if sentence is None:
        return "is missing (None)"
    if not isinstance(sentence, str):
        return f"is {type(sentence).__name__} {sentence!r:.80}, not a string"
    if not sentence.strip():
        return f"is empty ({sentence!r:.40}); every sentence needs some text"
    try:
        sentence.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = sentence[error.start:error.end]
        return (f"{sentence[:60]!r} cannot be encoded as UTF-8: {error.reason} {bad!r} at character {error.start} "
                "(a lone surrogate: not valid Unicode; fix the text or its decoding)")
    return None


def check_sentences(sentences: Any) -> list[str]:
    """``sentences`` (one string, or a list, tuple, array or Series of strings) as a list of n_sentences strings.

    Raises :class:`InvalidInputError` naming the index and the problem of the first bad sentence (see
    :func:`sentence_problem`), or the type of a container that is not a sequence of sentences.
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    elif isinstance(sentences, (bytes, bytearray)):
        raise InvalidInputError(f"sentences is bytes {bytes(sentences[:60])!r}, not a string or a list of strings; "
                                "decode it first (e.g. .decode('utf-8'))")
    elif hasattr(sentences, "tolist") and not isinstance(sentences, Sequence):  # numpy array, pandas Series
        sentences = sentences.tolist()
        if isinstance(sentences, str):  # a 0-d array
            sentences = [sentences]
    if not isinstance(sentences, Sequence):
        raise InvalidInputError(f"sentences must be a string or a list of strings, got {type(sentences).__name__}")
    sentences = list(sentences)
    if not sentences:
        raise InvalidInputError("sentences is an empty list; give at least one non-empty sentence")
    for index, sentence in enumerate(sentences):
        problem = sentence_problem(sentence)
        if problem is not None:
            raise InvalidInputError(f"sentence {index} {problem}")
    return sentences


# ---------------------------------------------------------------------------------------------------- layers


def check_layers(layers: str | Sequence[str]) -> list[str]:
    """``layers`` as a list of distinct dotted module names (a single name is a list of one), in the given order."""
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or not layers:
        raise InvalidInputError(f"layers must be a module name or a non-empty list of them (e.g. 'transformer.h.5'), "
                                f"got {layers!r}")
    for layer in layers:
        if not isinstance(layer, str) or not layer:
            raise InvalidInputError(f"layer {layer!r} is not a module name; give dotted names like 'transformer.h.5'")
    return list(dict.fromkeys(layers))


# ---------------------------------------------------------------------------------------------------- subjects


def check_subjects(subjects: Any, dataset: Any = None) -> str | list[str | int]:
    """``"all"``, or the requested subject ids as a non-empty list (ids are normalised and looked up later, against
    the loaded dataset, by :func:`berg_ray.neural.check_subject`).

    ``"all"`` and ``["all"]`` (the CLI's default) mean every subject. For a dataset name (``"brainscore"``,
    ``"synthetic"``, a brainscore id, ``"synthetic:<id>"``) the ids are checked against that dataset's subjects here
    already.
    """
    if isinstance(subjects, str) or (isinstance(subjects, numbers.Integral) and not isinstance(subjects, bool)):
        subjects = [subjects]
    elif subjects is None or isinstance(subjects, (bytes, bytearray, dict)) or not isinstance(subjects, Iterable):
        raise InvalidInputError(f"subjects must be 'all', a subject id or a list of subject ids (e.g. ['018', '199'])"
                                f", got {subjects!r}")
    chosen = list(subjects)
    if not chosen:
        raise InvalidInputError("no subjects given; allowed: 'all' or a list of subject ids (e.g. ['018', '199'])")
    for subject in chosen:
        if isinstance(subject, bool) or not isinstance(subject, (str, numbers.Integral)) or (
                isinstance(subject, str) and not subject.strip()):
            raise InvalidInputError(f"subject {subject!r} in subjects={chosen!r} is not a subject id; allowed: 'all' "
                                    "or ids such as '018' or 18")
    if any(isinstance(s, str) and s.strip() == "all" for s in chosen):
        if len(chosen) > 1:
            raise InvalidInputError(f"subjects={chosen!r}: 'all' cannot be combined with subject ids")
        return "all"
    from berg_ray.dataset_layouts import named_layout

    layout = named_layout(dataset)
    if layout is not None and layout.subjects:
        for subject in chosen:
            check_subject_id(subject, layout.subjects, dataset=layout.identifier)
    return chosen


def normalize_subject(subject: Any) -> str | None:
    """A subject id in the dataset's spelling (``18``, ``'18'``, ``' 018 '`` → ``'018'``), or None if it is none."""
    if isinstance(subject, numbers.Integral) and not isinstance(subject, bool):
        return f"{int(subject):03d}" if subject >= 0 else None
    if isinstance(subject, str):
        text = subject.strip()
        return text.zfill(3) if text.isdigit() else text
    return None


def check_subject_id(subject: Any, allowed: Sequence[str] = SUBJECTS, *, dataset: str = "Pereira2018") -> str:
    """The normalised ``subject`` if it is one of ``allowed`` (default: the nine Pereira subjects); else
    :class:`~berg_ray.errors.UnknownSubjectError` naming the value, the dataset, its ids and the closest ones.
    An id is taken as written first (``'1'``, ``'848-853-865-875-876'``), then zero-padded as Pereira's (``18`` →
    ``'018'``)."""
    if isinstance(subject, str) and subject.strip() in allowed:
        return subject.strip()
    if isinstance(subject, numbers.Integral) and not isinstance(subject, bool) and str(int(subject)) in allowed:
        return str(int(subject))
    normalised = normalize_subject(subject)
    if normalised is not None and normalised in allowed:
        return normalised
    hint = closest(str(normalised if normalised is not None else subject), list(allowed))
    suggestion = f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    raise UnknownSubjectError(
        f"Unknown subject {subject!r}: the {dataset} subjects are {', '.join(allowed)}.{suggestion}")


# ---------------------------------------------------------------------------------------------------- paths

#: a plain name, safe as one path component: a letter or digit first, then letters, digits, ``.``, ``_``, ``-``
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PLAIN_NAME_RULE = ("letters, digits, '.', '_' and '-', starting with a letter or digit, without '..' "
                   "(e.g. '018', '1' or '848-853-865-875-876')")


def path_component_problem(value: Any) -> str | None:
    """Why ``value`` may not become one component of a file path (a phrase), or None when it is a plain name
    (:data:`PLAIN_NAME`, ASCII only, no ``..``): no path separator, no ``..``, no leading ``.``, no empty name."""
    if not isinstance(value, str):
        return f"is {type(value).__name__}, not a string"
    if not PLAIN_NAME.fullmatch(value) or ".." in value:
        return f"is not a plain name: allowed are {PLAIN_NAME_RULE}"
    return None


def check_path_component(value: Any, what: str) -> str:
    """``value`` if it is safe as one path component (:func:`path_component_problem`); else
    :class:`InvalidInputError` naming ``what`` (e.g. ``"subject id"``), the value and the rule."""
    problem = path_component_problem(value)
    if problem is not None:
        raise InvalidInputError(f"{what} {value!r} {problem}")
    return value


def check_output_path(path: Any, suffixes: Sequence[str] = ENCODE_OUTPUT_SUFFIXES, name: str = "--out") -> str:
    """An output file name that ends in one of ``suffixes`` and, when local, lies in an existing folder."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"{name} must be a file name ending in {' or '.join(suffixes)}, got {path!r}")
    if not path.endswith(tuple(suffixes)):
        raise InvalidInputError(f"{name} {path!r} must end in {' or '.join(suffixes)}")
    if "://" not in path:
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise InvalidInputError(f"{name} {path!r} is a folder; give a file name ending in {' or '.join(suffixes)}")
        if not os.path.isdir(folder):
            raise InvalidInputError(f"{name} {path!r}: folder {folder!r} does not exist (create it first)")
    return path


def check_output_folder(path: Any, name: str = "output") -> str:
    """An output folder (local or URL) that is not an existing file."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise InvalidInputError(f"{name} must be a folder path or URL (e.g. preds/ or s3://bucket/preds/), got "
                                f"{path!r}")
    if "://" not in path and os.path.isfile(path):
        raise InvalidInputError(f"{name} {path!r} is an existing file; give a folder")
    return path


# ---------------------------------------------------------------------------------------------------- bundles


def _namer(cli: bool):
    """Names in messages: ``--batch-size`` for the command line, ``batch_size`` for Python callers."""
    return (lambda name: "--" + name.replace("_", "-")) if cli else (lambda name: name)


def check_fit_arguments(*, subjects: Any, n_components: Any, batch_size: Any, device: Any = "auto",
                        num_gpus: Any = 0.0, dataset: Any = None, cli: bool = False) -> None:
    """``fit`` / :func:`berg_ray.distributed.fit_subjects`: everything checkable before Ray or a model starts.

    ``cli=True`` names the command-line options (``--batch-size``) instead of the keyword arguments.
    """
    name = _namer(cli)
    check_subjects(subjects, dataset)
    check_n_components(n_components, name("n_components"))
    check_batch_size(batch_size, name("batch_size"))
    check_device_name(device)
    check_non_negative_number(num_gpus, name("num_gpus"))


def check_encode_arguments(*, out: Any, subject: Any, n_components: Any, batch_size: Any, device: Any = "auto",
                           sentences: Any = None, dataset: Any = None, cli: bool = False) -> None:
    """``encode``: the output format first (it used to be refused only after fitting), then the rest."""
    name = _namer(cli)
    check_output_path(out, name=name("out"))
    if isinstance(subject, (list, tuple)) or (isinstance(subject, str) and subject.strip() == "all"):
        raise InvalidInputError(f"encode takes one subject id (e.g. '018'), got {subject!r}")
    check_subjects([subject], dataset)
    check_n_components(n_components, name("n_components"))
    check_batch_size(batch_size, name("batch_size"))
    check_device_name(device)
    if sentences is not None:
        check_sentences(sentences)


def parse_top_k(text: Any, name: str = "--localizer-top-k") -> int | float:
    """A localizer ``top_k`` typed as text, as a number: ``"4096"`` → ``4096`` (an int: a number of units),
    ``"0.1"`` → ``0.1`` (a float: a fraction of the units). A number passes through unchanged.

    Only the spelling is checked here; the value rules (a fraction in (0, 1) or an int ≥ 1) are
    :func:`berg_ray.localizer.check_top_k`'s.
    """
    if isinstance(text, numbers.Real) and not isinstance(text, bool):
        return text
    if isinstance(text, str) and text.strip():
        for number in (int, float):
            try:
                return number(text)
            except ValueError:
                pass
    raise InvalidInputError(f"{name} {text!r} is not a number; give a fraction of the units in (0, 1) such as 0.1 "
                            "or a whole number of units ≥ 1 such as 4096")


def check_register_arguments(*, layers: Any, localizer_top_k: Any = None,
                             cli: bool = False) -> tuple[list[str], int | float | None]:
    """``register``: the layer list and the localizer's ``top_k``, checked before any model is built.

    Args:
        layers: one layer name or a list of them (``berg-ray register --layer A --layer B``: one ``--layer`` per
            layer; a name holding a comma is refused, as no module name holds one).
        localizer_top_k: ``None`` (a plain one-layer model), or the localizer's ``top_k`` as a number or as text
            (:func:`parse_top_k`); required for more than one layer.
        cli: name the command-line options (``--layer``) instead of the keyword arguments.

    Returns:
        (the layer names, ``top_k`` parsed but not range-checked: pass it to
        :func:`berg_ray.localizer.check_top_k`, which this foundation module cannot import).
    """
    name = _namer(cli)
    layer_flag, top_k_flag = name("layer"), name("localizer_top_k")
    chosen = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, (list, tuple)) else None
    if not chosen or not all(isinstance(layer, str) and layer.strip() for layer in chosen):
        raise InvalidInputError(f"{layer_flag} must be a dotted module name such as 'transformer.h.5' (or several, "
                                f"with {top_k_flag}), got {layers!r}")
    for layer in chosen:
        if "," in layer:
            parts = [part.strip() for part in layer.split(",") if part.strip()]
            how = " ".join(f"--layer {part}" for part in parts) if cli else repr(parts)
            raise InvalidInputError(f"{layer_flag} {layer!r} holds a comma, which no module name does; give each "
                                    f"layer separately: {how}")
    repeated = sorted({layer for layer in chosen if chosen.count(layer) > 1})
    if repeated:
        raise InvalidInputError(f"{layer_flag} names {', '.join(map(repr, repeated))} more than once; give each "
                                "layer once")
    if localizer_top_k is None:
        if len(chosen) > 1:
            shown = ", ".join(chosen) if len(chosen) <= 4 else f"{chosen[0]}, ..., {chosen[-1]}"
            raise InvalidInputError(f"a list of {len(chosen)} layers ({shown}) makes a localizer model, "
                                    f"which needs {top_k_flag}: a fraction of the units in (0, 1) such as 0.1, or a "
                                    f"number of units such as 4096; for a plain model give one {layer_flag}")
        return chosen, None
    return chosen, parse_top_k(localizer_top_k, top_k_flag)


def check_corpus_arguments(*, subjects: Any, n_components: Any, batch_size: Any, device: Any = "auto",
                           num_extractors: Any = 1, num_gpus: Any = 0.0, rows_per_part: Any = 1,
                           num_cpus_per_extractor: Any = None, output: Any = "out", dataset: Any = None,
                           cli: bool = False) -> None:
    """``encode-corpus`` / :func:`berg_ray.corpus.encode_corpus`: everything checkable before Ray starts."""
    name = _namer(cli)
    check_fit_arguments(subjects=subjects, n_components=n_components, batch_size=batch_size, device=device,
                        num_gpus=num_gpus, dataset=dataset, cli=cli)
    check_positive_int(num_extractors, name("num_extractors"))
    check_positive_int(rows_per_part, name("rows_per_part"))
    if num_cpus_per_extractor is not None:
        check_positive_number(num_cpus_per_extractor, name("num_cpus_per_extractor"))
    check_output_folder(output, name("output"))


# ---------------------------------------------------------------------------------------------------- storage

#: botocore's messages for a request that never got an answer (aiobotocore raises the same classes for s3fs)
_UNREACHABLE = re.compile(
    r"(Could not connect to the endpoint URL"
    r"|Connection was closed before we received a valid response from endpoint URL"
    r"|Connect timeout on endpoint URL|Read timeout on endpoint URL): \"([^\"]+)\"")


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception behind it: ``__cause__``, ``__context__`` and a Ray error's ``cause``."""
    found: list[BaseException] = []
    todo: list[Any] = [error]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or any(current is seen for seen in found):
            continue
        found.append(current)
        todo += [current.__cause__, current.__context__, getattr(current, "cause", None)]
    return found


def berg_ray_cause(error: BaseException) -> BergRayError | None:
    """The :class:`~berg_ray.errors.BergRayError` behind ``error`` (itself, or one raised in a Ray task or actor
    and carried by Ray's ``RayTaskError`` / ``UserCodeException``), or None. A Ray error that is also an instance
    of the cause's class (Ray's dual classes) is skipped: its text holds the worker's traceback."""
    ray_exceptions = sys.modules.get("ray.exceptions")  # (not loaded: no Ray error can be in the chain)
    ray_error = ray_exceptions.RayError if ray_exceptions is not None else ()
    for current in _chain(error):
        if isinstance(current, BergRayError) and not isinstance(current, ray_error):
            return current
    return None


def storage_failure_message(error: BaseException, *, resumable: bool = False) -> str | None:
    """One line for an object store that could not be reached (refused, closed or timed out), else None.

    Works on the driver's own errors and on Ray's (``RayTaskError`` / ``UserCodeException`` from a Ray Data actor):
    a Ray error carries the worker's traceback as text, so the failing request is found in the text of the chain.
    The line names the endpoint and the path of the failing request, and says whether a rerun resumes.
    """
    for current in _chain(error):
        try:
            text = str(current)
        except Exception:  # noqa: BLE001, S112  (a broken __str__ must not hide the original error)
            continue
        match = _UNREACHABLE.search(text)
        if match is None:
            continue
        kind, url = match.group(1), match.group(2)
        parts = urllib.parse.urlsplit(url)
        endpoint = f"{parts.scheme}://{parts.netloc}" if parts.netloc else url
        path = urllib.parse.unquote(parts.path).strip("/")
        prefix = urllib.parse.parse_qs(parts.query).get("prefix", [""])[0]
        host = parts.hostname or ""
        bucket = host.split(".s3", 1)[0] if ".s3" in host else ""  # virtual-hosted style: bucket.s3.amazonaws.com
        target = "/".join(p for p in (bucket, path, prefix.strip("/")) if p)
        failing = f" (failing request: s3://{target})" if target else ""
        what = "timed out" if "timeout" in kind else "was closed" if "closed" in kind else "was refused"
        if resumable:
            advice = "finished parts are kept: once the endpoint is reachable, rerun the same command to resume"
        else:
            advice = "once the endpoint is reachable, rerun the same command"
        return f"cannot reach the S3 endpoint {endpoint}{failing}: the connection {what}; {advice}"
    return None
