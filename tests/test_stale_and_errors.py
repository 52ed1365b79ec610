"""Issue 16, §4 and §6 (non-corpus): a local model retrained in place is never read with its old weights, and an
encoding model is never run on weights it was not fitted on; a hub model not cached offline, berg-ray errors raised
on Ray workers, credentials in a runtime_env, ``hash(ModelRequest)``, PLS iteration settings and concurrent registry
writes each end in one clear line (or just work), never in a traceback or a lost registration."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support import local_ray, subprocess_env

from berg_ray.errors import BergRayError, InvalidInputError

pytestmark = pytest.mark.own_ray  # one test starts a Ray whose workers run offline (HF_HUB_OFFLINE=1)

SENTENCES = ["The cat sat on the mat.", "A storm rolled in over the hills.", "She read the letter twice."]
LAYER = "transformer.h.1"
#: a hub id that is in no Hugging Face cache (the hub itself never names a repo this way)
NOT_CACHED = "berg-ray-tests/never-cached-0f3a9c"


def _retrain(folder: Path, seed: int) -> None:
    """New random weights saved in place with ``save_pretrained``, as a user retraining the model would."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config.from_pretrained(folder)).eval().save_pretrained(str(folder))


@pytest.fixture
def retrainable(tmp_path):
    """A tiny GPT-2 in its own folder, registered in this process under its own id (unregistered afterwards)."""
    from berg_ray.offline_models import build_gpt2
    from berg_ray.registry import register_model, unregister_model

    folder = build_gpt2(tmp_path / "model", n_layer=2, n_embd=32, n_head=4, n_positions=64, seed=0)
    model_id = f"retrained-{tmp_path.name}"
    register_model(model_id, str(folder), LAYER, replace=True)
    yield model_id, folder
    unregister_model(model_id)


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# ------------------------------------------------------------------------------------------------- §4 stale weights


def test_extract_after_retraining_in_place_reads_the_new_weights(retrainable):
    from berg_ray import features
    from berg_ray.registry import get_spec

    model_id, folder = retrainable
    old = features.extract(model_id, SENTENCES, LAYER, device="cpu")[LAYER]
    _retrain(folder, seed=1)
    new = features.extract(model_id, SENTENCES, LAYER, device="cpu")[LAYER]
    # the reference: a fresh extractor (no process cache) on the folder as it is now
    reference = features.FeatureExtractor(get_spec(model_id), device="cpu").extract(SENTENCES, LAYER)[LAYER]
    np.testing.assert_array_equal(new, reference)
    assert np.abs(new - old).max() > 1e-3  # the old weights' features are gone
    # an unchanged folder is neither reloaded nor re-hashed: repeated calls stay cheap
    loaded = features.get_extractor(model_id, device="cpu")
    started = time.perf_counter()
    for _ in range(20):
        assert features.get_extractor(model_id, device="cpu") is loaded
    per_call = (time.perf_counter() - started) / 20
    assert per_call < 0.05, f"{per_call * 1e3:.1f} ms per cached get_extractor"


@pytest.fixture
def fitted_on_old_weights(retrainable, gpt2_synthetic, tmp_path):
    """A BERG over the planted synthetic file and subject 018's encoding model of the retrainable GPT-2, fitted
    (5 PLS components) on its first weights."""
    from berg_ray.api import BERG

    model_id, folder = retrainable
    berg = BERG(tmp_path / "cache", dataset=gpt2_synthetic["path"], n_components=5)
    model = berg.get_encoding_model(model_id, "018", device="cpu")
    return berg, model, folder


def test_encode_refuses_a_model_fitted_on_weights_since_replaced(fitted_on_old_weights):
    berg, model, folder = fitted_on_old_weights
    before = berg.encode(model, SENTENCES)  # the weights it was fitted on: fine
    assert before.shape == (len(SENTENCES), model.n_voxels)
    fitted_on = model.key_fields["model"]
    _retrain(folder, seed=1)
    with pytest.raises(BergRayError) as info:
        berg.encode(model, SENTENCES)
    assert type(info.value).__name__ == "StaleModelError"
    now = model.request.spec.source_fingerprint()
    assert now != fitted_on
    message = _one_line(str(info.value))
    assert fitted_on in message and now in message and model.model_id in message
    # a request built before the retraining is refused by a fit too: its features would be the new weights' under
    # the old fingerprint's cache key
    with pytest.raises(BergRayError, match="changed since the request was made"):
        berg.fit(model.request, ["199"], use_ray=False)


# ------------------------------------------------------------------------------------------------- §6 offline hub id


@pytest.fixture
def not_cached_hub_model(monkeypatch):
    """A registered hub id that is not cached, in an offline process (as ``HF_HUB_OFFLINE=1 berg-ray ...``)."""
    import huggingface_hub.constants
    import transformers.utils.hub

    from berg_ray.registry import register_model, unregister_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read at import: set too where this process already imported it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)
    register_model("not-cached-hub", NOT_CACHED, "transformer.h.0", replace=True)
    yield "not-cached-hub"
    unregister_model("not-cached-hub")


def _cli(*argv: str) -> tuple[int, str]:
    from berg_ray.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    return rc, err.getvalue()


def test_hub_model_not_cached_offline_is_one_line(not_cached_hub_model, gpt2_synthetic, tmp_path):
    from berg_ray.features import extract

    with pytest.raises(BergRayError) as info:
        extract(not_cached_hub_model, SENTENCES, "transformer.h.0", device="cpu")
    assert type(info.value).__name__ == "ModelNotCachedError"
    message = _one_line(str(info.value))
    assert NOT_CACHED in message and "not in the local Hugging Face cache" in message and "offline" in message
    rc, err = _cli("fit", not_cached_hub_model, "--subjects", "018", "--dataset", gpt2_synthetic["path"],
                   "--cache", str(tmp_path), "--device", "cpu", "--n-components", "5")
    assert rc == 2
    assert NOT_CACHED in _one_line(err) and "not in the local Hugging Face cache" in err


