"""AWS credentials never leave the driver's environment: a corpus job over s3:// (moto on 127.0.0.1) with a planted,
unique key id, secret and session token puts none of them into a process command line, a file under Ray's temp
folder (logs, session files), the output, or the driver's logs — while the Ray workers do read S3 with them.

Ray writes a job's runtime_env in plain text into ``logs/runtime_env_agent.log`` and into the command line of every
``setup_worker.py`` (visible to any user in ``ps``), so a credential must never travel there. A local Ray started
by ``init_ray`` inherits the driver's environment instead (its processes are children of the driver). Each test
also plants a unique, harmless canary in the runtime_env itself and requires the scans to find it: this shows they
look where the old code leaked (it forwarded the credentials exactly like the canary).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import pytest
from support import (
    RAY_N_COMPONENTS,
    RAY_SUBJECTS,
    REPO_ROOT,
    clean_ray,
    create_bucket,
    environ,
    list_keys,
    ray_temp_dir,
    remove_tree,
    s3_client,
    stop_ray_processes,
    subprocess_env,
)

from berg_ray.errors import InvalidInputError
from berg_ray.registry import get_spec
from berg_ray.store import EncodingModelStore

CREDENTIAL_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
BUCKETS = {"input": "secrets-in", "output": "secrets-out", "cache": "secrets-cache"}
N_SENTENCES = 24


def planted_credentials() -> dict[str, str]:
    """A unique key id, secret and session token (moto accepts any credentials)."""
    return {"AWS_ACCESS_KEY_ID": "AKIAPLANTED" + secrets.token_hex(5).upper()[:9],
            "AWS_SECRET_ACCESS_KEY": "plantedSecret" + secrets.token_hex(16),
            "AWS_SESSION_TOKEN": "plantedToken" + secrets.token_hex(24)}


class CommandLineWatch:
    """Reads the command line of every process of this user every ``interval`` s (in a thread) and records the
    pids whose command line held one of ``needles`` (name -> text). Ray's ``setup_worker.py`` lives ~1 s before it
    execs the worker, so a 20 ms period sees each one many times."""

    def __init__(self, needles: dict[str, str], interval: float = 0.02):
        self.needles = {name: value.encode() for name, value in needles.items()}
        self.interval = interval
        self.hits: dict[str, dict[int, str]] = {name: {} for name in needles}
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        uid = os.getuid()
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    if os.stat(f"/proc/{entry}").st_uid != uid:
                        continue
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        cmdline = handle.read()
                except OSError:
                    continue
                for name, needle in self.needles.items():
                    if needle in cmdline:
                        self.hits[name].setdefault(int(entry), _redacted(cmdline, self.needles.values()))
            self.sweeps += 1
            time.sleep(self.interval)


def _redacted(cmdline: bytes, needles) -> str:
    """Program and script of a command line (``python setup_worker.py``), any needle in them masked."""
    for needle in needles:
        cmdline = cmdline.replace(needle, b"<PLANTED>")
    return " ".join(os.path.basename(arg.decode(errors="replace")) for arg in cmdline.split(b"\0")[:2])


def files_containing(root: str | Path, needles: dict[str, str]) -> tuple[dict[str, list[str]], int]:
    """``({name: [files under root that contain needles[name]]}, number of files read)``."""
    hits: dict[str, list[str]] = {name: [] for name in needles}
    n_files = 0
    for folder, _, names in os.walk(root):
        for file_name in names:
            path = os.path.join(folder, file_name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue  # sockets, fifos
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError:
                continue
            n_files += 1
            for name, value in needles.items():
                if value.encode() in data:
                    hits[name].append(os.path.relpath(path, root))
    return hits, n_files


def objects_containing(endpoint: str, bucket: str, needles: dict[str, str]) -> tuple[dict[str, list[str]], int]:
    """Like :func:`files_containing`, for every object of an S3 bucket."""
    client = s3_client(endpoint)
    hits: dict[str, list[str]] = {name: [] for name in needles}
    keys = list_keys(endpoint, bucket)
    for key in keys:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for name, value in needles.items():
            if value.encode() in data:
                hits[name].append(key)
    return hits, len(keys)


def digests(credentials: dict[str, str]) -> dict[str, str]:
    return {name: hashlib.sha256(value.encode()).hexdigest() for name, value in credentials.items()}


@pytest.fixture(scope="module")
def s3_corpus(moto_server, gpt2_synthetic, gpt2_fits) -> dict[str, str]:
    """N_SENTENCES sentences in s3://secrets-in/texts/a.txt and the reference fits in s3://secrets-cache/berg
    (so the jobs load them instead of fitting)."""
    for bucket in BUCKETS.values():
        create_bucket(moto_server, bucket)
    text = "".join(f"{s}\n" for s in gpt2_synthetic["sentences"][:N_SENTENCES])
    s3_client(moto_server).put_object(Bucket=BUCKETS["input"], Key="texts/a.txt", Body=text.encode())
    cache = f"s3://{BUCKETS['cache']}/berg"
    with environ(AWS_ENDPOINT_URL=moto_server, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                 AWS_DEFAULT_REGION="us-east-1"):
        store = EncodingModelStore(cache)
        for model in gpt2_fits.values():
            store.save(model, get_spec(model.model_id).name)
    return {"input": f"s3://{BUCKETS['input']}/texts", "cache": cache}


def credential_hits(where: str, hits: dict[str, object], searched: int) -> list[str]:
    """One line per credential found in ``where`` (e.g. ``"AWS_SECRET_ACCESS_KEY in files under ...: [...]"``)."""
    assert searched > 0, f"nothing was searched in {where}"
    return [f"{name} in {where}: "
            + (f"{len(found)} processes ({', '.join(sorted(set(found.values())))})" if isinstance(found, dict)
               else f"{found}")
            for name, found in hits.items() if found and name in CREDENTIAL_NAMES]


def test_init_ray_forwards_settings_but_no_credential(monkeypatch):
    """What init_ray hands to ray.init (captured, no Ray started): the non-secret settings of the driver and the
    caller's own variables; in a `ray job submit` driver, without the names the job's runtime_env already sets."""
    import json

    import ray

    from berg_ray.distributed import init_ray

    captured: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: captured.append(kwargs))
    settings = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-3",
                "BERG_RAY_REGISTRY": "/registry/models.json", "HF_HUB_OFFLINE": "1"}
    job = json.dumps({"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1"}}})
    with environ(RAY_ADDRESS=None, RAY_JOB_CONFIG_JSON_ENV_VAR=None, AWS_ENDPOINT_URL_S3=None, AWS_REGION=None,
                 HF_HOME=None, BRAINIO_HOME=None, BS_INSTALL_DEPENDENCIES=None, TOKENIZERS_PARALLELISM=None,
                 **settings, **planted_credentials()):
        init_ray(runtime_env={"env_vars": {"MY_FLAG": "on"}})
        with environ(RAY_JOB_CONFIG_JSON_ENV_VAR=job):
            init_ray(address="127.0.0.1:1")
    local, submitted = captured
    assert local["address"] == "local" and local["runtime_env"]["env_vars"] == {**settings, "MY_FLAG": "on"}
    assert submitted["address"] == "127.0.0.1:1"
    assert submitted["runtime_env"]["env_vars"] == {k: v for k, v in settings.items() if k != "HF_HUB_OFFLINE"}


def test_a_credential_in_the_runtime_env_argument_is_refused(monkeypatch):
    import ray

    from berg_ray.distributed import init_ray

    def no_ray(*args, **kwargs):  # were the argument accepted, no Ray instance is started on this shared machine
        raise AssertionError(f"init_ray passed the credential on to ray.init (runtime_env={kwargs.get('runtime_env')})")

    monkeypatch.setattr(ray, "init", no_ray)
    with pytest.raises(InvalidInputError, match="AWS_SECRET_ACCESS_KEY") as error:
        init_ray(runtime_env={"env_vars": {"AWS_SECRET_ACCESS_KEY": "plantedSecretArgument", "HF_HOME": "/x"}})
    assert "plantedSecretArgument" not in str(error.value)
    assert "AWS_ENDPOINT_URL" in str(error.value)  # names what is allowed


@pytest.mark.slow
def test_corpus_job_through_init_ray_leaks_no_credential(moto_server, s3_corpus, tiny_gpt2, gpt2_synthetic,
                                                         caplog, capfd):
    import ray

    from berg_ray.corpus import encode_corpus, read_predictions
    from berg_ray.distributed import init_ray

    credentials = planted_credentials()
    canary = "plantedCanary" + secrets.token_hex(16)
    needles = {**credentials, "canary": canary}
    output = f"s3://{BUCKETS['output']}/init-ray"
    temp_dir = ray_temp_dir()
    caplog.set_level(logging.DEBUG, logger="berg_ray")
    with clean_ray(AWS_ENDPOINT_URL=moto_server, AWS_DEFAULT_REGION="us-east-1", **credentials):
        try:
            with CommandLineWatch(needles) as watch:
                init_ray(num_cpus=2, _temp_dir=temp_dir,
                         runtime_env={"env_vars": {"BERG_RAY_LEAK_SCAN_CANARY": canary}})
                # the workers have the credentials all the same: inherited from this process, not forwarded
                def credential_digests() -> dict[str, str | None]:  # nested: Ray ships it by value
                    """sha256 of each credential as a worker sees it (digests: the values never travel back)."""
                    return {n: hashlib.sha256(os.environ[n].encode()).hexdigest() if n in os.environ else None
                            for n in CREDENTIAL_NAMES}

                seen = ray.get(ray.remote(credential_digests).options(num_cpus=0.1).remote())
                manifest = encode_corpus(tiny_gpt2.model_id, s3_corpus["input"], output,
                                         subjects=list(RAY_SUBJECTS), dataset=gpt2_synthetic["path"],
                                         cache=s3_corpus["cache"], n_components=RAY_N_COMPONENTS, device="cpu",
                                         rows_per_part=8, num_extractors=1, num_cpus_per_extractor=1)
                predictions = read_predictions(output, RAY_SUBJECTS[0])
        finally:
            ray.shutdown()
            stop_ray_processes(temp_dir)
        try:
            in_files, n_files = files_containing(temp_dir, needles)
        finally:
            remove_tree(temp_dir)
    driver_output = capfd.readouterr()
    logged = "\n".join(record.getMessage() for record in caplog.records)

    assert seen == digests(credentials)
    assert manifest["sentences_encoded"] == N_SENTENCES and manifest["bad_rows"] == 0
    assert len(predictions) == N_SENTENCES
    print(f"{watch.sweeps} sweeps of /proc/*/cmdline, {n_files} files under Ray's temp dir; canary in "
          f"{len(watch.hits['canary'])} command lines and {len(in_files['canary'])} files")
    # the scans see what travels in the runtime_env (where the old code put the credentials)
    assert watch.hits["canary"], "the command-line scan never saw the runtime_env canary"
    assert in_files["canary"], "the file scan never found the runtime_env canary"
    leaks = [*credential_hits("process command lines", watch.hits, watch.sweeps),
             *credential_hits("files under Ray's temp dir", in_files, n_files),
             *credential_hits(f"the output {output}", *objects_containing(moto_server, BUCKETS["output"], needles))]
    leaks += [f"{name} in the driver's log records" for name, value in credentials.items() if value in logged]
    leaks += [f"{name} in the driver's stdout/stderr" for name, value in credentials.items()
              if value in driver_output.out + driver_output.err]
    assert not leaks, "\n".join(leaks)


@pytest.mark.slow
def test_encode_corpus_cli_leaks_no_credential(moto_server, s3_corpus, tiny_gpt2, persisted_gpt2, gpt2_synthetic,
                                               tmp_path):
    """``python -m berg_ray.cli encode-corpus`` (its own local Ray, in RAY_TMPDIR): the forwarded registry path is the
    canary."""
    credentials = planted_credentials()
    needles = {**credentials, "canary": persisted_gpt2}
    output = f"s3://{BUCKETS['output']}/cli"
    temp_dir = ray_temp_dir()
    command = [sys.executable, "-m", "berg_ray.cli", "encode-corpus", tiny_gpt2.model_id, "--input",
               s3_corpus["input"], "--output", output, "--subjects", *RAY_SUBJECTS, "--dataset",
               gpt2_synthetic["path"], "--cache", s3_corpus["cache"], "--n-components", str(RAY_N_COMPONENTS),
               "--device", "cpu"]
    with clean_ray():  # the subprocess inherits a Ray auth token of its own (never ~/.ray/auth_token)
        env = subprocess_env(BERG_RAY_REGISTRY=persisted_gpt2, RAY_TMPDIR=temp_dir, AWS_ENDPOINT_URL=moto_server,
                             AWS_DEFAULT_REGION="us-east-1", **credentials)
        try:
            with CommandLineWatch(needles) as watch:
                run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, timeout=540,
                                     check=False)
        finally:
            stop_ray_processes(temp_dir)
    try:
        in_files, n_files = files_containing(temp_dir, needles)
    finally:
        remove_tree(temp_dir)
    logs = (run.stdout + run.stderr).decode(errors="replace")
    assert run.returncode == 0, logs[-4000:]
    print(f"{watch.sweeps} sweeps of /proc/*/cmdline, {n_files} files under Ray's temp dir; canary in "
          f"{len(watch.hits['canary'])} command lines and {len(in_files['canary'])} files")
    assert watch.hits["canary"], "the command-line scan never saw the runtime_env canary"
    assert in_files["canary"], "the file scan never found the runtime_env canary"
    leaks = [*credential_hits("process command lines", watch.hits, watch.sweeps),
             *credential_hits("files under Ray's temp dir", in_files, n_files),
             *credential_hits(f"the output {output}", *objects_containing(moto_server, BUCKETS["output"], needles))]
    leaks += [f"{name} in the CLI's stdout/stderr" for name, value in credentials.items() if value in logs]
    assert not leaks, "\n".join(leaks)
