"""Test helpers shared by the test modules (plain functions, classes and constants; the fixtures live in
conftest.py and import from here). Test modules import them with ``from support import ...``."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------------------------
# Language models shared by test_features / test_registry / test_regression / test_store / test_api_cli (the
# session-scoped fixtures in conftest.py build and register them; ids are registered in that process only).

TINY_GPT2_ID = "test-tiny-gpt2"
TINY_GPT2_LAYER = "transformer.h.2"
TINY_BERT_ID = "test-tiny-bert"
TINY_BERT_LAYER = "bert.encoder.layer.1"
MINILM_ID = "minilm-l6"
MINILM_LAYER = "bert.encoder.layer.5"


class LocalModel:
    """A registered test model: its id, the folder holding its weights, and the layer read out."""

    def __init__(self, model_id: str, folder: str, layer: str):
        self.model_id, self.folder, self.layer = model_id, folder, layer

    def __repr__(self) -> str:
        return f"LocalModel({self.model_id!r}, {self.folder!r}, {self.layer!r})"


def single_blas_thread():
    """One BLAS thread: the small PLS products run 2-4x faster on a shared 2-core machine than with two threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


#: subjects fitted once per session through the BERG API (planted-map recovery, API and store tests reuse them)
FITTED_SUBJECTS = ("018", "199")


# ------------------------------------------------------------------------------------------------------------------
# Ray and S3 helpers for test_distributed / test_corpus / test_ray_jobs.
#
# Every Ray instance these tests start is their own — ``ray.init(address="local")``, a ``cluster_utils.Cluster`` or
# a ``ray start --head --block`` subprocess — with a private, short temp dir under /tmp (Ray's socket paths must
# stay under 107 bytes), so it never joins, and is never found by, another instance on this shared machine. Ray
# processes are stopped by pid (never ``ray stop``, which stops everyone's).

#: the checkout (berg_ray is imported from it: it is not installed in the virtualenv)
REPO_ROOT = __file__.rsplit("/tests/", 1)[0]
#: PLS components in the Ray tests: small, so fits are fast; the code path is the one used with BERG's 25
RAY_N_COMPONENTS = 5
#: subjects the Ray tests fit and encode (two are enough to show that per-subject outputs stay apart)
RAY_SUBJECTS = ("018", "199")
AWS_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}


def free_port_range(n: int) -> tuple[int, int]:
    """``n`` consecutive free TCP ports on 127.0.0.1 (for Ray's --min-worker-port/--max-worker-port)."""
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 60_000 - n)
        try:
            for port in range(base, base + n):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base, base + n - 1
    raise RuntimeError(f"found no {n} consecutive free ports")


def ray_temp_dir() -> str:
    """A fresh, short temp dir for one Ray instance."""
    import tempfile

    return tempfile.mkdtemp(prefix="rt-", dir="/tmp")


def _state(pid: int) -> str | None:
    """A process's state letter (``Z`` = zombie), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def processes_mentioning(text: str) -> list[int]:
    """Pids of this user's live processes whose command line contains ``text`` (e.g. a Ray temp dir)."""
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _state(int(entry)) not in (None, "Z"):
            pids.append(int(entry))
    return pids


