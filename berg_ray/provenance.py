"""Versions of the packages that determine results, recorded in metadata, manifests and reports."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

_PACKAGES = ("berg-ray", "brainscore-language", "brainscore-core", "torch", "transformers", "tokenizers", "numpy",
             "scikit-learn", "ray", "pyarrow", "xarray")


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    """``{"python": ..., "torch": ..., ...}``; ``"missing"`` for packages that are not installed."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions
