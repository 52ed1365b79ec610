"""What a ``berg-ray`` command prints: results, progress bars and berg-ray's warnings; third-party chatter with -v.

:func:`configure_output` sets this up for one command (``berg_ray.cli.main``). By default it hides, each through
the switch its library provides:

* every logger below WARNING: berg-ray's own INFO lines and matplotlib's ("generated new fontManager", "Using
  categorical units ...");
* transformers below ERROR: "If you want to use `BertLMHeadModel` as a standalone, add `is_decoder=True`" and "Some
  weights of ... were not initialized ... newly initialized ... You should probably TRAIN this model" (the LM head,
  which berg-ray never reads). The ``transformers`` logger is set as ``transformers.utils.logging.
  set_verbosity_error()`` sets it, and ``TRANSFORMERS_VERBOSITY=error`` covers processes that import transformers
  later (Ray workers);
* FutureWarnings raised in brainscore, xarray or pandas code ("xarray subclass Score should explicitly define
  __slots__", on every import of brainscore_core);
* Ray's start-up INFO lines ("Started a local Ray instance", "Connecting to existing Ray cluster") and its
  token-authentication banner ("Token authentication is enabled for this Ray cluster ..."; the warning Ray gives
  when authentication is *disabled* still shows), Ray Data's execution INFO lines and its progress bars
  (``RAY_DATA_LOG_LEVEL``, ``RAY_DATA_DISABLE_PROGRESS_BARS``, read when ``ray.data`` is imported);
* Hugging Face hub and checkpoint-shard progress bars (``HF_HUB_DISABLE_PROGRESS_BARS``).

Ray workers of a local Ray inherit the driver's environment, so the variables above reach them, and with
``BERG_RAY_QUIET=1`` ``berg_ray._environment`` applies :func:`silence_third_party_warnings` when a worker imports
berg_ray (before brainscore). Worker output still goes to the driver (``log_to_driver`` stays on), so a
berg-ray warning raised on a worker (a truncated context) is still printed.

``-v`` hides none of this: third-party loggers log at INFO and up, berg-ray at DEBUG, warnings as Python shows them.
Network and storage clients (urllib3, botocore, s3fs, fsspec, filelock) stay at WARNING either way: their DEBUG
lines carry request details.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable

#: set to "1" for the processes a quiet command starts (Ray workers): berg_ray._environment then silences the
#: third-party warnings there too
QUIET_ENV = "BERG_RAY_QUIET"

#: environment of a quiet command and of every process it starts (read by each library when it is imported)
QUIET_ENVIRONMENT = {
    QUIET_ENV: "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "RAY_DATA_LOG_LEVEL": "WARNING",  # Ray Data sets its "ray.data" logger to this when imported
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
}

#: third-party loggers whose lines below these levels are noise for a command-line user
QUIET_LOGGERS = {
    "transformers": logging.ERROR,
    "ray._private": logging.WARNING,  # ray.init: "Started a local Ray instance", "Connecting to existing Ray ..."
    "ray.data": logging.WARNING,  # "Starting execution of Dataset ...", its execution plan, "... finished in"
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled. To enable, set ..." (we disable them)
}

#: loggers kept at WARNING even with -v
QUIET_ALWAYS = ("urllib3", "botocore", "s3fs", "fsspec", "filelock")

#: where Ray logs its token-authentication messages, and the start of the one that is noise
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_TOKEN_BANNER = "Token authentication is enabled for this Ray cluster"

#: modules whose FutureWarnings are for their own maintainers (a regex on the module a warning is attributed to)
QUIET_WARNING_MODULES = r"(brainscore_core|brainscore_language|xarray|pandas)(\.|$)"

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DropTokenBanner(logging.Filter):
    """Drops Ray's "Token authentication is enabled ..." banner, printed on every start of a local Ray."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RAY_TOKEN_BANNER)


def silence_third_party_warnings() -> None:
    """Ignore FutureWarnings raised in brainscore, xarray or pandas code, in this process."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=QUIET_WARNING_MODULES)


def configure_output(verbose: bool = False) -> Callable[[], None]:
    """Set logging, warnings and the environment for one command; returns a function that restores them.

    A root handler (stderr) is added if there is none. Quiet (``verbose=False``): loggers at WARNING,
    :data:`QUIET_LOGGERS` above that, Ray's token banner dropped, :func:`silence_third_party_warnings`, and
    :data:`QUIET_ENVIRONMENT` set for libraries imported later and for child processes (a local Ray started during
    the command keeps it). Verbose: loggers at INFO, berg-ray at DEBUG, nothing silenced.
    Restoring matters to in-process callers (tests); the CLI process simply exits.
    """
    stack = contextlib.ExitStack()
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    levels = {"": logging.INFO if verbose else logging.WARNING, **dict.fromkeys(QUIET_ALWAYS, logging.WARNING),
              **({"berg_ray": logging.DEBUG} if verbose else QUIET_LOGGERS)}
    stack.callback(_set_levels, {name: logging.getLogger(name).level for name in levels})
    _set_levels(levels)
    if not verbose:
        stack.enter_context(warnings.catch_warnings())
        silence_third_party_warnings()
        banner = _DropTokenBanner()
        logging.getLogger(RAY_AUTH_LOGGER).addFilter(banner)
        stack.callback(logging.getLogger(RAY_AUTH_LOGGER).removeFilter, banner)
        saved_env = {name: os.environ.get(name) for name in QUIET_ENVIRONMENT}
        stack.callback(_set_environment, saved_env)
        _set_environment(QUIET_ENVIRONMENT)
    return stack.close


def _set_levels(levels: dict[str, int]) -> None:
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