def stop_pids(pids: list[int], timeout: float = 20.0) -> None:
    """SIGTERM each pid, then SIGKILL whatever is still alive after ``timeout`` seconds."""
    import os
    import signal
    import time

    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_state(p) not in (None, "Z") for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _state(pid) not in (None, "Z"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def remove_tree(path: str) -> None:
    """Remove a Ray temp dir; retried, since Ray processes that are just exiting may still write into it."""
    import os
    import shutil
    import time

    for _ in range(10):
        shutil.rmtree(path, ignore_errors=True)
        time.sleep(0.3)
        if not os.path.exists(path):
            return


def descendants(pids: list[int]) -> list[int]:
    """Live children, grandchildren, ... of ``pids`` (Ray's workers rename themselves ``ray::...``, so their command
    lines do not name the temp dir: they are found as children of the raylet)."""
    import os

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found and _state(child) not in (None, "Z"):
                found.append(child)
                todo.append(child)
    return found


def stop_ray_processes(temp_dir: str, timeout: float = 5.0) -> list[int]:
    """Stop every process of the Ray instance living in ``temp_dir``: those naming it on their command line and
    their descendants (workers), SIGTERM then, after ``timeout`` s, SIGKILL. Returns their pids."""
    pids = processes_mentioning(temp_dir)
    pids += [p for p in descendants(pids) if p not in pids]
    stop_pids(pids, timeout)
    return pids


#: variables that ``ray.init()`` sets in this (the driver's) process and ``ray.shutdown()`` leaves set:
#: RAY_AUTH_MODE=token (a new local instance turns token authentication on), usage stats off, and Ray's debugger as
#: the ``breakpoint()`` hook
RAY_INIT_ENV = ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED", "PYTHONBREAKPOINT")


class environ:
    """``with environ(NAME=value, OTHER=None):`` sets (None: removes) variables and restores them all on exit.

    Unlike ``monkeypatch`` it also works in module-scoped fixtures, around a Ray instance whose workers inherit
    the variables. The variables ``ray.init()`` sets in this process (:data:`RAY_INIT_ENV`) are always restored too,
    and when no Ray is connected on exit, Ray's process-wide config re-reads the restored environment
    (:func:`sync_ray_config`): restoring ``RAY_AUTH_MODE`` alone left Ray itself in token mode.
    """

    def __init__(self, **values: str | None):
        self.values = values

    def __enter__(self) -> None:
        import os

        self.saved = {name: os.environ.get(name) for name in {*self.values, *RAY_INIT_ENV}}
        self._apply(self.values)

    def __exit__(self, *exc) -> None:
        self._apply(self.saved)
        ray = sys.modules.get("ray")
        if ray is not None and not ray.is_initialized():
            sync_ray_config()

    @staticmethod
    def _apply(values: dict[str, str | None]) -> None:
        import os

        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def s3_environment(endpoint: str) -> dict[str, str]:
    """AWS variables for a moto endpoint (set them before a local Ray starts: its workers inherit the driver's
    environment; init_ray forwards only the non-secret ones, never the credentials)."""
    return {"AWS_ENDPOINT_URL": endpoint, **AWS_TEST_CREDENTIALS}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def create_bucket(endpoint: str, bucket: str) -> None:
    client = s3_client(endpoint)
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    pages = s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def subprocess_env(**extra: str | None) -> dict[str, str]:
    """Environment for a berg-ray subprocess (CLI, job driver): this one, with the checkout on PYTHONPATH and
    without RAY_ADDRESS (nothing joins another Ray instance by accident); ``extra`` sets or (None) removes."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env.update(BS_INSTALL_DEPENDENCIES="no", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    for name, value in extra.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env



# ------------------------------------------------------------------------------------------------------------------
# Ray state of this (the pytest) process.
#
# ``ray.init()`` changes process-wide state that ``ray.shutdown()`` does not undo. The piece that broke a later test
# module: a new local instance (``ray.init(address="local")``, as ``init_ray()`` starts it) turns token
# authentication on by setting RAY_AUTH_MODE=token in os.environ *and* making Ray's C++ config (RayConfig, a
# process-wide singleton that reads the RAY_* variables only when told to) re-read it. The module's fixture then
# restored the variable, but not that config. The next module's ``cluster_utils.Cluster``, started from the restored
# environment, ran without authentication, while this driver, still in token mode, refused the GCS's calls that
# carried no token ("Missing authorization header in request!" in its core-worker log); the GCS took the driver for
# dead and cancelled its actors ("The actor never ran - it was cancelled before it started running").


def sync_ray_config() -> None:
    """Make Ray's process-wide config and its cached auth token re-read the environment (config first, then the
    token cache, as Ray's own ``ray._private.authentication_test_utils.reset_auth_token_state``). Only call it while
    this process is connected to no Ray instance."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def ray_auth_modes() -> tuple[str, str]:
    """(the auth mode Ray's process-wide config holds, the one RAY_AUTH_MODE asks for): each "token" or "disabled"."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    held = "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"
    return held, "token" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else "disabled"


def ray_environment() -> dict[str, str]:
    """This process's RAY_* variables and PYTHONBREAKPOINT, without RAY_CLIENT_MODE (``import ray`` sets it)."""
    return {name: value for name, value in os.environ.items()
            if (name.startswith("RAY_") or name == "PYTHONBREAKPOINT") and name != "RAY_CLIENT_MODE"}


#: the Ray variables this test session started with (conftest.py imports this module before any test runs)
SESSION_RAY_ENVIRONMENT = ray_environment()


def assert_clean_ray_state() -> None:
    """Assert that this process holds no Ray state that a test left behind: no connection to a Ray instance, the Ray
    variables the session started with (so no RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN, ... that it did not have),
    and Ray's process-wide auth mode equal to the one the environment asks for."""
    import ray
    from ray._private import worker

    assert not ray.is_initialized(), "this process is still connected to a Ray instance (no ray.shutdown())"
    assert worker._global_node is None, "this process still holds the node of a Ray instance (no ray.shutdown())"
    now = ray_environment()
    changed = sorted(name for name in {*now, *SESSION_RAY_ENVIRONMENT}
                     if now.get(name) != SESSION_RAY_ENVIRONMENT.get(name))  # names only: values may be tokens
    assert not changed, f"Ray variables differ from the session's start: {changed}"
    held, wanted = ray_auth_modes()
    assert held == wanted, (
        f"Ray's process-wide auth mode is {held!r} but RAY_AUTH_MODE asks for {wanted!r} (call sync_ray_config() "
        "after changing it): a driver in token mode is refused by a cluster without authentication and its actors "
        "are cancelled before they start")


@contextlib.contextmanager
def clean_ray(**env: str | None) -> Iterator[str]:
    """``with clean_ray(NAME=value):`` around a fixture's own Ray instance(s), started from this process.

    Asserts the clean state (:func:`assert_clean_ray_state`), then sets ``env`` (None: removes) and a private Ray
    environment: no RAY_ADDRESS (nothing joins another instance), and token authentication with a fresh token of
    its own in RAY_AUTH_TOKEN, which every process of the instance and every client started from here inherit (so
    nothing reads or writes ``~/.ray/auth_token``); Ray's process-wide config is made to read it. Yields the token.
    On exit it restores the environment, re-syncs Ray's config and asserts the clean state again: the fixture must
    have shut down (``ray.shutdown()``, its cluster, its processes) everything it started.
    """
    import secrets

    assert_clean_ray_state()
    token = secrets.token_hex(32)
    with environ(**{"RAY_ADDRESS": None, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                    "RAY_AUTH_TOKEN_PATH": None, **env}):
        sync_ray_config()
        yield token
    assert_clean_ray_state()


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, **env: str | None) -> Iterator[str]:
    """``with local_ray():`` a local Ray instance of this process (``num_cpus`` CPUs, its own temp dir and token,
    from and back to a clean Ray state: :func:`clean_ray`, which also sets ``env``); yields its temp dir. Everything
    it started is shut down and stopped on exit."""
    import ray

    from berg_ray.distributed import init_ray

    temp_dir = ray_temp_dir()
    with clean_ray(**env):
        try:
            init_ray(num_cpus=num_cpus, _temp_dir=temp_dir)
            yield temp_dir
        finally:
            ray.shutdown()
            stop_ray_processes(temp_dir)
            remove_tree(temp_dir)


