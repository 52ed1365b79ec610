"""Exceptions raised by berg-ray. Every message names the bad value and what is allowed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BergRayError(Exception):
    """Base class of every error berg-ray raises on purpose."""


class InvalidInputError(BergRayError, ValueError):
    """A value passed by the user is not allowed (the message says what is)."""


class UnknownModelError(InvalidInputError, KeyError):
    """A model id that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class UnsupportedModelError(InvalidInputError):
    """A model that is registered in brainscore-language but cannot be run by berg-ray."""


class UnknownSubjectError(InvalidInputError, KeyError):
    """A subject id that is not in the dataset."""

    def __str__(self) -> str:
        return str(self.args[0])


class DatasetError(BergRayError):
    """A neural dataset that cannot be loaded or does not have the expected layout."""


class CacheIntegrityError(BergRayError):
    """A cache entry that cannot be trusted: a file differs from the sha256 in its manifest, or the manifest's
    content is malformed or contradicts the key the entry is stored under.

    Attributes:
        path: the entry folder or file at fault (``None`` if not known).
        field: the manifest field or file at fault, dotted (``"metadata.context"``, ``"files.voxels"``), or ``None``.
    """

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None):
        super().__init__(message)
        self.path = path
        self.field = field


class StaleModelError(BergRayError):
    """The weights a model would run now are not the ones a request or encoding model was made for (a local folder
    retrained in place): the message names both fingerprints."""


class ModelNotCachedError(BergRayError):
    """A hub model that is not in the local Hugging Face cache and cannot be downloaded (offline, or no network)."""


class DeviceError(InvalidInputError):
    """A device that is not available on this machine (e.g. ``cuda`` without a GPU)."""


class UnsafePathError(InvalidInputError):
    """A write or delete whose path would leave its root folder (``..``, an absolute part, a symlink out)."""


def closest(value: str, allowed: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` entries of ``allowed`` that are spelled most like ``value``."""
    allowed = list(allowed)
    hits = difflib.get_close_matches(value, allowed, n=n, cutoff=0.5)
    if not hits:
        lowered = value.lower()
        hits = [a for a in allowed if lowered in a.lower()][:n]
    return hits