# ------------------------------------------------------------------------------------------------- §6 Ray errors


@pytest.mark.slow  # a full Ray pipeline run (10-17 s): CI's slow tier
def test_berg_ray_error_in_a_ray_actor_prints_the_same_line(not_cached_hub_model, gpt2_synthetic, tmp_path):
    """The extractor actor cannot load the model: the CLI prints berg-ray's own line, as in process, exit 2."""
    with local_ray(num_cpus=1, HF_HUB_OFFLINE="1"):
        rc, err = _cli("fit", not_cached_hub_model, "--ray", "--subjects", "018", "--dataset", gpt2_synthetic["path"],
                       "--cache", str(tmp_path), "--device", "cpu", "--n-components", "5")
    assert rc == 2, err
    line = _one_line(err)
    assert line.startswith("berg-ray fit: error: model 'not-cached-hub'") and NOT_CACHED in line, line
    assert "RayTaskError" not in line and "ray::" not in line


# ------------------------------------------------------------------------------------------------- §6 credentials


@pytest.mark.parametrize("name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY", "DB_PASSWORD",
                                  "MY_SECRET", "GOOGLE_APPLICATION_CREDENTIALS", "hf_token", "GITHUB_TOKEN"])
def test_runtime_env_with_a_credential_is_refused(name):
    from berg_ray.distributed import init_ray

    # an address Ray rejects at once (RuntimeError): had the check let it through, no Ray would start here
    with pytest.raises(InvalidInputError) as info:
        init_ray("berg-ray-nowhere://0", runtime_env={"env_vars": {name: "value-that-must-not-leak",
                                                                      "OMP_NUM_THREADS": "1"}})
    message = str(info.value)
    assert name in message and "value-that-must-not-leak" not in message and "OMP_NUM_THREADS" not in message


def test_settings_whose_names_contain_token_are_not_credentials():
    from berg_ray.distributed import FORWARDED_ENV, looks_like_secret

    assert not [name for name in (*FORWARDED_ENV, "OMP_NUM_THREADS", "KEYBOARD") if looks_like_secret(name)]


# ------------------------------------------------------------------------------------------------- §6 hashable request


def test_model_request_is_hashable_and_agrees_with_equality(retrainable):
    import dataclasses

    from berg_ray.request import ModelRequest

    model_id, _ = retrainable
    one = ModelRequest.build(model_id, device="cpu")
    two = ModelRequest.build(model_id, device="cpu")
    assert one == two and hash(one) == hash(two)
    assert {one: "fitted"}[two] == "fitted"
    other = dataclasses.replace(one, spec=dataclasses.replace(one.spec, tokenizer_kwargs={"truncation_side": "right"}))
    assert other != one and len({one, two, other}) == 2
    coded = dataclasses.replace(one.spec, builder={"module": "m", "config": {"layers": [1, 2]}})
    assert hash(coded) == hash(dataclasses.replace(one.spec, builder={"config": {"layers": [1, 2]}, "module": "m"}))


# ------------------------------------------------------------------------------------------------- §6 PLS settings


@pytest.mark.parametrize(("field", "value"), [("max_iter", 0), ("max_iter", -3), ("max_iter", 2.5), ("tol", 0.0),
                                              ("tol", -1e-6), ("tol", float("nan")), ("tol", float("inf")),
                                              ("tol", "1e-6"), ("n_components", True)])
def test_pls_settings_refuse_bad_iteration_settings(field, value):
    from berg_ray.regression import PLSSettings

    with pytest.raises(InvalidInputError) as info:
        PLSSettings(**{field: value})
    assert field in str(info.value) and repr(value) in str(info.value)


def test_fit_pls_refuses_max_iter_zero_instead_of_crashing():
    from berg_ray.regression import fit_pls

    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="max_iter"):
        fit_pls(rng.normal(size=(20, 4)), rng.normal(size=(20, 3)), n_components=2, max_iter=0)


# ------------------------------------------------------------------------------------------------- §6 registry lock

_REGISTER_MANY = """
import sys, time
from pathlib import Path
from berg_ray.registry import brainscore_specs, register_model
brainscore_specs()  # parsed before the start line, so that both processes register at the same time
folder, name = Path(sys.argv[1]), sys.argv[2]
(folder / f"ready-{name}").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
for i in range(20):
    register_model(f"{name}-{i}", f"org/model-{name}-{i}", "transformer.h.0", persist=True)
"""


def test_concurrent_registrations_are_all_kept(tmp_path):
    """Two processes register 20 models each into one registry file at the same time (as two `berg-ray register`):
    every registration is kept (without the lock about half of them were lost)."""
    registry = tmp_path / "registry" / "models.json"
    env = subprocess_env(BERG_RAY_REGISTRY=str(registry))
    workers = [subprocess.Popen([sys.executable, "-c", _REGISTER_MANY, str(tmp_path), name], env=env,
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{name}").exists() for name in "ab") and time.monotonic() < deadline:
        assert all(worker.poll() is None for worker in workers), [w.stderr.read() for w in workers]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()
    ids = sorted(entry["model_id"] for entry in json.loads(registry.read_text()))
    assert ids == sorted(f"{name}-{i}" for name in "ab" for i in range(20))
    assert not [p.name for p in registry.parent.iterdir() if ".tmp" in p.name]  # every temporary file renamed