class SessionRay:
    """The test session's one local Ray instance (:func:`local_ray`: 2 CPUs, its own temp dir and token), with
    ``env`` (the AWS variables of the session's moto server) set while it runs. Started on first use (conftest's
    ``ray_session`` fixture), stopped at the end of the session, or earlier (:meth:`stop`) before a module marked
    ``own_ray`` starts a Ray instance or cluster of its own (conftest orders those modules first, so normally the
    shared instance starts once, after them)."""

    def __init__(self, **env: str | None):
        self.env = env
        self.temp_dir: str | None = None
        self._stack: contextlib.ExitStack | None = None
        self._environment: dict[str, str] = {}

    @property
    def running(self) -> bool:
        return self._stack is not None

    def start(self) -> str:
        """Start the instance unless it runs; returns its temp dir."""
        if self._stack is None:
            stack = contextlib.ExitStack()
            self.temp_dir = stack.enter_context(local_ray(**self.env))
            self._stack, self._environment = stack, ray_environment()
        return self.temp_dir

    def stop(self) -> None:
        """Shut it down and stop its processes (back to a clean Ray state: :func:`clean_ray` asserts it)."""
        stack, self._stack, self.temp_dir = self._stack, None, None
        if stack is not None:
            stack.close()

    def assert_intact(self) -> None:
        """What a test module must leave behind while the shared instance runs: this process still connected to it,
        the Ray variables it started with, and Ray's process-wide auth mode equal to the one they ask for."""
        import ray
        from ray._private import worker

        assert ray.is_initialized(), "a test shut down the session's shared Ray (use an own_ray module for that)"
        assert worker._global_node is not None and self.temp_dir is not None
        assert worker._global_node.get_temp_dir_path().startswith(self.temp_dir), (
            "this process is connected to another Ray instance than the session's shared one")
        now = ray_environment()
        changed = sorted(name for name in {*now, *self._environment} if now.get(name) != self._environment.get(name))
        assert not changed, f"Ray variables differ from those the session's shared Ray started with: {changed}"
        held, wanted = ray_auth_modes()
        assert held == wanted, f"Ray's process-wide auth mode is {held!r} but RAY_AUTH_MODE asks for {wanted!r}"


def plant_unlike_cpu(folder: Path, monkeypatch: Any) -> str:
    """Make this process read a planted ``/proc/cpuinfo`` (``berg_ray.precision.CPUINFO_PATH``, a file in ``folder``)
    of the other kind than this machine's: without native bf16 where this CPU has it, with it where it has not.
    Ray workers started afterwards still read the real one. Returns this machine's ``dtype="auto"`` answer
    (``"bfloat16"`` or ``"float32"``, from the kernel's flag list, read here); skips the test if there is none."""
    from berg_ray import precision

    cpuinfo = Path("/proc/cpuinfo")
    flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()} if cpuinfo.exists() else set()
    if not flags:
        pytest.skip("no CPU flags in /proc/cpuinfo to compare the workers' answer with")
    here = "bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "float32"
    planted = Path(folder) / "cpuinfo"
    planted.write_text("processor\t: 0\nflags\t\t: fpu avx2 " + ("avx512f" if here == "bfloat16" else "avx512_bf16")
                       + "\n")
    monkeypatch.setattr(precision, "CPUINFO_PATH", str(planted))
    return here


def benchmark_predictions(features: Any, assembly: Any, data: Any, layer: str) -> Any:
    """A NeuroidAssembly of ``features`` laid out as the benchmark's ``__call__`` builds it: passages in sorted
    order, concatenated, with stimulus_id / passage_index / story coords and HuggingfaceSubject's neuroid coords."""
    import numpy as np
    from brainscore_core.supported_data_standards.brainio.assemblies import NeuroidAssembly

    passages = data["passage_label"].values
    order = np.concatenate([np.flatnonzero(passages == p) for p in sorted(set(passages))])
    row_of = {s: i for i, s in enumerate(assembly.stimulus_ids)}
    stimulus_ids = data["stimulus_id"].values[order]
    values = features[[row_of[str(s)] for s in stimulus_ids]]
    units = features.shape[1]
    return NeuroidAssembly(values, dims=["presentation", "neuroid"], coords={
        "stimulus": ("presentation", data["stimulus"].values[order]),
        "stimulus_id": ("presentation", stimulus_ids),
        "passage_index": ("presentation", data["passage_index"].values[order]),
        "story": ("presentation", data["story"].values[order]),
        "layer": ("neuroid", [layer] * units),
        "neuron_number_in_layer": ("neuroid", np.arange(units)),
        "neuroid_id": ("neuroid", [f"{layer}--{k}" for k in range(units)]),
    })
